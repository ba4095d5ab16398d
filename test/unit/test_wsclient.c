/* Unit tests for common/wsclient.c's reconnect delay policy (its parsers:
 * test_wsclient_parse.c; the connection itself: test_wsclient.py). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"

#include "wsclient.h"

static void test_retry_delay_never_under_min(void **state)
{
    (void)state;
    backoff_t b;
    const uint64_t min = 500, max = 8000;
    backoff_init(&b, min, max, 0);
    uint64_t now = 1000000;
    for (int i = 0; i < 2000; i++) {
        /* The previous attempt started at `now` (it failed at once). */
        uint64_t last = now;
        uint64_t d = wsc_retry_delay(&b, now, last, min);
        assert_true(d >= min);
        assert_true(d <= max);
        now += d;
        if (i % 50 == 49)
            backoff_reset(&b);
    }
    /* A connection that failed 300 ms after its attempt: at least 200 more. */
    backoff_reset(&b);
    for (int i = 0; i < 1000; i++) {
        uint64_t d = wsc_retry_delay(&b, 10300, 10000, min);
        assert_true(10300 + d >= 10000 + min);
        backoff_reset(&b);
    }
}

static void test_retry_delay_grows_and_caps(void **state)
{
    (void)state;
    backoff_t b;
    backoff_init(&b, 100, 3000, 0);
    uint64_t maxseen = 0;
    for (int i = 0; i < 200; i++) {
        /* Last attempt long ago: only the jittered backoff applies. */
        uint64_t d = wsc_retry_delay(&b, 1000000, 1, 100);
        assert_true(d <= 3000);
        if (d > maxseen)
            maxseen = d;
    }
    assert_true(maxseen > 1000); /* it did grow past the base */
    /* No previous attempt (0) imposes no gap. */
    backoff_reset(&b);
    assert_true(wsc_retry_delay(&b, 5, 0, 100) <= 100);
}

UNIT_MAIN(cmocka_unit_test(test_retry_delay_never_under_min),
          cmocka_unit_test(test_retry_delay_grows_and_caps))
