/* What a WebSocket client parses before the connection is open
 * (wsclient_parse.h): the ws:// or wss:// URL and the server's answer to
 * the upgrade request. Pure functions; wsclient.c and httpc.c use them. */
#include "wsclient_parse.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "http.h"
#include "wsproto.h"

/* ------------------------------------------------------------------ URL */

int wsc_url_parse(const char *url, wsc_url_t *out)
{
    memset(out, 0, sizeof *out);
    if (!url)
        return -EINVAL;
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '#')
            return -EINVAL;
    const char *p;
    if (strncasecmp(url, "ws://", 5) == 0) {
        p = url + 5;
        out->tls = 0;
    } else if (strncasecmp(url, "wss://", 6) == 0) {
        p = url + 6;
        out->tls = 1;
    } else {
        return -EINVAL;
    }
    const char *auth_end = p + strcspn(p, "/?");
    const char *host_end;
    const char *port_start = NULL;
    if (memchr(p, '@', (size_t)(auth_end - p)))
        return -EINVAL; /* userinfo: never send credentials in a URL */
    int v6 = 0;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(auth_end - p));
        if (!rb)
            return -EINVAL;
        host_end = rb;
        p++;
        v6 = 1;
        if (rb + 1 < auth_end) {
            if (rb[1] != ':')
                return -EINVAL;
            port_start = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        host_end = colon ? colon : auth_end;
        if (colon)
            port_start = colon + 1;
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof out->host)
        return -EINVAL;
    memcpy(out->host, p, hlen);
    out->host[hlen] = '\0';
    if (v6) {
        unsigned char a[16];
        if (inet_pton(AF_INET6, out->host, a) != 1)
            return -EINVAL;
    } else {
        for (size_t i = 0; i < hlen; i++) {
            unsigned char ch = (unsigned char)out->host[i];
            if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
                return -EINVAL;
        }
    }
    out->port = out->tls ? 443 : 80;
    int explicit_port = 0;
    if (port_start) {
        if (port_start == auth_end || auth_end - port_start > 5)
            return -EINVAL;
        int port = 0;
        for (const char *q = port_start; q < auth_end; q++) {
            if (!isdigit((unsigned char)*q))
                return -EINVAL;
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return -EINVAL;
        out->port = port;
        explicit_port = 1;
    }
    const char *rest = auth_end;
    int n;
    if (*rest == '\0')
        n = snprintf(out->path, sizeof out->path, "/");
    else if (*rest == '?')
        n = snprintf(out->path, sizeof out->path, "/%s", rest);
    else
        n = snprintf(out->path, sizeof out->path, "%s", rest);
    if (n < 0 || (size_t)n >= sizeof out->path)
        return -EINVAL;
    int def = out->port == (out->tls ? 443 : 80);
    snprintf(out->hosthdr, sizeof out->hosthdr, "%s%s%s", v6 ? "[" : "", out->host, v6 ? "]" : "");
    if (explicit_port && !def) {
        size_t l = strlen(out->hosthdr);
        snprintf(out->hosthdr + l, sizeof out->hosthdr - l, ":%d", out->port);
    }
    return 0;
}

/* ------------------------------------------------------------- upgrade */

enum { H_NONE, H_UPGRADE, H_CONNECTION, H_ACCEPT, H_EXTENSIONS };

static void append_capped(char *dst, size_t cap, const char *src, size_t n)
{
    size_t l = strlen(dst);
    if (l + 1 >= cap)
        return;
    if (n > cap - 1 - l)
        n = cap - 1 - l;
    memcpy(dst + l, src, n);
    dst[l + n] = '\0';
}

static int up_on_field(http_parser *p, const char *at, size_t n)
{
    wsc_upgrade_t *u = p->data;
    if (u->in_value) {
        u->in_value = 0;
        u->field_len = 0;
        u->field[0] = '\0';
    }
    for (size_t i = 0; i < n && u->field_len + 1 < sizeof u->field; i++)
        u->field[u->field_len++] = (char)tolower((unsigned char)at[i]);
    u->field[u->field_len] = '\0';
    return 0;
}

static int up_on_value(http_parser *p, const char *at, size_t n)
{
    wsc_upgrade_t *u = p->data;
    if (!u->in_value) {
        u->in_value = 1;
        if (strcmp(u->field, "upgrade") == 0)
            u->cur = H_UPGRADE;
        else if (strcmp(u->field, "connection") == 0)
            u->cur = H_CONNECTION;
        else if (strcmp(u->field, "sec-websocket-accept") == 0)
            u->cur = H_ACCEPT;
        else if (strcmp(u->field, "sec-websocket-extensions") == 0)
            u->cur = H_EXTENSIONS;
        else
            u->cur = H_NONE;
        /* A repeated list header: join with a comma. */
        if (u->cur == H_CONNECTION && u->connection[0])
            append_capped(u->connection, sizeof u->connection, ",", 1);
        if (u->cur == H_UPGRADE && u->upgrade[0])
            append_capped(u->upgrade, sizeof u->upgrade, ",", 1);
        if (u->cur == H_ACCEPT && u->accept[0])
            append_capped(u->accept, sizeof u->accept, ",", 1); /* two accepts never match */
    }
    switch (u->cur) {
    case H_UPGRADE: append_capped(u->upgrade, sizeof u->upgrade, at, n); break;
    case H_CONNECTION: append_capped(u->connection, sizeof u->connection, at, n); break;
    case H_ACCEPT: append_capped(u->accept, sizeof u->accept, at, n); break;
    case H_EXTENSIONS:
        for (size_t i = 0; i < n; i++)
            if (!isspace((unsigned char)at[i]))
                u->has_extensions = 1;
        break;
    default: break;
    }
    return 0;
}

static int up_on_headers_complete(http_parser *p)
{
    wsc_upgrade_t *u = p->data;
    u->done = 1;
    u->status = (int)p->status_code;
    /* 2 = "upgrade": http_parser stops right after the header block so the
     * bytes that follow a 101 are left for the WebSocket layer. */
    return u->status == 101 ? 2 : 1;
}

static const http_parser_settings up_settings = {
    .on_header_field = up_on_field,
    .on_header_value = up_on_value,
    .on_headers_complete = up_on_headers_complete,
};

int wsc_upgrade_init(wsc_upgrade_t *u, size_t max_bytes)
{
    memset(u, 0, sizeof *u);
    http_parser *p = malloc(sizeof *p);
    if (!p)
        return -ENOMEM;
    http_parser_init(p, HTTP_RESPONSE);
    p->data = u;
    u->parser = p;
    u->max_bytes = max_bytes ? max_bytes : 16384;
    return 0;
}

void wsc_upgrade_free(wsc_upgrade_t *u)
{
    free(u->parser);
    u->parser = NULL;
}

long wsc_upgrade_feed(wsc_upgrade_t *u, const char *data, size_t n)
{
    if (u->done)
        return 0;
    size_t room = u->max_bytes - u->bytes;
    size_t take = n < room ? n : room;
    http_parser *p = u->parser;
    size_t k = http_parser_execute(p, &up_settings, data, take);
    if (u->done) {
        /* For non-101 answers the parser may run on into the body; only the
         * status matters then. */
        u->bytes += k;
        return (long)k;
    }
    if (HTTP_PARSER_ERRNO(p) != HPE_OK)
        return -EPROTO;
    u->bytes += k;
    if (take < n || u->bytes >= u->max_bytes)
        return -E2BIG;
    return (long)k;
}

int wsc_upgrade_verify(const wsc_upgrade_t *u, const char *key)
{
    if (!u->done)
        return -EPROTO;
    if (u->status != 101)
        return u->status > 0 ? u->status : -EPROTO;
    if (!http_header_has_token(u->upgrade, "websocket") || !http_header_has_token(u->connection, "upgrade") ||
        u->has_extensions)
        return -EPROTO;
    char want[29];
    if (ws_accept_key(key, want) < 0)
        want[0] = '\0'; /* matches no server answer */
    const char *a = u->accept;
    while (*a == ' ' || *a == '\t')
        a++;
    size_t al = strlen(a);
    while (al > 0 && (a[al - 1] == ' ' || a[al - 1] == '\t'))
        al--;
    if (al != strlen(want) || memcmp(a, want, al) != 0)
        return -EPROTO;
    return 0;
}
