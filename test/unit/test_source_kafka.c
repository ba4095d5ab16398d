/* Unit tests for workers/fanout/source_kafka.c: reading a record's `epoch`
 * header, which the hub checks against the message's own epoch. */
#include "unit.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "source.h"

static void test_epoch_header(void **state)
{
    (void)state;
    int64_t e = -1;
    assert_int_equal(source_kafka_epoch_header("7", 1, &e), 0);
    assert_int_equal(e, 7);
    assert_int_equal(source_kafka_epoch_header("9223372036854775807", 19, &e), 0);
    assert_int_equal(e, INT64_MAX);
    /* the value is not terminated: only n bytes count */
    assert_int_equal(source_kafka_epoch_header("12xyz", 2, &e), 0);
    assert_int_equal(e, 12);
    static const char *bad[] = {"", "-1", "+1", " 1", "1 ", "1a", "0x10", "9223372036854775808", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e = 5;
        assert_int_equal(source_kafka_epoch_header(bad[i], strlen(bad[i]), &e), -EINVAL);
        assert_int_equal(e, 5); /* untouched */
    }
    assert_int_equal(source_kafka_epoch_header(NULL, 0, &e), -EINVAL);
    char longv[40];
    memset(longv, '1', sizeof longv);
    assert_int_equal(source_kafka_epoch_header(longv, sizeof longv, &e), -EINVAL);
}

UNIT_MAIN(cmocka_unit_test(test_epoch_header))
