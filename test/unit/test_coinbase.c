/* Unit tests for workers/ingest/coinbase.c: subscribe, trades and ticker,
 * the level-2 book built from snapshot and updates. */
#include "connector_fx.h"

/* ---- Coinbase ---------------------------------------------------------- */

static void test_coinbase_open(void **state)
{
    (void)state;
    fx_t *f = fx_new(&coinbase_connector, "BTC-USD,ETH-USD", "ticker,trade,orderbook", 10, NULL);
    assert_int_equal(f->ops->on_open(f->c), 0);
    assert_int_equal(f->rec.n_sent, 4);
    static const char *want[] = {
        "{\"type\":\"subscribe\",\"product_ids\":[\"BTC-USD\",\"ETH-USD\"],\"channel\":"
        "\"heartbeats\"}",
        "{\"type\":\"subscribe\",\"product_ids\":[\"BTC-USD\",\"ETH-USD\"],\"channel\":"
        "\"ticker\"}",
        "{\"type\":\"subscribe\",\"product_ids\":[\"BTC-USD\",\"ETH-USD\"],\"channel\":"
        "\"market_trades\"}",
        "{\"type\":\"subscribe\",\"product_ids\":[\"BTC-USD\",\"ETH-USD\"],\"channel\":"
        "\"level2\"}",
    };
    for (int i = 0; i < 4; i++)
        assert_string_equal(f->rec.sent[i], want[i]);
    /* again on a live connection (resubscribe): unsubscribe, then all again */
    assert_int_equal(f->ops->on_open(f->c), 0);
    assert_int_equal(f->rec.n_sent, 11);
    assert_string_equal(f->rec.sent[4], "{\"type\":\"unsubscribe\",\"product_ids\":[\"BTC-USD\","
                                        "\"ETH-USD\"],\"channel\":\"ticker\"}");
    assert_string_equal(f->rec.sent[6], "{\"type\":\"unsubscribe\",\"product_ids\":[\"BTC-USD\","
                                        "\"ETH-USD\"],\"channel\":\"level2\"}");
    for (int i = 0; i < 4; i++)
        assert_string_equal(f->rec.sent[7 + i], want[i]);
    buf_t b;
    buf_init(&b);
    assert_int_equal(coinbase_connector.url(&f->cfg, &b), 0);
    assert_string_equal(b.data, "wss://advanced-trade-ws.coinbase.com");
    buf_free(&b);
    fx_free(f);
}

static void test_coinbase_trades_ticker(void **state)
{
    (void)state;
    fx_t *f = fx_new(&coinbase_connector, "BTC-USD,ETH-USD", "ticker,trade", 0, NULL);
    f->ops->on_open(f->c);
    rec_clear(&f->rec);
    feed(f, 0,
         "{\"channel\":\"subscriptions\",\"client_id\":\"\",\"timestamp\":"
         "\"2023-02-09T20:19:35.1Z\",\"sequence_num\":0,\"events\":[{\"subscriptions\":"
         "{\"market_trades\":[\"ETH-USD\"]}}]}");
    feed(f, 0,
         "{\"channel\":\"heartbeats\",\"client_id\":\"\",\"timestamp\":"
         "\"2023-02-09T20:19:35.2Z\",\"sequence_num\":1,\"events\":[{\"current_time\":"
         "\"2023-02-09 20:19:35.2 +0000 UTC\",\"heartbeat_counter\":3049}]}");
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed + f->rec.n_status, 0);
    feed(f, 0,
         "{\"channel\":\"market_trades\",\"client_id\":\"\",\"timestamp\":"
         "\"2023-02-09T20:19:35.39625135Z\",\"sequence_num\":2,\"events\":[{\"type\":"
         "\"snapshot\",\"trades\":[{\"trade_id\":\"000000000\",\"product_id\":\"ETH-USD\","
         "\"price\":\"1260.01\",\"size\":\"0.3\",\"side\":\"BUY\",\"time\":"
         "\"2019-08-14T20:42:27.265Z\"},{\"trade_id\":\"000000001\",\"product_id\":\"ETH-USD\","
         "\"price\":\"1260.00\",\"size\":\"0.70000000\",\"side\":\"SELL\",\"time\":"
         "\"2019-08-14T20:42:27.3Z\"}]}]}");
    assert_int_equal(f->rec.n_malformed, 0);
    assert_int_equal(f->rec.n_emitted, 2);
    assert_string_equal(
        f->rec.emitted[0],
        HDR("trade", "coinbase", "ETH-USD", 1,
            1565815347265) ",\"price\":\"1260.01\",\"qty\":\"0.3\",\"side\":\"buy\",\"trade_id\":"
                           "\"000000000\"}");
    assert_string_equal(f->rec.emitted[1],
                        HDR("trade", "coinbase", "ETH-USD", 2,
                            1565815347300) ",\"price\":\"1260.00\",\"qty\":\"0.70000000\",\"side\":\"sell\","
                                           "\"trade_id\":\"000000001\"}");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "subscribed|");
    expect_one(
        f, 0,
        "{\"channel\":\"ticker\",\"client_id\":\"\",\"timestamp\":"
        "\"2023-02-09T20:30:37.167359596Z\",\"sequence_num\":3,\"events\":[{\"type\":"
        "\"snapshot\",\"tickers\":[{\"type\":\"ticker\",\"product_id\":\"BTC-USD\","
        "\"price\":\"21932.98\",\"volume_24_h\":\"16038.28770938\",\"low_24_h\":"
        "\"21835.29\",\"high_24_h\":\"23011.18\",\"low_52_w\":\"15460\",\"high_52_w\":"
        "\"48240\",\"price_percent_chg_24_h\":\"-4.15775596190603\",\"best_bid\":"
        "\"21931.98\",\"best_bid_quantity\":\"8000.21\",\"best_ask\":\"21933.98\","
        "\"best_ask_quantity\":\"8038.07770147\"}]}]}",
        HDR("ticker", "coinbase", "BTC-USD", 1,
            1675974637167) ",\"last\":\"21932.98\",\"high\":\"23011.18\",\"low\":\"21835.29\",\"volume\":"
                           "\"16038.28770938\",\"change_rate\":\"-0.0415775596190603\",\"bid\":\"21931.98\","
                           "\"bid_qty\":\"8000.21\",\"ask\":\"21933.98\",\"ask_qty\":\"8038.07770147\"}");
    /* error frame */
    expect_status(f, 0, "{\"type\":\"error\",\"message\":\"failure to subscribe\"}",
                  "error|failure to subscribe");
    /* one bad trade among good ones: only it is skipped */
    rec_clear(&f->rec);
    feed(f, 0,
         "{\"channel\":\"market_trades\",\"timestamp\":\"2023-02-09T20:19:36Z\",\"sequence_num\":"
         "5,\"events\":[{\"type\":\"update\",\"trades\":[{\"trade_id\":\"7\",\"product_id\":"
         "\"BTC-USD\",\"price\":\"1\",\"size\":\"1\",\"side\":\"HOLD\",\"time\":"
         "\"2023-02-09T20:19:36Z\"},{\"trade_id\":8,\"product_id\":\"BTC-USD\",\"price\":\"2\","
         "\"size\":\"1\",\"side\":\"SELL\"}]}]}");
    assert_int_equal(f->rec.n_malformed, 1);
    assert_string_equal(f->rec.malformed[0], "bad_side");
    assert_int_equal(f->rec.n_emitted, 1);
    /* no time on the trade: the message timestamp */
    assert_string_equal(
        f->rec.emitted[0],
        HDR("trade", "coinbase", "BTC-USD", 1,
            1675973976000) ",\"price\":\"2\",\"qty\":\"1\",\"side\":\"sell\",\"trade_id\":\"8\"}");
    static const struct {
        const char *json, *reason;
    } t[] = {
        {"{\"client_id\":\"\",\"events\":[]}", "missing_field"},
        {"{\"channel\":\"candles\",\"events\":[]}", "unknown_type"},
        {"{\"channel\":\"ticker\",\"events\":{}}", "wrong_type"},
        {"{\"channel\":\"ticker\",\"timestamp\":\"yesterday\",\"events\":[]}", "bad_time"},
        {"{\"channel\":\"ticker\",\"sequence_num\":\"1\",\"events\":[]}", "wrong_type"},
        {"{\"channel\":\"ticker\",\"events\":[{\"type\":\"update\"}]}", "missing_field"},
        {"{\"channel\":\"ticker\",\"events\":[{\"tickers\":[{\"product_id\":\"BTC-USD\"}]}]}",
         "missing_field"},
        {"{\"channel\":\"ticker\",\"events\":[{\"tickers\":[{\"product_id\":\"BTCUSD\"}]}]}", "bad_symbol"},
        {"{\"channel\":\"market_trades\",\"events\":[{\"trades\":[{\"trade_id\":\"1\","
         "\"product_id\":\"BTC-USD\",\"price\":1e999}]}]}",
         "huge_number"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        expect_malformed(f, t[i].json, t[i].reason);
    fx_free(f);
}

static const char CB_SNAPSHOT_BOOK[] =
    ",\"bids\":[[\"99999.50\",\"1\"],[\"99998\",\"2\"]],\"asks\":[[\"100000.5\",\"1\"],"
    "[\"100001\",\"2\"]]}";

static void test_coinbase_book(void **state)
{
    (void)state;
    fx_t *f = fx_new(&coinbase_connector, "BTC-USD", "orderbook", 2, NULL);
    f->ops->on_open(f->c);
    rec_clear(&f->rec);
    /* offers in the snapshot out of order: the book sorts them */
    feed(f, 0,
         L2(1, "snapshot",
            UP("bid", "99999.50", "1") "," UP("bid", "99998", "2") "," UP("bid", "9999.9", "3") "," UP(
                "offer", "100001", "2") "," UP("offer", "100000.5", "1")));
    assert_int_equal(f->rec.n_malformed, 0);
    assert_int_equal(f->rec.n_emitted, 0); /* books are published on the tick */
    f->ops->on_tick(f->c, 10000);
    expect_emitted(
        f, 1,
        HDR("orderbook", "coinbase", "BTC-USD", 1,
            1675974770714) ",\"bids\":[[\"99999.50\",\"1\"],[\"99998\",\"2\"]],\"asks\":[[\"100000.5\","
                           "\"1\"],[\"100001\",\"2\"]]}");
    f->ops->on_tick(f->c, 20000); /* unchanged: nothing */
    assert_int_equal(f->rec.n_emitted, 1);
    /* new best bid (a string compare would get this wrong), removal by "0"
     * of a level spelled differently, replacement of an ask */
    static const struct {
        const char *frame; /* NULL: none, only the tick */
        int64_t tick_ms;
        int n_emitted;
        const char *want; /* the last emitted, NULL: nothing new */
    } steps[] = {
        /* new best bid (a string compare would get this wrong), removal by
         * "0" of a level spelled differently, replacement of an ask; 10 s
         * after the last publish */
        {L2(2, "update",
            UP("bid", "100000.01", "0.5") "," UP("bid", "99999.5", "0") "," UP("offer", "100000.50", "4")),
         20100, 2,
         HDR("orderbook", "coinbase", "BTC-USD", 2,
             1675974770714) ",\"bids\":[[\"100000.01\",\"0.5\"],[\"99998\",\"2\"]],\"asks\":"
                            "[[\"100000.50\",\"4\"],[\"100001\",\"2\"]]}"},
        /* at most one publish per book_interval_ms (500) */
        {L2(3, "update", UP("bid", "99998", "2.5")), 20500, 2, NULL},
        {NULL, 20600, 3,
         HDR("orderbook", "coinbase", "BTC-USD", 3,
             1675974770714) ",\"bids\":[[\"100000.01\",\"0.5\"],[\"99998\",\"2.5\"]],\"asks\":"
                            "[[\"100000.50\",\"4\"],[\"100001\",\"2\"]]}"},
        /* a change below the top 2 publishes nothing */
        {L2(4, "update", UP("bid", "9999.9", "7")), 30000, 3, NULL},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        if (steps[i].frame != NULL)
            feed(f, 0, steps[i].frame);
        f->ops->on_tick(f->c, steps[i].tick_ms);
        if (steps[i].want != NULL)
            expect_emitted(f, steps[i].n_emitted, steps[i].want);
        else
            assert_int_equal(f->rec.n_emitted, steps[i].n_emitted);
    }
    /* a bad update anywhere in an event leaves the book untouched */
    rec_clear(&f->rec);
    feed(f, 0, L2(5, "update", UP("bid", "100000.01", "0") "," UP("bid", "abc", "1")));
    assert_int_equal(f->rec.n_malformed, 1);
    assert_string_equal(f->rec.malformed[0], "bad_number");
    f->ops->on_tick(f->c, 40000);
    assert_int_equal(f->rec.n_emitted, 0);

    /* sequence gap: status error, level2 resubscribed, book invalid */
    rec_clear(&f->rec);
    feed(f, 0, L2(8, "update", UP("bid", "100000.02", "1")));
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "error|sequence gap: expected 6 got 8");
    assert_int_equal(f->rec.n_sent, 2);
    assert_string_equal(f->rec.sent[0], "{\"type\":\"unsubscribe\",\"product_ids\":[\"BTC-USD\"],"
                                        "\"channel\":\"level2\"}");
    assert_string_equal(f->rec.sent[1], "{\"type\":\"subscribe\",\"product_ids\":[\"BTC-USD\"],"
                                        "\"channel\":\"level2\"}");
    assert_int_equal(f->rec.n_reconnect, 0);
    feed(f, 0, L2(9, "update", UP("bid", "100000.03", "1")));
    f->ops->on_tick(f->c, 50000);
    assert_int_equal(f->rec.n_emitted, 0);
    /* the fresh snapshot restores publishing */
    feed(f, 0,
         L2(10, "snapshot",
            UP("bid", "99999.50", "1") "," UP("bid", "99998", "2") "," UP("offer", "100000.5", "1") "," UP(
                "offer", "100001", "2")));
    f->ops->on_tick(f->c, 60000);
    assert_int_equal(f->rec.n_emitted, 1);
    assert_non_null(strstr(f->rec.emitted[0], "\"seq\":4,"));
    assert_non_null(strstr(f->rec.emitted[0], CB_SNAPSHOT_BOOK));

    /* gaps that keep coming: a reconnect instead */
    rec_clear(&f->rec);
    int64_t seq = 10;
    char frame[1024];
    for (int i = 0; i < 5; i++) {
        seq += 2;
        snprintf(frame, sizeof(frame),
                 "{\"channel\":\"heartbeats\",\"timestamp\":\"2023-02-09T20:32:51Z\","
                 "\"sequence_num\":%lld,\"events\":[]}",
                 (long long)seq);
        feed(f, 0, frame);
    }
    assert_int_equal(f->rec.n_status, 5);
    assert_int_equal(f->rec.n_reconnect, 1);
    assert_string_equal(f->rec.reconnect[0], "sequence_gap");
    /* on_close forgets the connection's sequence */
    f->ops->on_close(f->c);
    f->ops->on_open(f->c);
    rec_clear(&f->rec);
    feed(f, 0, L2(0, "update", UP("bid", "1", "1")));
    feed(f, 0, L2(1, "update", UP("bid", "1", "1")));
    assert_int_equal(f->rec.n_status, 1); /* no gap, only "subscribed" */
    assert_string_equal(f->rec.status[0], "subscribed|");
    assert_int_equal(f->rec.n_sent, 0);
    fx_free(f);
}

FX_MAIN(cmocka_unit_test(test_coinbase_open), cmocka_unit_test(test_coinbase_trades_ticker),
        cmocka_unit_test(test_coinbase_book))
