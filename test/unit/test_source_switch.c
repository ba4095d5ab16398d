/* Unit tests for workers/fanout/source_switch.c: the decision between Kafka
 * and the relay, and the cheap scan of a message's channel/seq/epoch. */
#include "unit.h"

#include <string.h>

#include "buf.h"
#include "msg.h"
#include "source_switch.h"

static void test_scan(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    msg_begin(&b, "trade", "upbit", "BTC-KRW", 42, 7, 1700000000000, 1700000000001);
    msg_str(&b, "price", "say \"seq\":1,\"epoch\":2");
    msg_end(&b);
    const char *ch;
    size_t n;
    int64_t seq, epoch;
    assert_int_equal(switch_scan_meta(b.data, b.len, &ch, &n, &seq, &epoch), 0);
    assert_int_equal(n, strlen("trade.upbit.BTC-KRW"));
    assert_memory_equal(ch, "trade.upbit.BTC-KRW", n);
    assert_int_equal(seq, 42);
    assert_int_equal(epoch, 7);
    static const char *bad[] = {
        "",
        "{}",
        "{\"channel\":\"a.b\"}",
        "{\"type\":\"t\",\"channel\":\"a\",\"seq\":1,\"epoch\":1}",
        "{\"channel\":\"a\\\"b\",\"seq\":1,\"epoch\":1}",
        "{\"channel\":\"a.b\",\"seq\":x,\"epoch\":1}",
        "{\"channel\":\"\",\"seq\":1,\"epoch\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(switch_scan_meta(bad[i], strlen(bad[i]), &ch, &n, &seq, &epoch), -1);
    buf_free(&b);
}

static void test_decide(void **state)
{
    (void)state;
    const char *why = NULL;
    switch_input_t in = {.mode = SWITCH_KAFKA,
                         .have_kafka = 1,
                         .kafka_ok = 1,
                         .kafka_held_ms = 100000,
                         .fallback_after_ms = 1000,
                         .recover_after_ms = 2000};
    /* Kafka mode: healthy stays; unhealthy switches only after fallback_after_ms. */
    assert_int_equal(switch_decide(&in, &why), SWITCH_KAFKA);
    in.kafka_ok = 0;
    in.kafka_held_ms = 999;
    assert_int_equal(switch_decide(&in, &why), SWITCH_KAFKA);
    in.kafka_held_ms = 1000;
    assert_int_equal(switch_decide(&in, &why), SWITCH_RELAY);
    assert_non_null(why);
    /* Relay mode: back only after recover_after_ms of health and caught up
     * (or with the relay quiet). */
    in.mode = SWITCH_RELAY;
    in.kafka_held_ms = 50000;
    assert_int_equal(switch_decide(&in, &why), SWITCH_RELAY);
    in.kafka_ok = 1;
    in.kafka_held_ms = 1999;
    in.kafka_caught_up = 1;
    assert_int_equal(switch_decide(&in, &why), SWITCH_RELAY);
    in.kafka_held_ms = 2000;
    assert_int_equal(switch_decide(&in, &why), SWITCH_KAFKA);
    in.kafka_caught_up = 0;
    assert_int_equal(switch_decide(&in, &why), SWITCH_RELAY); /* still replaying its backlog */
    in.relay_quiet = 1;
    assert_int_equal(switch_decide(&in, &why), SWITCH_KAFKA);
    /* No brokers: the relay, always. */
    in.have_kafka = 0;
    in.mode = SWITCH_KAFKA;
    assert_int_equal(switch_decide(&in, &why), SWITCH_RELAY);
}

UNIT_MAIN(cmocka_unit_test(test_scan), cmocka_unit_test(test_decide))
