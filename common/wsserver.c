/* Server-side WebSocket connections over libuv: HTTP upgrade, wslay for the
 * inbound direction and control frames (its context only while the peer is
 * mid-message: idle clients hold none), and a write queue of pre-framed
 * refcounted buffers flushed once per loop iteration as one gather write. */
#include "wsserver.h"
#include "wsproto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <wslay/wslay.h>

#define WSS_MAX_IOV 256
#define WSS_READ_BUF (64 * 1024)
#define WSS_ZCACHE 8        /* compressed frames remembered per context */
#define WSS_DEFLATE_LEVEL 6 /* zlib level: once per message, shared by its clients */

typedef struct {
    rbuf_t *b;
    const void *tag;
} qent_t;

enum { ST_HTTP, ST_OPEN, ST_CLOSING };

/* A plain frame (a reference held, so its address is not reused) and its
 * compressed twin, or NULL when it goes out plain. */
typedef struct {
    rbuf_t *plain;
    rbuf_t *z;
} zent_t;

typedef struct {
    wss_conn_t *head, *tail;
} conn_list_t;

struct wss_ctx_s {
    uv_loop_t *loop;
    wss_limits_t lim;
    wss_callbacks_t cbs;
    uv_check_t check;
    int nconns;
    int freeing;
    /* Connections with frames to write, in the order they got them: the
     * oldest waiting frame goes out first (a batch's first message is not
     * held behind the later ones' subscribers). */
    conn_list_t dirty;
    conn_list_t later; /* write_delay_ms: open connections waiting for the tick */
    uv_timer_t tick;   /* write_delay_ms: flushes `later` */
    int handles;       /* check and tick: the context is freed when both closed */
    char *rdbuf;       /* one read buffer: every read is consumed at once */
    int rdbuf_busy;
    wss_stats_t stats;
    tls_ctx_t *tls; /* wss://: borrowed */
    char *plain;    /* decrypted input, consumed at once like rdbuf */
    /* wslay runs synchronously inside one connection's read or pump, so
     * these are shared rather than kept per connection (idle memory). */
    const uint8_t *rx; /* input being fed to wslay */
    size_t rxlen;
    buf_t ctl;         /* control frames produced by wslay */
    buf_t msg;         /* NUL-terminated copy of an inbound message */
    rbuf_t *ping;      /* the idle ping, framed once and shared */
    ws_deflater_t *dz; /* permessage-deflate: on first use */
    ws_inflater_t *iz;
    zent_t zcache[WSS_ZCACHE];
    unsigned znext;
    /* One gather list for every connection's flush: uv_write copies it, and
     * TLS consumes it at once, so no connection needs its own (4 KB each). */
    uv_buf_t iov[WSS_MAX_IOV];
};

struct wss_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    wss_ctx_t *ctx;
    void *data;
    /* Flags as bits: every idle connection holds them. */
    unsigned state : 2;
    unsigned handles : 2; /* open libuv handles; free at 0 */
    unsigned tcp_closing : 1;
    unsigned writing : 1;
    unsigned shutdown_started : 1;
    unsigned fin_after_flush : 1; /* close frame (or HTTP refusal) queued: FIN after it */
    unsigned opened : 1;          /* on_open ran */
    unsigned no_report : 1;       /* uv_accept failed: no on_close */
    unsigned shutdown_done : 1;
    unsigned have_req : 1;
    unsigned in_dirty : 1;
    unsigned ping_out : 1;
    unsigned rx_limited : 1; /* closed for the input rate: input is dropped */
    unsigned deflate : 1;    /* permessage-deflate negotiated */
    unsigned in_later : 1;   /* in ctx->later rather than ctx->dirty */
    http_req_t *req;         /* only during the handshake (idle memory) */
    /* Only while the peer sends something (9 KB): created when input
     * arrives, freed again between frames (see ws_release_idle). */
    wslay_event_context_ptr ws;
    /* Our own walk over the frame headers fed to wslay, so we know when
     * it is between frames with no fragmented message in progress. */
    uint64_t fleft;         /* payload bytes left of the current frame */
    unsigned char fhdr[14]; /* the header being read */
    unsigned char fhlen;    /* bytes of it read so far */
    unsigned char frag;     /* a fragmented data message is in progress */
    qent_t *q;
    size_t qcap, qhead, qlen, qinflight, qbytes;
    wss_conn_t *dnext, *dprev;
    uint64_t last_rx, ping_at;
    wss_end_t why;
    int close_code;
    char peer[64];
    char ip[INET6_ADDRSTRLEN];
    tls_conn_t *tls;       /* wss:// */
    buf_t tlsout;          /* ciphertext of the write in progress */
    uint64_t rx_window_ms; /* input rate: a one-second window */
    size_t rx_window_bytes;
};

/* Ciphertext written outside the frame queue (handshake, alerts). */
typedef struct {
    uv_write_t req;
    buf_t data;
} side_write_t;

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

static void conn_flush(wss_conn_t *c);
static int ws_ensure(wss_conn_t *c);
static void tls_send_side(wss_conn_t *c);

static void dirty_del(wss_conn_t *c)
{
    if (!c->in_dirty)
        return;
    conn_list_t *l = c->in_later ? &c->ctx->later : &c->ctx->dirty;
    if (c->dprev)
        c->dprev->dnext = c->dnext;
    else
        l->head = c->dnext;
    if (c->dnext)
        c->dnext->dprev = c->dprev;
    else
        l->tail = c->dprev;
    c->dnext = c->dprev = NULL;
    c->in_dirty = 0;
    c->in_later = 0;
}

static void on_tick(uv_timer_t *t);

static void dirty_add(wss_conn_t *c)
{
    if (c->in_dirty || c->writing || c->tcp_closing)
        return;
    wss_ctx_t *ctx = c->ctx;
    /* write_delay_ms: an open connection's frames wait for the tick, so
     * what arrives within the window leaves in one write. */
    conn_list_t *l = &ctx->dirty;
    if (ctx->lim.write_delay_ms > 0 && c->state == ST_OPEN) {
        l = &ctx->later;
        c->in_later = 1;
        if (l->head == NULL)
            uv_timer_start(&ctx->tick, on_tick, ctx->lim.write_delay_ms, 0);
    }
    c->in_dirty = 1;
    c->dnext = NULL;
    c->dprev = l->tail;
    if (l->tail)
        l->tail->dnext = c;
    else
        l->head = c;
    l->tail = c;
}

/* Runs once per loop iteration after I/O: every frame queued during this
 * iteration goes out in one write per connection, oldest first. */
static void on_check(uv_check_t *h)
{
    wss_ctx_t *ctx = h->data;
    while (ctx->dirty.head) {
        wss_conn_t *c = ctx->dirty.head;
        dirty_del(c);
        conn_flush(c);
    }
}

static void on_tick(uv_timer_t *t)
{
    wss_ctx_t *ctx = t->data;
    /* Detach the list: connections queueing again during the flush (a
     * partial write's rest) start the next window. */
    wss_conn_t *c = ctx->later.head;
    ctx->later.head = ctx->later.tail = NULL;
    while (c) {
        wss_conn_t *next = c->dnext;
        c->in_dirty = 0;
        c->in_later = 0;
        c->dnext = c->dprev = NULL;
        if (next)
            next->dprev = NULL;
        conn_flush(c);
        c = next;
    }
}

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
    uv_check_start(&ctx->check, on_check);
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

/* ---- queue ----------------------------------------------------------------- */

static qent_t *q_at(wss_conn_t *c, size_t i)
{
    return &c->q[(c->qhead + i) & (c->qcap - 1)];
}

static int q_grow(wss_conn_t *c)
{
    /* Frames are written as they come (uv_try_write), so a client that
     * keeps up rarely holds more than a few: start small (idle memory). */
    size_t ncap = c->qcap ? c->qcap * 2 : 4;
    qent_t *nq = malloc(ncap * sizeof(*nq));
    if (nq == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < c->qlen; i++)
        nq[i] = *q_at(c, i);
    free(c->q);
    c->q = nq;
    c->qcap = ncap;
    c->qhead = 0;
    return 0;
}

/* Takes ownership of one reference. */
static int q_push(wss_conn_t *c, rbuf_t *b, const void *tag)
{
    if (c->qlen == c->qcap && q_grow(c) < 0) {
        rbuf_unref(b);
        return -ENOMEM;
    }
    qent_t *e = q_at(c, c->qlen);
    e->b = b;
    e->tag = tag;
    c->qlen++;
    c->qbytes += b->len;
    c->ctx->stats.queued_bytes += b->len;
    dirty_add(c);
    return 0;
}

static void q_pop(wss_conn_t *c)
{
    qent_t *e = q_at(c, 0);
    c->qbytes -= e->b->len;
    c->ctx->stats.queued_bytes -= e->b->len;
    rbuf_unref(e->b);
    e->b = NULL;
    c->qhead = (c->qhead + 1) & (c->qcap - 1);
    c->qlen--;
}

/* Drop the frames whose write has not started. */
static void q_drop_unstarted(wss_conn_t *c)
{
    while (c->qlen > c->qinflight) {
        qent_t *e = q_at(c, c->qlen - 1);
        c->qbytes -= e->b->len;
        c->ctx->stats.queued_bytes -= e->b->len;
        rbuf_unref(e->b);
        e->b = NULL;
        c->qlen--;
    }
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
        q_pop(c);
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

static void conn_close_now(wss_conn_t *c, wss_end_t why)
{
    if (c->tcp_closing)
        return;
    if (c->why == WSS_END_NONE)
        c->why = why;
    c->tcp_closing = 1;
    dirty_del(c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void wss_abort(wss_conn_t *c)
{
    conn_close_now(c, WSS_END_LOCAL);
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
        conn_close_now(c, WSS_END_LOCAL);
}

static void on_timer(uv_timer_t *t);

static void enter_closing(wss_conn_t *c)
{
    if (c->state == ST_CLOSING)
        return;
    c->state = ST_CLOSING;
    c->fin_after_flush = 1;
    uv_timer_start(&c->timer, on_timer, c->ctx->lim.close_timeout_ms, 0);
}

static void on_side_write(uv_write_t *req, int status)
{
    side_write_t *w = (side_write_t *)req;
    wss_conn_t *c = req->data;
    buf_free(&w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED && !c->tcp_closing)
        conn_close_now(c, WSS_END_ERROR);
}

/* Write what TLS produced outside a frame write (handshake messages,
 * alerts, tickets) at once, so ciphertext leaves in the order it was made. */
static void tls_send_side(wss_conn_t *c)
{
    if (c->tls == NULL || c->tcp_closing)
        return;
    side_write_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    buf_init(&w->data);
    long n = tls_conn_out(c->tls, &w->data);
    if (n <= 0) {
        buf_free(&w->data);
        free(w);
        if (n < 0)
            conn_close_now(c, WSS_END_ERROR);
        return;
    }
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->data.data, (unsigned)w->data.len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_side_write) < 0) {
        buf_free(&w->data);
        free(w);
        conn_close_now(c, WSS_END_ERROR);
    }
}

/* Everything queued is written: send FIN if the close is under way. */
static void maybe_finish(wss_conn_t *c)
{
    if (c->tcp_closing || !c->fin_after_flush || c->qlen > 0 || c->writing || c->shutdown_started)
        return;
    c->shutdown_started = 1;
    if (c->tls != NULL && tls_conn_handshake_done(c->tls)) {
        tls_conn_shutdown(c->tls);
        tls_send_side(c);
        if (c->tcp_closing)
            return;
    }
    /* Once per connection: not kept in every idle one. */
    uv_shutdown_t *sd = malloc(sizeof *sd);
    if (sd == NULL) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    sd->data = c;
    if (uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(sd);
        conn_close_now(c, WSS_END_ERROR);
    }
}

/* ---- writing --------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    wss_conn_t *c = req->data;
    size_t n = c->qinflight;
    c->writing = 0;
    for (size_t i = 0; i < n; i++) {
        if (status == 0 && c->state != ST_HTTP) {
            c->ctx->stats.frames_sent++;
            c->ctx->stats.bytes_sent += q_at(c, 0)->b->len;
        }
        q_pop(c);
    }
    c->qinflight = 0;
    if (c->tcp_closing)
        return;
    if (status < 0) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    if (c->qlen > 0)
        conn_flush(c);
    else
        maybe_finish(c);
}

/* Plain TCP: write the batch at once with uv_try_write. A uv_write that
 * completes at once still costs an epoll_ctl and a callback in the next
 * iteration; only the rest of a partial write goes through uv_write. */
static void conn_write_plain(wss_conn_t *c, uv_buf_t *iov, size_t n)
{
    int r = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned)n);
    if (r < 0 && r != UV_EAGAIN) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    size_t done = r > 0 ? (size_t)r : 0, i = 0;
    /* Frames written whole leave the queue now. */
    while (i < n && done >= iov[i].len) {
        done -= iov[i].len;
        if (c->state != ST_HTTP) {
            c->ctx->stats.frames_sent++;
            c->ctx->stats.bytes_sent += iov[i].len;
        }
        q_pop(c);
        i++;
    }
    if (i == n) {
        if (c->qlen > 0)
            dirty_add(c); /* more than one gather list: on_check goes on */
        else
            maybe_finish(c);
        return;
    }
    iov[i].base += done;
    iov[i].len -= done;
    c->qinflight = n - i;
    c->writing = 1;
    c->wr.data = c;
    if ((r = uv_write(&c->wr, (uv_stream_t *)&c->tcp, iov + i, (unsigned)(n - i), on_write)) < 0) {
        c->writing = 0;
        c->qinflight = 0;
        conn_close_now(c, WSS_END_ERROR);
    }
}

static void conn_flush(wss_conn_t *c)
{
    if (c->writing || c->tcp_closing)
        return;
    if (c->qlen == 0) {
        maybe_finish(c);
        return;
    }
    size_t max = c->qlen < WSS_MAX_IOV ? c->qlen : WSS_MAX_IOV;
    /* A write in progress holds at most half the bound, so that behind it
     * there is room for conflated frames when the peer stalls. */
    size_t budget = c->ctx->lim.queue_bytes ? c->ctx->lim.queue_bytes / 2 : (size_t)-1;
    size_t n = 0, bytes = 0;
    uv_buf_t *iov = c->ctx->iov;
    while (n < max) {
        qent_t *e = q_at(c, n);
        if (n > 0 && bytes + e->b->len > budget)
            break;
        bytes += e->b->len;
        iov[n++] = uv_buf_init(e->b->data, (unsigned)e->b->len);
    }
    if (c->tls == NULL) {
        conn_write_plain(c, iov, n);
        return;
    }
    c->qinflight = n;
    c->writing = 1;
    c->wr.data = c;
    /* TLS: encrypt the batch into one ciphertext buffer, held until on_write. */
    buf_reset(&c->tlsout);
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++)
        r = tls_conn_write(c->tls, iov[i].base, iov[i].len);
    if (r == 0 && tls_conn_out(c->tls, &c->tlsout) < 0)
        r = -ENOMEM;
    if (r == 0) {
        uv_buf_t cb = uv_buf_init(c->tlsout.data, (unsigned)c->tlsout.len);
        r = uv_write(&c->wr, (uv_stream_t *)&c->tcp, &cb, 1, on_write);
    }
    if (r < 0) {
        c->writing = 0;
        c->qinflight = 0;
        conn_close_now(c, WSS_END_ERROR);
    }
}

/* Move control frames wslay produced into the write queue. */
static void ws_pump(wss_conn_t *c)
{
    if (c->ws == NULL || c->tcp_closing)
        return;
    if (wslay_event_want_write(c->ws))
        (void)wslay_event_send(c->ws);
    buf_t *ctl = &c->ctx->ctl;
    if (ctl->len > 0) {
        rbuf_t *b = rbuf_new(ctl->data, ctl->len);
        buf_reset(ctl);
        if (b == NULL || q_push(c, b, NULL) < 0) {
            conn_close_now(c, WSS_END_ERROR);
            return;
        }
    }
    if (wslay_event_get_close_sent(c->ws) && c->state == ST_OPEN) {
        /* wslay answered a protocol problem or the peer's close. */
        if (wslay_event_get_close_received(c->ws)) {
            c->why = WSS_END_PEER;
            c->close_code = wslay_event_get_status_code_received(c->ws);
        } else {
            int code = wslay_event_get_status_code_sent(c->ws);
            c->why = WSS_END_PROTOCOL;
            c->close_code = code;
            if (code == WSLAY_CODE_MESSAGE_TOO_BIG)
                c->ctx->stats.too_big++;
            else if (code == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA)
                c->ctx->stats.bad_utf8++;
            else
                c->ctx->stats.protocol_errors++;
        }
        enter_closing(c);
    }
}

/* The compressed twin of a plain data frame, made on first use and
 * remembered for the next connections; NULL: send the plain frame. */
static rbuf_t *deflated(wss_ctx_t *ctx, rbuf_t *plain)
{
    /* Small frames go plain without taking a cache slot. */
    if (plain->len < WSS_DEFLATE_MIN + 2)
        return NULL;
    for (int i = 0; i < WSS_ZCACHE; i++)
        if (ctx->zcache[i].plain == plain)
            return ctx->zcache[i].z;
    const unsigned char *p = (const unsigned char *)plain->data;
    if ((p[0] & 0xf0) != 0x80 || (p[0] & 0x0f) >= 0x8)
        return NULL; /* only a whole, uncompressed data frame */
    unsigned l7 = p[1] & 0x7f;
    size_t h = l7 < 126 ? 2 : l7 == 126 ? 4 : 10;
    size_t len = plain->len - h;
    rbuf_t *z = NULL;
    if (len >= WSS_DEFLATE_MIN && (ctx->dz != NULL || ws_deflater_new(WSS_DEFLATE_LEVEL, &ctx->dz) == 0))
        z = ws_deflate_frame(ctx->dz, p[0] & 0x0f, p + h, len);
    if (z != NULL) {
        ctx->stats.deflated++;
        ctx->stats.deflate_in_bytes += plain->len;
        ctx->stats.deflate_out_bytes += z->len;
    } else {
        ctx->stats.deflate_plain++;
    }
    zent_t *e = &ctx->zcache[ctx->znext++ % WSS_ZCACHE];
    if (e->plain)
        rbuf_unref(e->plain);
    if (e->z)
        rbuf_unref(e->z);
    e->plain = rbuf_ref(plain);
    e->z = z;
    return z;
}

int wss_conn_deflate(const wss_conn_t *c)
{
    return c->deflate;
}

int wss_send(wss_conn_t *c, rbuf_t *frame, const void *tag)
{
    if (c->state != ST_OPEN || c->tcp_closing)
        return -EPIPE;
    if (c->deflate) {
        rbuf_t *z = deflated(c->ctx, frame);
        if (z != NULL) {
            frame = z;
            c->ctx->stats.compressed_frames++;
        }
    }
    size_t lim = c->ctx->lim.queue_bytes;
    /* Conflate only when the peer is behind: a write still in progress with
     * a quarter of the bound queued, or a frame that would not fit. A client
     * that keeps up gets every message, a slow one the newest per tag. */
    int over = lim && c->qbytes + frame->len > lim;
    int behind = c->writing && c->qbytes >= lim / 4;
    if (tag != NULL && (behind || over)) {
        for (size_t i = c->qlen; i > c->qinflight; i--) {
            qent_t *e = q_at(c, i - 1);
            if (e->tag != tag)
                continue;
            size_t nb = c->qbytes - e->b->len + frame->len;
            if (lim && nb > lim)
                return -ENOBUFS;
            c->ctx->stats.queued_bytes = c->ctx->stats.queued_bytes - c->qbytes + nb;
            c->qbytes = nb;
            rbuf_unref(e->b);
            e->b = rbuf_ref(frame);
            c->ctx->stats.conflated++;
            return 1;
        }
    }
    if (lim && c->qbytes + frame->len > lim)
        return -ENOBUFS;
    return q_push(c, rbuf_ref(frame), tag);
}

int wss_send_text(wss_conn_t *c, const char *data, size_t len)
{
    if (c->state != ST_OPEN || c->tcp_closing)
        return -EPIPE;
    rbuf_t *b = wss_frame(WSS_OP_TEXT, data, len);
    if (b == NULL)
        return -ENOMEM;
    return q_push(c, b, NULL);
}

void wss_close(wss_conn_t *c, int code, const char *reason, int drop_queued)
{
    if (c->tcp_closing)
        return;
    if (c->state != ST_OPEN) {
        if (c->state == ST_HTTP)
            conn_close_now(c, WSS_END_LOCAL);
        return;
    }
    if (drop_queued)
        q_drop_unstarted(c);
    c->why = WSS_END_LOCAL;
    c->close_code = code;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123)
        rl = 123;
    if (ws_ensure(c) < 0) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    (void)wslay_event_queue_close(c->ws, (uint16_t)code, (const uint8_t *)reason, rl);
    enter_closing(c);
    ws_pump(c);
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
    if (b == NULL || q_push(c, b, NULL) < 0) {
        conn_close_now(c, WSS_END_REJECTED);
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
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    fw_walk(c, (const unsigned char *)data, n);
    c->ctx->rx = (const uint8_t *)data;
    c->ctx->rxlen = n;
    if (wslay_event_want_read(c->ws) && wslay_event_recv(c->ws) != 0) {
        c->ctx->rxlen = 0;
        c->ctx->stats.protocol_errors++;
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    c->ctx->rxlen = 0;
    if (c->tcp_closing)
        return;
    ws_pump(c);
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
    if (b == NULL || q_push(c, b, NULL) < 0) {
        conn_close_now(c, WSS_END_ERROR);
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
static void conn_input(wss_conn_t *c, const char *data, size_t nread)
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
                conn_close_now(c, c->why);
            else
                maybe_finish(c);
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

static void tls_input(wss_conn_t *c, const char *data, size_t n)
{
    wss_ctx_t *ctx = c->ctx;
    if (tls_conn_feed(c->tls, data, n) < 0) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    if (!tls_conn_handshake_done(c->tls)) {
        int r = tls_conn_handshake(c->tls);
        tls_send_side(c); /* our handshake messages, or the alert */
        if (r < 0) {
            ctx->stats.tls_handshake_failures++;
            c->why = WSS_END_TLS;
            /* FIN after the alert; the handshake timer bounds the rest. */
            c->fin_after_flush = 1;
            uv_read_stop((uv_stream_t *)&c->tcp);
            maybe_finish(c);
            return;
        }
        if (r == 0 || c->tcp_closing)
            return;
    }
    if (ctx->plain == NULL && (ctx->plain = malloc(WSS_READ_BUF)) == NULL) {
        conn_close_now(c, WSS_END_ERROR);
        return;
    }
    for (;;) {
        long k = tls_conn_read(c->tls, ctx->plain, WSS_READ_BUF);
        if (k == 0)
            break;
        if (k < 0) {
            /* close_notify is the peer's EOF */
            conn_close_now(c, k == -EPIPE ? WSS_END_PEER : WSS_END_ERROR);
            return;
        }
        conn_input(c, ctx->plain, (size_t)k);
        if (c->tcp_closing || c->why == WSS_END_REJECTED)
            return;
    }
    tls_send_side(c); /* e.g. a key update answered while reading */
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
        conn_close_now(c, nread == UV_EOF ? WSS_END_PEER : WSS_END_ERROR);
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
        tls_input(c, buf->base, (size_t)nread);
    else
        conn_input(c, buf->base, (size_t)nread);
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
        conn_close_now(c, WSS_END_TIMEOUT);
        return;
    }
    if (c->state == ST_CLOSING) {
        conn_close_now(c, c->why);
        return;
    }
    uint64_t now = uv_now(ctx->loop);
    if (c->ping_out) {
        uint64_t waited = now - c->ping_at;
        if (waited >= ctx->lim.pong_timeout_ms) {
            ctx->stats.pong_timeouts++;
            c->why = WSS_END_TIMEOUT;
            c->close_code = 1006;
            conn_close_now(c, WSS_END_TIMEOUT);
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
        if (ctx->ping != NULL && q_push(c, rbuf_ref(ctx->ping), NULL) == 0)
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
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
        snprintf(c->ip, sizeof c->ip, "%s", ip);
    }
    buf_init(&c->tlsout);
    if (ctx->tls != NULL && (r = tls_conn_new_server(ctx->tls, &c->tls)) < 0) {
        c->no_report = 1;
        conn_close_now(c, WSS_END_ERROR);
        return r;
    }
    if ((c->req = malloc(sizeof(*c->req))) == NULL) {
        c->no_report = 1;
        conn_close_now(c, WSS_END_ERROR);
        return -ENOMEM;
    }
    http_req_init(c->req, ctx->lim.max_header_bytes);
    c->have_req = 1;
    c->state = ST_HTTP;
    uv_timer_start(&c->timer, on_timer, ctx->lim.handshake_timeout_ms, 0);
    if ((r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) < 0) {
        c->no_report = 1;
        conn_close_now(c, WSS_END_ERROR);
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
    return c->peer;
}

const char *wss_peer_ip(const wss_conn_t *c)
{
    return c->ip;
}
