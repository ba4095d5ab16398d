/* Normalized message helpers: the builder used once per message by the ingest
 * worker, the routing-field reader used by the fanout worker, channel name
 * rules. msg_begin (writer) and msg_read_prefix (reader) are the one owner of
 * the wire format's prefix. */
#include "msg.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the prefix reader: msg_begin's exact output, nothing else ---------- */

typedef struct {
    const char *p, *end;
} cursor_t;

static int lit(cursor_t *c, const char *s, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return 0;
    c->p += n;
    return 1;
}
#define LIT(c, s) lit((c), (s), sizeof(s) - 1)

/* A string without escapes up to its closing quote (copied into out when
 * given); 0 on an escape, a control byte, the end of input or no room. */
static int plain_str(cursor_t *c, char *out, size_t cap)
{
    const char *q = c->p;
    while (q < c->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
        q++;
    if (q >= c->end || *q != '"')
        return 0;
    size_t n = (size_t)(q - c->p);
    if (out) {
        if (n >= cap)
            return 0;
        memcpy(out, c->p, n);
        out[n] = 0;
    }
    c->p = q + 1;
    return 1;
}

/* A JSON integer as msg_begin prints it (PRId64: optional '-', digits, no
 * leading zero unless alone), followed by ',' or '}'. */
static int plain_int(cursor_t *c, int64_t *v)
{
    const char *q = c->p;
    int neg = q < c->end && *q == '-';
    q += neg;
    const char *d = q;
    uint64_t u = 0;
    while (q < c->end && *q >= '0' && *q <= '9' && q - d < 18) /* longer: the full parse */
        u = u * 10 + (uint64_t)(*q++ - '0');
    if (q == d || q >= c->end || (*q != ',' && *q != '}') || (*d == '0' && q - d > 1))
        return 0;
    *v = neg ? -(int64_t)u : (int64_t)u;
    c->p = q;
    return 1;
}

/* Reads the routing fields from the fixed prefix msg_begin writes. 0 when the
 * text starts exactly so and ends with '}' (the writer's msg_end); -EINVAL
 * otherwise, and the caller parses the whole object instead. */
int msg_read_prefix(const char *json, size_t len, msg_meta_t *m)
{
    cursor_t c = {json, json + len};
    while (len &&
           (json[len - 1] == ' ' || json[len - 1] == '\n' || json[len - 1] == '\r' || json[len - 1] == '\t'))
        len--;
    if (!len || json[len - 1] != '}')
        return -EINVAL;
    c.end = json + len;
    memset(m, 0, sizeof(*m));
    if (!LIT(&c, "{\"channel\":\"") || !plain_str(&c, m->channel, sizeof(m->channel)) ||
        !LIT(&c, ",\"type\":\"") || !plain_str(&c, m->type, sizeof(m->type)) ||
        !LIT(&c, ",\"exchange\":\"") || !plain_str(&c, NULL, 0))
        return -EINVAL;
    if (LIT(&c, ",\"symbol\":\"") && !plain_str(&c, NULL, 0))
        return -EINVAL;
    if (!LIT(&c, ",\"seq\":") || !plain_int(&c, &m->seq) || !LIT(&c, ",\"epoch\":") ||
        !plain_int(&c, &m->epoch) || !LIT(&c, ",\"ts\":") || !plain_int(&c, &m->ts) ||
        !LIT(&c, ",\"recv_ts\":") || !plain_int(&c, &m->recv_ts))
        return -EINVAL;
    return 0;
}

/* ---- JSON syntax check without a tree (RFC 8259, UTF-8) ------------------ */

typedef struct {
    const unsigned char *p, *end;
    int depth;
} jscan_t;

#define JSCAN_MAX_DEPTH 64

static void js_ws(jscan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* One UTF-8 sequence starting at a byte >= 0x80 (no overlongs, no
 * surrogates, nothing above U+10FFFF). */
static int js_utf8(jscan_t *s)
{
    unsigned c = *s->p;
    int n;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf)
        n = 1, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 2, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 3, min = 0x10000;
    else
        return 0;
    if (s->end - s->p <= n)
        return 0;
    unsigned cp = c & (0x3f >> n);
    for (int i = 1; i <= n; i++) {
        if ((s->p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s->p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    s->p += n + 1;
    return 1;
}

static int js_string(jscan_t *s)
{
    s->p++; /* the opening quote */
    while (s->p < s->end) {
        unsigned c = *s->p;
        if (c == '"') {
            s->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (++s->p >= s->end)
                return 0;
            c = *s->p;
            if (c == 'u') {
                if (s->end - s->p < 5)
                    return 0;
                for (int i = 1; i <= 4; i++)
                    if (!isxdigit(s->p[i]))
                        return 0;
                s->p += 5;
            } else if (strchr("\"\\/bfnrt", (int)c) != NULL && c != '\0') {
                s->p++;
            } else {
                return 0;
            }
        } else if (c >= 0x80) {
            if (!js_utf8(s))
                return 0;
        } else {
            s->p++;
        }
    }
    return 0;
}

static int js_digits(jscan_t *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && isdigit(*s->p))
        s->p++;
    return s->p > start;
}

static int js_number(jscan_t *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!js_digits(s))
        return 0;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!js_digits(s))
            return 0;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!js_digits(s))
            return 0;
    }
    return 1;
}

static int js_word(jscan_t *s, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

static int js_value(jscan_t *s);

/* An object or an array: open is '{' or '['. */
static int js_container(jscan_t *s, unsigned char close)
{
    if (++s->depth > JSCAN_MAX_DEPTH)
        return 0;
    s->p++;
    js_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return 1;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || !js_string(s))
                return 0;
            js_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return 0;
            s->p++;
        }
        if (!js_value(s))
            return 0;
        js_ws(s);
        if (s->p >= s->end)
            return 0;
        if (*s->p == ',') {
            s->p++;
            js_ws(s);
            continue;
        }
        if (*s->p != close)
            return 0;
        s->p++;
        s->depth--;
        return 1;
    }
}

static int js_value(jscan_t *s)
{
    js_ws(s);
    if (s->p >= s->end)
        return 0;
    switch (*s->p) {
    case '{': return js_container(s, '}');
    case '[': return js_container(s, ']');
    case '"': return js_string(s);
    case 't': return js_word(s, "true");
    case 'f': return js_word(s, "false");
    case 'n': return js_word(s, "null");
    default: return (*s->p == '-' || isdigit(*s->p)) && js_number(s);
    }
}

int msg_json_object_valid(const char *json, size_t len)
{
    jscan_t s = {(const unsigned char *)json, (const unsigned char *)json + len, 0};
    js_ws(&s);
    if (s.p >= s.end || *s.p != '{' || !js_value(&s))
        return 0;
    js_ws(&s);
    return s.p == s.end;
}

int msg_parse_meta(const char *json, size_t len, msg_meta_t *m)
{
    /* The fanout forwards messages it never needs to parse: the prefix the
     * ingest wrote (msg_begin) holds every routing field. Anything else
     * (another writer, another field order, escapes) takes the full parse. */
    if (msg_read_prefix(json, len, m) == 0)
        return msg_json_object_valid(json, len) ? 0 : -EINVAL; /* forwarded as is: whole and valid */
    json_error_t err;
    json_t *root = json_loadb(json, len, 0, &err);
    int r = -EINVAL;
    if (!root || !json_is_object(root))
        goto out;
    json_t *ch = json_object_get(root, "channel");
    json_t *ty = json_object_get(root, "type");
    json_t *seq = json_object_get(root, "seq");
    json_t *ep = json_object_get(root, "epoch");
    json_t *ts = json_object_get(root, "ts");
    json_t *rts = json_object_get(root, "recv_ts");
    if (!json_is_string(ch) || !json_is_string(ty) || !json_is_integer(seq) || !json_is_integer(ep))
        goto out;
    if (json_string_length(ch) >= sizeof(m->channel) || json_string_length(ty) >= sizeof(m->type))
        goto out;
    if ((ts && !json_is_integer(ts)) || (rts && !json_is_integer(rts)))
        goto out;
    memset(m, 0, sizeof(*m));
    memcpy(m->channel, json_string_value(ch), json_string_length(ch) + 1);
    memcpy(m->type, json_string_value(ty), json_string_length(ty) + 1);
    m->seq = json_integer_value(seq);
    m->epoch = json_integer_value(ep);
    m->ts = ts ? json_integer_value(ts) : 0;
    m->recv_ts = rts ? json_integer_value(rts) : 0;
    r = 0;
out:
    json_decref(root);
    return r;
}

void msg_begin(buf_t *b, const char *type, const char *exchange, const char *symbol, int64_t seq,
               int64_t epoch, int64_t ts, int64_t recv_ts)
{
    char ch[MSG_CHANNEL_MAX];
    if (symbol && *symbol)
        snprintf(ch, sizeof(ch), "%s.%s.%s", type, exchange, symbol);
    else
        snprintf(ch, sizeof(ch), "%s.%s", type, exchange);
    buf_puts(b, "{\"channel\":");
    buf_json_str(b, ch);
    buf_puts(b, ",\"type\":");
    buf_json_str(b, type);
    buf_puts(b, ",\"exchange\":");
    buf_json_str(b, exchange);
    if (symbol && *symbol) {
        buf_puts(b, ",\"symbol\":");
        buf_json_str(b, symbol);
    }
    buf_printf(b, ",\"seq\":%" PRId64 ",\"epoch\":%" PRId64 ",\"ts\":%" PRId64 ",\"recv_ts\":%" PRId64, seq,
               epoch, ts, recv_ts);
}

void msg_str(buf_t *b, const char *key, const char *val)
{
    buf_puts(b, ",");
    buf_json_str(b, key);
    buf_puts(b, ":");
    buf_json_str(b, val);
}

void msg_int(buf_t *b, const char *key, int64_t val)
{
    buf_puts(b, ",");
    buf_json_str(b, key);
    buf_printf(b, ":%" PRId64, val);
}

void msg_raw(buf_t *b, const char *key, const char *json)
{
    buf_puts(b, ",");
    buf_json_str(b, key);
    buf_puts(b, ":");
    buf_puts(b, json);
}

void msg_end(buf_t *b)
{
    buf_puts(b, "}");
}

/* Render %.Ng output ("6.747e+06", "-1e-08", "0.5") without an exponent. */
static int plain_from_g(const char *g, char *out, size_t outsz)
{
    char digits[40] = {0};
    size_t nd = 0;
    int neg = 0, point = -1, exp10 = 0;
    const char *p = g;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.')
            point = (int)nd;
        else if (*p >= '0' && *p <= '9' && nd < sizeof(digits) - 1)
            digits[nd++] = *p;
        else
            return -EINVAL;
    }
    if (*p)
        exp10 = atoi(p + 1);
    if (point < 0)
        point = (int)nd;
    /* value = 0.digits * 10^(point) after shifting by the exponent */
    int ipos = point + exp10; /* digits before the decimal point */
    /* strip leading zeros of the digit string, adjusting ipos */
    size_t lead = 0;
    while (lead + 1 < nd && digits[lead] == '0') {
        lead++;
        ipos--;
    }
    memmove(digits, digits + lead, nd - lead);
    nd -= lead;
    while (nd > 0 && digits[nd - 1] == '0' && (int)nd > ipos)
        nd--; /* trailing zeros after the point carry no value in %g */
    if (nd == 0 || (nd == 1 && digits[0] == '0')) {
        if (outsz < 2)
            return -ERANGE;
        strcpy(out, "0");
        return 0;
    }
    char tmp[400];
    size_t o = 0;
    if (ipos > 350 || ipos < -350)
        return -ERANGE;
    if (neg)
        tmp[o++] = '-';
    if (ipos <= 0) {
        tmp[o++] = '0';
        tmp[o++] = '.';
        for (int i = 0; i < -ipos; i++)
            tmp[o++] = '0';
        for (size_t i = 0; i < nd; i++)
            tmp[o++] = digits[i];
    } else {
        for (int i = 0; i < ipos; i++)
            tmp[o++] = i < (int)nd ? digits[i] : '0';
        if ((int)nd > ipos) {
            tmp[o++] = '.';
            for (size_t i = (size_t)ipos; i < nd; i++)
                tmp[o++] = digits[i];
        }
    }
    tmp[o] = 0;
    if (o + 1 > outsz)
        return -ERANGE;
    memcpy(out, tmp, o + 1);
    return 0;
}

int msg_fmt_double(double v, char *out, size_t outsz)
{
    char g[64];
    if (!isfinite(v) || !out || outsz == 0)
        return -EINVAL;
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(g, sizeof(g), "%.*g", prec, v);
        if (strtod(g, NULL) == v)
            break;
    }
    return plain_from_g(g, out, outsz);
}

/* ---- channels ---------------------------------------------------------- */

static int seg_ok(const char *s, size_t n, int allow_wildcard)
{
    if (n == 0)
        return 0;
    if (n == 1 && s[0] == '*')
        return allow_wildcard;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_'))
            return 0;
    }
    return 1;
}

int msg_channel_valid(const char *ch, int allow_wildcard)
{
    if (!ch)
        return 0;
    size_t len = strlen(ch);
    if (len == 0 || len >= MSG_CHANNEL_MAX)
        return 0;
    const char *segs[4];
    size_t lens[4];
    int n = 0;
    const char *p = ch;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 3)
            return 0;
        segs[n] = p;
        lens[n] = l;
        n++;
        if (!seg_ok(p, l, allow_wildcard))
            return 0;
        if (!dot)
            break;
        p = dot + 1;
    }
    if (n == 3)
        return 1;
    /* status.EXCHANGE has two segments */
    if (n == 2 && lens[0] == 6 && memcmp(segs[0], "status", 6) == 0)
        return 1;
    if (n == 2 && allow_wildcard && lens[0] == 1 && segs[0][0] == '*')
        return 1;
    return 0;
}

int msg_channel_match(const char *pattern, const char *channel)
{
    const char *p = pattern, *c = channel;
    if (!p || !c)
        return 0;
    for (;;) {
        const char *pe = strchr(p, '.');
        const char *ce = strchr(c, '.');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p);
        size_t cl = ce ? (size_t)(ce - c) : strlen(c);
        if (!(pl == 1 && p[0] == '*' && cl > 0) && (pl != cl || memcmp(p, c, pl) != 0))
            return 0;
        if (!pe || !ce)
            return !pe && !ce;
        p = pe + 1;
        c = ce + 1;
    }
}
