/* The connector table (indexed by EX_*) and the helpers every connector
 * shares: config copying, frame validation and parsing, exact field
 * extraction (decimals, ids, timestamps), symbol normalization, emitting. */
#include "connector.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "msg.h"

const connector_ops_t *const connectors[EX_COUNT] = {
    [EX_UPBIT] = &upbit_connector,
    [EX_BITHUMB] = &bithumb_connector,
    [EX_BINANCE] = &binance_connector,
    [EX_COINBASE] = &coinbase_connector,
};

int conn_base_init(connector_t *c, const connector_ops_t *ops, const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    char **chs = NULL;
    int nch = 0, r;
    c->ops = ops;
    c->sink = sink;
    c->exchange = ops->name;
    buf_init(&c->body);
    buf_init(&c->out);
    if ((r = cfg_split_list(cfg->markets, &c->markets, &c->nmarkets)) < 0)
        return r;
    if ((r = cfg_split_list(cfg->channels ? cfg->channels : "ticker,trade,orderbook", &chs, &nch)) < 0)
        goto fail;
    r = -EINVAL;
    for (int i = 0; i < nch; i++) {
        int *flag = !strcmp(chs[i], "ticker")      ? &c->ch_ticker
                    : !strcmp(chs[i], "trade")     ? &c->ch_trade
                    : !strcmp(chs[i], "orderbook") ? &c->ch_orderbook
                                                   : NULL;
        if (!flag)
            goto fail;
        if (*flag)
            continue;
        *flag = 1;
        c->channels_order[c->nchannels++] = chs[i];
        chs[i] = NULL;
    }
    if (c->nmarkets == 0 || c->nchannels == 0)
        goto fail;
    cfg_free_list(chs, nch);
    c->depth = cfg->depth > 0 ? cfg->depth : 0;
    c->book_interval_ms = cfg->book_interval_ms > 0 ? cfg->book_interval_ms : 0;
    snprintf(c->format, sizeof(c->format), "%s",
             cfg->format && !strcasecmp(cfg->format, "SIMPLE") ? "SIMPLE" : "DEFAULT");
    return 0;
fail:
    cfg_free_list(chs, nch);
    conn_base_free(c);
    return r;
}

void conn_base_free(connector_t *c)
{
    cfg_free_list(c->markets, c->nmarkets);
    c->markets = NULL;
    c->nmarkets = 0;
    for (int i = 0; i < c->nchannels; i++)
        free(c->channels_order[i]);
    c->nchannels = 0;
    buf_free(&c->body);
    buf_free(&c->out);
}

void conn_malformed(connector_t *c, const char *reason)
{
    if (c->sink->malformed)
        c->sink->malformed(c->sink->arg, c->exchange, reason);
}

static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (b >= 0xC2 && b <= 0xDF) {
            k = 1;
            cp = b & 0x1F;
        } else if (b >= 0xE0 && b <= 0xEF) {
            k = 2;
            cp = b & 0x0F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            k = 3;
            cp = b & 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < k)
            return 0; /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

json_t *conn_parse(connector_t *c, const char *data, size_t len)
{
    json_error_t err;
    if (!utf8_valid((const unsigned char *)data, len)) {
        conn_malformed(c, "bad_utf8");
        return NULL;
    }
    json_t *root = json_loadb(data, len, JSON_DECODE_ANY, &err);
    if (!root) {
        enum json_error_code code = json_error_code(&err);
        conn_malformed(c, code == json_error_numeric_overflow ? "huge_number" : "bad_json");
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        conn_malformed(c, "not_object");
        return NULL;
    }
    return root;
}

const char *conn_decimal(json_t *v, char *out, size_t outsz)
{
    if (!v)
        return "missing_field";
    if (json_is_string(v)) {
        if (!decimal_valid(json_string_value(v), json_string_length(v)))
            return "bad_number";
        if (json_string_length(v) + 1 > outsz)
            return "huge_number";
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
        return NULL;
    }
    if (json_is_integer(v)) {
        snprintf(out, outsz, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return NULL;
    }
    if (json_is_real(v))
        return msg_fmt_double(json_real_value(v), out, outsz) < 0 ? "huge_number" : NULL;
    return "wrong_type";
}

const char *conn_id(json_t *v, char *out, size_t outsz)
{
    if (!v)
        return "missing_field";
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n == 0 || n + 1 > outsz)
            return "bad_id";
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)json_string_value(v)[i];
            if (ch < 0x20 || ch == '"' || ch == '\\' || ch >= 0x7f)
                return "bad_id";
        }
        memcpy(out, json_string_value(v), n + 1);
        return NULL;
    }
    if (json_is_integer(v)) {
        snprintf(out, outsz, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return NULL;
    }
    return "wrong_type";
}

static int64_t ts_to_ms(int64_t v)
{
    if (v >= 100000000000000000LL)
        return v / 1000000; /* ns */
    if (v >= 100000000000000LL)
        return v / 1000; /* us */
    return v;
}

const char *conn_ts(json_t *v, int64_t *ms)
{
    if (!v)
        return "missing_field";
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return "bad_number";
        *ms = ts_to_ms(json_integer_value(v));
        return NULL;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (n == 0 || n > 18)
            return "bad_number";
        int64_t x = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] < '0' || s[i] > '9')
                return conn_rfc3339_ms(s, ms) == 0 ? NULL : "bad_number";
            x = x * 10 + (s[i] - '0');
        }
        *ms = ts_to_ms(x);
        return NULL;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= 0 && d < 9e18))
            return "bad_number";
        *ms = ts_to_ms((int64_t)d);
        return NULL;
    }
    return "wrong_type";
}

static int digits(const char **p, int n, int *out)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9')
            return -1;
        x = x * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = x;
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int conn_rfc3339_ms(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, se, frac_ms = 0;
    const char *p = s;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d) ||
        (*p != 'T' && *p != 't' && *p != ' '))
        return -EINVAL;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' || digits(&p, 2, &se))
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
        return -EINVAL;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return -EINVAL;
        for (; nd < 3; nd++)
            frac_ms *= 10;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om))
            return -EINVAL;
        off = sign * (oh * 60 + om);
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off * 60;
    *ms = secs * 1000 + frac_ms;
    return 0;
}

static int upper_alnum(const char *s, size_t n, char *out)
{
    if (n == 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')))
            return -EINVAL;
        out[i] = ch;
    }
    return 0;
}

static int dash_parts(const char *sym, const char **a, size_t *al, const char **b, size_t *bl)
{
    const char *d = strchr(sym, '-');
    if (!d || strchr(d + 1, '-'))
        return -EINVAL;
    *a = sym;
    *al = (size_t)(d - sym);
    *b = d + 1;
    *bl = strlen(d + 1);
    return 0;
}

static int join(const char *a, size_t al, const char *b, size_t bl, char *out, size_t outsz)
{
    if (al == 0 || bl == 0 || al + bl + 2 > outsz || al + bl + 2 > 48)
        return -EINVAL;
    if (upper_alnum(a, al, out) < 0)
        return -EINVAL;
    out[al] = '-';
    if (upper_alnum(b, bl, out + al + 1) < 0)
        return -EINVAL;
    out[al + 1 + bl] = 0;
    return 0;
}

/* "A-B" as "A-B" upper-cased, or swapped to "B-A". */
static int dash_symbol(const char *sym, int swap, char *out, size_t outsz)
{
    const char *a, *b;
    size_t al, bl;
    if (dash_parts(sym, &a, &al, &b, &bl) < 0)
        return -EINVAL;
    return swap ? join(b, bl, a, al, out, outsz) : join(a, al, b, bl, out, outsz);
}

int conn_symbol_quote_first(const char *code, char *out, size_t outsz)
{
    return dash_symbol(code, 1, out, outsz);
}

int conn_symbol_dash(const char *sym, char *out, size_t outsz)
{
    return dash_symbol(sym, 0, out, outsz);
}

/* Binance quote assets; the longest matching suffix wins (FDUSD over USD). */
static const char *const quote_assets[] = {
    "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDP", "DAI", "USD",  "BTC",  "ETH",  "BNB",
    "EUR",  "TRY",  "BRL",   "KRW",  "GBP",  "AUD",  "JPY", "RUB",  "UAH",  "IDRT", "BIDR",
    "ZAR",  "PLN",  "RON",   "ARS",  "MXN",  "COP",  "CZK", "NGN",  "AEUR", "EURI", "XRP",
    "TRX",  "DOGE", "DOT",   "SOL",  "PAX",  "VAI",  "UST", "BKRW", "IDR",  "BVND", "GYEN",
};

int conn_symbol_concat(const char *sym, char *out, size_t outsz)
{
    char up[48];
    size_t n = strlen(sym);
    if (n == 0 || n >= sizeof(up) || upper_alnum(sym, n, up) < 0)
        return -EINVAL;
    up[n] = 0;
    size_t best = 0;
    for (size_t i = 0; i < sizeof(quote_assets) / sizeof(quote_assets[0]); i++) {
        size_t ql = strlen(quote_assets[i]);
        if (ql < n && ql > best && memcmp(up + n - ql, quote_assets[i], ql) == 0)
            best = ql;
    }
    if (!best)
        return -EINVAL;
    return join(up, n - best, up + n - best, best, out, outsz);
}

void conn_emit(connector_t *c, const char *type, const char *symbol, int64_t ts, int64_t recv_ts)
{
    char ch[MSG_CHANNEL_MAX];
    norm_sink_t *s = c->sink;
    snprintf(ch, sizeof(ch), "%s.%s.%s", type, c->exchange, symbol);
    int64_t seq = s->next_seq ? s->next_seq(s->arg, ch) : 0;
    buf_reset(&c->out);
    msg_begin(&c->out, type, c->exchange, symbol, seq, s->epoch, ts, recv_ts);
    buf_append(&c->out, c->body.data, c->body.len);
    msg_end(&c->out);
    if (s->emit)
        s->emit(s->arg, ch, c->out.data, c->out.len);
}

void conn_trade_msg(buf_t *out, const char *exchange, const norm_trade_t *t, int64_t seq, int64_t epoch)
{
    buf_reset(out);
    msg_begin(out, "trade", exchange, t->symbol, seq, epoch, t->ts, t->recv_ts);
    msg_str(out, "price", t->price);
    msg_str(out, "qty", t->qty);
    msg_str(out, "side", t->side);
    msg_str(out, "trade_id", t->trade_id);
    if (t->backfill)
        msg_raw(out, "backfill", "true");
    msg_end(out);
}

void conn_emit_trade(connector_t *c, const char *symbol, const char *price, const char *qty, const char *side,
                     const char *trade_id, int64_t ts, int64_t recv_ts, int snapshot)
{
    norm_trade_t t;
    char ch[MSG_CHANNEL_MAX];
    norm_sink_t *s = c->sink;
    memset(&t, 0, sizeof(t));
    snprintf(t.symbol, sizeof(t.symbol), "%s", symbol);
    snprintf(t.price, sizeof(t.price), "%s", price);
    snprintf(t.qty, sizeof(t.qty), "%s", qty);
    snprintf(t.side, sizeof(t.side), "%s", side);
    snprintf(t.trade_id, sizeof(t.trade_id), "%s", trade_id);
    t.ts = ts;
    t.recv_ts = recv_ts;
    t.snapshot = snapshot;
    snprintf(ch, sizeof(ch), "trade.%s.%s", c->exchange, symbol);
    if (s->trade) {
        s->trade(s->arg, ch, &t);
        return;
    }
    conn_trade_msg(&c->out, c->exchange, &t, s->next_seq ? s->next_seq(s->arg, ch) : 0, s->epoch);
    if (s->emit)
        s->emit(s->arg, ch, c->out.data, c->out.len);
}

void conn_data_seen(connector_t *c)
{
    if (c->subscribed)
        return;
    c->subscribed = 1;
    if (c->sink->status)
        c->sink->status(c->sink->arg, c->exchange, "subscribed", "");
}

int conn_frame_done(connector_t *c, const char *why, json_t *root)
{
    if (why)
        conn_malformed(c, why);
    json_decref(root);
    return 0;
}

void conn_uuid(char out[37])
{
    unsigned char r[16];
    if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)out;
        for (int i = 0; i < 16; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r[i] = (unsigned char)x;
        }
    }
    r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}
