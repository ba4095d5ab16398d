/* HTTP/1.1 request parsing on top of http-parser with bounded headers, for
 * the admin port and the WebSocket upgrade; plus response helpers. The parser
 * stops at the end of one request so pipelined or upgraded bytes stay with
 * the caller. */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define HTTP_DEFAULT_MAX_HEADER_BYTES 16384
#define HTTP_MAX_BODY (1u << 20)

static http_req_t *req_of(http_parser *p)
{
    return p->data;
}

static int count_bytes(http_req_t *r, size_t n)
{
    r->header_bytes += n;
    if (r->header_bytes > r->max_header_bytes) {
        r->error = 431;
        return -1;
    }
    return 0;
}

static int commit_header(http_req_t *r)
{
    if (r->cur_name.len == 0) {
        buf_reset(&r->cur_value);
        r->in_value = 0;
        return 0;
    }
    for (size_t i = 0; i < r->cur_name.len; i++)
        r->cur_name.data[i] = (char)tolower((unsigned char)r->cur_name.data[i]);
    const char *name = r->cur_name.data;
    const char *val = r->cur_value.data ? r->cur_value.data : "";
    /* trim optional whitespace http-parser may leave at the end */
    size_t vl = r->cur_value.len;
    while (vl > 0 && (val[vl - 1] == ' ' || val[vl - 1] == '\t'))
        vl--;
    int rc = 0;
    int i;
    for (i = 0; i < r->nheaders; i++)
        if (strcmp(r->headers[i].name, name) == 0)
            break;
    if (i < r->nheaders) {
        size_t ol = strlen(r->headers[i].value);
        char *nv = realloc(r->headers[i].value, ol + 2 + vl + 1);
        if (!nv) {
            r->error = 500;
            rc = -1;
            goto out;
        }
        memcpy(nv + ol, ", ", 2);
        memcpy(nv + ol + 2, val, vl);
        nv[ol + 2 + vl] = '\0';
        r->headers[i].value = nv;
    } else if (r->nheaders >= HTTP_MAX_HEADERS) {
        r->error = 431;
        rc = -1;
        goto out;
    } else {
        char *n = strdup(name);
        char *v = strndup(val, vl);
        if (!n || !v) {
            free(n);
            free(v);
            r->error = 500;
            rc = -1;
            goto out;
        }
        r->headers[r->nheaders].name = n;
        r->headers[r->nheaders].value = v;
        r->nheaders++;
    }
out:
    buf_reset(&r->cur_name);
    buf_reset(&r->cur_value);
    r->in_value = 0;
    return rc;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    http_req_t *r = req_of(p);
    if (count_bytes(r, n) < 0)
        return -1;
    return buf_append(&r->url, at, n) < 0 ? -1 : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    http_req_t *r = req_of(p);
    if (r->in_value && commit_header(r) < 0)
        return -1;
    if (r->cur_name.len == 0 && count_bytes(r, 4) < 0) /* ": " and CRLF */
        return -1;
    if (count_bytes(r, n) < 0)
        return -1;
    return buf_append(&r->cur_name, at, n) < 0 ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    http_req_t *r = req_of(p);
    r->in_value = 1;
    if (count_bytes(r, n) < 0)
        return -1;
    return buf_append(&r->cur_value, at, n) < 0 ? -1 : 0;
}

static int on_headers_complete(http_parser *p)
{
    http_req_t *r = req_of(p);
    if ((r->in_value || r->cur_name.len) && commit_header(r) < 0)
        return -1;
    snprintf(r->method, sizeof r->method, "%s", http_method_str((enum http_method)p->method));
    r->upgrade = p->upgrade;
    if (p->upgrade) {
        /* The rest of the stream is another protocol: skip any body so
         * http-parser completes the message here and returns. */
        r->complete = 1;
        return 1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    http_req_t *r = req_of(p);
    if (r->body.len + n > HTTP_MAX_BODY) {
        r->error = 413;
        return -1;
    }
    return buf_append(&r->body, at, n) < 0 ? -1 : 0;
}

static int on_message_complete(http_parser *p)
{
    http_req_t *r = req_of(p);
    r->complete = 1;
    /* Stop after this request: pipelined bytes stay unconsumed. */
    http_parser_pause(p, 1);
    return 0;
}

void http_req_init(http_req_t *r, size_t max_header_bytes)
{
    memset(r, 0, sizeof *r);
    r->max_header_bytes = max_header_bytes ? max_header_bytes : HTTP_DEFAULT_MAX_HEADER_BYTES;
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    http_parser_settings_init(&r->settings);
    r->settings.on_url = on_url;
    r->settings.on_header_field = on_header_field;
    r->settings.on_header_value = on_header_value;
    r->settings.on_headers_complete = on_headers_complete;
    r->settings.on_body = on_body;
    r->settings.on_message_complete = on_message_complete;
    buf_init(&r->url);
    buf_init(&r->body);
    buf_init(&r->cur_name);
    buf_init(&r->cur_value);
    /* the request line beyond the URL: method, spaces, version, CRLF */
    r->header_bytes = 16;
}

void http_req_free(http_req_t *r)
{
    for (int i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    r->nheaders = 0;
    buf_free(&r->url);
    buf_free(&r->body);
    buf_free(&r->cur_name);
    buf_free(&r->cur_value);
}

void http_req_reset(http_req_t *r)
{
    size_t max = r->max_header_bytes;
    http_req_free(r);
    http_req_init(r, max);
}

long http_req_feed(http_req_t *r, const char *data, size_t n)
{
    if (r->error)
        return -1;
    if (r->complete || n == 0)
        return 0;
    size_t used = http_parser_execute(&r->parser, &r->settings, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
    if (e == HPE_PAUSED && r->complete) {
        http_parser_pause(&r->parser, 0);
        return (long)used;
    }
    if (e != HPE_OK) {
        if (!r->error)
            r->error = e == HPE_HEADER_OVERFLOW ? 431 : 400;
        return -1;
    }
    if (r->upgrade && r->complete)
        return (long)used;
    if (used != n && !r->complete) {
        r->error = 400;
        return -1;
    }
    return (long)used;
}

const char *http_req_header(const http_req_t *r, const char *lname)
{
    for (int i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, lname) == 0)
            return r->headers[i].value;
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decode s[0..n) into out; plus_space turns '+' into ' '. */
static int url_decode(const char *s, size_t n, int plus_space, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int h, l;
        if (c == '%' && i + 2 < n && (h = hexval((unsigned char)s[i + 1])) >= 0 &&
            (l = hexval((unsigned char)s[i + 2])) >= 0) {
            c = (char)(h * 16 + l);
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        if (o + 1 >= outsz)
            return -ENOSPC;
        out[o++] = c;
    }
    if (outsz == 0)
        return -ENOSPC;
    out[o] = '\0';
    return 0;
}

/* The path and query of the URL, origin-form or absolute-form. */
static void url_split(const http_req_t *r, const char **path, size_t *plen, const char **query, size_t *qlen)
{
    const char *u = r->url.data ? r->url.data : "";
    *path = u;
    *plen = 0;
    *query = NULL;
    *qlen = 0;
    if (u[0] != '/' && u[0] != '*') {
        struct http_parser_url pu;
        http_parser_url_init(&pu);
        if (http_parser_parse_url(u, r->url.len, 0, &pu) == 0) {
            if (pu.field_set & (1 << UF_PATH)) {
                *path = u + pu.field_data[UF_PATH].off;
                *plen = pu.field_data[UF_PATH].len;
            } else {
                *path = "/";
                *plen = 1;
            }
            if (pu.field_set & (1 << UF_QUERY)) {
                *query = u + pu.field_data[UF_QUERY].off;
                *qlen = pu.field_data[UF_QUERY].len;
            }
            return;
        }
    }
    size_t end = strcspn(u, "?#");
    *plen = end;
    if (u[end] == '?') {
        *query = u + end + 1;
        *qlen = strcspn(*query, "#");
    }
}

int http_req_path(const http_req_t *r, char *out, size_t outsz)
{
    const char *p, *q;
    size_t pl, ql;
    if (r->url.len == 0)
        return -EINVAL;
    url_split(r, &p, &pl, &q, &ql);
    return url_decode(p, pl, 0, out, outsz);
}

int http_req_query(const http_req_t *r, const char *key, char *out, size_t outsz)
{
    const char *p, *q;
    size_t pl, ql;
    url_split(r, &p, &pl, &q, &ql);
    if (!q)
        return -ENOENT;
    char kbuf[256];
    size_t i = 0;
    while (i <= ql) {
        size_t s = i;
        while (i < ql && q[i] != '&')
            i++;
        /* pair is q[s..i) */
        size_t eq = s;
        while (eq < i && q[eq] != '=')
            eq++;
        if (i > s && url_decode(q + s, eq - s, 1, kbuf, sizeof kbuf) == 0 && strcmp(kbuf, key) == 0) {
            if (eq < i)
                return url_decode(q + eq + 1, i - eq - 1, 1, out, outsz);
            return url_decode("", 0, 1, out, outsz);
        }
        i++;
    }
    return -ENOENT;
}

int http_header_has_token(const char *value, const char *token)
{
    if (!value || !token)
        return 0;
    size_t tl = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, token, tl) == 0)
            return 1;
    }
    return 0;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    }
    return "Unknown";
}

int http_response(buf_t *out, int status, const char *content_type, const char *body, size_t n,
                  const char *extra_headers)
{
    int r;
    int nobody = (status >= 100 && status < 200) || status == 204 || status == 304;
    if ((r = buf_printf(out, "HTTP/1.1 %d %s\r\n", status, http_status_text(status))) < 0)
        return r;
    if (!nobody) {
        if (content_type && *content_type && (r = buf_printf(out, "Content-Type: %s\r\n", content_type)) < 0)
            return r;
        if ((r = buf_printf(out, "Content-Length: %zu\r\n", n)) < 0)
            return r;
    }
    if (status != 101 && (r = buf_puts(out, "Connection: close\r\n")) < 0)
        return r;
    if (extra_headers && (r = buf_puts(out, extra_headers)) < 0)
        return r;
    if ((r = buf_puts(out, "\r\n")) < 0)
        return r;
    if (!nobody && n && (r = buf_append(out, body, n)) < 0)
        return r;
    return 0;
}

/* ------------------------------------------------------------- tokens */

int http_secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char da[EVP_MAX_MD_SIZE], db[EVP_MAX_MD_SIZE];
    unsigned int la = 0, lb = 0;
    if (a == NULL || b == NULL)
        return 0;
    if (!EVP_Digest(a, alen, da, &la, EVP_sha256(), NULL) ||
        !EVP_Digest(b, blen, db, &lb, EVP_sha256(), NULL))
        return 0;
    return la == lb && CRYPTO_memcmp(da, db, la) == 0;
}

int http_bearer(const char *h, const char **tok, size_t *n)
{
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    size_t len = strlen(h);
    while (len > 0 && h[len - 1] == ' ')
        len--;
    *tok = h;
    *n = len;
    return len > 0;
}

int http_token_ok(const char *want, const char *authorization, const char *query_token)
{
    if (want == NULL || want[0] == '\0')
        return 1;
    const char *got = NULL;
    size_t n = 0;
    if (!http_bearer(authorization, &got, &n)) {
        if (authorization != NULL && strncasecmp(authorization, "Bearer ", 7) == 0)
            return 0; /* an empty Bearer header is a wrong token, not none */
        if (query_token == NULL)
            return 0;
        got = query_token;
        n = strlen(query_token);
    }
    return http_secret_equal(got, n, want, strlen(want));
}

int http_req_token_ok(const http_req_t *r, const char *want)
{
    char q[1024];
    int has_q = http_req_query(r, "token", q, sizeof q) == 0;
    return http_token_ok(want, http_req_header(r, "authorization"), has_q ? q : NULL);
}
