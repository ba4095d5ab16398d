/* Unit tests for the exchange connectors (workers/ingest): realistic frames in,
 * exact normalized JSON out, through a fake sink that records everything the
 * connector emits, sends, reports as malformed or asks of the transport. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "book.h"
#include "dedup.h"
#include "ingest.h"
#include "tail.h"
#include "buf.h"
#include "config.h"
#include "connector.h"
#include "log.h"
#include "msg.h"

/* ---- fake sink --------------------------------------------------------- */

#define MAXREC 64
#define RECV 1700000000999LL

typedef struct {
    char *emitted[MAXREC];
    int n_emitted;
    char *sent[MAXREC];
    int n_sent;
    const char *malformed[MAXREC];
    int n_malformed;
    char *status[MAXREC]; /* "state|detail" */
    int n_status;
    const char *reconnect[MAXREC];
    int n_reconnect;
    char seq_ch[32][MSG_CHANNEL_MAX];
    int64_t seq_v[32];
    int n_seq;
} rec_t;

static void f_emit(void *arg, const char *channel, const char *json, size_t len)
{
    rec_t *r = arg;
    assert_int_equal(strlen(json), len);
    assert_true(msg_channel_valid(channel, 0));
    assert_true(r->n_emitted < MAXREC);
    r->emitted[r->n_emitted++] = strdup(json);
}

static int64_t f_next_seq(void *arg, const char *channel)
{
    rec_t *r = arg;
    for (int i = 0; i < r->n_seq; i++)
        if (!strcmp(r->seq_ch[i], channel))
            return ++r->seq_v[i];
    snprintf(r->seq_ch[r->n_seq], MSG_CHANNEL_MAX, "%s", channel);
    r->seq_v[r->n_seq] = 1;
    return r->seq_v[r->n_seq++];
}

static void f_malformed(void *arg, const char *exchange, const char *reason)
{
    rec_t *r = arg;
    (void)exchange;
    assert_true(r->n_malformed < MAXREC);
    r->malformed[r->n_malformed++] = reason;
}

static int f_send(void *arg, const char *data, size_t len)
{
    rec_t *r = arg;
    assert_true(r->n_sent < MAXREC);
    r->sent[r->n_sent++] = strndup(data, len);
    return 0;
}

static void f_reconnect(void *arg, const char *cause)
{
    rec_t *r = arg;
    r->reconnect[r->n_reconnect++] = cause;
}

static void f_status(void *arg, const char *exchange, const char *state, const char *detail)
{
    rec_t *r = arg;
    char tmp[256];
    (void)exchange;
    snprintf(tmp, sizeof(tmp), "%s|%s", state, detail);
    r->status[r->n_status++] = strdup(tmp);
}

typedef struct {
    rec_t rec;
    norm_sink_t sink;
    cfg_exchange_t cfg;
    connector_t *c;
    const connector_ops_t *ops;
} fx_t;

static void rec_clear(rec_t *r)
{
    for (int i = 0; i < r->n_emitted; i++)
        free(r->emitted[i]);
    for (int i = 0; i < r->n_sent; i++)
        free(r->sent[i]);
    for (int i = 0; i < r->n_status; i++)
        free(r->status[i]);
    r->n_emitted = r->n_sent = r->n_status = r->n_malformed = r->n_reconnect = 0;
}

static fx_t *fx_new(const connector_ops_t *ops, const char *markets, const char *channels, int depth,
                    const char *format)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->ops = ops;
    f->sink = (norm_sink_t){
        .arg = &f->rec,
        .emit = f_emit,
        .next_seq = f_next_seq,
        .epoch = 7,
        .malformed = f_malformed,
        .send_text = f_send,
        .reconnect = f_reconnect,
        .status = f_status,
    };
    f->cfg.enabled = 1;
    f->cfg.markets = (char *)markets;
    f->cfg.channels = (char *)channels;
    f->cfg.depth = depth;
    f->cfg.book_interval_ms = 500;
    f->cfg.format = (char *)format;
    f->c = ops->create(&f->cfg, &f->sink);
    assert_non_null(f->c);
    return f;
}

static void fx_free(fx_t *f)
{
    f->ops->destroy(f->c);
    rec_clear(&f->rec);
    free(f);
}

static void feed(fx_t *f, int binary, const char *json)
{
    assert_int_equal(f->ops->on_frame(f->c, binary, json, strlen(json), RECV), 0);
}

/* One frame that must produce exactly `want` and nothing else. */
static void expect_one(fx_t *f, int binary, const char *json, const char *want)
{
    rec_clear(&f->rec);
    feed(f, binary, json);
    assert_int_equal(f->rec.n_malformed, 0);
    assert_int_equal(f->rec.n_emitted, 1);
    assert_string_equal(f->rec.emitted[0], want);
}

static void expect_malformed(fx_t *f, const char *json, const char *reason)
{
    rec_clear(&f->rec);
    feed(f, 1, json);
    if (f->rec.n_malformed != 1 || strcmp(f->rec.malformed[0], reason) != 0)
        fail_msg("input %s: want malformed %s, got %d (%s)", json, reason, f->rec.n_malformed,
                 f->rec.n_malformed ? f->rec.malformed[0] : "-");
    assert_int_equal(f->rec.n_emitted, 0);
}

#define HDR(type, ex, sym, seq, ts)                                                                          \
    "{\"channel\":\"" type "." ex "." sym "\",\"type\":\"" type "\",\"exchange\":\"" ex                      \
    "\",\"symbol\":\"" sym "\",\"seq\":" #seq ",\"epoch\":7,\"ts\":" #ts ",\"recv_ts\":1700000000999"

/* ---- Upbit ------------------------------------------------------------- */

static const char UPBIT_TRADE[] =
    "{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"timestamp\":1676965262177,\"trade_date\":"
    "\"2023-02-21\",\"trade_time\":\"07:41:02\",\"trade_timestamp\":1676965262139,"
    "\"trade_price\":31373000,\"trade_volume\":0.00016039,\"ask_bid\":\"BID\","
    "\"prev_closing_price\":31229000.00000000,\"change\":\"RISE\",\"change_price\":144000.00000000,"
    "\"sequential_id\":1676965262139000,\"stream_type\":\"REALTIME\"}";

static void test_upbit_trade(void **state)
{
    (void)state;
    fx_t *f = fx_new(&upbit_connector, "KRW-BTC,KRW-ETH", "trade,ticker,orderbook", 15, "DEFAULT");
    assert_int_equal(f->ops->on_open(f->c), 0);
    rec_clear(&f->rec);
    feed(f, 1, UPBIT_TRADE);
    assert_int_equal(f->rec.n_emitted, 1);
    assert_string_equal(f->rec.emitted[0],
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

static const char UPBIT_BOOK[] =
    "{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"timestamp\":1676965262177,"
    "\"total_ask_size\":4.79372236,\"total_bid_size\":2.65904574,\"orderbook_units\":["
    "{\"ask_price\":31390000,\"bid_price\":31373000,\"ask_size\":0.02124034,\"bid_size\":"
    "0.01353918},{\"ask_price\":31400000,\"bid_price\":31372000,\"ask_size\":0.1,\"bid_size\":"
    "0.0012},{\"ask_price\":31410000,\"bid_price\":31371000,\"ask_size\":1e-8,\"bid_size\":3}],"
    "\"stream_type\":\"REALTIME\",\"level\":0}";

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
    feed(f, 1, "{\"error\":{\"name\":\"WRONG_FORMAT\",\"message\":\"bad request\"}}");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "error|WRONG_FORMAT: bad request");
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed, 0);
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
    assert_int_equal(f->rec.n_emitted, 1);
    assert_string_equal(
        f->rec.emitted[0],
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
    rec_clear(&f->rec);
    feed(f, 0, "{\"type\":\"error\",\"message\":\"failure to subscribe\"}");
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], "error|failure to subscribe");
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

#define L2(seq, type, updates)                                                                               \
    "{\"channel\":\"l2_data\",\"client_id\":\"\",\"timestamp\":"                                             \
    "\"2023-02-09T20:32:50.714964855Z\",\"sequence_num\":" #seq ",\"events\":[{\"type\":\"" type             \
    "\",\"product_id\":\"BTC-USD\",\"updates\":[" updates "]}]}"
#define UP(side, price, qty)                                                                                 \
    "{\"side\":\"" side "\",\"event_time\":\"2023-02-09T20:32:50.714964855Z\",\"price_level\":\"" price      \
    "\",\"new_quantity\":\"" qty "\"}"

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
    assert_int_equal(f->rec.n_emitted, 1);
    assert_string_equal(
        f->rec.emitted[0],
        HDR("orderbook", "coinbase", "BTC-USD", 1,
            1675974770714) ",\"bids\":[[\"99999.50\",\"1\"],[\"99998\",\"2\"]],\"asks\":[[\"100000.5\","
                           "\"1\"],[\"100001\",\"2\"]]}");
    f->ops->on_tick(f->c, 20000); /* unchanged: nothing */
    assert_int_equal(f->rec.n_emitted, 1);
    /* new best bid (a string compare would get this wrong), removal by "0"
     * of a level spelled differently, replacement of an ask */
    feed(f, 0,
         L2(2, "update",
            UP("bid", "100000.01", "0.5") "," UP("bid", "99999.5", "0") "," UP("offer", "100000.50", "4")));
    f->ops->on_tick(f->c, 20100); /* within book_interval_ms of the last publish? no: 10 s */
    assert_int_equal(f->rec.n_emitted, 2);
    assert_string_equal(f->rec.emitted[1],
                        HDR("orderbook", "coinbase", "BTC-USD", 2,
                            1675974770714) ",\"bids\":[[\"100000.01\",\"0.5\"],[\"99998\",\"2\"]],\"asks\":"
                                           "[[\"100000.50\",\"4\"],[\"100001\",\"2\"]]}");
    /* at most one publish per book_interval_ms (500) */
    feed(f, 0, L2(3, "update", UP("bid", "99998", "2.5")));
    f->ops->on_tick(f->c, 20500);
    assert_int_equal(f->rec.n_emitted, 2);
    f->ops->on_tick(f->c, 20600);
    assert_int_equal(f->rec.n_emitted, 3);
    assert_string_equal(f->rec.emitted[2],
                        HDR("orderbook", "coinbase", "BTC-USD", 3,
                            1675974770714) ",\"bids\":[[\"100000.01\",\"0.5\"],[\"99998\",\"2.5\"]],\"asks\":"
                                           "[[\"100000.50\",\"4\"],[\"100001\",\"2\"]]}");
    /* a change below the top 2 publishes nothing */
    feed(f, 0, L2(4, "update", UP("bid", "9999.9", "7")));
    f->ops->on_tick(f->c, 30000);
    assert_int_equal(f->rec.n_emitted, 3);
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

/* ---- each trade once (issue 14): the ingest's trade path behind the sink --- */

typedef struct {
    char *msg[256];
    int n;
} pubs_t;

static void cap_publish(void *arg, const char *channel, int64_t seq, rbuf_t *m)
{
    pubs_t *p = arg;
    (void)seq;
    if (strncmp(channel, "trade.", 6) == 0 && p->n < 256)
        p->msg[p->n++] = strndup(m->data, m->len);
}

static void pubs_clear(pubs_t *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->msg[i]);
    p->n = 0;
}

typedef struct {
    ingest_t in;
    cfg_t *cfg;
    pubs_t pubs;
    ingest_relay_t relay;
    fx_t *f;
    int ex;
} tfx_t;

static tfx_t *g_t; /* the sink's trade callback reaches the ingest through it */

static void f_trade(void *arg, const char *channel, const norm_trade_t *t)
{
    (void)arg;
    ingest_trade(&g_t->in, g_t->ex, channel, t);
}

static tfx_t *tfx_new(const connector_ops_t *ops, int ex, const char *markets)
{
    buf_t err;
    tfx_t *t = calloc(1, sizeof(*t));
    buf_init(&err);
    t->cfg = cfg_load_string("[exchange.upbit]\ndedup_ids = 64\n", "test", &err);
    assert_non_null(t->cfg);
    buf_free(&err);
    assert_int_equal(ingest_init(&t->in, uv_default_loop(), t->cfg, 7), 0);
    t->relay = (ingest_relay_t){.arg = &t->pubs, .publish = cap_publish};
    ingest_set_relay(&t->in, &t->relay);
    t->ex = ex;
    t->f = fx_new(ops, markets, "trade", 5, NULL);
    t->f->sink.trade = f_trade;
    g_t = t;
    assert_int_equal(ops->on_open(t->f->c), 0);
    return t;
}

static void tfx_free(tfx_t *t)
{
    fx_free(t->f);
    pubs_clear(&t->pubs);
    ingest_free(&t->in);
    cfg_free(t->cfg);
    free(t);
    g_t = NULL;
}

static void reconnect(tfx_t *t)
{
    t->f->ops->on_close(t->f->c);
    assert_int_equal(t->f->ops->on_open(t->f->c), 0);
}

/* Line n (1-based, comments counted) of ../shared/real/NAME, or NULL. */
static char *real_line(const char *name, int n)
{
    char path[256], line[65536];
    snprintf(path, sizeof(path), "../shared/real/%s", name);
    FILE *fp = fopen(path, "r");
    char *out = NULL;
    if (fp == NULL)
        return NULL;
    for (int i = 1; fgets(line, sizeof(line), fp) != NULL; i++)
        if (i == n) {
            line[strcspn(line, "\n")] = 0;
            out = strdup(line);
            break;
        }
    fclose(fp);
    return out;
}

static char *replace(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    assert_non_null(at);
    size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return out;
}

static void feed_str(tfx_t *t, const char *frame)
{
    assert_int_equal(t->f->ops->on_frame(t->f->c, 1, frame, strlen(frame), RECV), 0);
    assert_int_equal(t->f->rec.n_malformed, 0);
}

/* Upbit's documented SNAPSHOT trade (docs example, real/upbit_default.jsonl):
 * heard live first, then re-sent as SNAPSHOT on the next subscribe. */
static void test_upbit_snapshot_resend_once(void **state)
{
    (void)state;
    char *snap = real_line("upbit_default.jsonl", 12);
    if (snap == NULL)
        skip();
    assert_non_null(strstr(snap, "\"stream_type\":\"SNAPSHOT\""));
    char *live = replace(snap, "\"SNAPSHOT\"", "\"REALTIME\"");
    tfx_t *t = tfx_new(&upbit_connector, EX_UPBIT, "KRW-BTC,KRW-ETH");
    feed_str(t, live);
    assert_int_equal(t->pubs.n, 1);
    assert_non_null(strstr(t->pubs.msg[0], "\"trade_id\":\"17303368620470000\""));
    reconnect(t);
    feed_str(t, snap); /* the same trade, re-sent on subscribe */
    feed_str(t, snap);
    assert_int_equal(t->pubs.n, 1);
    /* A SNAPSHOT trade never heard before is a trade missed: published. */
    char *other = real_line("upbit_default.jsonl", 13);
    feed_str(t, other);
    assert_int_equal(t->pubs.n, 2);
    assert_non_null(strstr(t->pubs.msg[1], "\"channel\":\"trade.upbit.ETH-KRW\""));
    free(other);
    free(live);
    free(snap);
    tfx_free(t);
}

/* Coinbase market_trades (real/coinbase.jsonl): an update, then the same
 * trades again in the snapshot event of the next subscribe. */
static void test_coinbase_snapshot_once_and_oldest_first(void **state)
{
    (void)state;
    char *upd = real_line("coinbase.jsonl", 17);
    if (upd == NULL)
        skip();
    tfx_t *t = tfx_new(&coinbase_connector, EX_COINBASE, "BTC-USD");
    feed_str(t, upd);
    assert_int_equal(t->pubs.n, 2);
    assert_non_null(strstr(t->pubs.msg[0], "\"trade_id\":\"995098700\""));
    assert_non_null(strstr(t->pubs.msg[1], "\"trade_id\":\"995098701\""));
    reconnect(t);
    char *snap = replace(upd, "\"type\":\"update\"", "\"type\":\"snapshot\"");
    char *snap2 = replace(snap, "\"sequence_num\":5", "\"sequence_num\":0");
    feed_str(t, snap2);
    assert_int_equal(t->pubs.n, 2);
    /* A snapshot lists the recent trades newest first: new ones are
     * published oldest first. */
    static const char SNAP_NEW[] =
        "{\"channel\":\"market_trades\",\"client_id\":\"\",\"timestamp\":\"2026-04-07T14:30:05Z\","
        "\"sequence_num\":1,\"events\":[{\"type\":\"snapshot\",\"trades\":["
        "{\"trade_id\":\"995098703\",\"product_id\":\"BTC-USD\",\"price\":\"68901\",\"size\":\"0.1\","
        "\"side\":\"SELL\",\"time\":\"2026-04-07T14:30:04.5Z\"},"
        "{\"trade_id\":\"995098702\",\"product_id\":\"BTC-USD\",\"price\":\"68900\",\"size\":\"0.2\","
        "\"side\":\"BUY\",\"time\":\"2026-04-07T14:30:04Z\"},"
        "{\"trade_id\":\"995098701\",\"product_id\":\"BTC-USD\",\"price\":\"68900.00\",\"size\":\"0.05\","
        "\"side\":\"SELL\",\"time\":\"2026-04-07T14:30:02.9Z\"}]}]}";
    feed_str(t, SNAP_NEW);
    assert_int_equal(t->pubs.n, 4);
    assert_non_null(strstr(t->pubs.msg[2], "\"trade_id\":\"995098702\""));
    assert_non_null(strstr(t->pubs.msg[3], "\"trade_id\":\"995098703\""));
    /* An unknown snapshot trade older than the last published one (its id
     * left the bounded set, or another leader published it): dropped. The
     * same trade live is published: exchanges do report trades late. */
    static const char SNAP_OLD[] =
        "{\"channel\":\"market_trades\",\"client_id\":\"\",\"timestamp\":\"2026-04-07T14:30:06Z\","
        "\"sequence_num\":2,\"events\":[{\"type\":\"snapshot\",\"trades\":["
        "{\"trade_id\":\"995098600\",\"product_id\":\"BTC-USD\",\"price\":\"68000\",\"size\":\"0.1\","
        "\"side\":\"SELL\",\"time\":\"2026-04-07T14:29:00Z\"}]}]}";
    feed_str(t, SNAP_OLD);
    assert_int_equal(t->pubs.n, 4);
    char *late = replace(SNAP_OLD, "\"snapshot\"", "\"update\"");
    char *late2 = replace(late, "\"sequence_num\":2", "\"sequence_num\":3");
    feed_str(t, late2);
    assert_int_equal(t->pubs.n, 5);
    free(late2);
    free(late);
    free(snap2);
    free(snap);
    free(upd);
    tfx_free(t);
}

/* Binance (real/binance.jsonl, ids consecutive per symbol): a trade heard
 * again after a reconnect is dropped, also an older one (the high-water mark). */
static void test_binance_dedup_across_reconnect(void **state)
{
    (void)state;
    char *a = real_line("binance.jsonl", 6), *b = real_line("binance.jsonl", 7);
    if (a == NULL || b == NULL)
        skip();
    tfx_t *t = tfx_new(&binance_connector, EX_BINANCE, "BNBBTC");
    feed_str(t, a);
    feed_str(t, b);
    assert_int_equal(t->pubs.n, 2);
    reconnect(t);
    feed_str(t, b);
    feed_str(t, a);
    assert_int_equal(t->pubs.n, 2);
    char id[80];
    int64_t ts;
    assert_int_equal(ingest_trade_last(&t->in, "trade.binance.BNB-BTC", id, sizeof(id), &ts), 0);
    assert_string_equal(id, "60276726");
    assert_int_equal(ts, 1567296001034);
    free(a);
    free(b);
    tfx_free(t);
}

/* A backfill: live trades held, the REST ones published first (marked),
 * then the held ones, each once; a new epoch keeps the ids. */
static void test_hold_backfill_release(void **state)
{
    (void)state;
    tfx_t *t = tfx_new(&binance_connector, EX_BINANCE, "BTCUSDT");
    const char *ch = "trade.binance.BTC-USDT";
    ingest_trade_seed(&t->in, EX_BINANCE, ch, "100", 1000);
    ingest_trade_seed(&t->in, EX_BINANCE, ch, "99", 990); /* older: not the last */
    char id[80], hid[80];
    int64_t ts, hts;
    assert_int_equal(ingest_trade_last(&t->in, ch, id, sizeof(id), &ts), 0);
    assert_string_equal(id, "100");
    ingest_trade_hold(&t->in, ch);
    norm_trade_t tr = {.symbol = "BTC-USDT", .price = "1", .qty = "2", .side = "buy", .ts = 1030};
    for (int i = 103; i <= 104; i++) {
        snprintf(tr.trade_id, sizeof(tr.trade_id), "%d", i);
        tr.ts = 1000 + i;
        ingest_trade(&t->in, EX_BINANCE, ch, &tr);
    }
    assert_int_equal(t->pubs.n, 0);
    assert_int_equal(ingest_trade_first_held(&t->in, ch, hid, sizeof(hid), &hts), 0);
    assert_string_equal(hid, "103");
    tr.backfill = 1;
    for (int i = 100; i <= 103; i++) {
        snprintf(tr.trade_id, sizeof(tr.trade_id), "%d", i);
        ingest_trade(&t->in, EX_BINANCE, ch, &tr);
    }
    assert_int_equal(t->pubs.n, 3); /* 100 was published before */
    ingest_trade_release(&t->in, EX_BINANCE, ch);
    assert_int_equal(t->pubs.n, 4);
    static const char *want[] = {"101", "102", "103", "104"};
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof(key), "\"trade_id\":\"%s\"", want[i]);
        assert_non_null(strstr(t->pubs.msg[i], key));
        assert_int_equal(strstr(t->pubs.msg[i], "\"backfill\":true") != NULL, i < 3);
        assert_non_null(strstr(t->pubs.msg[i], i == 0 ? "\"seq\":1," : "\"seq\":"));
    }
    ingest_set_epoch(&t->in, 8);
    tr.backfill = 0;
    ingest_trade(&t->in, EX_BINANCE, ch, &tr); /* 103 again, in the new epoch */
    assert_int_equal(t->pubs.n, 4);
    tfx_free(t);
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upbit_trade),
        cmocka_unit_test(test_upbit_ticker),
        cmocka_unit_test(test_upbit_orderbook),
        cmocka_unit_test(test_upbit_control),
        cmocka_unit_test(test_upbit_malformed),
        cmocka_unit_test(test_upbit_open_and_ping),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_bithumb),
        cmocka_unit_test(test_binance_url),
        cmocka_unit_test(test_binance_symbols),
        cmocka_unit_test(test_binance_frames),
        cmocka_unit_test(test_binance_depth_cap_and_malformed),
        cmocka_unit_test(test_binance_max_age),
        cmocka_unit_test(test_coinbase_open),
        cmocka_unit_test(test_coinbase_trades_ticker),
        cmocka_unit_test(test_coinbase_book),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_upbit_snapshot_resend_once),
        cmocka_unit_test(test_coinbase_snapshot_once_and_oldest_first),
        cmocka_unit_test(test_binance_dedup_across_reconnect),
        cmocka_unit_test(test_hold_backfill_release),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
