/* Unit tests for workers/ingest/feed.c's trade path (issue 14): each trade
 * once behind the connectors' sink (dedup across snapshots and reconnects,
 * live trades held while a backfill runs). */
#include "connector_fx.h"

#include "backfill.h"
#include "dedup.h"
#include "ingest.h"
#include "tail.h"

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

/* ---- the relay's history ring ------------------------------------------ */

typedef struct {
    int64_t seqs[16];
    int n, stop_after;
} hist_t;

static int hist_cb(void *arg, int64_t seq, rbuf_t *msg)
{
    hist_t *h = arg;
    assert_int_equal(ingest_msg_seq(msg->data, msg->len), seq);
    h->seqs[h->n++] = seq;
    return h->stop_after > 0 && h->n >= h->stop_after;
}

static int history(ingest_t *in, int64_t since, int stop_after, hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->stop_after = stop_after;
    return ingest_history(in, "ticker.upbit.BTC-KRW", since, hist_cb, h);
}

/* A resume reads the ring from since+1 (found directly, the seqs being
 * consecutive), stops where the reader says, and says -ERANGE when what
 * follows since is gone. */
static void test_history_from_since(void **state)
{
    (void)state;
    buf_t err;
    buf_init(&err);
    cfg_t *cfg = cfg_load_string("[relay]\nhistory = 5\n", "test", &err);
    assert_non_null(cfg);
    buf_free(&err);
    ingest_t in;
    assert_int_equal(ingest_init(&in, uv_default_loop(), cfg, 3), 0);
    const char *ch = "ticker.upbit.BTC-KRW";
    for (int i = 0; i < 8; i++) {
        int64_t seq = ingest_next_seq(&in, ch);
        char msg[128];
        int n =
            snprintf(msg, sizeof msg, "{\"channel\":\"%s\",\"epoch\":3,\"seq\":%lld}", ch, (long long)seq);
        ingest_publish(&in, ch, seq, msg, (size_t)n);
    }
    hist_t h;
    assert_int_equal(history(&in, 5, 0, &h), 0);
    assert_int_equal(h.n, 3);
    assert_int_equal(h.seqs[0], 6);
    assert_int_equal(h.seqs[2], 8);
    assert_int_equal(history(&in, 3, 0, &h), 0); /* 4..8 kept: no hole */
    assert_int_equal(h.n, 5);
    assert_int_equal(h.seqs[0], 4);
    assert_int_equal(history(&in, 1, 0, &h), -ERANGE); /* 2 and 3 are gone */
    assert_int_equal(h.n, 5);
    assert_int_equal(h.seqs[0], 4);
    assert_int_equal(history(&in, 4, 2, &h), 0); /* the reader stops */
    assert_int_equal(h.n, 2);
    assert_int_equal(h.seqs[1], 6);
    assert_int_equal(history(&in, 8, 0, &h), 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(history(&in, 99, 0, &h), 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(ingest_history(&in, "ticker.upbit.XRP-KRW", 0, hist_cb, &h), -ENOENT);
    ingest_free(&in);
    cfg_free(cfg);
}

FX_MAIN(cmocka_unit_test(test_upbit_snapshot_resend_once), cmocka_unit_test(test_history_from_since),
        cmocka_unit_test(test_coinbase_snapshot_once_and_oldest_first),
        cmocka_unit_test(test_binance_dedup_across_reconnect), cmocka_unit_test(test_hold_backfill_release))
