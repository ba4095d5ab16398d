/* wsserver's write side: connections with frames to write (flushed once per
 * loop iteration, oldest first, or on the write_delay_ms tick), the per
 * connection queue of pre-framed refcounted buffers, conflation of a slow
 * peer's frames by tag, permessage-deflate (each message compressed once per
 * context), and the gather write itself (plain or through TLS). */
#include "wsserver_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void wsi_dirty_del(wss_conn_t *c)
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
void wsi_on_check(uv_check_t *h)
{
    wss_ctx_t *ctx = h->data;
    while (ctx->dirty.head) {
        wss_conn_t *c = ctx->dirty.head;
        wsi_dirty_del(c);
        wsi_conn_flush(c);
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
        wsi_conn_flush(c);
        c = next;
    }
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
int wsi_q_push(wss_conn_t *c, rbuf_t *b, const void *tag)
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

void wsi_q_pop(wss_conn_t *c)
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
void wsi_q_drop_unstarted(wss_conn_t *c)
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

/* ---- writing --------------------------------------------------------------- */

static uv_write_t *wr_take(wss_ctx_t *ctx)
{
    uv_write_t *wr = ctx->spare_wr;
    ctx->spare_wr = NULL;
    return wr != NULL ? wr : malloc(sizeof *wr);
}

static void wr_give(wss_ctx_t *ctx, uv_write_t *wr)
{
    if (ctx->spare_wr == NULL)
        ctx->spare_wr = wr;
    else
        free(wr);
}

static void on_write(uv_write_t *req, int status)
{
    wss_conn_t *c = req->data;
    wr_give(c->ctx, req);
    size_t n = c->qinflight;
    c->writing = 0;
    for (size_t i = 0; i < n; i++) {
        if (status == 0 && c->state != ST_HTTP) {
            c->ctx->stats.frames_sent++;
            c->ctx->stats.bytes_sent += q_at(c, 0)->b->len;
        }
        wsi_q_pop(c);
    }
    c->qinflight = 0;
    if (c->tcp_closing)
        return;
    if (status < 0) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    if (c->qlen > 0)
        wsi_conn_flush(c);
    else
        wsi_maybe_finish(c);
}

/* Plain TCP: write the batch at once with uv_try_write. A uv_write that
 * completes at once still costs an epoll_ctl and a callback in the next
 * iteration; only the rest of a partial write goes through uv_write. */
static void conn_write_plain(wss_conn_t *c, uv_buf_t *iov, size_t n)
{
    int r = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned)n);
    if (r < 0 && r != UV_EAGAIN) {
        wsi_close_now(c, WSS_END_ERROR);
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
        wsi_q_pop(c);
        i++;
    }
    if (i == n) {
        if (c->qlen > 0)
            dirty_add(c); /* more than one gather list: wsi_on_check goes on */
        else
            wsi_maybe_finish(c);
        return;
    }
    iov[i].base += done;
    iov[i].len -= done;
    uv_write_t *wr = wr_take(c->ctx);
    if (wr == NULL) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    c->qinflight = n - i;
    c->writing = 1;
    wr->data = c;
    if ((r = uv_write(wr, (uv_stream_t *)&c->tcp, iov + i, (unsigned)(n - i), on_write)) < 0) {
        wr_give(c->ctx, wr);
        c->writing = 0;
        c->qinflight = 0;
        wsi_close_now(c, WSS_END_ERROR);
    }
}

void wsi_conn_flush(wss_conn_t *c)
{
    if (c->writing || c->tcp_closing)
        return;
    if (c->qlen == 0) {
        wsi_maybe_finish(c);
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
    uv_write_t *wr = wr_take(c->ctx);
    if (wr == NULL) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    c->qinflight = n;
    c->writing = 1;
    wr->data = c;
    /* TLS: encrypt the batch into one ciphertext buffer, held until on_write. */
    buf_reset(&c->tlsout);
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++)
        r = tls_conn_write(c->tls, iov[i].base, iov[i].len);
    if (r == 0 && tls_conn_out(c->tls, &c->tlsout) < 0)
        r = -ENOMEM;
    if (r == 0) {
        uv_buf_t cb = uv_buf_init(c->tlsout.data, (unsigned)c->tlsout.len);
        r = uv_write(wr, (uv_stream_t *)&c->tcp, &cb, 1, on_write);
    }
    if (r < 0) {
        wr_give(c->ctx, wr);
        c->writing = 0;
        c->qinflight = 0;
        wsi_close_now(c, WSS_END_ERROR);
    }
}

/* Move control frames wslay produced into the write queue. */
void wsi_ws_pump(wss_conn_t *c)
{
    if (c->ws == NULL || c->tcp_closing)
        return;
    if (wslay_event_want_write(c->ws))
        (void)wslay_event_send(c->ws);
    buf_t *ctl = &c->ctx->ctl;
    if (ctl->len > 0) {
        rbuf_t *b = rbuf_new(ctl->data, ctl->len);
        buf_reset(ctl);
        if (b == NULL || wsi_q_push(c, b, NULL) < 0) {
            wsi_close_now(c, WSS_END_ERROR);
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
        wsi_enter_closing(c);
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
    return wsi_q_push(c, rbuf_ref(frame), tag);
}

int wss_send_text(wss_conn_t *c, const char *data, size_t len)
{
    if (c->state != ST_OPEN || c->tcp_closing)
        return -EPIPE;
    rbuf_t *b = wss_frame(WSS_OP_TEXT, data, len);
    if (b == NULL)
        return -ENOMEM;
    return wsi_q_push(c, b, NULL);
}
