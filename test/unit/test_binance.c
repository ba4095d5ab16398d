/* Unit tests for workers/ingest/binance.c: URLs, symbols, frames, depth cap,
 * malformed input, maximum connection age. */
#include "connector_fx.h"

/* ---- Binance ----------------------------------------------------------- */

static void test_binance_url(void **state)
{
    (void)state;
    cfg_exchange_t cfg = {0};
    buf_t b;
    buf_init(&b);
    cfg.markets = (char *)"BTCUSDT,ethbtc";
    cfg.channels = (char *)"trade,ticker,orderbook";
    cfg.depth = 15;
    assert_int_equal(binance_connector.url(&cfg, &b), 0);
    assert_string_equal(b.data, "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/"
                                "btcusdt@ticker/btcusdt@depth20@100ms/ethbtc@trade/ethbtc@ticker/"
                                "ethbtc@depth20@100ms");
    buf_reset(&b);
    cfg.url = (char *)"ws://127.0.0.1:9443/stream/";
    cfg.channels = (char *)"orderbook";
    cfg.markets = (char *)"BNBBUSD";
    cfg.depth = 5;
    assert_int_equal(binance_connector.url(&cfg, &b), 0);
    assert_string_equal(b.data, "ws://127.0.0.1:9443/stream?streams=bnbbusd@depth5@100ms");
    buf_reset(&b);
    cfg.depth = 7;
    assert_int_equal(binance_connector.url(&cfg, &b), 0);
    assert_string_equal(b.data, "ws://127.0.0.1:9443/stream?streams=bnbbusd@depth10@100ms");
    buf_reset(&b);
    cfg.url = (char *)"wss://stream.binance.com:9443/ws";
    assert_int_equal(binance_connector.url(&cfg, &b), 0);
    assert_string_equal(b.data, "wss://stream.binance.com:9443/stream?streams=bnbbusd@depth10@100ms");
    /* more than 1024 streams on one connection */
    buf_t m;
    buf_init(&m);
    for (int i = 0; i < 342; i++)
        buf_printf(&m, "%sS%dUSDT", i ? "," : "", i);
    cfg.markets = m.data;
    cfg.channels = (char *)"trade,ticker,orderbook";
    buf_reset(&b);
    assert_int_equal(binance_connector.url(&cfg, &b), -E2BIG);
    cfg.channels = (char *)"trade,ticker";
    buf_reset(&b);
    assert_int_equal(binance_connector.url(&cfg, &b), 0); /* 684 streams */
    buf_free(&m);
    buf_free(&b);
}

static void test_binance_symbols(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } t[] = {
        {"BTCUSDT", "BTC-USDT"},     {"btcusdt", "BTC-USDT"},   {"ETHBTC", "ETH-BTC"},
        {"FDUSDUSDT", "FDUSD-USDT"}, {"BTCFDUSD", "BTC-FDUSD"}, {"BNBBUSD", "BNB-BUSD"},
        {"BTCTRY", "BTC-TRY"},       {"ETHBRL", "ETH-BRL"},     {"BTCKRW", "BTC-KRW"},
        {"BTCUSDC", "BTC-USDC"},     {"ETHTUSD", "ETH-TUSD"},   {"BNBETH", "BNB-ETH"},
        {"SOLBNB", "SOL-BNB"},       {"BTCEUR", "BTC-EUR"},
    };
    char out[48];
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        assert_int_equal(conn_symbol_concat(t[i].in, out, sizeof(out)), 0);
        assert_string_equal(out, t[i].want);
    }
    assert_int_equal(conn_symbol_concat("USDT", out, sizeof(out)), -EINVAL);
    assert_int_equal(conn_symbol_concat("ABCXYZ", out, sizeof(out)), -EINVAL);
    assert_int_equal(conn_symbol_concat("BTC-USDT", out, sizeof(out)), -EINVAL);
    assert_int_equal(conn_symbol_quote_first("KRW-BTC", out, sizeof(out)), 0);
    assert_string_equal(out, "BTC-KRW");
    assert_int_equal(conn_symbol_quote_first("KRW-BTC-X", out, sizeof(out)), -EINVAL);
    assert_int_equal(conn_symbol_dash("btc-usd", out, sizeof(out)), 0);
    assert_string_equal(out, "BTC-USD");
}

static void test_binance_frames(void **state)
{
    (void)state;
    fx_t *f = fx_new(&binance_connector, "BTCUSDT,ETHBTC", "trade,ticker,orderbook", 0, NULL);
    assert_int_equal(f->ops->on_open(f->c), 0);
    assert_int_equal(f->rec.n_sent, 0);
    rec_clear(&f->rec);
    feed(f, 0,
         "{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"E\":1672515782136,\"s\":"
         "\"BTCUSDT\",\"t\":12345,\"p\":\"16500.01000000\",\"q\":\"0.00100000\",\"T\":"
         "1672515782134,\"m\":true,\"M\":true}}");
    expect_emitted(
        f, 1,
        HDR("trade", "binance", "BTC-USDT", 1,
            1672515782134) ",\"price\":\"16500.01000000\",\"qty\":\"0.00100000\",\"side\":\"sell\","
                           "\"trade_id\":\"12345\"}");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "subscribed|");
    expect_one(f, 0,
               "{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"E\":1672515782140,\"s\":"
               "\"BTCUSDT\",\"t\":9007199254740993,\"p\":\"16500.02\",\"q\":\"2\",\"T\":"
               "1672515782139,\"m\":false,\"M\":true}}",
               HDR("trade", "binance", "BTC-USDT", 2,
                   1672515782139) ",\"price\":\"16500.02\",\"qty\":\"2\",\"side\":\"buy\",\"trade_id\":"
                                  "\"9007199254740993\"}");
    expect_one(
        f, 0,
        "{\"stream\":\"btcusdt@ticker\",\"data\":{\"e\":\"24hrTicker\",\"E\":1672515782136,"
        "\"s\":\"BTCUSDT\",\"p\":\"-209.99000000\",\"P\":\"-1.234\",\"w\":\"16600.1\","
        "\"x\":\"16710.00\",\"c\":\"16500.01000000\",\"Q\":\"0.001\",\"b\":\"16500.00\","
        "\"B\":\"1.5\",\"a\":\"16500.01\",\"A\":\"0.2\",\"o\":\"16710.00\",\"h\":\"16800.00\","
        "\"l\":\"16400.00\",\"v\":\"201234.5\",\"q\":\"3340000000.12\",\"O\":1672429382136,"
        "\"C\":1672515782136,\"F\":1,\"L\":18150,\"n\":18151}}",
        HDR("ticker", "binance", "BTC-USDT", 1,
            1672515782136) ",\"last\":\"16500.01000000\",\"open\":\"16710.00\",\"high\":\"16800.00\","
                           "\"low\":\"16400.00\",\"volume\":\"201234.5\",\"quote_volume\":\"3340000000.12\","
                           "\"change_rate\":\"-0.01234\",\"bid\":\"16500.00\",\"bid_qty\":\"1.5\","
                           "\"ask\":\"16500.01\",\"ask_qty\":\"0.2\"}");
    /* partial depth: symbol from the stream name, ts = receive time */
    expect_one(
        f, 0,
        "{\"stream\":\"ethbtc@depth5@100ms\",\"data\":{\"lastUpdateId\":160,\"bids\":"
        "[[\"0.0024\",\"10\"],[\"0.0023\",\"5.5\"]],\"asks\":[[\"0.0026\",\"100\"]]}}",
        HDR("orderbook", "binance", "ETH-BTC", 1,
            1700000000999) ",\"bids\":[[\"0.0024\",\"10\"],[\"0.0023\",\"5.5\"]],\"asks\":[[\"0.0026\","
                           "\"100\"]]}");
    /* control: ack ignored, error -> status */
    rec_clear(&f->rec);
    feed(f, 0, "{\"result\":null,\"id\":1}");
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed + f->rec.n_status, 0);
    feed(f, 0, "{\"error\":{\"code\":2,\"msg\":\"Invalid request: unknown property\"},\"id\":1}");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "error|2: Invalid request: unknown property");
    /* serverShutdown -> reconnect, once */
    rec_clear(&f->rec);
    feed(f, 0, "{\"e\":\"serverShutdown\",\"E\":1672515782136}");
    feed(f, 0, "{\"stream\":\"x\",\"data\":{\"e\":\"serverShutdown\",\"E\":1672515782137}}");
    assert_int_equal(f->rec.n_reconnect, 1);
    assert_string_equal(f->rec.reconnect[0], "server_shutdown");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "disconnected|server_shutdown");
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed, 0);
    fx_free(f);
}

static void test_binance_depth_cap_and_malformed(void **state)
{
    (void)state;
    fx_t *f = fx_new(&binance_connector, "BTCUSDT", "orderbook", 1, NULL);
    expect_one(f, 0,
               "{\"stream\":\"btcusdt@depth5@100ms\",\"data\":{\"lastUpdateId\":1,\"bids\":"
               "[[\"1.5\",\"10\"],[\"1.4\",\"5\"]],\"asks\":[[\"1.6\",\"1\"],[\"1.7\",\"2\"]]}}",
               HDR("orderbook", "binance", "BTC-USDT", 1,
                   1700000000999) ",\"bids\":[[\"1.5\",\"10\"]],\"asks\":[[\"1.6\",\"1\"]]}");
    static const struct {
        const char *json, *reason;
    } t[] = {
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":1,"
         "\"p\":\"1\",\"q\":\"1\",\"T\":1}}",
         "missing_field"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":1,"
         "\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":\"true\"}}",
         "wrong_type"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":1.5,"
         "\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":true}}",
         "wrong_type"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"s\":\"XYZ\",\"t\":1,"
         "\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":true}}",
         "bad_symbol"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":1,"
         "\"p\":\"1,5\",\"q\":\"1\",\"T\":1,\"m\":true}}",
         "bad_number"},
        {"{\"stream\":\"btcusdt@ticker\",\"data\":{\"e\":\"24hrTicker\",\"E\":1,\"s\":"
         "\"BTCUSDT\",\"P\":\"1\"}}",
         "missing_field"},
        {"{\"stream\":\"btcusdt@kline_1m\",\"data\":{\"e\":\"kline\"}}", "unknown_type"},
        {"{\"stream\":\"btcusdt@depth5@100ms\",\"data\":{\"lastUpdateId\":1,\"bids\":[[\"1\"]],"
         "\"asks\":[]}}",
         "wrong_type"},
        {"{\"stream\":\"btcusdt@depth5@100ms\",\"data\":{\"lastUpdateId\":1,\"bids\":[]}}", "missing_field"},
        {"{\"stream\":\"@depth5\",\"data\":{\"lastUpdateId\":1,\"bids\":[],\"asks\":[]}}", "bad_symbol"},
        {"{\"stream\":\"btcusdt@depth5@100ms\",\"data\":[1]}", "wrong_type"},
        {"{\"data\":{\"e\":\"trade\"}}", "missing_field"},
        {"{\"e\":\"somethingElse\"}", "unknown_type"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\"", "bad_json"},
        {"{\"stream\":\"btcusdt@trade\",\"data\":{\"s\":\"\xf5\x80\x80\x80\"}}", "bad_utf8"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        expect_malformed(f, t[i].json, t[i].reason);
    fx_free(f);
}

static void test_binance_max_age(void **state)
{
    (void)state;
    fx_t *f = fx_new(&binance_connector, "BTCUSDT", "trade", 0, NULL);
    const int64_t age = (int64_t)(23 * 3600 + 50 * 60) * 1000;
    f->ops->on_open(f->c);
    f->ops->on_tick(f->c, 1000);
    f->ops->on_tick(f->c, 1000 + age - 1);
    assert_int_equal(f->rec.n_reconnect, 0);
    f->ops->on_tick(f->c, 1000 + age);
    f->ops->on_tick(f->c, 1100 + age);
    assert_int_equal(f->rec.n_reconnect, 1);
    assert_string_equal(f->rec.reconnect[0], "max_age");
    /* a new connection starts a new clock */
    f->ops->on_close(f->c);
    f->ops->on_open(f->c);
    f->ops->on_tick(f->c, 2000 + age);
    f->ops->on_tick(f->c, 2000 + 2 * age - 1);
    assert_int_equal(f->rec.n_reconnect, 1);
    fx_free(f);
}

FX_MAIN(cmocka_unit_test(test_binance_url), cmocka_unit_test(test_binance_symbols),
        cmocka_unit_test(test_binance_frames), cmocka_unit_test(test_binance_depth_cap_and_malformed),
        cmocka_unit_test(test_binance_max_age))
