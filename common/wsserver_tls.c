/* wsserver's TLS plumbing: ciphertext written outside the frame queue
 * (handshake records, alerts) and TLS input decrypted into the plaintext
 * path (wsi_conn_input). */
#include "wsserver_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "uvwrite.h"

static void on_side_error(void *arg, int status)
{
    wss_conn_t *c = arg;
    (void)status;
    if (!c->tcp_closing)
        wsi_close_now(c, WSS_END_ERROR);
}

/* Write what TLS produced outside a frame write (handshake messages,
 * alerts, tickets) at once, so ciphertext leaves in the order it was made. */
void wsi_tls_send_side(wss_conn_t *c)
{
    if (c->tls == NULL || c->tcp_closing)
        return;
    buf_t out;
    buf_init(&out);
    if (tls_conn_out(c->tls, &out) < 0 || uvw_write_buf((uv_stream_t *)&c->tcp, &out, on_side_error, c) < 0) {
        buf_free(&out);
        wsi_close_now(c, WSS_END_ERROR);
    }
}

/* Everything queued is written: send FIN if the close is under way. */
void wsi_tls_input(wss_conn_t *c, const char *data, size_t n)
{
    wss_ctx_t *ctx = c->ctx;
    if (tls_conn_feed(c->tls, data, n) < 0) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    if (!tls_conn_handshake_done(c->tls)) {
        int r = tls_conn_handshake(c->tls);
        wsi_tls_send_side(c); /* our handshake messages, or the alert */
        if (r < 0) {
            ctx->stats.tls_handshake_failures++;
            c->why = WSS_END_TLS;
            /* FIN after the alert; the handshake timer bounds the rest. */
            c->fin_after_flush = 1;
            uv_read_stop((uv_stream_t *)&c->tcp);
            wsi_maybe_finish(c);
            return;
        }
        if (r == 0 || c->tcp_closing)
            return;
    }
    if (ctx->plain == NULL && (ctx->plain = malloc(WSS_READ_BUF)) == NULL) {
        wsi_close_now(c, WSS_END_ERROR);
        return;
    }
    for (;;) {
        long k = tls_conn_read(c->tls, ctx->plain, WSS_READ_BUF);
        if (k == 0)
            break;
        if (k < 0) {
            /* close_notify is the peer's EOF */
            wsi_close_now(c, k == -EPIPE ? WSS_END_PEER : WSS_END_ERROR);
            return;
        }
        wsi_conn_input(c, ctx->plain, (size_t)k);
        if (c->tcp_closing || c->why == WSS_END_REJECTED)
            return;
    }
    wsi_tls_send_side(c); /* e.g. a key update answered while reading */
}
