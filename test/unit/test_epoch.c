/* Unit tests for the epoch rule (supervisor/epoch.c): strictly growing with
 * no ceiling on restarts, above every epoch seen when ZooKeeper's data was
 * lost, and JSON/JavaScript safe (below 2^53). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>

#include "../../supervisor/epoch.h"

/* One leadership restarting its ingest 5000 times, then a new leader: the
 * old rule (zk_seq * 1000 + starts) stopped growing after 999 starts. */
static void test_epoch_grows_past_1000_restarts(void **state)
{
    (void)state;
    int64_t stored = 0, prev = 0;
    for (int i = 0; i < 5000; i++) {
        int64_t e = epoch_next(stored, 0);
        assert_true(e > prev);
        prev = stored = e;
    }
    assert_int_equal(stored, 5000);
    /* The next leader reads the node: above every epoch of the old one. */
    assert_int_equal(epoch_next(stored, 17), 5001);
}

/* ZooKeeper lost its data (or the root was renamed): the node is gone and
 * the sequence restarts, the epochs seen in the data are the floor. */
static void test_epoch_after_lost_zookeeper_data(void **state)
{
    (void)state;
    assert_int_equal(epoch_next(0, 0), 1);
    assert_int_equal(epoch_next(0, 4711), 4712);
    assert_int_equal(epoch_next(3, 4711), 4712);
    assert_int_equal(epoch_next(-5, -1), 1);
}

static void test_epoch_stays_json_safe(void **state)
{
    (void)state;
    assert_int_equal(epoch_next(EPOCH_MAX - 3, 0), EPOCH_MAX - 2);
    assert_int_equal(epoch_next(EPOCH_MAX - 2, 0), EPOCH_MAX - 1);
    assert_int_equal(epoch_next(EPOCH_MAX - 1, 0), -ERANGE);
    assert_int_equal(epoch_next(0, EPOCH_MAX), -ERANGE);
}

static void test_epoch_parse(void **state)
{
    (void)state;
    int64_t v = -1;
    assert_int_equal(epoch_parse("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(epoch_parse("9007199254740991", &v), 0);
    assert_int_equal(v, EPOCH_MAX - 1);
    assert_int_equal(epoch_parse("9007199254740992", &v), -EINVAL);
    assert_int_equal(epoch_parse("99999999999999999999999", &v), -EINVAL);
    assert_int_equal(epoch_parse("", &v), -EINVAL);
    assert_int_equal(epoch_parse(NULL, &v), -EINVAL);
    assert_int_equal(epoch_parse("12a", &v), -EINVAL);
    assert_int_equal(epoch_parse("-1", &v), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch_grows_past_1000_restarts),
        cmocka_unit_test(test_epoch_after_lost_zookeeper_data),
        cmocka_unit_test(test_epoch_stays_json_safe),
        cmocka_unit_test(test_epoch_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
