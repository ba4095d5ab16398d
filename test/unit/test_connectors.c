/* Unit tests for workers/ingest/connectors.c: the connector table, shared
 * helpers (RFC 3339 time), configuration checks, and garbage frames (never a
 * crash, anything emitted is a complete normalized message). */
#include "connector_fx.h"

static void test_bad_config(void **state)
{
    (void)state;
    norm_sink_t sink = {0};
    cfg_exchange_t cfg = {0};
    cfg.markets = (char *)"KRW-BTC";
    cfg.channels = (char *)"ticker,candles";
    assert_null(upbit_connector.create(&cfg, &sink));
    cfg.channels = (char *)"ticker";
    cfg.markets = (char *)" , ";
    assert_null(upbit_connector.create(&cfg, &sink));
    cfg.markets = (char *)"BTCUSD"; /* coinbase needs BASE-QUOTE */
    assert_null(coinbase_connector.create(&cfg, &sink));
}

static void test_helpers(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(conn_rfc3339_ms("2023-02-09T20:32:50.714964855Z", &ms), 0);
    assert_int_equal(ms, 1675974770714);
    assert_int_equal(conn_rfc3339_ms("1970-01-01T00:00:00Z", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(conn_rfc3339_ms("2023-02-09T21:32:50.7+01:00", &ms), 0);
    assert_int_equal(ms, 1675974770700);
    assert_int_equal(conn_rfc3339_ms("2023-02-09", &ms), -EINVAL);
    assert_int_equal(conn_rfc3339_ms("2023-02-09T20:32:50.Z", &ms), -EINVAL);
    assert_ptr_equal(connectors[EX_UPBIT], &upbit_connector);
    assert_ptr_equal(connectors[EX_BITHUMB], &bithumb_connector);
    assert_ptr_equal(connectors[EX_BINANCE], &binance_connector);
    assert_ptr_equal(connectors[EX_COINBASE], &coinbase_connector);
    for (int i = 0; i < EX_COUNT; i++)
        assert_string_equal(connectors[i]->name, cfg_exchange_names[i]);
}

/* Truncations and byte flips of real frames: never a crash, and whatever is
 * emitted is a complete normalized message. */
static void test_garbage(void **state)
{
    (void)state;
    static const struct {
        const connector_ops_t *ops;
        const char *markets;
        const char *frame;
    } t[] = {
        {&upbit_connector, "KRW-BTC", UPBIT_TRADE},
        {&upbit_connector, "KRW-BTC", UPBIT_BOOK},
        {&binance_connector, "BTCUSDT",
         "{\"stream\":\"btcusdt@depth5@100ms\",\"data\":{\"lastUpdateId\":1,\"bids\":"
         "[[\"1.5\",\"10\"]],\"asks\":[[\"1.6\",\"1\"]]}}"},
        {&coinbase_connector, "BTC-USD",
         L2(1, "snapshot", UP("bid", "99999.50", "1") "," UP("offer", "100001", "2"))},
    };
    uint32_t rnd = 12345;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        fx_t *f = fx_new(t[i].ops, t[i].markets, "trade,ticker,orderbook", 5, NULL);
        f->ops->on_open(f->c);
        size_t n = strlen(t[i].frame);
        char *m = malloc(n + 1);
        for (size_t k = 0; k < n + 2000; k++) {
            size_t len = n;
            memcpy(m, t[i].frame, n + 1);
            if (k < n) {
                len = k; /* every truncation */
            } else {
                for (int j = 0; j < 3; j++) {
                    rnd = rnd * 1103515245u + 12345u;
                    m[(rnd >> 8) % n] = (char)(rnd >> 24);
                }
            }
            rec_clear(&f->rec);
            assert_int_equal(f->ops->on_frame(f->c, 1, m, len, RECV), 0);
            f->ops->on_tick(f->c, (int64_t)k * 1000);
            for (int e = 0; e < f->rec.n_emitted; e++) {
                msg_meta_t meta;
                const char *js = f->rec.emitted[e];
                assert_int_equal(msg_parse_meta(js, strlen(js), &meta), 0);
                assert_true(msg_channel_valid(meta.channel, 0));
            }
        }
        free(m);
        fx_free(f);
    }
}

FX_MAIN(cmocka_unit_test(test_bad_config), cmocka_unit_test(test_helpers), cmocka_unit_test(test_garbage))
