/* Coinbase Advanced Trade connector: one subscribe per channel, per-connection
 * sequence_num gap detection, the level2 local books (book.c) published as
 * top-N at most once per book_interval_ms, market_trades and ticker. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "book.h"
#include "connector.h"
#include "log.h"
#include "msg.h"

#define CB_DEFAULT_DEPTH 50
#define CB_GAP_WINDOW_MS 60000
#define CB_GAP_LIMIT 5 /* gaps in the window before a reconnect instead */

typedef struct {
    char product[48]; /* "BTC-USD" */
    char symbol[48];
    book_t book;
    int valid; /* a snapshot was applied since the last gap */
    int dirty; /* changed since the last publish */
    int64_t ts, recv_ts;
    int64_t last_pub_ms;
    buf_t last; /* the last published bids/asks, to skip repeats */
} cb_book_t;

typedef struct {
    connector_t base;
    cb_book_t *books;
    int nbooks;
    int have_seq;
    int64_t last_seq;
    int64_t gap_window_start;
    int gaps;
    int reconnect_asked;
    int in_snapshot; /* walking a market_trades snapshot event */
} coinbase_t;

static void coinbase_destroy(connector_t *c)
{
    coinbase_t *cb = (coinbase_t *)c;
    if (!c)
        return;
    for (int i = 0; i < cb->nbooks; i++) {
        book_free(&cb->books[i].book);
        buf_free(&cb->books[i].last);
    }
    free(cb->books);
    conn_base_free(c);
    free(cb);
}

static connector_t *coinbase_create(const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    coinbase_t *cb = calloc(1, sizeof(*cb));
    if (!cb)
        return NULL;
    if (conn_base_init(&cb->base, &coinbase_connector, cfg, sink) < 0) {
        free(cb);
        return NULL;
    }
    cb->books = calloc((size_t)cb->base.nmarkets, sizeof(cb_book_t));
    if (!cb->books)
        goto fail;
    for (int i = 0; i < cb->base.nmarkets; i++) {
        cb_book_t *b = &cb->books[cb->nbooks];
        if (conn_symbol_dash(cb->base.markets[i], b->symbol, sizeof(b->symbol)) < 0) {
            log_error("bad coinbase market", "market=%s", log_q(cb->base.markets[i]));
            goto fail;
        }
        memcpy(b->product, b->symbol, sizeof(b->product));
        book_init(&b->book);
        buf_init(&b->last);
        cb->nbooks++;
    }
    return &cb->base;
fail:
    coinbase_destroy(&cb->base);
    return NULL;
}

static int send_sub(connector_t *c, const char *type, const char *channel)
{
    coinbase_t *cb = (coinbase_t *)c;
    buf_t f;
    int r = 0;
    buf_init(&f);
    buf_puts(&f, "{\"type\":");
    buf_json_str(&f, type);
    buf_puts(&f, ",\"product_ids\":[");
    for (int i = 0; i < cb->nbooks; i++) {
        if (i)
            buf_puts(&f, ",");
        buf_json_str(&f, cb->books[i].product);
    }
    buf_puts(&f, "],\"channel\":");
    buf_json_str(&f, channel);
    buf_puts(&f, "}");
    if (c->sink->send_text)
        r = c->sink->send_text(c->sink->arg, f.data, f.len);
    buf_free(&f);
    return r;
}

/* Our channel names to Coinbase's. */
static const char *channel_name(const char *ch)
{
    return !strcmp(ch, "ticker") ? "ticker" : !strcmp(ch, "trade") ? "market_trades" : "level2";
}

static void invalidate_books(coinbase_t *cb)
{
    for (int i = 0; i < cb->nbooks; i++) {
        cb->books[i].valid = 0;
        cb->books[i].dirty = 0;
        book_clear(&cb->books[i].book);
    }
}

static int coinbase_on_open(connector_t *c)
{
    coinbase_t *cb = (coinbase_t *)c;
    int r, again = c->open;
    c->open = 1;
    c->subscribed = 0;
    cb->have_seq = 0;
    cb->reconnect_asked = 0;
    invalidate_books(cb);
    /* Called again on a live connection (resubscribe): drop the old
     * subscriptions first so level2 sends a fresh snapshot. */
    for (int i = 0; again && i < c->nchannels; i++)
        if ((r = send_sub(c, "unsubscribe", channel_name(c->channels_order[i]))) < 0)
            return r;
    /* heartbeats always: quiet channels are closed after 60-90 s */
    if ((r = send_sub(c, "subscribe", "heartbeats")) < 0)
        return r;
    for (int i = 0; i < c->nchannels; i++) {
        if ((r = send_sub(c, "subscribe", channel_name(c->channels_order[i]))) < 0)
            return r;
    }
    return 0;
}

static void coinbase_on_close(connector_t *c)
{
    coinbase_t *cb = (coinbase_t *)c;
    c->open = 0;
    c->subscribed = 0;
    cb->have_seq = 0;
    invalidate_books(cb);
}

/* A sequence gap: the books may have missed updates. Resubscribe level2 for
 * a fresh snapshot (sequence_num keeps counting on this connection); when
 * gaps repeat, ask for a new connection instead. */
static void on_gap(connector_t *c, int64_t expected, int64_t got, int64_t now_ms)
{
    coinbase_t *cb = (coinbase_t *)c;
    char detail[96];
    snprintf(detail, sizeof(detail), "sequence gap: expected %lld got %lld", (long long)expected,
             (long long)got);
    log_warn("sequence gap", "exchange=%s expected=%lld got=%lld", c->exchange, (long long)expected,
             (long long)got);
    if (c->sink->status)
        c->sink->status(c->sink->arg, c->exchange, "error", detail);
    invalidate_books(cb);
    if (now_ms - cb->gap_window_start > CB_GAP_WINDOW_MS) {
        cb->gap_window_start = now_ms;
        cb->gaps = 0;
    }
    if (++cb->gaps >= CB_GAP_LIMIT) {
        if (!cb->reconnect_asked && c->sink->reconnect) {
            cb->reconnect_asked = 1;
            c->sink->reconnect(c->sink->arg, "sequence_gap");
        }
        return;
    }
    if (c->ch_orderbook) {
        send_sub(c, "unsubscribe", "level2");
        send_sub(c, "subscribe", "level2");
    }
}

static cb_book_t *find_book(coinbase_t *cb, const char *product)
{
    for (int i = 0; i < cb->nbooks; i++)
        if (!strcasecmp(cb->books[i].product, product))
            return &cb->books[i];
    return NULL;
}

static const char *str_field(json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return "missing_field";
    if (!json_is_string(v))
        return "wrong_type";
    *out = json_string_value(v);
    return NULL;
}

#define NEED(expr)                                                                                           \
    do {                                                                                                     \
        if ((why = (expr)) != NULL)                                                                          \
            goto bad;                                                                                        \
    } while (0)

static const char *check_update(json_t *u, int *bid)
{
    const char *side, *why;
    char tmp[DECIMAL_MAX];
    if (!json_is_object(u))
        return "wrong_type";
    NEED(str_field(u, "side", &side));
    if (!strcmp(side, "bid"))
        *bid = 1;
    else if (!strcmp(side, "offer") || !strcmp(side, "ask"))
        *bid = 0;
    else
        return "bad_side";
    json_t *p = json_object_get(u, "price_level"), *q = json_object_get(u, "new_quantity");
    NEED(conn_decimal(p, tmp, sizeof(tmp)));
    NEED(conn_decimal(q, tmp, sizeof(tmp)));
    return NULL;
bad:
    return why;
}

/* Validate the whole event first so a bad update never leaves a book
 * half-applied. */
static const char *on_l2_event(coinbase_t *cb, json_t *ev, int64_t ts, int64_t recv_ts)
{
    const char *type, *product, *why;
    json_t *ups, *u;
    size_t i;
    int bid;
    if (!json_is_object(ev))
        return "wrong_type";
    NEED(str_field(ev, "type", &type));
    NEED(str_field(ev, "product_id", &product));
    int snap = !strcmp(type, "snapshot");
    if (!snap && strcmp(type, "update") != 0)
        return "unknown_type";
    cb_book_t *b = find_book(cb, product);
    if (!b)
        return "bad_symbol";
    ups = json_object_get(ev, "updates");
    if (!ups)
        return "missing_field";
    if (!json_is_array(ups))
        return "wrong_type";
    json_array_foreach(ups, i, u) NEED(check_update(u, &bid));
    if (snap) {
        book_clear(&b->book);
        b->valid = 1;
    } else if (!b->valid) {
        return NULL; /* waiting for the snapshot after a gap */
    }
    json_array_foreach(ups, i, u)
    {
        char p[DECIMAL_MAX], q[DECIMAL_MAX];
        check_update(u, &bid);
        conn_decimal(json_object_get(u, "price_level"), p, sizeof(p));
        conn_decimal(json_object_get(u, "new_quantity"), q, sizeof(q));
        if (book_set(&b->book, bid, p, q) < 0) {
            b->valid = 0; /* out of memory: the book can no longer be trusted */
            book_clear(&b->book);
            return "no_memory";
        }
    }
    b->dirty = 1;
    b->ts = ts;
    b->recv_ts = recv_ts;
    return NULL;
bad:
    return why;
}

static const char *on_trade(connector_t *c, json_t *t, int64_t ts, int64_t recv_ts)
{
    char sym[48], price[DECIMAL_MAX], qty[DECIMAL_MAX], id[80];
    const char *why, *product, *side, *time;
    if (!json_is_object(t))
        return "wrong_type";
    NEED(str_field(t, "product_id", &product));
    if (conn_symbol_dash(product, sym, sizeof(sym)) < 0)
        return "bad_symbol";
    NEED(conn_id(json_object_get(t, "trade_id"), id, sizeof(id)));
    NEED(conn_decimal(json_object_get(t, "price"), price, sizeof(price)));
    NEED(conn_decimal(json_object_get(t, "size"), qty, sizeof(qty)));
    NEED(str_field(t, "side", &side));
    if (!strcasecmp(side, "BUY"))
        side = "buy";
    else if (!strcasecmp(side, "SELL"))
        side = "sell";
    else
        return "bad_side";
    if (json_object_get(t, "time")) {
        NEED(str_field(t, "time", &time));
        if (conn_rfc3339_ms(time, &ts) < 0)
            return "bad_time";
    }
    conn_emit_trade(c, sym, price, qty, side, id, ts, recv_ts, ((coinbase_t *)c)->in_snapshot);
    return NULL;
bad:
    return why;
}

static const char *on_ticker(connector_t *c, json_t *t, int64_t ts, int64_t recv_ts)
{
    /* Coinbase gives no open and no quote volume: they are left out rather
     * than derived inexactly. */
    static const struct {
        const char *out, *key;
        int optional;
    } f[] = {
        {"last", "price", 0},
        {"high", "high_24_h", 0},
        {"low", "low_24_h", 0},
        {"volume", "volume_24_h", 0},
        {"change_rate", "price_percent_chg_24_h", 0},
        {"bid", "best_bid", 1},
        {"bid_qty", "best_bid_quantity", 1},
        {"ask", "best_ask", 1},
        {"ask_qty", "best_ask_quantity", 1},
    };
    enum { NF = sizeof(f) / sizeof(f[0]) };
    char sym[48], val[NF][DECIMAL_MAX + 4];
    int have[NF];
    const char *why, *product;
    if (!json_is_object(t))
        return "wrong_type";
    NEED(str_field(t, "product_id", &product));
    if (conn_symbol_dash(product, sym, sizeof(sym)) < 0)
        return "bad_symbol";
    for (size_t i = 0; i < NF; i++) {
        json_t *v = json_object_get(t, f[i].key);
        have[i] = v != NULL;
        if (!v && f[i].optional)
            continue;
        NEED(conn_decimal(v, val[i], sizeof(val[i])));
        if (!strcmp(f[i].out, "change_rate")) {
            char pct[DECIMAL_MAX];
            memcpy(pct, val[i], sizeof(pct));
            pct[sizeof(pct) - 1] = 0;
            if (decimal_shift(pct, 2, val[i], sizeof(val[i])) < 0)
                return "bad_number";
        }
    }
    buf_reset(&c->body);
    for (size_t i = 0; i < NF; i++)
        if (have[i])
            msg_str(&c->body, f[i].out, val[i]);
    conn_emit(c, "ticker", sym, ts, recv_ts);
    return NULL;
bad:
    return why;
}

/* Each item of each event is its own message: a bad one is counted and
 * skipped, the others still go out. Returns whether anything was emitted. */
/* The first item's time is later than the last one's. */
static int newest_first(json_t *items)
{
    size_t n = json_array_size(items);
    int64_t a, b;
    if (n < 2)
        return 0;
    json_t *ta = json_object_get(json_array_get(items, 0), "time");
    json_t *tb = json_object_get(json_array_get(items, n - 1), "time");
    if (!json_is_string(ta) || !json_is_string(tb) || conn_rfc3339_ms(json_string_value(ta), &a) < 0 ||
        conn_rfc3339_ms(json_string_value(tb), &b) < 0)
        return 0;
    return a > b;
}

static int for_items(connector_t *c, json_t *events, const char *list, int64_t ts, int64_t recv_ts,
                     const char *(*fn)(connector_t *, json_t *, int64_t, int64_t))
{
    coinbase_t *cb = (coinbase_t *)c;
    size_t i, j;
    json_t *ev, *it;
    int any = 0;
    json_array_foreach(events, i, ev)
    {
        json_t *items = json_is_object(ev) ? json_object_get(ev, list) : NULL;
        if (!json_is_array(items)) {
            conn_malformed(c, items ? "wrong_type" : "missing_field");
            continue;
        }
        /* A snapshot event lists the recent trades newest first: publish them
         * oldest first, like the updates that follow. */
        json_t *type = json_object_get(ev, "type");
        cb->in_snapshot = json_is_string(type) && !strcmp(json_string_value(type), "snapshot");
        size_t n = json_array_size(items);
        for (j = 0; j < n; j++) {
            it = json_array_get(items, cb->in_snapshot && newest_first(items) ? n - 1 - j : j);
            const char *why = fn(c, it, ts, recv_ts);
            if (why)
                conn_malformed(c, why);
            else
                any = 1;
        }
        cb->in_snapshot = 0;
    }
    return any;
}

static int coinbase_on_frame(connector_t *c, int binary, const char *data, size_t len, int64_t recv_ts)
{
    coinbase_t *cb = (coinbase_t *)c;
    (void)binary;
    json_t *root = conn_parse(c, data, len);
    const char *why = NULL, *channel;
    int64_t ts = recv_ts;
    if (!root)
        return 0;
    json_t *type = json_object_get(root, "type");
    if (json_is_string(type) && !strcmp(json_string_value(type), "error")) {
        json_t *m = json_object_get(root, "message");
        const char *msg = json_is_string(m) ? json_string_value(m) : "";
        log_warn("exchange error", "exchange=%s detail=%s", c->exchange, log_q(msg));
        if (c->sink->status)
            c->sink->status(c->sink->arg, c->exchange, "error", msg);
        goto out;
    }
    if ((why = str_field(root, "channel", &channel)) != NULL)
        goto out;
    json_t *seq = json_object_get(root, "sequence_num");
    if (seq && !json_is_integer(seq)) {
        why = "wrong_type";
        goto out;
    }
    json_t *tsv = json_object_get(root, "timestamp");
    if (tsv && (!json_is_string(tsv) || conn_rfc3339_ms(json_string_value(tsv), &ts) < 0)) {
        why = json_is_string(tsv) ? "bad_time" : "wrong_type";
        goto out;
    }
    if (seq) {
        int64_t n = json_integer_value(seq);
        if (cb->have_seq && n != cb->last_seq + 1)
            on_gap(c, cb->last_seq + 1, n, recv_ts);
        cb->have_seq = 1;
        cb->last_seq = n;
    }
    if (!strcmp(channel, "heartbeats") || !strcmp(channel, "subscriptions"))
        goto out; /* keep-alive and the subscription ack */
    json_t *events = json_object_get(root, "events");
    if (!events) {
        why = "missing_field";
        goto out;
    }
    if (!json_is_array(events)) {
        why = "wrong_type";
        goto out;
    }
    if (!strcmp(channel, "l2_data")) {
        size_t i;
        json_t *ev;
        int ok = 0;
        json_array_foreach(events, i, ev)
        {
            const char *w = on_l2_event(cb, ev, ts, recv_ts);
            if (w)
                conn_malformed(c, w);
            else
                ok = 1;
        }
        if (ok)
            conn_data_seen(c);
    } else if (!strcmp(channel, "market_trades")) {
        if (for_items(c, events, "trades", ts, recv_ts, on_trade))
            conn_data_seen(c);
    } else if (!strcmp(channel, "ticker") || !strcmp(channel, "ticker_batch")) {
        if (for_items(c, events, "tickers", ts, recv_ts, on_ticker))
            conn_data_seen(c);
    } else {
        why = "unknown_type";
    }
out:
    return conn_frame_done(c, why, root);
}

static void publish(connector_t *c, cb_book_t *b, int64_t now_ms)
{
    size_t depth = c->depth > 0 ? (size_t)c->depth : CB_DEFAULT_DEPTH;
    buf_t bids, asks;
    buf_init(&bids);
    buf_init(&asks);
    book_top_json(&b->book, 1, depth, &bids);
    book_top_json(&b->book, 0, depth, &asks);
    buf_reset(&c->body);
    msg_raw(&c->body, "bids", bids.data);
    msg_raw(&c->body, "asks", asks.data);
    b->dirty = 0;
    /* changes below the top N publish nothing */
    if (!(b->last.len == c->body.len && !memcmp(b->last.data, c->body.data, c->body.len))) {
        buf_reset(&b->last);
        buf_append(&b->last, c->body.data, c->body.len);
        b->last_pub_ms = now_ms;
        conn_emit(c, "orderbook", b->symbol, b->ts, b->recv_ts);
    }
    buf_free(&bids);
    buf_free(&asks);
}

static void coinbase_on_tick(connector_t *c, int64_t now_ms)
{
    coinbase_t *cb = (coinbase_t *)c;
    if (!c->open)
        return;
    for (int i = 0; i < cb->nbooks; i++) {
        cb_book_t *b = &cb->books[i];
        if (b->valid && b->dirty && now_ms - b->last_pub_ms >= c->book_interval_ms)
            publish(c, b, now_ms);
    }
}

static int coinbase_url(const cfg_exchange_t *cfg, buf_t *out)
{
    return buf_puts(out, cfg->url && *cfg->url ? cfg->url : "wss://advanced-trade-ws.coinbase.com");
}

const connector_ops_t coinbase_connector = {
    .name = "coinbase",
    .url = coinbase_url,
    .create = coinbase_create,
    .destroy = coinbase_destroy,
    .on_open = coinbase_on_open,
    .on_frame = coinbase_on_frame,
    .on_tick = coinbase_on_tick,
    .on_close = coinbase_on_close,
};
