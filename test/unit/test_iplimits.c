/* Unit tests for workers/fanout/iplimits.c: per-IP connection count and
 * connection-rate limits. */
#include "unit.h"

#include <stdio.h>
#include <string.h>

#include "iplimits.h"

static void test_limits(void **state)
{
    (void)state;
    iplimits_t *l = iplimits_new();
    assert_non_null(l);
    /* 2 open per IP */
    assert_int_equal(iplimits_connect(l, "10.0.0.1", 2, 0, 1000), IPLIMITS_OK);
    assert_int_equal(iplimits_connect(l, "10.0.0.1", 2, 0, 1000), IPLIMITS_OK);
    assert_int_equal(iplimits_connect(l, "10.0.0.1", 2, 0, 1000), IPLIMITS_CONNECTIONS);
    assert_int_equal(iplimits_connect(l, "10.0.0.2", 2, 0, 1000), IPLIMITS_OK);
    assert_int_equal(iplimits_open(l, "10.0.0.1"), 3);
    iplimits_disconnect(l, "10.0.0.1");
    iplimits_disconnect(l, "10.0.0.1");
    assert_int_equal(iplimits_connect(l, "10.0.0.1", 2, 0, 1000), IPLIMITS_OK);
    /* 3 per second, connect-and-close cannot reset the window */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(iplimits_connect(l, "::1", 0, 3, 5000), IPLIMITS_OK);
        iplimits_disconnect(l, "::1");
    }
    assert_int_equal(iplimits_connect(l, "::1", 0, 3, 5500), IPLIMITS_RATE);
    iplimits_disconnect(l, "::1");
    assert_int_equal(iplimits_connect(l, "::1", 0, 3, 6001), IPLIMITS_OK);
    iplimits_disconnect(l, "::1");
    /* Idle entries are swept; many addresses grow the table. */
    for (int i = 0; i < 2000; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "192.168.%d.%d", i / 256, i % 256);
        assert_int_equal(iplimits_connect(l, ip, 5, 0, 7000), IPLIMITS_OK);
        iplimits_disconnect(l, ip);
    }
    assert_true(iplimits_tracked(l) >= 2000);
    assert_int_equal(iplimits_connect(l, "10.9.9.9", 5, 0, 9000), IPLIMITS_OK);
    assert_true(iplimits_tracked(l) < 10); /* only live ones left */
    assert_int_equal(iplimits_open(l, "10.0.0.1"), 2);
    /* Off: nothing counted. */
    assert_int_equal(iplimits_connect(l, "10.0.0.3", 0, 0, 9000), IPLIMITS_OK);
    assert_int_equal(iplimits_open(l, "10.0.0.3"), 0);
    iplimits_free(l);
}

UNIT_MAIN(cmocka_unit_test(test_limits))
