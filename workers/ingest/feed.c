/* Exchange feeds and the channel table of the ingest worker. A feed is one
 * exchange connection: its connector (pure protocol) on a wsclient, the
 * status.EXCHANGE messages, and the per-feed counters. The channel table
 * gives each channel its seq within the epoch and keeps a bounded ring of
 * recent messages that the relay replays from.
 *
 * status.EXCHANGE messages are built with msg_begin(type "status", symbol
 * ""), so they have channel "status.EXCHANGE", no "symbol" field, ts =
 * recv_ts = the local time of the event, and the fields "state"
 * (connected|subscribed|stale|disconnected|error) and "detail" (a short
 * cause, "" when none). They take seqs on their own channel like any other. */
#include "ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "buf.h"
#include "connector.h"
#include "dedup.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "producer.h"
#include "worker.h"
#include "wsclient.h"

/* ---- channel table ------------------------------------------------------ */

typedef struct {
    int64_t seq;
    rbuf_t *msg;
} hist_ent_t;

/* Trades of one channel: the ids published (bounded), the last one, and the
 * live trades held while a backfill of the channel runs. Kept across
 * reconnects and epochs: a re-sent trade is a duplicate whoever leads. */
#define HOLD_MAX 50000
typedef struct {
    dedup_t ids;
    char last_id[80];
    int64_t last_ts;
    int holding;
    norm_trade_t *held;
    int nheld, capheld;
} trade_state_t;

struct ingest_chan_s {
    trade_state_t *tr;  /* trade channels only, created on the first trade */
    strmap_node_t node; /* in ingest_t.chans, keyed by name */
    int64_t next_seq;   /* last seq handed out by ingest_next_seq */
    int64_t last_pub;   /* seq of the last published message */
    hist_ent_t *ring;   /* cap entries; oldest at head */
    int cap, head, count;
    char name[];
};

int ingest_init(ingest_t *in, uv_loop_t *loop, const cfg_t *cfg, int64_t epoch)
{
    memset(in, 0, sizeof(*in));
    in->loop = loop;
    in->cfg = cfg;
    in->epoch = epoch;
    /* At least the latest message per channel is always kept: the relay
     * needs it for snapshots even with history = 0. */
    in->history = cfg->relay.history > 0 ? cfg->relay.history : 1;
    return strmap_init(&in->chans, 256);
}

static void ring_clear(ingest_chan_t *c)
{
    for (int i = 0; i < c->count; i++)
        rbuf_unref(c->ring[(c->head + i) % c->cap].msg);
    c->head = c->count = 0;
}

static void chan_free(strmap_node_t *n)
{
    ingest_chan_t *c = STRMAP_ENTRY(n, ingest_chan_t, node);
    ring_clear(c);
    if (c->tr != NULL) {
        dedup_free(&c->tr->ids);
        free(c->tr->held);
        free(c->tr);
    }
    free(c->ring);
    free(c);
}

void ingest_free(ingest_t *in)
{
    strmap_clear(&in->chans, chan_free);
}

static ingest_chan_t *chan_find(ingest_t *in, const char *name, int create)
{
    size_t n = strlen(name);
    strmap_node_t *e = strmap_get(&in->chans, name, n);
    if (e != NULL)
        return STRMAP_ENTRY(e, ingest_chan_t, node);
    if (!create)
        return NULL;
    ingest_chan_t *c = calloc(1, sizeof(*c) + n + 1);
    if (c == NULL)
        return NULL;
    c->ring = calloc((size_t)in->history, sizeof(*c->ring));
    if (c->ring == NULL) {
        free(c);
        return NULL;
    }
    c->cap = in->history;
    memcpy(c->name, name, n + 1);
    strmap_put(&in->chans, &c->node, c->name, n);
    return c;
}

int64_t ingest_next_seq(ingest_t *in, const char *channel)
{
    ingest_chan_t *c = chan_find(in, channel, 1);
    if (c == NULL)
        return -ENOMEM;
    return ++c->next_seq;
}

void ingest_set_relay(ingest_t *in, const ingest_relay_t *relay)
{
    in->relay = relay;
}

void ingest_set_epoch(ingest_t *in, int64_t epoch)
{
    if (epoch == in->epoch)
        return;
    log_info("new epoch, channel seqs restart at 1", "old=%" PRId64 " new=%" PRId64 " channels=%zu",
             in->epoch, epoch, in->chans.count);
    in->epoch = epoch;
    size_t b = 0;
    for (strmap_node_t *e = strmap_next(&in->chans, &b, NULL); e != NULL;
         e = strmap_next(&in->chans, &b, e)) {
        ingest_chan_t *c = STRMAP_ENTRY(e, ingest_chan_t, node);
        c->next_seq = c->last_pub = 0;
        ring_clear(c);
    }
    for (int ex = 0; ex < EX_COUNT; ex++)
        if (in->feeds[ex] != NULL)
            feed_set_epoch(in->feeds[ex], epoch);
    if (in->relay != NULL && in->relay->epoch_changed != NULL)
        in->relay->epoch_changed(in->relay->arg, epoch);
}

int64_t ingest_msg_seq(const char *json, size_t len)
{
    /* Inside a JSON string a quote is always escaped, so the first `,"seq":`
     * in the text is the top-level key msg_begin wrote. */
    static const char key[] = ",\"seq\":";
    const char *p = memmem(json, len, key, sizeof(key) - 1);
    if (p == NULL)
        return -1;
    p += sizeof(key) - 1;
    const char *end = json + len;
    int64_t v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (*p - '0');
    return v;
}

void ingest_publish(ingest_t *in, const char *channel, int64_t seq, const char *json, size_t len)
{
    ingest_chan_t *c = chan_find(in, channel, 1);
    if (c != NULL) {
        if (seq <= c->last_pub)
            log_warn("seq not increasing on channel", "channel=%s seq=%" PRId64 " last=%" PRId64,
                     log_q(channel), seq, c->last_pub);
        c->last_pub = seq;
    }
    /* One copy of the message: the history, the relay and Kafka share it. */
    rbuf_t *m = rbuf_new(json, len);
    if (m == NULL) {
        log_error("out of memory: message not published", "channel=%s bytes=%zu", log_q(channel), len);
        return;
    }
    if (in->producer != NULL)
        (void)producer_send(in->producer, channel, m, in->epoch);
    if (c != NULL) {
        if (c->count == c->cap) {
            rbuf_unref(c->ring[c->head].msg);
            c->head = (c->head + 1) % c->cap;
            c->count--;
        }
        hist_ent_t *e = &c->ring[(c->head + c->count) % c->cap];
        e->seq = seq;
        e->msg = rbuf_ref(m);
        c->count++;
    }
    if (in->relay != NULL && in->relay->publish != NULL)
        in->relay->publish(in->relay->arg, channel, seq, m);
    rbuf_unref(m);
}

int ingest_history(ingest_t *in, const char *channel, int64_t since, ingest_hist_cb cb, void *arg)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c == NULL)
        return -ENOENT;
    int r = 0;
    if (since < c->last_pub) {
        int64_t oldest = c->count > 0 ? c->ring[c->head].seq : c->last_pub + 1;
        if (oldest > since + 1)
            r = -ERANGE;
    }
    /* Seqs in the ring are consecutive (one entry per publish): start at
     * since+1 directly, so that a paced replay resuming over and over does
     * not walk the whole ring each time. A ring that is not consecutive
     * (a seq that did not increase, logged at publish) is walked. */
    int i = 0;
    if (c->count > 0) {
        int64_t first = c->ring[c->head].seq;
        int64_t last = c->ring[(c->head + c->count - 1) % c->cap].seq;
        if (last - first == (int64_t)c->count - 1 && since >= first)
            i = since - first + 1 > c->count ? c->count : (int)(since - first + 1);
    }
    for (; i < c->count; i++) {
        hist_ent_t *e = &c->ring[(c->head + i) % c->cap];
        if (e->seq <= since)
            continue;
        if (cb(arg, e->seq, e->msg) != 0)
            break;
    }
    return r;
}

void ingest_channels(ingest_t *in, ingest_chan_cb cb, void *arg)
{
    size_t b = 0;
    for (strmap_node_t *e = strmap_next(&in->chans, &b, NULL); e != NULL;
         e = strmap_next(&in->chans, &b, e)) {
        ingest_chan_t *c = STRMAP_ENTRY(e, ingest_chan_t, node);
        rbuf_t *latest = c->count > 0 ? c->ring[(c->head + c->count - 1) % c->cap].msg : NULL;
        if (c->last_pub > 0 && cb(arg, c->name, c->last_pub, latest) != 0)
            return;
    }
}

/* ---- trades ------------------------------------------------------------- */

static int ex_ordered(int ex)
{
    return ex == EX_BINANCE; /* ids consecutive per symbol (exchanges.md) */
}

static trade_state_t *trade_state(ingest_t *in, int ex, const char *channel)
{
    ingest_chan_t *c = chan_find(in, channel, 1);
    if (c == NULL)
        return NULL;
    if (c->tr == NULL) {
        trade_state_t *t = calloc(1, sizeof(*t));
        int cap = ex >= 0 && ex < EX_COUNT ? in->cfg->exchange[ex].dedup_ids : 0;
        if (t == NULL || dedup_init(&t->ids, cap > 0 ? cap : 4096) < 0) {
            free(t);
            return NULL;
        }
        c->tr = t;
    }
    return c->tr;
}

static metric_t *trade_metric(const char *name, const char *help, int ex)
{
    return metric_labels(metric_counter(name, help), "exchange=\"%s\"",
                         ex >= 0 && ex < EX_COUNT ? cfg_exchange_names[ex] : "unknown");
}

static void publish_counted(feed_t *f, const char *channel, const char *json, size_t len);

/* Published before: counted. A re-sent snapshot trade older than the last
 * one published was published before too (by this ingest or, learnt from the
 * topic's tail, by the previous leader) even when its id has left the
 * bounded set. */
static int trade_dup(const trade_state_t *st, int ex, const norm_trade_t *t)
{
    if (!dedup_seen(&st->ids, t->trade_id, ex_ordered(ex)) &&
        !(t->snapshot && st->last_id[0] != '\0' && t->ts < st->last_ts))
        return 0;
    metric_inc(trade_metric("exchange_ingest_trades_deduplicated_total",
                            "Exchange trades dropped as re-sent (trade id already published)", ex));
    return 1;
}

static void trade_publish(ingest_t *in, int ex, const char *channel, trade_state_t *st, const norm_trade_t *t)
{
    static buf_t b; /* the loop thread's builder, reused */
    int ordered = ex_ordered(ex);
    if (trade_dup(st, ex, t))
        return;
    dedup_add(&st->ids, t->trade_id, ordered);
    snprintf(st->last_id, sizeof(st->last_id), "%s", t->trade_id);
    st->last_ts = t->ts;
    if (t->backfill)
        metric_inc(trade_metric("exchange_ingest_backfill_trades_total",
                                "Trades published from the exchange's REST API after a takeover or reconnect",
                                ex));
    conn_trade_msg(&b, ex >= 0 && ex < EX_COUNT ? cfg_exchange_names[ex] : "unknown", t,
                   ingest_next_seq(in, channel), in->epoch);
    feed_t *f = ex >= 0 && ex < EX_COUNT ? in->feeds[ex] : NULL;
    if (f != NULL)
        publish_counted(f, channel, b.data, b.len);
    else
        ingest_publish(in, channel, ingest_msg_seq(b.data, b.len), b.data, b.len);
}

void ingest_trade(ingest_t *in, int ex, const char *channel, const norm_trade_t *t)
{
    trade_state_t *st = trade_state(in, ex, channel);
    if (st == NULL) {
        log_error("no memory for a trade channel; trade dropped", "channel=%s", log_q(channel));
        return;
    }
    if (!st->holding || t->backfill) {
        trade_publish(in, ex, channel, st, t);
        return;
    }
    if (trade_dup(st, ex, t))
        return;
    if (st->nheld == st->capheld) {
        int cap = st->capheld ? st->capheld * 2 : 256;
        norm_trade_t *n = cap <= HOLD_MAX ? realloc(st->held, sizeof(*n) * (size_t)cap) : NULL;
        if (n == NULL) {
            metric_inc(trade_metric("exchange_ingest_trades_dropped_total",
                                    "Live trades dropped: the hold during a backfill was full", ex));
            log_warn("trade hold full during backfill; trade dropped", "channel=%s held=%d", log_q(channel),
                     st->nheld);
            return;
        }
        st->held = n;
        st->capheld = cap;
    }
    st->held[st->nheld++] = *t;
}

void ingest_trade_seed(ingest_t *in, int ex, const char *channel, const char *trade_id, int64_t ts)
{
    trade_state_t *st = trade_state(in, ex, channel);
    if (st == NULL || dedup_seen(&st->ids, trade_id, ex_ordered(ex)))
        return;
    dedup_add(&st->ids, trade_id, ex_ordered(ex));
    if (ts >= st->last_ts) {
        snprintf(st->last_id, sizeof(st->last_id), "%s", trade_id);
        st->last_ts = ts;
    }
}

int ingest_trade_last(ingest_t *in, const char *channel, char *id, size_t idsz, int64_t *ts)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c == NULL || c->tr == NULL || c->tr->last_id[0] == '\0')
        return -ENOENT;
    snprintf(id, idsz, "%s", c->tr->last_id);
    *ts = c->tr->last_ts;
    return 0;
}

int ingest_trade_seen(ingest_t *in, int ex, const char *channel, const char *id)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    return c != NULL && c->tr != NULL && dedup_seen(&c->tr->ids, id, ex_ordered(ex));
}

void ingest_trade_hold(ingest_t *in, const char *channel)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c != NULL && c->tr != NULL)
        c->tr->holding = 1;
}

int ingest_trade_first_held(ingest_t *in, const char *channel, char *id, size_t idsz, int64_t *ts)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c == NULL || c->tr == NULL || c->tr->nheld == 0)
        return -ENOENT;
    snprintf(id, idsz, "%s", c->tr->held[0].trade_id);
    *ts = c->tr->held[0].ts;
    return 0;
}

int ingest_trade_held(ingest_t *in, const char *channel, const char *id)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c == NULL || c->tr == NULL)
        return 0;
    for (int i = 0; i < c->tr->nheld; i++)
        if (strcmp(c->tr->held[i].trade_id, id) == 0)
            return 1;
    return 0;
}

void ingest_trade_release(ingest_t *in, int ex, const char *channel)
{
    ingest_chan_t *c = chan_find(in, channel, 0);
    if (c == NULL || c->tr == NULL || !c->tr->holding)
        return;
    trade_state_t *st = c->tr;
    st->holding = 0;
    for (int i = 0; i < st->nheld; i++)
        trade_publish(in, ex, channel, st, &st->held[i]);
    st->nheld = 0;
    if (st->capheld > 1024) { /* give a large hold's memory back */
        free(st->held);
        st->held = NULL;
        st->capheld = 0;
    }
}

/* ---- feeds -------------------------------------------------------------- */

enum { T_TRADE, T_TICKER, T_ORDERBOOK, T_STATUS, T_OTHER, T_COUNT };
static const char *const type_names[T_COUNT] = {"trade", "ticker", "orderbook", "status", "other"};

struct feed_s {
    ingest_t *in;
    int ex;
    const char *name;
    const cfg_exchange_t *xcfg;
    const connector_ops_t *ops;
    connector_t *conn;
    backfill_t *bf; /* NULL: no rest_url or no trade channel */
    wsc_t *wsc;
    norm_sink_t sink;
    buf_t url;
    buf_t scratch; /* status message builder */
    char state[16];
    char detail[64];     /* of the last status message */
    int64_t last_msg_ms; /* 0: none yet */
    uint64_t messages, opens, malformed;
    int stopping;
    metric_t *m_msgs[T_COUNT], *m_malformed, *m_connected, *m_age, *m_reconnects;
};

static int type_index(const char *channel)
{
    const char *dot = strchr(channel, '.');
    size_t n = dot ? (size_t)(dot - channel) : strlen(channel);
    for (int i = 0; i < T_OTHER; i++)
        if (strlen(type_names[i]) == n && memcmp(type_names[i], channel, n) == 0)
            return i;
    return T_OTHER;
}

static void publish_counted(feed_t *f, const char *channel, const char *json, size_t len)
{
    int t = type_index(channel);
    metric_inc(f->m_msgs[t]);
    if (t != T_STATUS) {
        f->messages++;
        f->last_msg_ms = (int64_t)worker_now_ms();
    }
    ingest_publish(f->in, channel, ingest_msg_seq(json, len), json, len);
}

/* norm_sink_t callbacks: run on the loop thread, from the connector. */
static void sink_emit(void *arg, const char *channel, const char *json, size_t len)
{
    feed_t *f = arg;
    publish_counted(f, channel, json, len);
}

static void sink_trade(void *arg, const char *channel, const norm_trade_t *t)
{
    feed_t *f = arg;
    ingest_trade(f->in, f->ex, channel, t);
}

static int64_t sink_next_seq(void *arg, const char *channel)
{
    feed_t *f = arg;
    return ingest_next_seq(f->in, channel);
}

static void sink_malformed(void *arg, const char *exchange, const char *reason)
{
    feed_t *f = arg;
    metric_inc(metric_labels(f->m_malformed, "exchange=\"%s\",reason=\"%s\"", exchange ? exchange : f->name,
                             reason));
    /* Logged, but a feed spewing garbage must not flood the log. */
    f->malformed++;
    if (f->malformed <= 100 || f->malformed % 1000 == 0)
        log_warn("malformed message skipped", "exchange=%s reason=%s total=%" PRIu64, f->name, log_q(reason),
                 f->malformed);
}

static int sink_send_text(void *arg, const char *data, size_t len)
{
    feed_t *f = arg;
    if (f->wsc == NULL)
        return -ENOTCONN;
    return wsc_send_text(f->wsc, data, len);
}

static void sink_reconnect(void *arg, const char *cause)
{
    feed_t *f = arg;
    log_info("connector asked to reconnect", "exchange=%s cause=%s", f->name, log_q(cause));
    if (f->wsc != NULL && !f->stopping)
        wsc_reconnect(f->wsc, cause);
}

static void sink_status(void *arg, const char *exchange, const char *state, const char *detail)
{
    feed_t *f = arg;
    (void)exchange;
    if (detail == NULL)
        detail = "";
    /* A feed that keeps failing to connect repeats the same status on every
     * attempt: publish changes only. */
    if (strcmp(f->state, state) == 0 && strncmp(f->detail, detail, sizeof(f->detail) - 1) == 0)
        return;
    snprintf(f->state, sizeof(f->state), "%s", state);
    snprintf(f->detail, sizeof(f->detail), "%s", detail);
    int64_t now = (int64_t)worker_now_ms();
    char channel[MSG_CHANNEL_MAX];
    snprintf(channel, sizeof(channel), "status.%s", f->name);
    buf_reset(&f->scratch);
    msg_begin(&f->scratch, "status", f->name, "", ingest_next_seq(f->in, channel), f->in->epoch, now, now);
    msg_str(&f->scratch, "state", state);
    msg_str(&f->scratch, "detail", detail);
    msg_end(&f->scratch);
    log_info("exchange status", "exchange=%s state=%s detail=%s", f->name, state, log_q(detail));
    publish_counted(f, channel, f->scratch.data, f->scratch.len);
}

void feed_gap(feed_t *f, const char *channel, int64_t from_ts, int64_t to_ts, const char *last_trade_id)
{
    int64_t now = (int64_t)worker_now_ms();
    char sch[MSG_CHANNEL_MAX];
    buf_t g;
    snprintf(sch, sizeof(sch), "status.%s", f->name);
    buf_init(&g);
    buf_puts(&g, "{\"channel\":");
    buf_json_str(&g, channel);
    buf_printf(&g, ",\"from_ts\":%" PRId64 ",\"to_ts\":%" PRId64 ",\"last_trade_id\":", from_ts, to_ts);
    buf_json_str(&g, last_trade_id ? last_trade_id : "");
    buf_puts(&g, "}");
    buf_reset(&f->scratch);
    msg_begin(&f->scratch, "status", f->name, "", ingest_next_seq(f->in, sch), f->in->epoch, now, now);
    msg_str(&f->scratch, "state", "gap");
    msg_str(&f->scratch, "detail", "trades the exchange's REST API no longer serves");
    msg_raw(&f->scratch, "gap", g.data);
    msg_end(&f->scratch);
    buf_free(&g);
    metric_inc(trade_metric("exchange_ingest_backfill_gaps_total",
                            "Spans of trades that could not be backfilled, announced on status.EXCHANGE",
                            f->ex));
    log_warn("trade gap announced",
             "exchange=%s channel=%s from_ts=%" PRId64 " to_ts=%" PRId64 " last_trade_id=%s", f->name,
             log_q(channel), from_ts, to_ts, log_q(last_trade_id ? last_trade_id : ""));
    publish_counted(f, sch, f->scratch.data, f->scratch.len);
}

/* wsclient callbacks: run on the loop thread. */
static void ws_on_open(wsc_t *wsc, void *arg)
{
    feed_t *f = arg;
    (void)wsc;
    f->opens++;
    if (f->opens > 1)
        metric_inc(f->m_reconnects);
    metric_set(f->m_connected, 1);
    sink_status(f, f->name, "connected", "");
    /* Before subscribing: the channels' live trades are held from the first
     * one on, until what was missed is fetched. */
    backfill_begin(f->bf);
    int r = f->ops->on_open(f->conn);
    if (r < 0) {
        log_warn_err(r, "subscribe failed", "exchange=%s", f->name);
        wsc_reconnect(f->wsc, "subscribe_failed");
    }
}

static void ws_on_message(wsc_t *wsc, int binary, const char *data, size_t len, void *arg)
{
    feed_t *f = arg;
    (void)wsc;
    f->ops->on_frame(f->conn, binary, data, len, (int64_t)worker_now_ms());
}

static void ws_on_close(wsc_t *wsc, const char *cause, void *arg)
{
    feed_t *f = arg;
    (void)wsc;
    metric_set(f->m_connected, 0);
    f->ops->on_close(f->conn);
    /* A feed cut for silence says so first: clients mark its channels stale
     * until it is subscribed again. */
    if (cause != NULL && strcmp(cause, "stale") == 0)
        sink_status(f, f->name, "stale", "no data within stale_after_ms; reconnecting");
    sink_status(f, f->name, "disconnected", cause ? cause : "");
}

/* The feed's memory, its connector included (wsclient stopped or never started). */
static void feed_free(feed_t *f)
{
    if (f->conn != NULL)
        f->ops->destroy(f->conn);
    buf_free(&f->url);
    buf_free(&f->scratch);
    free(f);
}

static void ws_on_stopped(wsc_t *wsc, void *arg)
{
    feed_t *f = arg;
    (void)wsc;
    if (f->in->feeds[f->ex] == f)
        f->in->feeds[f->ex] = NULL;
    feed_free(f);
}

int feed_start(ingest_t *in, int ex, feed_t **out)
{
    int r;
    feed_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -ENOMEM;
    f->in = in;
    f->ex = ex;
    f->name = cfg_exchange_names[ex];
    f->xcfg = &in->cfg->exchange[ex];
    f->ops = connectors[ex];
    buf_init(&f->url);
    buf_init(&f->scratch);
    snprintf(f->state, sizeof(f->state), "connecting");

    metric_t *msgs = metric_counter("exchange_ingest_messages_total",
                                    "Normalized messages published, by exchange and type");
    for (int t = 0; t < T_COUNT; t++)
        f->m_msgs[t] = metric_labels(msgs, "exchange=\"%s\",type=\"%s\"", f->name, type_names[t]);
    f->m_malformed = metric_counter("exchange_ingest_malformed_total",
                                    "Exchange frames skipped as malformed, by exchange and reason");
    f->m_connected =
        metric_labels(metric_gauge("exchange_ingest_connected", "1 while the exchange WebSocket is open"),
                      "exchange=\"%s\"", f->name);
    f->m_age = metric_labels(metric_gauge("exchange_ingest_last_message_age_seconds",
                                          "Seconds since the exchange's last data message"),
                             "exchange=\"%s\"", f->name);
    f->m_reconnects = metric_labels(
        metric_counter("exchange_ingest_reconnects_total", "Exchange connections re-established"),
        "exchange=\"%s\"", f->name);
    metric_set(f->m_connected, 0);

    f->sink.arg = f;
    f->sink.emit = sink_emit;
    f->sink.trade = sink_trade;
    f->sink.next_seq = sink_next_seq;
    f->sink.epoch = in->epoch;
    f->sink.malformed = sink_malformed;
    f->sink.send_text = sink_send_text;
    f->sink.reconnect = sink_reconnect;
    f->sink.status = sink_status;

    if (f->ops == NULL || (r = f->ops->url(f->xcfg, &f->url)) < 0) {
        log_error("cannot build exchange url", "exchange=%s", f->name);
        r = -EINVAL;
        goto fail;
    }
    f->conn = f->ops->create(f->xcfg, &f->sink);
    if (f->conn == NULL) {
        log_error("cannot create connector", "exchange=%s", f->name);
        r = -ENOMEM;
        goto fail;
    }
    if ((r = backfill_create(in, f, ex, f->conn, &f->bf)) < 0) {
        log_error("cannot create the REST backfill", "exchange=%s", f->name);
        goto fail;
    }
    wsc_opts_t o;
    memset(&o, 0, sizeof(o));
    o.name = f->name;
    o.url = f->url.data;
    o.ca_file = f->xcfg->ca_file;
    o.insecure_skip_verify = f->xcfg->insecure_skip_verify;
    o.max_message_bytes = (size_t)f->xcfg->max_message_bytes;
    o.reconnect_min_ms = f->xcfg->reconnect_min_ms;
    o.reconnect_max_ms = f->xcfg->reconnect_max_ms;
    o.stale_after_ms = f->xcfg->stale_after_ms;
    o.connect_timeout_ms = f->xcfg->connect_timeout_ms;
    wsc_callbacks_t cbs = {
        .on_open = ws_on_open,
        .on_message = ws_on_message,
        .on_close = ws_on_close,
        .on_stopped = ws_on_stopped,
    };
    if ((r = wsc_start(in->loop, &o, &cbs, f, &f->wsc)) < 0) {
        log_error_err(r, "cannot start websocket client", "exchange=%s url=%s", f->name, log_q(f->url.data));
        goto fail;
    }
    log_info("exchange feed started", "exchange=%s url=%s rest_url=%s", f->name, log_q(f->url.data),
             log_q(f->bf != NULL ? f->xcfg->rest_url : ""));
    *out = f;
    return 0;
fail:
    backfill_stop(f->bf);
    feed_free(f);
    return r;
}

void feed_stop(feed_t *f)
{
    if (f == NULL || f->stopping)
        return;
    f->stopping = 1;
    /* wsclient does not call on_close for a stop: say it here. */
    if (wsc_is_open(f->wsc)) {
        metric_set(f->m_connected, 0);
        f->ops->on_close(f->conn);
    }
    backfill_stop(f->bf);
    f->bf = NULL;
    sink_status(f, f->name, "disconnected", "shutdown");
    wsc_stop(f->wsc);
}

void feed_tick(feed_t *f, int64_t now_ms)
{
    if (!f->stopping)
        f->ops->on_tick(f->conn, now_ms);
}

void feed_set_epoch(feed_t *f, int64_t epoch)
{
    f->sink.epoch = epoch;
}

json_t *feed_status(feed_t *f, int64_t now_ms)
{
    json_t *o = json_object();
    json_object_set_new(o, "state", json_string(f->state));
    if (f->last_msg_ms > 0) {
        int64_t age = now_ms > f->last_msg_ms ? now_ms - f->last_msg_ms : 0;
        json_object_set_new(o, "last_message_age_ms", json_integer(age));
        metric_set(f->m_age, (double)age / 1000.0);
    } else {
        json_object_set_new(o, "last_message_age_ms", json_null());
    }
    json_object_set_new(o, "messages", json_integer((json_int_t)f->messages));
    json_object_set_new(o, "reconnects", json_integer(f->opens > 1 ? (json_int_t)(f->opens - 1) : 0));
    return o;
}
