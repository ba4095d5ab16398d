/* Upbit connector, and the protocol shared with Bithumb ("upbitlike"): the
 * request array, DEFAULT and SIMPLE keys, {"status":"UP"} keep-alive answers,
 * the error shape, and trade/ticker/orderbook normalization. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "connector.h"
#include "log.h"
#include "msg.h"

#define UPBIT_PING_MS 30000 /* the server closes after ~120 s idle */

connector_t *upbitlike_create(const connector_ops_t *ops, const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    connector_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (conn_base_init(c, ops, cfg, sink) < 0) {
        free(c);
        return NULL;
    }
    return c;
}

void upbitlike_destroy(connector_t *c)
{
    if (!c)
        return;
    conn_base_free(c);
    free(c);
}

/* Allowed orderbook depth suffixes: the smallest one >= depth. */
static int upbit_depth(int depth)
{
    static const int allowed[] = {1, 5, 15, 30};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        if (depth <= allowed[i])
            return allowed[i];
    return 30;
}

int upbitlike_request(const connector_t *c, const char *ticket, buf_t *out)
{
    buf_puts(out, "[{\"ticket\":");
    buf_json_str(out, ticket);
    buf_puts(out, "}");
    for (int i = 0; i < c->nchannels; i++) {
        const char *type = c->channels_order[i];
        int book = !strcmp(type, "orderbook");
        buf_puts(out, ",{\"type\":");
        buf_json_str(out, type);
        buf_puts(out, ",\"codes\":[");
        for (int m = 0; m < c->nmarkets; m++) {
            char code[64];
            size_t n = strlen(c->markets[m]);
            if (n >= sizeof(code) - 4)
                return -EINVAL;
            for (size_t k = 0; k <= n; k++) {
                char ch = c->markets[m][k];
                code[k] = ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
            }
            if (book && c->depth > 0)
                snprintf(code + n, sizeof(code) - n, ".%d", upbit_depth(c->depth));
            if (m)
                buf_puts(out, ",");
            buf_json_str(out, code);
        }
        buf_puts(out, "]}");
    }
    buf_puts(out, ",{\"format\":");
    buf_json_str(out, c->format);
    buf_puts(out, "}]");
    return 0;
}

int upbitlike_on_open(connector_t *c)
{
    char ticket[37];
    buf_t req;
    int r;
    c->open = 1;
    c->subscribed = 0;
    c->opened_ms = 0;
    c->last_ping_ms = 0;
    conn_uuid(ticket);
    buf_init(&req);
    if ((r = upbitlike_request(c, ticket, &req)) == 0 && c->sink->send_text)
        r = c->sink->send_text(c->sink->arg, req.data, req.len);
    buf_free(&req);
    return r;
}

void upbitlike_on_tick(connector_t *c, int64_t now_ms)
{
    if (!c->open)
        return;
    if (c->opened_ms == 0)
        c->opened_ms = c->last_ping_ms = now_ms;
    if (now_ms - c->last_ping_ms >= UPBIT_PING_MS) {
        c->last_ping_ms = now_ms;
        if (c->sink->send_text)
            c->sink->send_text(c->sink->arg, "PING", 4);
    }
}

void upbitlike_on_close(connector_t *c)
{
    c->open = 0;
    c->subscribed = 0;
    c->opened_ms = 0;
}

/* DEFAULT key first, then the SIMPLE one: both are accepted in any frame. */
static json_t *get2(json_t *o, const char *dflt, const char *simple)
{
    json_t *v = json_object_get(o, dflt);
    return v ? v : json_object_get(o, simple);
}

#define NEED(expr)                                                                                           \
    do {                                                                                                     \
        if ((why = (expr)) != NULL)                                                                          \
            goto bad;                                                                                        \
    } while (0)

/* "KRW-BTC" or "KRW-BTC.15" -> "BTC-KRW" */
static const char *symbol_of(json_t *root, char *sym, size_t symsz)
{
    json_t *code = get2(root, "code", "cd");
    char tmp[64];
    if (!code)
        return "missing_field";
    if (!json_is_string(code))
        return "wrong_type";
    if (json_string_length(code) >= sizeof(tmp))
        return "bad_symbol";
    memcpy(tmp, json_string_value(code), json_string_length(code) + 1);
    char *dot = strchr(tmp, '.');
    if (dot)
        *dot = 0;
    return conn_symbol_quote_first(tmp, sym, symsz) < 0 ? "bad_symbol" : NULL;
}

static const char *on_trade(connector_t *c, json_t *root, int64_t recv_ts)
{
    char sym[48], price[DECIMAL_MAX], qty[DECIMAL_MAX], id[80];
    const char *why, *side;
    int64_t ts;
    NEED(symbol_of(root, sym, sizeof(sym)));
    NEED(conn_decimal(get2(root, "trade_price", "tp"), price, sizeof(price)));
    NEED(conn_decimal(get2(root, "trade_volume", "tv"), qty, sizeof(qty)));
    json_t *ab = get2(root, "ask_bid", "ab");
    if (!ab)
        return "missing_field";
    if (!json_is_string(ab))
        return "wrong_type";
    if (!strcmp(json_string_value(ab), "BID"))
        side = "buy";
    else if (!strcmp(json_string_value(ab), "ASK"))
        side = "sell";
    else
        return "bad_side";
    NEED(conn_id(get2(root, "sequential_id", "sid"), id, sizeof(id)));
    NEED(conn_ts(get2(root, "trade_timestamp", "ttms"), &ts));
    /* SNAPSHOT: the last trade, re-sent on every subscribe; the sink's trade
     * id de-duplication drops it when it was already published. */
    json_t *st = get2(root, "stream_type", "st");
    int snap = json_is_string(st) && !strcmp(json_string_value(st), "SNAPSHOT");
    conn_emit_trade(c, sym, price, qty, side, id, ts, recv_ts, snap);
    return NULL;
bad:
    return why;
}

static const char *on_ticker(connector_t *c, json_t *root, int64_t recv_ts)
{
    static const struct {
        const char *out, *dflt, *simple;
    } f[] = {
        {"last", "trade_price", "tp"},
        {"open", "opening_price", "op"},
        {"high", "high_price", "hp"},
        {"low", "low_price", "lp"},
        {"volume", "acc_trade_volume_24h", "atv24h"},
        {"quote_volume", "acc_trade_price_24h", "atp24h"},
        {"change_rate", "signed_change_rate", "scr"},
    };
    char sym[48], val[sizeof(f) / sizeof(f[0])][DECIMAL_MAX];
    const char *why;
    int64_t ts;
    NEED(symbol_of(root, sym, sizeof(sym)));
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        NEED(conn_decimal(get2(root, f[i].dflt, f[i].simple), val[i], sizeof(val[i])));
    NEED(conn_ts(get2(root, "timestamp", "tms"), &ts));
    buf_reset(&c->body);
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        msg_str(&c->body, f[i].out, val[i]);
    conn_emit(c, "ticker", sym, ts, recv_ts);
    return NULL;
bad:
    return why;
}

static void level(buf_t *b, const char *price, const char *qty)
{
    buf_puts(b, b->len > 1 ? ",[" : "[");
    buf_json_str(b, price);
    buf_puts(b, ",");
    buf_json_str(b, qty);
    buf_puts(b, "]");
}

static const char *on_orderbook(connector_t *c, json_t *root, int64_t recv_ts)
{
    char sym[48], p[DECIMAL_MAX], q[DECIMAL_MAX];
    const char *why;
    int64_t ts;
    buf_t bids, asks;
    size_t i, nb = 0, na = 0, max = c->depth > 0 ? (size_t)c->depth : (size_t)-1;
    json_t *unit;
    buf_init(&bids);
    buf_init(&asks);
    NEED(symbol_of(root, sym, sizeof(sym)));
    NEED(conn_ts(get2(root, "timestamp", "tms"), &ts));
    json_t *units = get2(root, "orderbook_units", "obu");
    if (!units)
        NEED("missing_field");
    if (!json_is_array(units))
        NEED("wrong_type");
    buf_puts(&bids, "[");
    buf_puts(&asks, "[");
    json_array_foreach(units, i, unit)
    {
        if (!json_is_object(unit))
            NEED("wrong_type");
        NEED(conn_decimal(get2(unit, "bid_price", "bp"), p, sizeof(p)));
        NEED(conn_decimal(get2(unit, "bid_size", "bs"), q, sizeof(q)));
        if (nb < max && !decimal_is_zero(q)) {
            level(&bids, p, q);
            nb++;
        }
        NEED(conn_decimal(get2(unit, "ask_price", "ap"), p, sizeof(p)));
        NEED(conn_decimal(get2(unit, "ask_size", "as"), q, sizeof(q)));
        if (na < max && !decimal_is_zero(q)) {
            level(&asks, p, q);
            na++;
        }
    }
    buf_puts(&bids, "]");
    buf_puts(&asks, "]");
    buf_reset(&c->body);
    msg_raw(&c->body, "bids", bids.data);
    msg_raw(&c->body, "asks", asks.data);
    conn_emit(c, "orderbook", sym, ts, recv_ts);
    why = NULL;
bad:
    buf_free(&bids);
    buf_free(&asks);
    return why;
}

int upbitlike_on_frame(connector_t *c, int binary, const char *data, size_t len, int64_t recv_ts)
{
    (void)binary; /* Upbit sends BINARY, tests and proxies may send TEXT */
    json_t *root = conn_parse(c, data, len);
    const char *why = NULL;
    if (!root)
        return 0;
    json_t *st = json_object_get(root, "status");
    json_t *err = json_object_get(root, "error");
    json_t *type = get2(root, "type", "ty");
    if (st && !type) {
        if (!json_is_string(st) || strcmp(json_string_value(st), "UP") != 0)
            why = "unknown_type"; /* the PING answer is the only status */
        goto out;
    }
    if (err) {
        json_t *name = json_is_object(err) ? json_object_get(err, "name") : NULL;
        json_t *m = json_is_object(err) ? json_object_get(err, "message") : NULL;
        buf_t d;
        buf_init(&d);
        buf_printf(&d, "%s: %s", json_is_string(name) ? json_string_value(name) : "UNKNOWN",
                   json_is_string(m) ? json_string_value(m) : "");
        log_warn("exchange error", "exchange=%s detail=%s", c->exchange, log_q(d.data));
        if (c->sink->status)
            c->sink->status(c->sink->arg, c->exchange, "error", d.data);
        buf_free(&d);
        goto out;
    }
    if (!type) {
        why = "missing_field";
        goto out;
    }
    if (!json_is_string(type)) {
        why = "wrong_type";
        goto out;
    }
    const char *t = json_string_value(type);
    if (!strcmp(t, "trade"))
        why = on_trade(c, root, recv_ts);
    else if (!strcmp(t, "ticker"))
        why = on_ticker(c, root, recv_ts);
    else if (!strcmp(t, "orderbook"))
        why = on_orderbook(c, root, recv_ts);
    else
        why = "unknown_type";
    if (!why)
        conn_data_seen(c);
out:
    return conn_frame_done(c, why, root);
}

static connector_t *upbit_create(const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    return upbitlike_create(&upbit_connector, cfg, sink);
}

static int upbit_url(const cfg_exchange_t *cfg, buf_t *out)
{
    return buf_puts(out, cfg->url && *cfg->url ? cfg->url : "wss://api.upbit.com/websocket/v1");
}

const connector_ops_t upbit_connector = {
    .name = "upbit",
    .url = upbit_url,
    .create = upbit_create,
    .destroy = upbitlike_destroy,
    .on_open = upbitlike_on_open,
    .on_frame = upbitlike_on_frame,
    .on_tick = upbitlike_on_tick,
    .on_close = upbitlike_on_close,
};
