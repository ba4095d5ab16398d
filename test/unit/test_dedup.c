/* Unit tests for workers/ingest/dedup.c: the trade-id ring. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "msg.h"
#include "dedup.h"

static void test_dedup_ring(void **state)
{
    (void)state;
    dedup_t d;
    char id[32];
    assert_int_equal(dedup_init(&d, 4), 0);
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "u%d", i);
        assert_false(dedup_seen(&d, id, 0));
        dedup_add(&d, id, 0);
        assert_true(dedup_seen(&d, id, 0));
    }
    assert_false(dedup_seen(&d, "u1", 0)); /* evicted: only the last 4 */
    assert_true(dedup_seen(&d, "u2", 0));
    /* ordered ids: anything at or below the mark is a duplicate */
    dedup_add(&d, "1000", 1);
    assert_true(dedup_seen(&d, "999", 1));
    assert_false(dedup_seen(&d, "999", 0));
    assert_false(dedup_seen(&d, "1001", 1));
    assert_false(dedup_seen(&d, "abc", 1));
    int64_t v;
    assert_int_equal(dedup_id_num("17303368620470000", &v), 0);
    assert_true(v == 17303368620470000LL);
    assert_int_equal(dedup_id_num("12x", &v), -EINVAL);
    assert_int_equal(dedup_id_num("", &v), -EINVAL);
    dedup_free(&d);
}

UNIT_MAIN(cmocka_unit_test(test_dedup_ring))
