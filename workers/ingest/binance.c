/* Binance Spot connector: combined streams named in the URL, {"stream","data"}
 * frames (trade, 24hrTicker, partial depth), control acks and errors,
 * serverShutdown, and the proactive reconnect before the 24 h cut. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "connector.h"
#include "log.h"
#include "msg.h"

#define BINANCE_MAX_STREAMS 1024
#define BINANCE_MAX_AGE_MS ((int64_t)(23 * 3600 + 50 * 60) * 1000) /* cut at 24 h */

typedef struct {
    connector_t base;
    int reconnect_asked; /* once per connection */
} binance_t;

/* Partial book streams exist for 5, 10 and 20 levels. */
static int binance_depth(int depth)
{
    return depth <= 0 ? 20 : depth <= 5 ? 5 : depth <= 10 ? 10 : 20;
}

static int binance_url(const cfg_exchange_t *cfg, buf_t *out)
{
    connector_t tmp;
    norm_sink_t none = {0};
    int r, n = 0;
    memset(&tmp, 0, sizeof(tmp));
    if ((r = conn_base_init(&tmp, &binance_connector, cfg, &none)) < 0)
        return r;
    const char *base = cfg->url && *cfg->url ? cfg->url : "wss://stream.binance.com:9443";
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    if (bl >= 3 && !memcmp(base + bl - 3, "/ws", 3))
        bl -= 3; /* raw-stream endpoint given: use the combined one */
    buf_append(out, base, bl);
    if (!(bl >= 7 && !memcmp(base + bl - 7, "/stream", 7)))
        buf_puts(out, "/stream");
    buf_puts(out, "?streams=");
    for (int m = 0; m < tmp.nmarkets; m++) {
        char sym[48];
        size_t sl = strlen(tmp.markets[m]);
        if (sl >= sizeof(sym)) {
            r = -EINVAL;
            goto out;
        }
        for (size_t k = 0; k <= sl; k++) {
            char ch = tmp.markets[m][k];
            sym[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
        }
        for (int i = 0; i < tmp.nchannels; i++) {
            const char *ch = tmp.channels_order[i];
            if (++n > BINANCE_MAX_STREAMS) {
                r = -E2BIG; /* one connection carries at most 1024 streams */
                goto out;
            }
            if (n > 1)
                buf_puts(out, "/");
            if (!strcmp(ch, "orderbook"))
                buf_printf(out, "%s@depth%d@100ms", sym, binance_depth(tmp.depth));
            else
                buf_printf(out, "%s@%s", sym, ch);
        }
    }
    r = 0;
out:
    conn_base_free(&tmp);
    return r;
}

static connector_t *binance_create(const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    binance_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (conn_base_init(&b->base, &binance_connector, cfg, sink) < 0) {
        free(b);
        return NULL;
    }
    return &b->base;
}

static void binance_destroy(connector_t *c)
{
    if (!c)
        return;
    conn_base_free(c);
    free(c);
}

/* The streams are in the URL: nothing to send. Live SUBSCRIBE is not used
 * because it counts against the 5 messages/s limit. */
static int binance_on_open(connector_t *c)
{
    c->open = 1;
    c->subscribed = 0;
    c->opened_ms = 0;
    ((binance_t *)c)->reconnect_asked = 0;
    return 0;
}

static void binance_on_close(connector_t *c)
{
    c->open = 0;
    c->subscribed = 0;
    c->opened_ms = 0;
    ((binance_t *)c)->reconnect_asked = 0;
}

static void ask_reconnect(connector_t *c, const char *cause)
{
    binance_t *b = (binance_t *)c;
    if (b->reconnect_asked)
        return;
    b->reconnect_asked = 1;
    if (c->sink->status)
        c->sink->status(c->sink->arg, c->exchange, "disconnected", cause);
    if (c->sink->reconnect)
        c->sink->reconnect(c->sink->arg, cause);
}

static void binance_on_tick(connector_t *c, int64_t now_ms)
{
    if (!c->open)
        return;
    if (c->opened_ms == 0)
        c->opened_ms = now_ms;
    if (now_ms - c->opened_ms >= BINANCE_MAX_AGE_MS) {
        log_info("binance connection near the 24 h cut", "exchange=%s age_ms=%lld", c->exchange,
                 (long long)(now_ms - c->opened_ms));
        ask_reconnect(c, "max_age");
    }
}

#define NEED(expr)                                                                                           \
    do {                                                                                                     \
        if ((why = (expr)) != NULL)                                                                          \
            goto bad;                                                                                        \
    } while (0)

static const char *symbol_of(json_t *d, char *sym, size_t symsz)
{
    json_t *s = json_object_get(d, "s");
    if (!s)
        return "missing_field";
    if (!json_is_string(s))
        return "wrong_type";
    return conn_symbol_concat(json_string_value(s), sym, symsz) < 0 ? "bad_symbol" : NULL;
}

static const char *on_trade(connector_t *c, json_t *d, int64_t recv_ts)
{
    char sym[48], price[DECIMAL_MAX], qty[DECIMAL_MAX], id[80];
    const char *why;
    int64_t ts;
    NEED(symbol_of(d, sym, sizeof(sym)));
    NEED(conn_decimal(json_object_get(d, "p"), price, sizeof(price)));
    NEED(conn_decimal(json_object_get(d, "q"), qty, sizeof(qty)));
    NEED(conn_id(json_object_get(d, "t"), id, sizeof(id)));
    NEED(conn_ts(json_object_get(d, "T"), &ts));
    json_t *m = json_object_get(d, "m");
    if (!m)
        return "missing_field";
    if (!json_is_boolean(m))
        return "wrong_type";
    /* m: the buyer is the maker, so the taker sold */
    conn_emit_trade(c, sym, price, qty, json_is_true(m) ? "sell" : "buy", id, ts, recv_ts, 0);
    return NULL;
bad:
    return why;
}

static const char *on_ticker(connector_t *c, json_t *d, int64_t recv_ts)
{
    static const struct {
        const char *out, *key;
    } f[] = {
        {"last", "c"},    {"open", "o"},         {"high", "h"},        {"low", "l"},
        {"volume", "v"},  {"quote_volume", "q"}, {"change_rate", "P"}, {"bid", "b"},
        {"bid_qty", "B"}, {"ask", "a"},          {"ask_qty", "A"},
    };
    enum { NF = sizeof(f) / sizeof(f[0]) };
    char sym[48], val[NF][DECIMAL_MAX + 4];
    const char *why;
    int64_t ts;
    NEED(symbol_of(d, sym, sizeof(sym)));
    for (size_t i = 0; i < NF; i++) {
        NEED(conn_decimal(json_object_get(d, f[i].key), val[i], sizeof(val[i])));
        if (!strcmp(f[i].key, "P")) {
            char pct[DECIMAL_MAX];
            memcpy(pct, val[i], sizeof(pct));
            pct[sizeof(pct) - 1] = 0;
            /* P is a percent: shift the decimal text, never through a double */
            if (decimal_shift(pct, 2, val[i], sizeof(val[i])) < 0)
                return "bad_number";
        }
    }
    NEED(conn_ts(json_object_get(d, "E"), &ts));
    buf_reset(&c->body);
    for (size_t i = 0; i < NF; i++)
        msg_str(&c->body, f[i].out, val[i]);
    conn_emit(c, "ticker", sym, ts, recv_ts);
    return NULL;
bad:
    return why;
}

static const char *side_levels(connector_t *c, json_t *arr, buf_t *out)
{
    char p[DECIMAL_MAX], q[DECIMAL_MAX];
    const char *why;
    size_t i, n = 0, max = c->depth > 0 ? (size_t)c->depth : (size_t)-1;
    json_t *lv;
    if (!arr)
        return "missing_field";
    if (!json_is_array(arr))
        return "wrong_type";
    buf_puts(out, "[");
    json_array_foreach(arr, i, lv)
    {
        if (!json_is_array(lv) || json_array_size(lv) < 2)
            return "wrong_type";
        NEED(conn_decimal(json_array_get(lv, 0), p, sizeof(p)));
        NEED(conn_decimal(json_array_get(lv, 1), q, sizeof(q)));
        if (n >= max)
            continue;
        buf_puts(out, n ? ",[" : "[");
        buf_json_str(out, p);
        buf_puts(out, ",");
        buf_json_str(out, q);
        buf_puts(out, "]");
        n++;
    }
    buf_puts(out, "]");
    return NULL;
bad:
    return why;
}

/* Partial depth carries no symbol and no time: the symbol comes from the
 * stream name ("btcusdt@depth20@100ms"), ts is the receive time. */
static const char *on_depth(connector_t *c, const char *stream, json_t *d, int64_t recv_ts)
{
    char raw[48], sym[48];
    const char *why;
    const char *at = strchr(stream, '@');
    buf_t bids, asks;
    if (!at || (size_t)(at - stream) >= sizeof(raw) || strncmp(at, "@depth", 6) != 0)
        return "bad_symbol";
    memcpy(raw, stream, (size_t)(at - stream));
    raw[at - stream] = 0;
    if (conn_symbol_concat(raw, sym, sizeof(sym)) < 0)
        return "bad_symbol";
    buf_init(&bids);
    buf_init(&asks);
    NEED(side_levels(c, json_object_get(d, "bids"), &bids));
    NEED(side_levels(c, json_object_get(d, "asks"), &asks));
    buf_reset(&c->body);
    msg_raw(&c->body, "bids", bids.data);
    msg_raw(&c->body, "asks", asks.data);
    conn_emit(c, "orderbook", sym, recv_ts, recv_ts);
bad:
    buf_free(&bids);
    buf_free(&asks);
    return why;
}

static void on_error(connector_t *c, json_t *err)
{
    json_t *code = json_is_object(err) ? json_object_get(err, "code") : NULL;
    json_t *m = json_is_object(err) ? json_object_get(err, "msg") : NULL;
    buf_t d;
    buf_init(&d);
    buf_printf(&d, "%lld: %s", json_is_integer(code) ? (long long)json_integer_value(code) : 0LL,
               json_is_string(m) ? json_string_value(m) : "");
    log_warn("exchange error", "exchange=%s detail=%s", c->exchange, log_q(d.data));
    if (c->sink->status)
        c->sink->status(c->sink->arg, c->exchange, "error", d.data);
    buf_free(&d);
}

static int is_shutdown(json_t *o)
{
    json_t *e = json_object_get(o, "e");
    return json_is_string(e) && !strcmp(json_string_value(e), "serverShutdown");
}

static int binance_on_frame(connector_t *c, int binary, const char *data, size_t len, int64_t recv_ts)
{
    (void)binary;
    json_t *root = conn_parse(c, data, len);
    const char *why = NULL;
    if (!root)
        return 0;
    json_t *d = json_object_get(root, "data");
    json_t *stream = json_object_get(root, "stream");
    if (json_object_get(root, "error")) {
        on_error(c, json_object_get(root, "error"));
        goto out;
    }
    if (json_object_get(root, "result") && json_object_get(root, "id"))
        goto out; /* ack of a control message */
    if (!d) {
        if (is_shutdown(root))
            ask_reconnect(c, "server_shutdown");
        else
            why = json_object_get(root, "e") ? "unknown_type" : "missing_field";
        goto out;
    }
    if (!json_is_object(d) || !json_is_string(stream)) {
        why = stream ? "wrong_type" : "missing_field";
        goto out;
    }
    json_t *e = json_object_get(d, "e");
    if (e && !json_is_string(e)) {
        why = "wrong_type";
    } else if (!e) {
        if (json_object_get(d, "bids") || json_object_get(d, "lastUpdateId"))
            why = on_depth(c, json_string_value(stream), d, recv_ts);
        else
            why = "unknown_type";
    } else if (!strcmp(json_string_value(e), "trade")) {
        why = on_trade(c, d, recv_ts);
    } else if (!strcmp(json_string_value(e), "24hrTicker")) {
        why = on_ticker(c, d, recv_ts);
    } else if (is_shutdown(d)) {
        ask_reconnect(c, "server_shutdown");
        goto out;
    } else {
        why = "unknown_type";
    }
    if (!why)
        conn_data_seen(c);
out:
    return conn_frame_done(c, why, root);
}

const connector_ops_t binance_connector = {
    .name = "binance",
    .url = binance_url,
    .create = binance_create,
    .destroy = binance_destroy,
    .on_open = binance_on_open,
    .on_frame = binance_on_frame,
    .on_tick = binance_on_tick,
    .on_close = binance_on_close,
};
