/* Server-side WebSocket connections over libuv: HTTP upgrade, wslay for the
 * inbound direction and control frames (its context only while the peer is
 * mid-message: idle clients hold none), closing, timers and accept. The
 * write queue of pre-framed refcounted buffers, flushed once per loop
 * iteration as one gather write, is wsserver_write.c; TLS wsserver_tls.c. */
#include "wsserver_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <wslay/wslay.h>

/* ---- handshake ----------------------------------------------------------- */

static int b64char(int ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '+' ||
           ch == '/';
}

int wss_check_upgrade(const http_req_t *req, char accept[29])
{
    const char *up = http_req_header(req, "upgrade");
    const char *conn = http_req_header(req, "connection");
    if (up == NULL || !http_header_has_token(up, "websocket") || conn == NULL ||
        !http_header_has_token(conn, "upgrade"))
        return 426;
    if (strcmp(req->method, "GET") != 0)
        return 400;
    const char *ver = http_req_header(req, "sec-websocket-version");
    if (ver == NULL || strcmp(ver, "13") != 0)
        return 400;
    /* The key is 16 random bytes in base64: 22 characters and "==". */
    const char *key = http_req_header(req, "sec-websocket-key");
    if (key == NULL || strlen(key) != 24 || key[22] != '=' || key[23] != '=')
        return 400;
    for (int i = 0; i < 22; i++)
        if (!b64char((unsigned char)key[i]))
            return 400;
    return accept ? ws_accept_key(key, accept) : 0;
}

/* ---- context --------------------------------------------------------------- */

static int ws_ensure(wss_conn_t *c);

int wss_ctx_new(uv_loop_t *loop, const wss_limits_t *lim, const wss_callbacks_t *cbs, wss_ctx_t **out)
{
    wss_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return -ENOMEM;
    ctx->rdbuf = malloc(WSS_READ_BUF);
    if (ctx->rdbuf == NULL) {
        free(ctx);
        return -ENOMEM;
    }
    ctx->loop = loop;
    ctx->lim = *lim;
    if (ctx->lim.close_timeout_ms == 0)
        ctx->lim.close_timeout_ms = 5000;
    if (ctx->lim.handshake_timeout_ms == 0)
        ctx->lim.handshake_timeout_ms = 10000;
    if (ctx->lim.max_header_bytes == 0)
        ctx->lim.max_header_bytes = 8192;
    ctx->cbs = *cbs;
    buf_init(&ctx->ctl);
    buf_init(&ctx->msg);
    uv_check_init(loop, &ctx->check);
    ctx->check.data = ctx;
    uv_check_start(&ctx->check, wsi_on_check);
    uv_unref((uv_handle_t *)&ctx->check);
    uv_timer_init(loop, &ctx->tick);
    ctx->tick.data = ctx;
    uv_unref((uv_handle_t *)&ctx->tick);
    ctx->handles = 2;
    *out = ctx;
    return 0;
}

void wss_ctx_set_tls(wss_ctx_t *ctx, tls_ctx_t *tls)
{
    ctx->tls = tls;
}

static void ctx_on_check_closed(uv_handle_t *h)
{
    wss_ctx_t *ctx = h->data;
    if (--ctx->handles > 0)
        return;
    for (int i = 0; i < WSS_ZCACHE; i++) {
        if (ctx->zcache[i].plain)
            rbuf_unref(ctx->zcache[i].plain);
        if (ctx->zcache[i].z)
            rbuf_unref(ctx->zcache[i].z);
    }
    ws_deflater_free(ctx->dz);
    ws_inflater_free(ctx->iz);
    if (ctx->ping)
        rbuf_unref(ctx->ping);
    buf_free(&ctx->ctl);
    buf_free(&ctx->msg);
    free(ctx->plain);
    free(ctx->rdbuf);
    free(ctx->spare_wr);
    free(ctx);
}

static void ctx_maybe_free(wss_ctx_t *ctx)
{
    if (ctx->freeing && ctx->nconns == 0 && !uv_is_closing((uv_handle_t *)&ctx->check)) {
        uv_close((uv_handle_t *)&ctx->tick, ctx_on_check_closed);
        uv_close((uv_handle_t *)&ctx->check, ctx_on_check_closed);
    }
}

void wss_ctx_free(wss_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    ctx->freeing = 1;
    ctx_maybe_free(ctx);
}

const wss_stats_t *wss_ctx_stats(const wss_ctx_t *ctx)
{
    return &ctx->stats;
}

/* ---- closing --------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    wss_conn_t *c = h->data;
    if (--c->handles > 0)
        return;
    wss_ctx_t *ctx = c->ctx;
    if (ctx->cbs.on_close && !c->no_report)
        ctx->cbs.on_close(c, c->why, c->close_code);
    c->qinflight = 0;
    while (c->qlen)
        wsi_q_pop(c);
    free(c->q);
    if (c->ws)
        wslay_event_context_free(c->ws);
    if (c->have_req) {
        http_req_free(c->req);
        free(c->req);
        c->req = NULL;
    }
    tls_conn_free(c->tls);
    buf_free(&c->tlsout);
    free(c);
    ctx->nconns--;
    ctx_maybe_free(ctx);
}

void wsi_close_now(wss_conn_t *c, wss_end_t why)
{
    if (c->tcp_closing)
        return;
    if (c->why == WSS_END_NONE)
        c->why = why;
    c->tcp_closing = 1;
    wsi_dirty_del(c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void wss_abort(wss_conn_t *c)
{
    wsi_close_now(c, WSS_END_LOCAL);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    wss_conn_t *c = req->data;
    free(req);
    c->shutdown_done = 1;
    if (c->tcp_closing)
        return;
    /* After our FIN: close at once if the peer has said all it will
     * (close frame received or an HTTP refusal), else wait for its EOF
     * until the close timer fires. */
    if (status < 0 || c->state == ST_HTTP || (c->ws && wslay_event_get_close_received(c->ws)))
        wsi_close_now(c, WSS_END_LOCAL);
}

static void on_timer(uv_timer_t *t);

void wsi_enter_closing(wss_conn_t *c)
{
    if (c->state == ST_CLOSING)
        return;
    c->state = ST_CLOSING;
    c->fin_after_flush = 1;
    uv_timer_start(&c->timer, on_timer, c->ctx->lim.close_timeout_ms, 0);
}

void wsi_maybe_finish(wss_conn_t *c)
{
    if (c->tcp_closing || !c->fin_after_flush || c->qlen > 0 || c->writing || c->shutdown_started)
        return;
    c->shutdown_started = 1;
    if (c->tls != NULL && tls_conn_handshake_done(c->tls)) {
        tls_conn_shutdown(c->tls);
        wsi_tls_send_side(c);
        if (c->tcp_closing)
            return;
    }
    /* Once per connection: not kept in every idle one. */
    uv_shutdown_t *sd = malloc(sizeof *sd);
    if (sd == NULL) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    sd->data = c;
    if (uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(sd);
        wsi_close_now(c, WSS_END_ERROR);
    }
}

void wss_close(wss_conn_t *c, int code, const char *reason, int drop_queued)
{
    if (c->tcp_closing)
        return;
    if (c->state != ST_OPEN) {
        if (c->state == ST_HTTP)
            wsi_close_now(c, WSS_END_LOCAL);
        return;
    }
    if (drop_queued)
        wsi_q_drop_unstarted(c);
    c->why = WSS_END_LOCAL;
    c->close_code = code;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123)
        rl = 123;
    if (ws_ensure(c) < 0) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    (void)wslay_event_queue_close(c->ws, (uint16_t)code, (const uint8_t *)reason, rl);
    wsi_enter_closing(c);
    wsi_ws_pump(c);
}

/* ---- wslay callbacks (loop thread, from wslay_event_recv/send) ------------- */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
    wss_conn_t *c = user;
    (void)flags;
    return ws_feed_recv(ctx, buf, len, &c->ctx->rx, &c->ctx->rxlen);
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user)
{
    wss_conn_t *c = user;
    (void)flags;
    if (buf_append(&c->ctx->ctl, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *user)
{
    wss_conn_t *c = user;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return;
    if (c->state != ST_OPEN || c->ctx->cbs.on_message == NULL)
        return;
    buf_t *m = &c->ctx->msg;
    buf_reset(m);
    if (c->deflate && (arg->rsv & WSLAY_RSV1_BIT)) {
        /* Bounded by max_message_bytes after inflating: a deflate bomb
         * ends at the bound with 1009. */
        size_t max = c->ctx->lim.max_message_bytes ? c->ctx->lim.max_message_bytes : SIZE_MAX - 1;
        int r = c->ctx->iz != NULL || ws_inflater_new(&c->ctx->iz) == 0
                    ? ws_inflate(c->ctx->iz, arg->msg, arg->msg_length, max, m)
                    : -ENOMEM;
        if (r == 0 && arg->opcode == WSLAY_TEXT_FRAME &&
            !ws_utf8_valid((const unsigned char *)m->data, m->len))
            r = -EILSEQ;
        if (r < 0) {
            static const char *const why[] = {"message too big", "invalid UTF-8", "bad deflate data"};
            int k = r == -EMSGSIZE ? 0 : r == -EILSEQ ? 1 : 2;
            uint16_t code = r == -EMSGSIZE ? WSLAY_CODE_MESSAGE_TOO_BIG
                            : r == -EILSEQ ? WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA
                            : r == -ENOMEM ? WSLAY_CODE_INTERNAL_SERVER_ERROR
                                           : WSLAY_CODE_PROTOCOL_ERROR;
            (void)wslay_event_queue_close(ctx, code, (const uint8_t *)why[k], strlen(why[k]));
            return;
        }
        c->ctx->stats.inflated++;
        c->ctx->cbs.on_message(c, arg->opcode, m->data, m->len);
        return;
    }
    if (buf_append(m, arg->msg, arg->msg_length) < 0)
        return;
    c->ctx->cbs.on_message(c, arg->opcode, m->data ? m->data : "", arg->msg_length);
}

/* ---- reading --------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    wss_conn_t *c = h->data;
    (void)suggested;
    if (c->ctx->rdbuf_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    c->ctx->rdbuf_busy = 1;
    buf->base = c->ctx->rdbuf;
    buf->len = WSS_READ_BUF;
}

static void conn_reject(wss_conn_t *c, int status, const char *extra, const char *body)
{
    buf_t out;
    buf_init(&out);
    if (status == 200) {
        /* A plain page answered instead of an upgrade: the body as is, its
         * Content-Type among the extra headers. */
        http_response(&out, 200, NULL, body ? body : "", body ? strlen(body) : 0, extra ? extra : "");
    } else {
        if (body == NULL || *body == '\0')
            body = http_status_text(status);
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s\n", body);
        http_response(&out, status, "text/plain", tmp, strlen(tmp), extra ? extra : "");
    }
    rbuf_t *b = rbuf_new(out.data, out.len);
    buf_free(&out);
    c->why = WSS_END_REJECTED;
    c->close_code = status;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (b == NULL || wsi_q_push(c, b, NULL) < 0) {
        wsi_close_now(c, WSS_END_REJECTED);
        return;
    }
    c->fin_after_flush = 1;
    uv_timer_start(&c->timer, on_timer, c->ctx->lim.close_timeout_ms, 0);
}

/* Follow the frame headers in the bytes wslay is about to read. Only
 * exact for a valid stream; on anything else wslay closes the connection,
 * and a closing connection keeps its context. */
static void fw_walk(wss_conn_t *c, const unsigned char *p, size_t n)
{
    while (n > 0) {
        if (c->fleft > 0) {
            size_t k = c->fleft < n ? (size_t)c->fleft : n;
            c->fleft -= k;
            p += k;
            n -= k;
            if (c->fleft == 0 && (c->fhdr[0] & 0x08) == 0)
                c->frag = !(c->fhdr[0] & 0x80); /* data frame: FIN ends the message */
            continue;
        }
        c->fhdr[c->fhlen++] = *p++;
        n--;
        if (c->fhlen < 2)
            continue;
        unsigned l7 = c->fhdr[1] & 0x7f;
        size_t need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->fhdr[1] & 0x80) ? 4 : 0);
        if (c->fhlen < need)
            continue;
        uint64_t len = l7;
        if (l7 == 126) {
            len = (uint64_t)c->fhdr[2] << 8 | c->fhdr[3];
        } else if (l7 == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | c->fhdr[2 + i];
        }
        c->fhlen = 0;
        c->fleft = len;
        if (len == 0 && (c->fhdr[0] & 0x08) == 0)
            c->frag = !(c->fhdr[0] & 0x80);
    }
}

static int ws_ensure(wss_conn_t *c)
{
    if (c->ws != NULL)
        return 0;
    struct wslay_event_callbacks cbs = {
        .recv_callback = ws_recv_cb, .send_callback = ws_send_cb, .on_msg_recv_callback = ws_msg_cb};
    if (wslay_event_context_server_init(&c->ws, &cbs, c) != 0) {
        c->ws = NULL;
        return -ENOMEM;
    }
    size_t max = c->ctx->lim.max_message_bytes;
    if (c->deflate) {
        wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
        /* The bound applies to the inflated message; an incompressible
         * one arrives a little larger than it is. */
        if (max)
            max += max / 64 + 64;
    }
    if (max)
        wslay_event_config_set_max_recv_msg_length(c->ws, max);
    return 0;
}

/* An idle client sends only pongs: drop wslay's context once it is
 * between frames, has no fragmented message open and nothing to write. */
static void ws_release_idle(wss_conn_t *c)
{
    if (c->ws == NULL || c->state != ST_OPEN || c->tcp_closing || c->fhlen || c->fleft || c->frag ||
        c->ctx->ctl.len > 0 || wslay_event_want_write(c->ws))
        return;
    wslay_event_context_free(c->ws);
    c->ws = NULL;
}

static void ws_feed(wss_conn_t *c, const char *data, size_t n)
{
    if (ws_ensure(c) < 0) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    fw_walk(c, (const unsigned char *)data, n);
    c->ctx->rx = (const uint8_t *)data;
    c->ctx->rxlen = n;
    if (wslay_event_want_read(c->ws) && wslay_event_recv(c->ws) != 0) {
        c->ctx->rxlen = 0;
        c->ctx->stats.protocol_errors++;
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    c->ctx->rxlen = 0;
    if (c->tcp_closing)
        return;
    wsi_ws_pump(c);
}

static void timer_schedule_idle(wss_conn_t *c)
{
    if (c->ctx->lim.idle_timeout_ms > 0)
        uv_timer_start(&c->timer, on_timer, c->ctx->lim.idle_timeout_ms, 0);
    else
        uv_timer_stop(&c->timer);
}

static int conn_upgrade(wss_conn_t *c, const char *rest, size_t restn)
{
    wss_ctx_t *ctx = c->ctx;
    buf_t extra, body;
    buf_init(&extra);
    buf_init(&body);
    char accept[29];
    int status = ctx->cbs.on_request ? ctx->cbs.on_request(c, c->req, &extra, &body) : 0;
    if (status == 0) {
        status = wss_check_upgrade(c->req, accept);
        if (status == 426)
            buf_puts(&extra, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        else if (status == 400)
            buf_puts(&extra, "Sec-WebSocket-Version: 13\r\n");
    }
    char ext[128];
    if (status == 0 && ctx->lim.deflate &&
        ws_deflate_negotiate(http_req_header(c->req, "sec-websocket-extensions"), ext, sizeof ext)) {
        buf_printf(&extra, "Sec-WebSocket-Extensions: %s\r\n", ext);
        c->deflate = 1;
        ctx->stats.deflate_clients++;
    }
    if (status != 0) {
        conn_reject(c, status, extra.data ? extra.data : "", body.data);
        buf_free(&extra);
        buf_free(&body);
        return -1;
    }
    buf_free(&body);
    buf_t resp;
    buf_init(&resp);
    buf_printf(&resp,
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\n%s\r\n",
               accept, extra.data ? extra.data : "");
    buf_free(&extra);
    rbuf_t *b = rbuf_new(resp.data, resp.len);
    buf_free(&resp);
    if (b == NULL || wsi_q_push(c, b, NULL) < 0) {
        wsi_close_now(c, WSS_END_ERROR);
        return -1;
    }
    http_req_free(c->req);
    free(c->req);
    c->req = NULL;
    c->have_req = 0;
    c->state = ST_OPEN;
    c->last_rx = uv_now(ctx->loop);
    timer_schedule_idle(c);
    c->opened = 1;
    if (ctx->cbs.on_open)
        ctx->cbs.on_open(c);
    if (!c->tcp_closing && c->state == ST_OPEN && restn > 0) {
        ws_feed(c, rest, restn);
        if (!c->tcp_closing)
            ws_release_idle(c);
    }
    return 0;
}

/* Plaintext from the peer (after TLS, if any). */
void wsi_conn_input(wss_conn_t *c, const char *data, size_t nread)
{
    if (c->state == ST_HTTP) {
        if (c->why == WSS_END_REJECTED)
            return; /* refused: the answer is on its way */
        long used = http_req_feed(c->req, data, nread);
        if (used < 0) {
            conn_reject(c, c->req->error ? c->req->error : 400, "", NULL);
            return;
        }
        if (!c->req->complete)
            return;
        conn_upgrade(c, data + used, nread - (size_t)used);
        return;
    }
    if (c->state == ST_OPEN || (c->ws && wslay_event_want_read(c->ws))) {
        ws_feed(c, data, nread);
        if (!c->tcp_closing && c->ws && wslay_event_get_close_received(c->ws) &&
            wslay_event_get_close_sent(c->ws)) {
            if (c->shutdown_done)
                wsi_close_now(c, c->why);
            else
                wsi_maybe_finish(c);
        }
        if (!c->tcp_closing)
            ws_release_idle(c);
    }
    /* else: closing and wslay is done reading; wait for EOF. */
}

/* Input rate: a fixed one-second window per connection. 1 when over. */
static int rx_over(wss_conn_t *c, size_t n)
{
    size_t lim = c->ctx->lim.max_rx_bytes_per_sec;
    if (lim == 0)
        return 0;
    uint64_t now = uv_now(c->ctx->loop);
    if (now - c->rx_window_ms >= 1000) {
        c->rx_window_ms = now;
        c->rx_window_bytes = 0;
    }
    c->rx_window_bytes += n;
    return c->rx_window_bytes > lim;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    wss_conn_t *c = s->data;
    wss_ctx_t *ctx = c->ctx;
    if (buf->base == ctx->rdbuf)
        ctx->rdbuf_busy = 0;
    if (nread == 0 || c->tcp_closing)
        return;
    if (nread < 0) {
        if (nread == UV_ENOBUFS)
            return;
        wsi_close_now(c, nread == UV_EOF ? WSS_END_PEER : WSS_END_ERROR);
        return;
    }
    if (c->rx_limited)
        return; /* closing for the input rate: read only to see the EOF */
    if (rx_over(c, (size_t)nread) && c->state == ST_OPEN) {
        ctx->stats.rx_rate_closes++;
        c->rx_limited = 1;
        wss_close(c, 1008, "input rate limit exceeded", 1);
        c->why = WSS_END_RATE;
        return;
    }
    c->last_rx = uv_now(ctx->loop);
    c->ping_out = 0;
    if (c->tls != NULL)
        wsi_tls_input(c, buf->base, (size_t)nread);
    else
        wsi_conn_input(c, buf->base, (size_t)nread);
}

/* ---- timers ---------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    wss_conn_t *c = t->data;
    wss_ctx_t *ctx = c->ctx;
    if (c->tcp_closing)
        return;
    if (c->state == ST_HTTP) {
        /* handshake too slow, or an HTTP refusal the peer never read */
        if (c->why == WSS_END_NONE)
            c->why = WSS_END_TIMEOUT;
        wsi_close_now(c, WSS_END_TIMEOUT);
        return;
    }
    if (c->state == ST_CLOSING) {
        wsi_close_now(c, c->why);
        return;
    }
    uint64_t now = uv_now(ctx->loop);
    if (c->ping_out) {
        uint64_t waited = now - c->ping_at;
        if (waited >= ctx->lim.pong_timeout_ms) {
            ctx->stats.pong_timeouts++;
            c->why = WSS_END_TIMEOUT;
            c->close_code = 1006;
            wsi_close_now(c, WSS_END_TIMEOUT);
            return;
        }
        uv_timer_start(t, on_timer, ctx->lim.pong_timeout_ms - waited, 0);
        return;
    }
    uint64_t idle = now - c->last_rx;
    if (idle >= ctx->lim.idle_timeout_ms) {
        /* Pre-framed like data, so an idle client needs no wslay context. */
        if (ctx->ping == NULL)
            ctx->ping = wss_frame(WSS_OP_PING, "", 0);
        if (ctx->ping != NULL && wsi_q_push(c, rbuf_ref(ctx->ping), NULL) == 0)
            ctx->stats.pings_sent++;
        c->ping_out = 1;
        c->ping_at = now;
        uv_timer_start(t, on_timer, ctx->lim.pong_timeout_ms ? ctx->lim.pong_timeout_ms : 1, 0);
        return;
    }
    uv_timer_start(t, on_timer, ctx->lim.idle_timeout_ms - idle, 0);
}

/* ---- accept ---------------------------------------------------------------- */

/* server != NULL: uv_accept from it; else adopt fd (already accepted). */
static int conn_accept(wss_ctx_t *ctx, uv_stream_t *server, int fd, void *data, wss_conn_t **out)
{
    wss_conn_t *c = calloc(1, sizeof(*c));
    int r;
    if (c == NULL) {
        if (fd >= 0)
            close(fd);
        return -ENOMEM;
    }
    c->ctx = ctx;
    c->data = data;
    if ((r = uv_tcp_init(ctx->loop, &c->tcp)) < 0) {
        if (fd >= 0)
            close(fd);
        free(c);
        return r;
    }
    c->tcp.data = c;
    c->handles = 1;
    uv_timer_init(ctx->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    ctx->nconns++;
    r = server != NULL ? uv_accept(server, (uv_stream_t *)&c->tcp) : uv_tcp_open(&c->tcp, (uv_os_sock_t)fd);
    if (r < 0) {
        if (server == NULL)
            close(fd); /* not adopted by the handle */
        c->why = WSS_END_ERROR;
        c->tcp_closing = 1;
        c->no_report = 1; /* never accepted: nothing to report */
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return r;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        c->port = (uint16_t)port;
        snprintf(c->ip, sizeof c->ip, "%s", ip);
    }
    buf_init(&c->tlsout);
    if (ctx->tls != NULL && (r = tls_conn_new_server(ctx->tls, &c->tls)) < 0) {
        c->no_report = 1;
        wsi_close_now(c, WSS_END_ERROR);
        return r;
    }
    if ((c->req = malloc(sizeof(*c->req))) == NULL) {
        c->no_report = 1;
        wsi_close_now(c, WSS_END_ERROR);
        return -ENOMEM;
    }
    http_req_init(c->req, ctx->lim.max_header_bytes);
    c->have_req = 1;
    c->state = ST_HTTP;
    uv_timer_start(&c->timer, on_timer, ctx->lim.handshake_timeout_ms, 0);
    if ((r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) < 0) {
        c->no_report = 1;
        wsi_close_now(c, WSS_END_ERROR);
        return r;
    }
    if (out)
        *out = c;
    return 0;
}

int wss_accept(wss_ctx_t *ctx, uv_stream_t *server, void *data, wss_conn_t **out)
{
    return conn_accept(ctx, server, -1, data, out);
}

int wss_accept_fd(wss_ctx_t *ctx, int fd, void *data, wss_conn_t **out)
{
    return conn_accept(ctx, NULL, fd, data, out);
}

void *wss_conn_data(const wss_conn_t *c)
{
    return c->data;
}

int wss_conn_is_open(const wss_conn_t *c)
{
    return c->state == ST_OPEN && !c->tcp_closing;
}

size_t wss_queued_bytes(const wss_conn_t *c)
{
    return c->qbytes;
}

const char *wss_peer(const wss_conn_t *c)
{
    /* Made when asked (log lines), not kept per connection: a few
     * buffers in turn, so that one log line may name several peers. */
    static char out[4][INET6_ADDRSTRLEN + 8];
    static unsigned next;
    char *p = out[next++ % 4];
    snprintf(p, sizeof out[0], "%s:%u", c->ip[0] ? c->ip : "?", (unsigned)c->port);
    return p;
}

const char *wss_peer_ip(const wss_conn_t *c)
{
    return c->ip;
}
