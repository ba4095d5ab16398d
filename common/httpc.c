/* Asynchronous HTTP GET (httpc.h): resolve, connect, optional TLS, send one
 * request, read the answer until it is complete or the peer closes. Every
 * handle is closed before the memory goes (close callbacks count down). */
#include "httpc.h"

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "uvwrite.h"

#define HTTPC_MAX_HEADER 65536

/* ---- response parser ---------------------------------------------------- */

static httpc_resp_t *resp_of(http_parser *p)
{
    return p->data;
}

static int on_hfield(http_parser *p, const char *at, size_t n)
{
    httpc_resp_t *r = resp_of(p);
    if (r->in_value) /* a new field starts */
        r->field_len = 0;
    r->in_value = 0;
    size_t room = sizeof(r->field) - 1 - r->field_len;
    size_t k = n < room ? n : room;
    memcpy(r->field + r->field_len, at, k);
    r->field_len += k;
    r->field[r->field_len] = 0;
    return 0;
}

static int on_hvalue(http_parser *p, const char *at, size_t n)
{
    httpc_resp_t *r = resp_of(p);
    if (!r->in_value) {
        r->in_value = 1;
        r->in_retry = strcasecmp(r->field, "retry-after") == 0;
        if (r->in_retry)
            r->retry_after_s = 0;
    }
    /* delta-seconds only; an HTTP date counts as 0 (retry after the bucket's own wait) */
    for (size_t i = 0; r->in_retry && i < n; i++)
        if (isdigit((unsigned char)at[i]) && r->retry_after_s < 100000)
            r->retry_after_s = r->retry_after_s * 10 + (at[i] - '0');
    return 0;
}

static int on_hdone(http_parser *p)
{
    resp_of(p)->status = p->status_code;
    return 0;
}

static int on_rbody(http_parser *p, const char *at, size_t n)
{
    httpc_resp_t *r = resp_of(p);
    if (r->body.len + n > r->max_body) {
        r->too_big = 1;
        return -1;
    }
    return buf_append(&r->body, at, n) < 0 ? -1 : 0;
}

static int on_rdone(http_parser *p)
{
    resp_of(p)->done = 1;
    return 0;
}

static const http_parser_settings resp_settings = {
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_hdone,
    .on_body = on_rbody,
    .on_message_complete = on_rdone,
};

int httpc_resp_init(httpc_resp_t *r, size_t max_body)
{
    memset(r, 0, sizeof(*r));
    r->parser = malloc(sizeof(http_parser));
    if (r->parser == NULL)
        return -ENOMEM;
    http_parser_init(r->parser, HTTP_RESPONSE);
    ((http_parser *)r->parser)->data = r;
    buf_init(&r->body);
    r->max_body = max_body;
    r->retry_after_s = -1;
    return 0;
}

void httpc_resp_free(httpc_resp_t *r)
{
    free(r->parser);
    r->parser = NULL;
    buf_free(&r->body);
}

int httpc_resp_feed(httpc_resp_t *r, const char *data, size_t n)
{
    http_parser *p = r->parser;
    if (r->done)
        return 0;
    if (!r->status) {
        r->header_bytes += n;
        if (r->header_bytes > HTTPC_MAX_HEADER)
            return -E2BIG;
    }
    size_t k = http_parser_execute(p, &resp_settings, data, n);
    if (r->too_big)
        return -E2BIG;
    if (HTTP_PARSER_ERRNO(p) != HPE_OK && !r->done)
        return -EPROTO;
    if (n > 0 && k != n && !r->done)
        return -EPROTO;
    if (n == 0 && !r->done)
        return -EPROTO; /* closed before the answer was complete */
    return 0;
}

int httpc_url_parse(const char *url, wsc_url_t *out)
{
    char tmp[2400];
    if (url == NULL)
        return -EINVAL;
    if (strncasecmp(url, "http://", 7) == 0)
        snprintf(tmp, sizeof(tmp), "ws://%s", url + 7);
    else if (strncasecmp(url, "https://", 8) == 0)
        snprintf(tmp, sizeof(tmp), "wss://%s", url + 8);
    else
        return -EINVAL;
    if (strlen(url) >= sizeof(tmp) - 8)
        return -EINVAL;
    return wsc_url_parse(tmp, out);
}

/* ---- request ------------------------------------------------------------ */

struct httpc_s {
    uv_loop_t *loop;
    tls_ctx_t *tls_ctx;
    tls_conn_t *tls;
    wsc_url_t u;
    uv_getaddrinfo_t gai;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer;
    httpc_resp_t resp;
    buf_t req;
    httpc_cb cb;
    void *arg;
    int handles; /* open handles + pending getaddrinfo */
    int tcp_inited, finished, handshaking;
};

static void h_release(httpc_t *h)
{
    if (--h->handles > 0)
        return;
    if (h->tls)
        tls_conn_free(h->tls);
    httpc_resp_free(&h->resp);
    buf_free(&h->req);
    free(h);
}

static void on_hclose(uv_handle_t *hd)
{
    h_release(hd->data);
}

/* Stop everything; report (err, detail) or the answer unless cancelled. */
static void h_finish(httpc_t *h, int err, const char *detail)
{
    if (h->finished)
        return;
    h->finished = 1;
    if (h->cb != NULL) {
        httpc_result_t res = {.status = h->resp.status,
                              .body = h->resp.body.data ? h->resp.body.data : "",
                              .body_len = h->resp.body.len,
                              .retry_after_s = h->resp.retry_after_s};
        h->cb(h->arg, err, detail, err == 0 ? &res : NULL);
    }
    uv_cancel((uv_req_t *)&h->gai);
    uv_close((uv_handle_t *)&h->timer, on_hclose);
    if (h->tcp_inited)
        uv_close((uv_handle_t *)&h->tcp, on_hclose);
}

static void on_hwrite_error(void *arg, int status)
{
    h_finish(arg, status, uv_strerror(status));
}

/* Write plaintext (encrypted first on https) or pending TLS records. */
static int h_send(httpc_t *h, const char *data, size_t n)
{
    buf_t out;
    buf_init(&out);
    int r = 0;
    if (h->tls) {
        if (n > 0 && tls_conn_write(h->tls, data, n) < 0)
            r = -EPROTO;
        else if (tls_conn_out(h->tls, &out) < 0)
            r = -ENOMEM;
    } else {
        r = buf_append(&out, data, n) < 0 ? -ENOMEM : 0;
    }
    if (r < 0) {
        buf_free(&out);
        return r;
    }
    return uvw_write_buf((uv_stream_t *)&h->tcp, &out, on_hwrite_error, h);
}

static void h_plain(httpc_t *h, const char *data, size_t n)
{
    int r = httpc_resp_feed(&h->resp, data, n);
    if (r == -E2BIG)
        h_finish(h, r, "answer too large");
    else if (r < 0)
        h_finish(h, r, n == 0 ? "connection closed before the answer was complete" : "malformed HTTP answer");
    else if (h->resp.done)
        h_finish(h, 0, NULL);
}

static void on_hread(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    httpc_t *h = s->data;
    if (h->finished || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && !h->handshaking)
            h_plain(h, NULL, 0);
        else
            h_finish(h, nread == UV_EOF ? -EPROTO : (int)nread,
                     nread == UV_EOF ? "closed during the TLS handshake" : uv_strerror((int)nread));
        return;
    }
    if (h->tls == NULL) {
        h_plain(h, b->base, (size_t)nread);
        return;
    }
    if (tls_conn_feed(h->tls, b->base, (size_t)nread) < 0) {
        h_finish(h, -ENOMEM, "out of memory");
        return;
    }
    if (h->handshaking) {
        int r = tls_conn_handshake(h->tls);
        (void)h_send(h, NULL, 0);
        if (r < 0) {
            h_finish(h, -EPROTO, tls_conn_error(h->tls));
            return;
        }
        if (r == 0)
            return;
        h->handshaking = 0;
        if ((r = h_send(h, h->req.data, h->req.len)) < 0) {
            h_finish(h, r, "write");
            return;
        }
    }
    char plain[16384];
    for (;;) {
        long k = tls_conn_read(h->tls, plain, sizeof(plain));
        if (k == 0)
            break;
        if (k == -EPIPE) {
            h_plain(h, NULL, 0);
            return;
        }
        if (k < 0) {
            h_finish(h, -EPROTO, tls_conn_error(h->tls));
            return;
        }
        h_plain(h, plain, (size_t)k);
        if (h->finished)
            return;
    }
}

static void on_hconnect(uv_connect_t *req, int status)
{
    httpc_t *h = req->data;
    int r;
    if (h->finished)
        return;
    if (status < 0) {
        h_finish(h, status, uv_strerror(status));
        return;
    }
    if ((r = uv_read_start((uv_stream_t *)&h->tcp, wsc_slab_alloc, on_hread)) < 0) {
        h_finish(h, r, uv_strerror(r));
        return;
    }
    if (h->u.tls) {
        if (tls_conn_new_client(h->tls_ctx, h->u.host, &h->tls) < 0) {
            h->tls = NULL;
            h_finish(h, -EPROTO, "cannot create a TLS session");
            return;
        }
        h->handshaking = 1;
        if (tls_conn_handshake(h->tls) < 0) {
            h_finish(h, -EPROTO, tls_conn_error(h->tls));
            return;
        }
        r = h_send(h, NULL, 0);
    } else {
        r = h_send(h, h->req.data, h->req.len);
    }
    if (r < 0)
        h_finish(h, r, "write");
}

static void on_hresolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    httpc_t *h = req->data;
    if (h->finished || status < 0) {
        if (!h->finished)
            h_finish(h, status, uv_strerror(status));
        if (res)
            uv_freeaddrinfo(res);
        h_release(h);
        return;
    }
    struct addrinfo *pick = res; /* IPv4 first, as the WebSocket client does */
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    int r = uv_tcp_init(h->loop, &h->tcp);
    if (r == 0) {
        h->tcp_inited = 1;
        h->handles++;
        h->tcp.data = h;
        h->creq.data = h;
        uv_tcp_nodelay(&h->tcp, 1);
        r = uv_tcp_connect(&h->creq, &h->tcp, pick->ai_addr, on_hconnect);
    }
    uv_freeaddrinfo(res);
    if (r < 0)
        h_finish(h, r, uv_strerror(r));
    h_release(h);
}

static void on_htimeout(uv_timer_t *t)
{
    h_finish(t->data, -ETIMEDOUT, "timed out");
}

int httpc_get(uv_loop_t *loop, tls_ctx_t *tls, const char *url, int timeout_ms, size_t max_body, httpc_cb cb,
              void *arg, httpc_t **out)
{
    int r;
    httpc_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    if ((r = httpc_url_parse(url, &h->u)) < 0)
        goto fail;
    if (h->u.tls && tls == NULL) {
        r = -ENOTSUP;
        goto fail;
    }
    if ((r = httpc_resp_init(&h->resp, max_body)) < 0)
        goto fail;
    h->loop = loop;
    h->tls_ctx = tls;
    h->cb = cb;
    h->arg = arg;
    buf_init(&h->req);
    buf_printf(&h->req,
               "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\nUser-Agent: exchange-service\r\n"
               "Connection: close\r\n\r\n",
               h->u.path, h->u.hosthdr);
    char port[8];
    snprintf(port, sizeof(port), "%d", h->u.port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    h->gai.data = h;
    if ((r = uv_getaddrinfo(loop, &h->gai, on_hresolved, h->u.host, port, &hints)) < 0) {
        httpc_resp_free(&h->resp);
        buf_free(&h->req);
        goto fail;
    }
    h->handles = 2; /* the getaddrinfo request and the timer */
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_start(&h->timer, on_htimeout, (uint64_t)(timeout_ms > 0 ? timeout_ms : 10000), 0);
    *out = h;
    return 0;
fail:
    free(h);
    return r;
}

void httpc_cancel(httpc_t *h)
{
    if (h == NULL || h->finished)
        return;
    h->cb = NULL;
    h_finish(h, -ECANCELED, "cancelled");
}
