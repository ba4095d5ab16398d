/* Unit tests for workers/ingest/upbit.c: realistic Upbit frames in (JSON and
 * binary), exact normalized JSON out, subscription, ping, malformed input. */
#include "connector_fx.h"

/* ---- Upbit ------------------------------------------------------------- */

static void test_upbit_trade(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC,KRW-ETH", "trade,ticker,orderbook", 15, "DEFAULT");
    assert_int_equal(f->ops->on_open(f->c), 0);
    rec_clear(&f->rec);
    feed(f, 1, UPBIT_TRADE);
    expect_emitted(f, 1,
                   HDR("trade", "upbit", "BTC-KRW", 1,
                       1676965262139) ",\"price\":\"31373000\",\"qty\":\"0.00016039\",\"side\":\"buy\","
                                      "\"trade_id\":\"1676965262139000\"}");
    /* the first data frame of a connection says "subscribed", once */
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "subscribed|");
    /* SIMPLE keys, TEXT frame, ASK = the taker sold */
    rec_clear(&f->rec);
    feed(f, 0,
         "{\"ty\":\"trade\",\"cd\":\"KRW-ETH\",\"tms\":1676965262177,\"td\":\"2023-02-21\","
         "\"ttm\":\"07:41:02\",\"ttms\":1676965262140,\"tp\":2235000.0,\"tv\":0.06499468,"
         "\"ab\":\"ASK\",\"pcp\":2230000,\"c\":\"RISE\",\"cp\":5000,\"sid\":1676965262140001,"
         "\"st\":\"SNAPSHOT\"}");
    assert_int_equal(f->rec.n_emitted, 1);
    assert_int_equal(f->rec.n_status, 0);
    assert_string_equal(f->rec.emitted[0],
                        HDR("trade", "upbit", "ETH-KRW", 1,
                            1676965262140) ",\"price\":\"2235000\",\"qty\":\"0.06499468\",\"side\":\"sell\","
                                           "\"trade_id\":\"1676965262140001\"}");
    /* per-channel seq */
    expect_one(f, 1, UPBIT_TRADE,
               HDR("trade", "upbit", "BTC-KRW", 2,
                   1676965262139) ",\"price\":\"31373000\",\"qty\":\"0.00016039\",\"side\":\"buy\","
                                  "\"trade_id\":\"1676965262139000\"}");
    fx_free(f);
}

static void test_upbit_ticker(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC", "ticker", 0, "DEFAULT");
    expect_one(
        f, 1,
        "{\"type\":\"ticker\",\"code\":\"KRW-BTC\",\"opening_price\":31883000,"
        "\"high_price\":32310000,\"low_price\":31855000,\"trade_price\":32287000,"
        "\"prev_closing_price\":31883000.00000000,\"change\":\"RISE\",\"change_price\":"
        "404000.00000000,\"signed_change_price\":404000.00000000,\"change_rate\":"
        "0.0126713295,\"signed_change_rate\":0.0126713295,\"trade_volume\":0.03103806,"
        "\"acc_trade_volume\":1236.23815799,\"acc_trade_volume_24h\":2046.10729479,"
        "\"acc_trade_price\":39728416853.1374,\"acc_trade_price_24h\":65651848085.94966,"
        "\"trade_date\":\"20230221\",\"trade_time\":\"074102\",\"trade_timestamp\":"
        "1676965262139,\"ask_bid\":\"BID\",\"acc_ask_volume\":641.42,\"acc_bid_volume\":"
        "594.8,\"highest_52_week_price\":57678000.00000000,\"highest_52_week_date\":"
        "\"2022-03-28\",\"lowest_52_week_price\":20700000.00000000,\"lowest_52_week_date\":"
        "\"2022-12-30\",\"market_state\":\"ACTIVE\",\"is_trading_suspended\":false,"
        "\"delisting_date\":null,\"market_warning\":\"NONE\",\"timestamp\":1676965262177,"
        "\"stream_type\":\"REALTIME\"}",
        HDR("ticker", "upbit", "BTC-KRW", 1,
            1676965262177) ",\"last\":\"32287000\",\"open\":\"31883000\",\"high\":\"32310000\",\"low\":"
                           "\"31855000\",\"volume\":\"2046.10729479\",\"quote_volume\":\"65651848085.94966\","
                           "\"change_rate\":\"0.0126713295\"}");
    expect_one(
        f, 1,
        "{\"ty\":\"ticker\",\"cd\":\"KRW-BTC\",\"op\":31883000,\"hp\":32310000,\"lp\":"
        "31855000,\"tp\":31845000,\"pcp\":31883000,\"c\":\"FALL\",\"scr\":-0.0011918577,"
        "\"atv24h\":2046.1,\"atp24h\":6.5e10,\"ttms\":1676965262139,\"tms\":1676965262178,"
        "\"st\":\"SNAPSHOT\"}",
        HDR("ticker", "upbit", "BTC-KRW", 2,
            1676965262178) ",\"last\":\"31845000\",\"open\":\"31883000\",\"high\":\"32310000\",\"low\":"
                           "\"31855000\",\"volume\":\"2046.1\",\"quote_volume\":\"65000000000\","
                           "\"change_rate\":\"-0.0011918577\"}");
    fx_free(f);
}

static void test_upbit_orderbook(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC", "orderbook", 0, "DEFAULT");
    expect_one(
        f, 1, UPBIT_BOOK,
        HDR("orderbook", "upbit", "BTC-KRW", 1,
            1676965262177) ",\"bids\":[[\"31373000\",\"0.01353918\"],[\"31372000\",\"0.0012\"],[\"31371000\","
                           "\"3\"]],\"asks\":[[\"31390000\",\"0.02124034\"],[\"31400000\",\"0.1\"],"
                           "[\"31410000\",\"0.00000001\"]]}");
    fx_free(f);
    /* top N from cfg depth; SIMPLE keys */
    f = fx_new(&upbit_connector, "KRW-BTC", "orderbook", 2, "SIMPLE");
    expect_one(f, 1,
               "{\"ty\":\"orderbook\",\"cd\":\"KRW-BTC\",\"tms\":1676965262180,\"tas\":1.5,"
               "\"tbs\":2.5,\"obu\":[{\"ap\":31390000,\"bp\":31373000,\"as\":0.5,\"bs\":1.5},"
               "{\"ap\":31400000,\"bp\":31372000,\"as\":0.5,\"bs\":0.5},{\"ap\":31410000,"
               "\"bp\":31371000,\"as\":0.5,\"bs\":0.5}],\"st\":\"REALTIME\",\"lv\":0}",
               HDR("orderbook", "upbit", "BTC-KRW", 1,
                   1676965262180) ",\"bids\":[[\"31373000\",\"1.5\"],[\"31372000\",\"0.5\"]],\"asks\":[["
                                  "\"31390000\","
                                  "\"0.5\"],[\"31400000\",\"0.5\"]]}");
    fx_free(f);
}

static void test_upbit_control(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC", "trade", 0, "DEFAULT");
    /* the PING answer: nothing emitted, nothing malformed */
    rec_clear(&f->rec);
    feed(f, 1, "{\"status\":\"UP\"}");
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed + f->rec.n_status, 0);
    /* error frame -> status error */
    expect_status(f, 1, "{\"error\":{\"name\":\"WRONG_FORMAT\",\"message\":\"bad request\"}}",
                  "error|WRONG_FORMAT: bad request");
    fx_free(f);
}

static void test_upbit_malformed(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC", "trade,ticker,orderbook", 0, "DEFAULT");
    static const struct {
        const char *json, *reason;
    } t[] = {
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\"", "bad_json"},
        {"", "bad_json"},
        {"[1,2]", "not_object"},
        {"\"trade\"", "not_object"},
        {"{\"type\":\"candle\",\"code\":\"KRW-BTC\"}", "unknown_type"},
        {"{\"code\":\"KRW-BTC\"}", "missing_field"},
        {"{\"type\":5}", "wrong_type"},
        {"{\"status\":\"DOWN\"}", "unknown_type"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_volume\":1,\"ask_bid\":\"BID\","
         "\"sequential_id\":1,\"trade_timestamp\":1}",
         "missing_field"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":\"abc\",\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "bad_number"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":true,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "wrong_type"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1e999,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "huge_number"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":123456789012345678901234567890,"
         "\"trade_timestamp\":1}",
         "huge_number"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1e300,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "huge_number"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1,\"trade_volume\":1,"
         "\"ask_bid\":\"BUY\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "bad_side"},
        {"{\"type\":\"trade\",\"code\":\"BTC\",\"trade_price\":1,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":1}",
         "bad_symbol"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1.5,\"trade_timestamp\":1}",
         "wrong_type"},
        {"{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"trade_price\":1,\"trade_volume\":1,"
         "\"ask_bid\":\"BID\",\"sequential_id\":1,\"trade_timestamp\":\"soon\"}",
         "bad_number"},
        {"{\"type\":\"trade\",\"code\":\"KRW-\xff\",\"trade_price\":1}", "bad_utf8"},
        {"{\"type\":\"trade\",\"code\":\"KRW-\xed\xa0\x80\"}", "bad_utf8"}, /* surrogate */
        {"{\"type\":\"trade\",\"code\":\"KRW-\xc0\xaf\"}", "bad_utf8"},     /* overlong */
        {"{\"type\":\"trade\",\"code\":\"KRW-\xe2\x82\"}", "bad_utf8"},     /* truncated */
        {"{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"timestamp\":1,\"orderbook_units\":{}}",
         "wrong_type"},
        {"{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"timestamp\":1,\"orderbook_units\":"
         "[{\"ask_price\":1,\"bid_price\":1,\"ask_size\":1}]}",
         "missing_field"},
        {"{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"orderbook_units\":[]}", "missing_field"},
        {"{\"type\":\"ticker\",\"code\":\"KRW-BTC\",\"trade_price\":1,\"opening_price\":1,"
         "\"high_price\":1,\"low_price\":1,\"acc_trade_volume_24h\":1,\"acc_trade_price_24h\":"
         "null,\"signed_change_rate\":0,\"timestamp\":1}",
         "wrong_type"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        expect_malformed(f, t[i].json, t[i].reason);
    /* nothing above said "subscribed" */
    fx_free(f);
}

static void test_upbit_open_and_ping(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC, krw-eth", "ticker,trade,orderbook", 10, "SIMPLE");
    buf_t b;
    buf_init(&b);
    assert_int_equal(upbitlike_request(f->c, "T", &b), 0);
    static const char want_tail[] =
        "},{\"type\":\"ticker\",\"codes\":[\"KRW-BTC\",\"KRW-ETH\"]},{\"type\":\"trade\","
        "\"codes\":[\"KRW-BTC\",\"KRW-ETH\"]},{\"type\":\"orderbook\",\"codes\":[\"KRW-BTC.15\","
        "\"KRW-ETH.15\"]},{\"format\":\"SIMPLE\"}]";
    char want[512];
    snprintf(want, sizeof(want), "[{\"ticket\":\"T\"%s", want_tail);
    assert_string_equal(b.data, want);
    buf_free(&b);

    assert_int_equal(f->ops->on_open(f->c), 0);
    assert_int_equal(f->rec.n_sent, 1);
    const char *s = f->rec.sent[0];
    assert_memory_equal(s, "[{\"ticket\":\"", 12);
    /* a v4 UUID */
    assert_int_equal(s[12 + 8], '-');
    assert_int_equal(s[12 + 14], '4');
    assert_int_equal(s[12 + 36], '"');
    assert_string_equal(s + 12 + 37, want_tail);

    /* keep-alive: "PING" every 30 s from the first tick after open */
    f->ops->on_tick(f->c, 1000);
    f->ops->on_tick(f->c, 30999);
    assert_int_equal(f->rec.n_sent, 1);
    f->ops->on_tick(f->c, 31000);
    assert_int_equal(f->rec.n_sent, 2);
    assert_string_equal(f->rec.sent[1], "PING");
    f->ops->on_tick(f->c, 61000);
    assert_int_equal(f->rec.n_sent, 3);
    /* resubscribe: on_open again resends the full set */
    assert_int_equal(f->ops->on_open(f->c), 0);
    assert_int_equal(f->rec.n_sent, 4);
    assert_string_equal(f->rec.sent[3] + 12 + 37, want_tail);
    /* closed: no pings */
    f->ops->on_close(f->c);
    f->ops->on_tick(f->c, 200000);
    assert_int_equal(f->rec.n_sent, 4);
    fx_free(f);

    /* depth suffixes: 1,5,15,30 else the next allowed; format defaults */
    static const struct {
        int depth;
        const char *code;
    } d[] = {{1, "KRW-BTC.1"},   {3, "KRW-BTC.5"},   {15, "KRW-BTC.15"},
             {20, "KRW-BTC.30"}, {50, "KRW-BTC.30"}, {0, "KRW-BTC"}};
    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
        f = fx_new(&bithumb_connector, "KRW-BTC", "orderbook", d[i].depth, NULL);
        buf_init(&b);
        upbitlike_request(f->c, "T", &b);
        snprintf(want, sizeof(want),
                 "[{\"ticket\":\"T\"},{\"type\":\"orderbook\",\"codes\":[\"%s\"]},"
                 "{\"format\":\"DEFAULT\"}]",
                 d[i].code);
        assert_string_equal(b.data, want);
        buf_free(&b);
        fx_free(f);
    }
}

FX_MAIN(cmocka_unit_test(test_upbit_trade), cmocka_unit_test(test_upbit_ticker),
        cmocka_unit_test(test_upbit_orderbook), cmocka_unit_test(test_upbit_control),
        cmocka_unit_test(test_upbit_malformed), cmocka_unit_test(test_upbit_open_and_ping))
