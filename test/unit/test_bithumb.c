/* Unit tests for workers/ingest/bithumb.c: Upbit's protocol at Bithumb's URL. */
#include "connector_fx.h"

/* ---- Bithumb ----------------------------------------------------------- */

static void test_bithumb(void **state)
{
    (void)state;
    fx_t *f = fx_new(&bithumb_connector, "KRW-BTC", "trade,ticker,orderbook", 0, "DEFAULT");
    /* string sequential_id */
    expect_one(
        f, 1,
        "{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":\"137470000\","
        "\"trade_volume\":\"0.0004\",\"ask_bid\":\"ASK\",\"prev_closing_price\":137000000,"
        "\"change\":\"RISE\",\"change_price\":470000,\"trade_date\":\"2024-11-25\","
        "\"trade_time\":\"02:30:00\",\"trade_timestamp\":1732501800123,\"timestamp\":"
        "1732501800150,\"sequential_id\":\"17325018001230000\",\"stream_type\":"
        "\"REALTIME\"}",
        HDR("trade", "bithumb", "BTC-KRW", 1,
            1732501800123) ",\"price\":\"137470000\",\"qty\":\"0.0004\",\"side\":\"sell\",\"trade_id\":"
                           "\"17325018001230000\"}");
    /* microsecond string timestamp on the orderbook */
    expect_one(f, 1,
               "{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"timestamp\":\"1732501800123456\","
               "\"total_ask_size\":1.2,\"total_bid_size\":0.8,\"orderbook_units\":[{\"ask_price\":"
               "137480000,\"bid_price\":137470000,\"ask_size\":1.2,\"bid_size\":0.8}],"
               "\"level\":1,\"stream_type\":\"REALTIME\"}",
               HDR("orderbook", "bithumb", "BTC-KRW", 1,
                   1732501800123) ",\"bids\":[[\"137470000\",\"0.8\"]],\"asks\":[[\"137480000\",\"1.2\"]]}");
    /* ticker with delisting_date "" (SIMPLE keys) */
    expect_one(
        f, 1,
        "{\"ty\":\"ticker\",\"cd\":\"KRW-BTC\",\"op\":137000000,\"hp\":138000000,"
        "\"lp\":136000000,\"tp\":137470000,\"pcp\":137000000,\"c\":\"RISE\",\"scr\":"
        "0.0034,\"atv24h\":\"1234.5678\",\"atp24h\":\"169700000000.1\",\"ttms\":"
        "1732501800123,\"tms\":1732501800200,\"dd\":\"\",\"delisting_date\":\"\","
        "\"st\":\"REALTIME\"}",
        HDR("ticker", "bithumb", "BTC-KRW", 1,
            1732501800200) ",\"last\":\"137470000\",\"open\":\"137000000\",\"high\":\"138000000\",\"low\":"
                           "\"136000000\",\"volume\":\"1234.5678\",\"quote_volume\":\"169700000000.1\","
                           "\"change_rate\":\"0.0034\"}");
    rec_clear(&f->rec);
    feed(f, 1, "{\"error\":{\"name\":\"INVALID_PARAM\",\"message\":\"format\"}}");
    assert_string_equal(f->rec.status[0], "error|INVALID_PARAM: format");
    fx_free(f);
}

FX_MAIN(cmocka_unit_test(test_bithumb))
