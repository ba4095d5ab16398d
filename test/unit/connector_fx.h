/* Shared fixture of the exchange connector tests (test_upbit.c,
 * test_bithumb.c, test_binance.c, test_coinbase.c, test_connectors.c,
 * test_feed.c): a fake sink that records everything a connector emits,
 * sends, reports as malformed or asks of the transport, and real frames
 * more than one file feeds. */
#ifndef TEST_CONNECTOR_FX_H
#define TEST_CONNECTOR_FX_H
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static inline void f_emit(void *arg, const char *channel, const char *json, size_t len)
{
    rec_t *r = arg;
    assert_int_equal(strlen(json), len);
    assert_true(msg_channel_valid(channel, 0));
    assert_true(r->n_emitted < MAXREC);
    r->emitted[r->n_emitted++] = strdup(json);
}

static inline int64_t f_next_seq(void *arg, const char *channel)
{
    rec_t *r = arg;
    for (int i = 0; i < r->n_seq; i++)
        if (!strcmp(r->seq_ch[i], channel))
            return ++r->seq_v[i];
    snprintf(r->seq_ch[r->n_seq], MSG_CHANNEL_MAX, "%s", channel);
    r->seq_v[r->n_seq] = 1;
    return r->seq_v[r->n_seq++];
}

static inline void f_malformed(void *arg, const char *exchange, const char *reason)
{
    rec_t *r = arg;
    (void)exchange;
    assert_true(r->n_malformed < MAXREC);
    r->malformed[r->n_malformed++] = reason;
}

static inline int f_send(void *arg, const char *data, size_t len)
{
    rec_t *r = arg;
    assert_true(r->n_sent < MAXREC);
    r->sent[r->n_sent++] = strndup(data, len);
    return 0;
}

static inline void f_reconnect(void *arg, const char *cause)
{
    rec_t *r = arg;
    r->reconnect[r->n_reconnect++] = cause;
}

static inline void f_status(void *arg, const char *exchange, const char *state, const char *detail)
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

static inline void rec_clear(rec_t *r)
{
    for (int i = 0; i < r->n_emitted; i++)
        free(r->emitted[i]);
    for (int i = 0; i < r->n_sent; i++)
        free(r->sent[i]);
    for (int i = 0; i < r->n_status; i++)
        free(r->status[i]);
    r->n_emitted = r->n_sent = r->n_status = r->n_malformed = r->n_reconnect = 0;
}

static inline fx_t *fx_new(const connector_ops_t *ops, const char *markets, const char *channels, int depth,
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

static inline void fx_free(fx_t *f)
{
    f->ops->destroy(f->c);
    rec_clear(&f->rec);
    free(f);
}

static inline void feed(fx_t *f, int binary, const char *json)
{
    assert_int_equal(f->ops->on_frame(f->c, binary, json, strlen(json), RECV), 0);
}

/* One frame that must produce exactly `want` and nothing else. */
static inline void expect_one(fx_t *f, int binary, const char *json, const char *want)
{
    rec_clear(&f->rec);
    feed(f, binary, json);
    assert_int_equal(f->rec.n_malformed, 0);
    assert_int_equal(f->rec.n_emitted, 1);
    assert_string_equal(f->rec.emitted[0], want);
}

static inline void expect_malformed(fx_t *f, const char *json, const char *reason)
{
    rec_clear(&f->rec);
    feed(f, 1, json);
    if (f->rec.n_malformed != 1 || strcmp(f->rec.malformed[0], reason) != 0)
        fail_msg("input %s: want malformed %s, got %d (%s)", json, reason, f->rec.n_malformed,
                 f->rec.n_malformed ? f->rec.malformed[0] : "-");
    assert_int_equal(f->rec.n_emitted, 0);
}

/* n messages emitted so far, the last one exactly `want`. */
static inline void expect_emitted(fx_t *f, int n, const char *want)
{
    assert_int_equal(f->rec.n_malformed, 0);
    assert_int_equal(f->rec.n_emitted, n);
    assert_string_equal(f->rec.emitted[n - 1], want);
}

/* One frame that must only report `want` ("state|detail"). */
static inline void expect_status(fx_t *f, int binary, const char *json, const char *want)
{
    rec_clear(&f->rec);
    feed(f, binary, json);
    assert_int_equal(f->rec.n_status, 1);
    assert_string_equal(f->rec.status[0], want);
    assert_int_equal(f->rec.n_emitted + f->rec.n_malformed, 0);
}

#define HDR(type, ex, sym, seq, ts)                                                                          \
    "{\"channel\":\"" type "." ex "." sym "\",\"type\":\"" type "\",\"exchange\":\"" ex                      \
    "\",\"symbol\":\"" sym "\",\"seq\":" #seq ",\"epoch\":7,\"ts\":" #ts ",\"recv_ts\":1700000000999"

/* Upbit's documented frames (docs examples). */
#define UPBIT_TRADE                                                                                          \
    "{\"type\":\"trade\",\"code\":\"KRW-BTC\",\"timestamp\":1676965262177,\"trade_date\":"                   \
    "\"2023-02-21\",\"trade_time\":\"07:41:02\",\"trade_timestamp\":1676965262139,"                          \
    "\"trade_price\":31373000,\"trade_volume\":0.00016039,\"ask_bid\":\"BID\","                              \
    "\"prev_closing_price\":31229000.00000000,\"change\":\"RISE\",\"change_price\":144000.00000000,"         \
    "\"sequential_id\":1676965262139000,\"stream_type\":\"REALTIME\"}"
#define UPBIT_BOOK                                                                                           \
    "{\"type\":\"orderbook\",\"code\":\"KRW-BTC\",\"timestamp\":1676965262177,"                              \
    "\"total_ask_size\":4.79372236,\"total_bid_size\":2.65904574,\"orderbook_units\":["                      \
    "{\"ask_price\":31390000,\"bid_price\":31373000,\"ask_size\":0.02124034,\"bid_size\":"                   \
    "0.01353918},{\"ask_price\":31400000,\"bid_price\":31372000,\"ask_size\":0.1,\"bid_size\":"              \
    "0.0012},{\"ask_price\":31410000,\"bid_price\":31371000,\"ask_size\":1e-8,\"bid_size\":3}],"             \
    "\"stream_type\":\"REALTIME\",\"level\":0}"

/* Coinbase Advanced Trade l2_data frames. */
#define L2(seq, type, updates)                                                                               \
    "{\"channel\":\"l2_data\",\"client_id\":\"\",\"timestamp\":"                                             \
    "\"2023-02-09T20:32:50.714964855Z\",\"sequence_num\":" #seq ",\"events\":[{\"type\":\"" type             \
    "\",\"product_id\":\"BTC-USD\",\"updates\":[" updates "]}]}"
#define UP(side, price, qty)                                                                                 \
    "{\"side\":\"" side "\",\"event_time\":\"2023-02-09T20:32:50.714964855Z\",\"price_level\":\"" price      \
    "\",\"new_quantity\":\"" qty "\"}"

/* main(): the file's tests as one group, library logs quiet. */
#define FX_MAIN(...)                                                                                         \
    int main(void)                                                                                           \
    {                                                                                                        \
        log_set_level("error");                                                                              \
        const struct CMUnitTest tests[] = {__VA_ARGS__};                                                     \
        return cmocka_run_group_tests(tests, NULL, NULL);                                                    \
    }

#endif
