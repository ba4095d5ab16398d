/* Private to the wsserver files (wsserver.c connections, upgrade, reading,
 * timers, accept; wsserver_write.c the write queue, conflation, compression
 * and flush; wsserver_tls.c TLS plumbing): the context and connection
 * structs and what one file calls in another. Not for other modules. */
#ifndef WSSERVER_INT_H
#define WSSERVER_INT_H
#include "wsserver.h"
#include "wsproto.h"

#include <wslay/wslay.h>

#define WSS_MAX_IOV 256
#define WSS_READ_BUF (64 * 1024)
#define WSS_ZCACHE 8 /* compressed frames remembered per context */
/* zlib level 9: a message is compressed once per worker and shared by its
 * clients, so the best ratio costs little (a 15-level book: 28.8 % of plain
 * at 9 against 30.6 % at 6, about 2 us more, once). */
#define WSS_DEFLATE_LEVEL 9

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
    /* A write request is needed only while a write waits on the socket
     * (a partial plain write, or TLS), so connections do not hold one (192
     * B each); one finished request is kept for the next. */
    uv_write_t *spare_wr;
};

struct wss_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
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
    uint16_t port; /* the peer's */
    char ip[INET6_ADDRSTRLEN];
    tls_conn_t *tls;       /* wss:// */
    buf_t tlsout;          /* ciphertext of the write in progress */
    uint64_t rx_window_ms; /* input rate: a one-second window */
    size_t rx_window_bytes;
};

/* wsserver.c */
void wsi_close_now(wss_conn_t *c, wss_end_t why); /* close the socket, no handshake */
void wsi_enter_closing(wss_conn_t *c);            /* close sent: wait for the peer's, bounded */
void wsi_maybe_finish(wss_conn_t *c);             /* queue drained: FIN when one is due */
void wsi_conn_input(wss_conn_t *c, const char *data, size_t nread); /* plaintext from the peer */

/* wsserver_write.c */
void wsi_on_check(uv_check_t *h); /* once per loop iteration: flush every dirty connection */
void wsi_dirty_del(wss_conn_t *c);
int wsi_q_push(wss_conn_t *c, rbuf_t *b, const void *tag);
void wsi_q_pop(wss_conn_t *c);
void wsi_q_drop_unstarted(wss_conn_t *c);
void wsi_conn_flush(wss_conn_t *c);
void wsi_ws_pump(wss_conn_t *c); /* control frames wslay produced into the queue */

/* wsserver_tls.c */
void wsi_tls_send_side(wss_conn_t *c); /* ciphertext outside the frame queue */
void wsi_tls_input(wss_conn_t *c, const char *data, size_t n);

#endif
