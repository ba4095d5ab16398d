/* Unit tests for common/backoff.c. */
#include "unit.h"

#include <stdint.h>

#include "backoff.h"

static void test_backoff_bounds(void **state)
{
    (void)state;
    backoff_t b;
    backoff_init(&b, 100, 30000, 0);
    for (unsigned a = 0; a < 20; a++) {
        uint64_t expect = 100ull << a;
        if (expect > 30000)
            expect = 30000;
        assert_int_equal(backoff_ceiling(&b), expect);
        uint64_t d = backoff_next(&b);
        assert_true(d <= expect);
        assert_int_equal(b.attempt, a + 1);
    }
    /* many draws at the cap: within [0, cap], mean near cap/2, spread wide */
    double sum = 0;
    uint64_t lo = UINT64_MAX, hi = 0;
    const int N = 20000;
    for (int i = 0; i < N; i++) {
        uint64_t d = backoff_next(&b);
        assert_true(d <= 30000);
        sum += (double)d;
        if (d < lo)
            lo = d;
        if (d > hi)
            hi = d;
    }
    double mean = sum / N;
    assert_true(mean > 14000 && mean < 16000);
    assert_true(lo < 300);
    assert_true(hi > 29700);
    backoff_reset(&b);
    assert_int_equal(b.attempt, 0);
    assert_int_equal(backoff_ceiling(&b), 100);
}

static void test_backoff_floor_and_overflow(void **state)
{
    (void)state;
    backoff_t b;
    backoff_init(&b, 1000, 60000, 5000);
    for (int i = 0; i < 5000; i++) {
        uint64_t d = backoff_next(&b);
        assert_true(d >= 5000 && d <= 60000);
    }
    /* huge attempt counts and bases never overflow past max */
    backoff_init(&b, UINT64_MAX / 3, UINT64_MAX - 1, 0);
    for (int i = 0; i < 200; i++) {
        assert_true(backoff_ceiling(&b) <= UINT64_MAX - 1);
        backoff_next(&b);
    }
    assert_int_equal(backoff_ceiling(&b), UINT64_MAX - 1);
    backoff_init(&b, 1, 1000, 0);
    b.attempt = 1000000;
    assert_int_equal(backoff_ceiling(&b), 1000);
    /* zero base: always floor */
    backoff_init(&b, 0, 1000, 7);
    for (int i = 0; i < 10; i++)
        assert_int_equal(backoff_next(&b), 7);
}

UNIT_MAIN(cmocka_unit_test(test_backoff_bounds), cmocka_unit_test(test_backoff_floor_and_overflow))
