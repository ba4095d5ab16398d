/* Unit tests for workers/ingest/tail.c: reading the topic tail records. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "msg.h"
#include "tail.h"

/* The head of a normalized message, as the tail reads it from Kafka. */
#define HDR(type, ex, sym, seq, ts)                                                                          \
    "{\"channel\":\"" type "." ex "." sym "\",\"type\":\"" type "\",\"exchange\":\"" ex                      \
    "\",\"symbol\":\"" sym "\",\"seq\":" #seq ",\"epoch\":7,\"ts\":" #ts ",\"recv_ts\":1700000000999"

/* Records of the topic's tail: trades give channel, id, time; other
 * messages only their epoch. */
static void test_tail_records(void **state)
{
    (void)state;
    tail_trade_t t;
    int64_t ep = 0;
    static const char TR[] =
        HDR("trade", "upbit", "BTC-KRW", 41, 1676965262139) ",\"price\":\"31373000\","
                                                            "\"qty\":\"0.1\",\"side\":\"buy\","
                                                            "\"trade_id\":\"1676965262139000\","
                                                            "\"backfill\":true}";
    assert_int_equal(tail_parse_record(TR, strlen(TR), &t, &ep), 1);
    assert_string_equal(t.channel, "trade.upbit.BTC-KRW");
    assert_string_equal(t.trade_id, "1676965262139000");
    assert_true(t.ts == 1676965262139LL && t.seq == 41 && t.epoch == 7 && ep == 7);
    static const char ST[] = "{\"channel\":\"status.upbit\",\"type\":\"status\",\"exchange\":\"upbit\","
                             "\"seq\":3,\"epoch\":9,\"ts\":1,\"recv_ts\":1,\"state\":\"connected\"}";
    assert_int_equal(tail_parse_record(ST, strlen(ST), &t, &ep), 0);
    assert_int_equal(ep, 9);
    assert_int_equal(tail_parse_record("not json", 8, &t, &ep), -EINVAL);
    /* a trade without its id (an older producer): not a trade to seed */
    static const char NOID[] = HDR("trade", "upbit", "BTC-KRW", 1, 1) ",\"price\":\"1\"}";
    assert_int_equal(tail_parse_record(NOID, strlen(NOID), &t, &ep), 0);
}

UNIT_MAIN(cmocka_unit_test(test_tail_records))
