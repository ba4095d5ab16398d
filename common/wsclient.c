/* WebSocket client: one wsc_t per upstream feed. Each attempt is a
 * wsc_conn_t (DNS -> TCP -> TLS -> upgrade -> open) that is detached from
 * its wsc_t when it ends and freed once its libuv handle has closed, so a
 * callback may reconnect or stop at any point without freeing memory that
 * is still on the stack. */
#include "wsclient.h"
#include "wsproto.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>

#include "buf.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"
#include "uvwrite.h"

#define WSC_MAX_RESPONSE_HEADER 16384
#define WSC_MAX_UNSENT (16u << 20)
#define WSC_STOP_CLOSE_MS 2000

enum { ST_RESOLVING, ST_CONNECTING, ST_TLS, ST_UPGRADE, ST_OPEN, ST_CLOSING };

typedef struct wsc_conn_s {
    wsc_t *w;
    int state;
    int refs;     /* owner (while attached) + getaddrinfo pending + tcp handle */
    int detached; /* ended: ignore every late callback */
    int was_open;
    int got_data;
    int we_closed; /* we queued the close frame (wsc_stop / drop) */
    int tcp_inited, tcp_closing, gai_pending;
    uv_getaddrinfo_t gai;
    uv_tcp_t tcp;
    uv_connect_t creq;
    tls_conn_t *tls;
    wsc_upgrade_t up;
    int up_inited;
    char key[32];
    wslay_event_context_ptr ws;
    const uint8_t *rx; /* input being handed to wslay_event_recv */
    size_t rx_len;
    buf_t out; /* framed plaintext waiting for conn_flush */
    uint64_t open_ms;
    uint64_t msgs;
    wsc_url_t u; /* this attempt's target (wsc_set_url affects the next one) */
} wsc_conn_t;

struct wsc_s {
    uv_loop_t *loop;
    wsc_callbacks_t cb;
    void *arg;
    char *name, *url, *ca_file, *extra_headers;
    wsc_url_t u;
    int insecure;
    size_t max_msg;
    int min_ms, max_ms, stale_ms, ping_ms, timeout_ms;
    tls_ctx_t *tls_ctx;
    backoff_t bo;
    uv_timer_t retry_timer, deadline_timer, ping_timer, stale_timer;
    int timers_open;
    int live_conns;
    int stopping, finishing;
    wsc_conn_t *conn;
    uint64_t last_attempt_ms, last_msg_ms;
    char last_error[256];
    int last_http_status;
    metric_t *m_connected, *m_messages, *m_bytes, *m_reconnects, *m_http;
};

static const char *const known_causes[] = {"closed",  "error", "stale",           "http_status", "tls",
                                           "too_big", "dns",   "connect_timeout", "user",        NULL};

uint64_t wsc_retry_delay(backoff_t *b, uint64_t now_ms, uint64_t last_attempt_ms, uint64_t min_ms)
{
    uint64_t d = backoff_next(b);
    if (last_attempt_ms) {
        uint64_t earliest = last_attempt_ms + min_ms;
        if (now_ms < earliest && d < earliest - now_ms)
            d = earliest - now_ms;
    }
    return d;
}

/* --------------------------------------------------------- connection */

static void conn_end(wsc_t *w, const char *cause, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void maybe_finish(wsc_t *w);
static void schedule_retry(wsc_t *w);
static void on_deadline(uv_timer_t *t);

static void conn_unref(wsc_conn_t *c)
{
    if (--c->refs > 0)
        return;
    wsc_t *w = c->w;
    if (c->ws)
        wslay_event_context_free(c->ws);
    if (c->tls)
        tls_conn_free(c->tls);
    if (c->up_inited)
        wsc_upgrade_free(&c->up);
    buf_free(&c->out);
    free(c);
    w->live_conns--;
    maybe_finish(w);
}

static void on_tcp_close(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void on_write_error(void *arg, int status)
{
    wsc_conn_t *c = arg;
    if (!c->detached)
        conn_end(c->w, "error", "write: %s", uv_strerror(status));
}

/* Encrypt (wss) and write everything pending in one uv_write. */
static int conn_flush(wsc_conn_t *c)
{
    if (!c->tcp_inited || c->tcp_closing)
        return -ENOTCONN;
    buf_t data;
    buf_init(&data);
    if (c->tls) {
        if (c->out.len > 0) {
            int r = tls_conn_write(c->tls, c->out.data, c->out.len);
            buf_reset(&c->out);
            if (r < 0)
                return r;
        }
        if (tls_conn_out(c->tls, &data) < 0) {
            buf_free(&data);
            return -ENOMEM;
        }
    } else {
        data = c->out;
        buf_init(&c->out);
    }
    return uvw_write_buf((uv_stream_t *)&c->tcp, &data, on_write_error, c);
}

static void conn_close_transport(wsc_conn_t *c)
{
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai); /* the callback still runs and drops its ref */
    if (c->tcp_inited && !c->tcp_closing) {
        if (c->tls && tls_conn_handshake_done(c->tls)) {
            tls_conn_shutdown(c->tls);
            (void)conn_flush(c);
        }
        c->tcp_closing = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_close((uv_handle_t *)&c->tcp, on_tcp_close);
    }
}

static const char *cause_label(const char *cause)
{
    for (int i = 0; known_causes[i]; i++)
        if (strcmp(cause, known_causes[i]) == 0)
            return cause;
    return "user";
}

/* The current attempt is over: log, count, tell the owner, schedule the
 * next one (unless stopping). */
static void conn_end(wsc_t *w, const char *cause, const char *fmt, ...)
{
    wsc_conn_t *c = w->conn;
    if (!c)
        return;
    w->conn = NULL;
    c->detached = 1;
    uv_timer_stop(&w->deadline_timer);
    uv_timer_stop(&w->ping_timer);
    uv_timer_stop(&w->stale_timer);

    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->last_error, sizeof w->last_error, fmt, ap);
    va_end(ap);
    const char *label = cause_label(cause);

    if (c->was_open) {
        metric_set(w->m_connected, 0);
        log_info("ws disconnected", "conn=%s cause=%s detail=%s uptime_ms=%llu messages=%llu", w->name, label,
                 log_q(w->last_error), (unsigned long long)(uv_now(w->loop) - c->open_ms),
                 (unsigned long long)c->msgs);
    } else if (!w->stopping) {
        log_warn("ws connect failed", "conn=%s url=%s cause=%s detail=%s", w->name, log_q(w->url), label,
                 log_q(w->last_error));
    }
    conn_close_transport(c);
    conn_unref(c); /* the owner's reference */

    if (w->stopping) {
        maybe_finish(w);
        return;
    }
    metric_inc(metric_labels(w->m_reconnects, "conn=\"%s\",cause=\"%s\"", w->name, label));
    if (w->cb.on_close)
        w->cb.on_close(w, cause, w->arg); /* the caller's own cause, not the label */
    if (w->stopping)
        maybe_finish(w);
    else
        schedule_retry(w);
}

/* Send a close frame best effort, then end the attempt now. */
static void conn_drop(wsc_t *w, const char *cause, const char *detail)
{
    wsc_conn_t *c = w->conn;
    if (!c)
        return;
    if (c->ws && (c->state == ST_OPEN || c->state == ST_CLOSING) && !c->we_closed) {
        c->we_closed = 1;
        uint16_t code = strcmp(cause, "user") == 0 ? WSLAY_CODE_NORMAL_CLOSURE : WSLAY_CODE_GOING_AWAY;
        if (wslay_event_queue_close(c->ws, code, NULL, 0) == 0 && wslay_event_send(c->ws) == 0)
            (void)conn_flush(c);
    }
    conn_end(w, cause, "%s", detail);
}

/* ------------------------------------------------------------ wslay glue */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    wsc_conn_t *c = ud;
    return ws_feed_recv(ctx, buf, len, &c->rx, &c->rx_len);
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    wsc_conn_t *c = ud;
    if (buf_append(&c->out, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud)
{
    (void)ctx;
    wsc_conn_t *c = ud;
    wsc_t *w = c->w;
    if (c->detached || w->stopping)
        return;
    if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME)
        return; /* ping/pong/close are handled by wslay and ws_after_io */
    w->last_msg_ms = uv_now(w->loop);
    c->msgs++;
    metric_inc(w->m_messages);
    metric_add(w->m_bytes, (double)a->msg_length);
    if (!c->got_data) {
        /* The upstream accepted us and is streaming: start backoff over. */
        c->got_data = 1;
        backoff_reset(&w->bo);
    }
    if (w->cb.on_message)
        w->cb.on_message(w, a->opcode == WSLAY_BINARY_FRAME, (const char *)a->msg, a->msg_length, w->arg);
}

/* After wslay consumed input or we queued something: send, then see
 * whether a close handshake finished the connection. */
static void ws_after_io(wsc_conn_t *c)
{
    wsc_t *w = c->w;
    if (c->detached)
        return;
    if (wslay_event_send(c->ws) != 0) {
        conn_end(w, "error", "websocket send failed");
        return;
    }
    int r = conn_flush(c);
    if (r < 0) {
        conn_end(w, "error", "write: %s", r == -EPROTO ? tls_conn_error(c->tls) : uv_strerror(r));
        return;
    }
    if (wslay_event_get_close_received(c->ws)) {
        unsigned code = wslay_event_get_status_code_received(c->ws);
        if (w->stopping)
            conn_end(w, "user", "stopped");
        else
            conn_end(w, "closed", "peer sent close code=%u", code);
    } else if (wslay_event_get_close_sent(c->ws) && !c->we_closed) {
        /* wslay failed the connection itself. */
        unsigned code = wslay_event_get_status_code_sent(c->ws);
        if (code == WSLAY_CODE_MESSAGE_TOO_BIG)
            conn_end(w, "too_big", "message over %zu bytes, sent close 1009", w->max_msg);
        else
            conn_end(w, "error", "protocol error, sent close code=%u", code);
    }
}

static void ws_pump(wsc_conn_t *c, const char *data, size_t n)
{
    c->rx = (const uint8_t *)data;
    c->rx_len = n;
    int r = wslay_event_recv(c->ws);
    c->rx_len = 0;
    if (c->detached)
        return;
    if (r != 0) {
        conn_end(c->w, "error", "websocket receive failed (%d)", r);
        return;
    }
    ws_after_io(c);
}

static void on_ping_timer(uv_timer_t *t)
{
    wsc_t *w = t->data;
    wsc_conn_t *c = w->conn;
    if (!c || c->state != ST_OPEN)
        return;
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
    if (wslay_event_queue_msg(c->ws, &m) == 0)
        ws_after_io(c);
}

static void on_stale_timer(uv_timer_t *t)
{
    wsc_t *w = t->data;
    wsc_conn_t *c = w->conn;
    if (!c || c->state != ST_OPEN)
        return;
    uint64_t now = uv_now(w->loop);
    uint64_t last = c->got_data ? w->last_msg_ms : c->open_ms;
    uint64_t due = last + (uint64_t)w->stale_ms;
    if (now >= due) {
        char d[64];
        snprintf(d, sizeof d, "no data for %llu ms", (unsigned long long)(now - last));
        conn_drop(w, "stale", d);
    } else {
        uv_timer_start(&w->stale_timer, on_stale_timer, due - now, 0);
    }
}

static void ws_open(wsc_conn_t *c)
{
    wsc_t *w = c->w;
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = ws_recv_cb,
        .send_callback = ws_send_cb,
        .genmask_callback = ws_genmask_cb,
        .on_msg_recv_callback = ws_msg_cb,
    };
    if (wslay_event_context_client_init(&c->ws, &cbs, c) != 0) {
        c->ws = NULL;
        conn_end(w, "error", "out of memory");
        return;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, w->max_msg);
    c->state = ST_OPEN;
    c->was_open = 1;
    c->open_ms = uv_now(w->loop);
    uv_timer_stop(&w->deadline_timer);
    metric_set(w->m_connected, 1);
    w->last_http_status = 0;
    log_info("ws connected", "conn=%s url=%s tls=%s", w->name, log_q(w->url),
             c->tls ? tls_conn_version(c->tls) : "none");
    if (w->ping_ms > 0)
        uv_timer_start(&w->ping_timer, on_ping_timer, (uint64_t)w->ping_ms, (uint64_t)w->ping_ms);
    if (w->stale_ms > 0)
        uv_timer_start(&w->stale_timer, on_stale_timer, (uint64_t)w->stale_ms, 0);
    if (w->cb.on_open)
        w->cb.on_open(w, w->arg);
}

/* ------------------------------------------------------------- phases */

static void send_upgrade(wsc_conn_t *c)
{
    wsc_t *w = c->w;
    unsigned char nonce[16];
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
        conn_end(w, "error", "RAND_bytes failed");
        return;
    }
    EVP_EncodeBlock((unsigned char *)c->key, nonce, sizeof nonce);
    if (wsc_upgrade_init(&c->up, WSC_MAX_RESPONSE_HEADER) < 0) {
        conn_end(w, "error", "out of memory");
        return;
    }
    c->up_inited = 1;
    int r = buf_printf(&c->out,
                       "GET %s HTTP/1.1\r\n"
                       "Host: %s\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "User-Agent: exchange-service\r\n"
                       "%s\r\n",
                       c->u.path, c->u.hosthdr, c->key, w->extra_headers);
    if (r < 0 || (r = conn_flush(c)) < 0) {
        conn_end(w, "error", "write: %s", r == -EPROTO ? tls_conn_error(c->tls) : uv_strerror(r));
        return;
    }
    c->state = ST_UPGRADE;
    uv_timer_start(&w->deadline_timer, on_deadline, (uint64_t)w->timeout_ms, 0);
}

static void handle_plain(wsc_conn_t *c, const char *data, size_t n)
{
    wsc_t *w = c->w;
    if (c->state == ST_UPGRADE) {
        long k = wsc_upgrade_feed(&c->up, data, n);
        if (k < 0) {
            conn_end(w, "error", "%s",
                     k == -E2BIG ? "upgrade response headers too large" : "malformed upgrade response");
            return;
        }
        if (!c->up.done)
            return;
        int v = wsc_upgrade_verify(&c->up, c->key);
        if (v > 0) {
            w->last_http_status = v;
            metric_inc(metric_labels(w->m_http, "conn=\"%s\",status=\"%d\"", w->name, v));
            conn_end(w, "http_status", "http status %d", v);
            return;
        }
        if (v < 0) {
            conn_end(w, "error", "bad upgrade response (accept/upgrade/connection/extensions)");
            return;
        }
        ws_open(c);
        if (c->detached || (size_t)k >= n)
            return;
        data += k;
        n -= (size_t)k;
    }
    if (c->state == ST_OPEN || c->state == ST_CLOSING)
        ws_pump(c, data, n);
}

static void on_eof(wsc_conn_t *c, const char *why)
{
    wsc_t *w = c->w;
    switch (c->state) {
    case ST_TLS: conn_end(w, "tls", "tls handshake: %s", why); break;
    case ST_UPGRADE: conn_end(w, "error", "upgrade: %s", why); break;
    case ST_CLOSING: conn_end(w, "user", "stopped"); break;
    default: conn_end(w, "closed", "%s without close frame", why); break;
    }
}

void wsc_slab_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static __thread char slab[65536]; /* consumed by the read callback before the next read */
    *b = uv_buf_init(slab, sizeof slab);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    wsc_conn_t *c = s->data;
    if (c->detached || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            on_eof(c, "eof");
        else if (c->state == ST_TLS)
            conn_end(c->w, "tls", "read: %s", uv_strerror((int)nread));
        else
            conn_end(c->w, "error", "read: %s", uv_strerror((int)nread));
        return;
    }
    if (!c->tls) {
        handle_plain(c, b->base, (size_t)nread);
        return;
    }
    wsc_t *w = c->w;
    if (tls_conn_feed(c->tls, b->base, (size_t)nread) < 0) {
        conn_end(w, "error", "out of memory");
        return;
    }
    if (c->state == ST_TLS) {
        int r = tls_conn_handshake(c->tls);
        int f = conn_flush(c); /* alerts too, so the peer learns why */
        if (r < 0) {
            conn_end(w, "tls", "%s", tls_conn_error(c->tls));
            return;
        }
        if (f < 0) {
            conn_end(w, "error", "write: %s", uv_strerror(f));
            return;
        }
        if (r == 0)
            return;
        send_upgrade(c);
        if (c->detached)
            return;
    }
    char plain[16384];
    for (;;) {
        long k = tls_conn_read(c->tls, plain, sizeof plain);
        if (k == 0)
            break;
        if (k == -EPIPE) {
            on_eof(c, "tls close_notify");
            return;
        }
        if (k < 0) {
            conn_end(w, "error", "%s", tls_conn_error(c->tls));
            return;
        }
        handle_plain(c, plain, (size_t)k);
        if (c->detached)
            return;
    }
    int f = conn_flush(c);
    if (f < 0)
        conn_end(w, "error", "write: %s", uv_strerror(f));
}

static int ensure_tls_ctx(wsc_t *w, char *err, size_t errsz)
{
    if (w->tls_ctx)
        return 0;
    return tls_client_ctx_new(w->ca_file, w->insecure, &w->tls_ctx, err, errsz);
}

static void on_connect(uv_connect_t *req, int status)
{
    wsc_conn_t *c = req->data;
    if (c->detached)
        return;
    wsc_t *w = c->w;
    if (status < 0) {
        conn_end(w, "error", "connect %s:%d: %s", c->u.host, c->u.port, uv_strerror(status));
        return;
    }
    int r = uv_read_start((uv_stream_t *)&c->tcp, wsc_slab_alloc, on_read);
    if (r < 0) {
        conn_end(w, "error", "read_start: %s", uv_strerror(r));
        return;
    }
    if (!c->u.tls) {
        send_upgrade(c);
        return;
    }
    char err[256] = "";
    if (ensure_tls_ctx(w, err, sizeof err) < 0) {
        conn_end(w, "tls", "%s", err);
        return;
    }
    if (tls_conn_new_client(w->tls_ctx, c->u.host, &c->tls) < 0) {
        c->tls = NULL;
        conn_end(w, "tls", "cannot create tls session");
        return;
    }
    c->state = ST_TLS;
    uv_timer_start(&w->deadline_timer, on_deadline, (uint64_t)w->timeout_ms, 0);
    if (tls_conn_handshake(c->tls) < 0) {
        conn_end(w, "tls", "%s", tls_conn_error(c->tls));
        return;
    }
    if ((r = conn_flush(c)) < 0)
        conn_end(w, "error", "write: %s", uv_strerror(r));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    wsc_conn_t *c = req->data;
    wsc_t *w = c->w;
    c->gai_pending = 0;
    if (c->detached) {
        if (res)
            uv_freeaddrinfo(res);
        conn_unref(c);
        return;
    }
    if (status < 0) {
        conn_end(w, "dns", "resolve %s: %s", c->u.host, uv_strerror(status));
        conn_unref(c);
        return;
    }
    /* Prefer IPv4: exchanges all serve it, and "localhost" then matches a
     * server bound to 127.0.0.1. */
    struct addrinfo *pick = NULL;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    if (!pick)
        pick = res;
    int r = uv_tcp_init(w->loop, &c->tcp);
    if (r == 0) {
        c->tcp_inited = 1;
        c->refs++;
        c->tcp.data = c;
        c->creq.data = c;
        uv_tcp_nodelay(&c->tcp, 1);
        c->state = ST_CONNECTING;
        r = uv_tcp_connect(&c->creq, &c->tcp, pick->ai_addr, on_connect);
    }
    uv_freeaddrinfo(res);
    if (r < 0)
        conn_end(w, "error", "connect %s:%d: %s", c->u.host, c->u.port, uv_strerror(r));
    conn_unref(c);
}

static void on_deadline(uv_timer_t *t)
{
    wsc_t *w = t->data;
    wsc_conn_t *c = w->conn;
    if (!c)
        return;
    char ms[32];
    snprintf(ms, sizeof ms, "%d ms", w->timeout_ms);
    switch (c->state) {
    case ST_RESOLVING: conn_end(w, "dns", "resolve %s: timeout after %s", c->u.host, ms); break;
    case ST_CONNECTING: conn_end(w, "connect_timeout", "connect timeout after %s", ms); break;
    case ST_TLS: conn_end(w, "tls", "tls handshake timeout after %s", ms); break;
    case ST_UPGRADE: conn_end(w, "connect_timeout", "no upgrade response after %s", ms); break;
    case ST_CLOSING: conn_end(w, "user", "stopped (close handshake timed out)"); break;
    default: break;
    }
}

static void attempt_start(wsc_t *w)
{
    if (w->stopping || w->conn)
        return;
    wsc_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        schedule_retry(w);
        return;
    }
    c->w = w;
    c->refs = 1;
    c->state = ST_RESOLVING;
    c->u = w->u;
    buf_init(&c->out);
    w->live_conns++;
    w->conn = c;
    uv_update_time(w->loop);
    w->last_attempt_ms = uv_now(w->loop);
    log_debug("ws connecting", "conn=%s url=%s", w->name, log_q(w->url));
    uv_timer_start(&w->deadline_timer, on_deadline, (uint64_t)w->timeout_ms, 0);

    char port[8];
    snprintf(port, sizeof port, "%d", c->u.port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    c->gai.data = c;
    int r = uv_getaddrinfo(w->loop, &c->gai, on_resolved, c->u.host, port, &hints);
    if (r < 0) {
        conn_end(w, "dns", "resolve %s: %s", c->u.host, uv_strerror(r));
        return;
    }
    c->gai_pending = 1;
    c->refs++;
}

static void on_retry(uv_timer_t *t)
{
    attempt_start(t->data);
}

static void schedule_retry(wsc_t *w)
{
    uv_update_time(w->loop);
    uint64_t d = wsc_retry_delay(&w->bo, uv_now(w->loop), w->last_attempt_ms, (uint64_t)w->min_ms);
    log_info("ws reconnect scheduled", "conn=%s delay_ms=%llu attempt=%u", w->name, (unsigned long long)d,
             w->bo.attempt);
    uv_timer_start(&w->retry_timer, on_retry, d, 0);
}

/* --------------------------------------------------------------- public */

static void wsc_free(wsc_t *w)
{
    tls_ctx_free(w->tls_ctx);
    free(w->name);
    free(w->url);
    free(w->ca_file);
    free(w->extra_headers);
    free(w);
}

static void on_timer_close(uv_handle_t *h)
{
    wsc_t *w = h->data;
    if (--w->timers_open > 0)
        return;
    void *arg = w->arg;
    void (*stopped)(wsc_t *, void *) = w->cb.on_stopped;
    log_info("ws stopped", "conn=%s", w->name);
    if (stopped)
        stopped(w, arg);
    wsc_free(w);
}

static void maybe_finish(wsc_t *w)
{
    if (!w->stopping || w->finishing || w->conn || w->live_conns > 0)
        return;
    w->finishing = 1;
    metric_set(w->m_connected, 0);
    uv_close((uv_handle_t *)&w->retry_timer, on_timer_close);
    uv_close((uv_handle_t *)&w->deadline_timer, on_timer_close);
    uv_close((uv_handle_t *)&w->ping_timer, on_timer_close);
    uv_close((uv_handle_t *)&w->stale_timer, on_timer_close);
}

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

/* Each line "Name: value\r\n"; no empty line (it would end the header). */
static int valid_headers(const char *h)
{
    if (!h || !*h)
        return 1;
    size_t n = strlen(h);
    if (n > 4096 || n < 2 || h[n - 2] != '\r' || h[n - 1] != '\n')
        return 0;
    const char *line = h;
    while (*line) {
        const char *eol = strstr(line, "\r\n");
        if (!eol || eol == line)
            return 0;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon || colon == line)
            return 0;
        for (const char *p = line; p < eol; p++)
            if (*p == '\r' || *p == '\n' || ((unsigned char)*p < 0x20 && *p != '\t'))
                return 0;
        line = eol + 2;
    }
    return 1;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

int wsc_start(uv_loop_t *loop, const wsc_opts_t *o, const wsc_callbacks_t *cb, void *arg, wsc_t **out)
{
    wsc_url_t u;
    if (!loop || !o || !cb || !out || !valid_name(o->name) || wsc_url_parse(o->url, &u) < 0 ||
        !valid_headers(o->extra_headers) || o->reconnect_min_ms < 0 || o->reconnect_max_ms < 0 ||
        o->stale_after_ms < 0 || o->ping_interval_ms < 0 || o->connect_timeout_ms < 0)
        return -EINVAL;
    wsc_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->loop = loop;
    w->cb = *cb;
    w->arg = arg;
    w->u = u;
    w->name = strdup(o->name);
    w->url = strdup(o->url);
    w->ca_file = dup_or_null(o->ca_file);
    w->extra_headers = strdup(o->extra_headers ? o->extra_headers : "");
    if (!w->name || !w->url || !w->extra_headers || (o->ca_file && *o->ca_file && !w->ca_file)) {
        wsc_free(w);
        return -ENOMEM;
    }
    w->insecure = o->insecure_skip_verify;
    w->max_msg = o->max_message_bytes ? o->max_message_bytes : (16u << 20);
    w->min_ms = o->reconnect_min_ms ? o->reconnect_min_ms : 1000;
    w->max_ms = o->reconnect_max_ms ? o->reconnect_max_ms : 30000;
    if (w->max_ms < w->min_ms)
        w->max_ms = w->min_ms;
    w->stale_ms = o->stale_after_ms;
    w->ping_ms = o->ping_interval_ms;
    w->timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 10000;
    backoff_init(&w->bo, (uint64_t)w->min_ms, (uint64_t)w->max_ms, 0);
    if (u.tls) {
        char err[256] = "";
        if (ensure_tls_ctx(w, err, sizeof err) < 0) {
            log_error("ws tls setup failed", "conn=%s detail=%s", w->name, log_q(err));
            wsc_free(w);
            return -EINVAL;
        }
    }
    w->m_connected =
        metric_labels(metric_gauge("exchange_ws_connected", "1 while the upstream WebSocket is open"),
                      "conn=\"%s\"", w->name);
    w->m_messages = metric_labels(
        metric_counter("exchange_ws_messages_total", "Data messages received from the upstream"),
        "conn=\"%s\"", w->name);
    w->m_bytes =
        metric_labels(metric_counter("exchange_ws_bytes_total", "Payload bytes received from the upstream"),
                      "conn=\"%s\"", w->name);
    w->m_reconnects =
        metric_counter("exchange_ws_reconnects_total", "Upstream connection attempts that ended, by cause");
    w->m_http = metric_counter("exchange_ws_http_status_total",
                               "Non-101 answers to the upstream WebSocket upgrade, by status");
    metric_set(w->m_connected, 0);

    uv_timer_init(loop, &w->retry_timer);
    uv_timer_init(loop, &w->deadline_timer);
    uv_timer_init(loop, &w->ping_timer);
    uv_timer_init(loop, &w->stale_timer);
    w->retry_timer.data = w->deadline_timer.data = w->ping_timer.data = w->stale_timer.data = w;
    w->timers_open = 4;
    uv_timer_start(&w->retry_timer, on_retry, 0, 0);
    *out = w;
    return 0;
}

static int send_msg(wsc_t *w, uint8_t opcode, const void *data, size_t len)
{
    wsc_conn_t *c = w->conn;
    if (!c || c->state != ST_OPEN)
        return -ENOTCONN;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WSC_MAX_UNSENT)
        return -ENOBUFS;
    struct wslay_event_msg m = {opcode, data, len};
    int r = wslay_event_queue_msg(c->ws, &m);
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r != 0)
        return -ENOTCONN;
    ws_after_io(c);
    return 0;
}

int wsc_send_text(wsc_t *w, const char *data, size_t len)
{
    return send_msg(w, WSLAY_TEXT_FRAME, data, len);
}

void wsc_reconnect(wsc_t *w, const char *cause)
{
    if (w->stopping || !w->conn)
        return;
    char d[96];
    snprintf(d, sizeof d, "requested: %s", cause ? cause : "user");
    conn_drop(w, cause ? cause : "user", d);
}

int wsc_set_url(wsc_t *w, const char *url)
{
    wsc_url_t u;
    if (wsc_url_parse(url, &u) < 0)
        return -EINVAL;
    char *copy = strdup(url);
    if (!copy)
        return -ENOMEM;
    free(w->url);
    w->url = copy;
    w->u = u; /* the attempt in flight keeps its own copy */
    return 0;
}

void wsc_stop(wsc_t *w)
{
    if (!w || w->stopping)
        return;
    w->stopping = 1;
    uv_timer_stop(&w->retry_timer);
    wsc_conn_t *c = w->conn;
    if (c && c->state == ST_OPEN) {
        c->we_closed = 1;
        c->state = ST_CLOSING;
        uv_timer_stop(&w->ping_timer);
        uv_timer_stop(&w->stale_timer);
        uv_timer_start(&w->deadline_timer, on_deadline, WSC_STOP_CLOSE_MS, 0);
        if (wslay_event_queue_close(c->ws, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0) != 0) {
            conn_end(w, "user", "stopped");
            return;
        }
        ws_after_io(c);
        return;
    }
    if (c)
        conn_end(w, "user", "stopped");
    else
        maybe_finish(w);
}

int wsc_is_open(const wsc_t *w)
{
    return w && w->conn && w->conn->state == ST_OPEN;
}

const char *wsc_last_error(const wsc_t *w)
{
    return w->last_error;
}

int wsc_last_http_status(const wsc_t *w)
{
    return w->last_http_status;
}
