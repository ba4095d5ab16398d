/* Server side of a WebSocket connection over libuv (RFC 6455): the HTTP
 * upgrade (parsed with common/http.h, answered here), inbound frames parsed by
 * wslay (masking, fragments, UTF-8, size limit, ping/pong/close), outbound
 * pre-framed refcounted buffers written in batches (one uv_write with many
 * buffers), a per-connection byte bound with optional conflation, and idle
 * pings with a pong deadline. Used by the fanout worker and the relay. */
#ifndef WSSERVER_H
#define WSSERVER_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "buf.h"
#include "http.h"
#include "rbuf.h"
#include "tls.h"
#include "wsproto.h" /* WSS_OP_*, wss_frame: server frames */

/* Why a connection ended, for metrics and logs. */
typedef enum {
    WSS_END_NONE = 0,
    WSS_END_PEER,     /* peer closed (close frame or EOF) */
    WSS_END_LOCAL,    /* wss_close() by the application */
    WSS_END_PROTOCOL, /* bad frame, bad UTF-8 (1007), too big (1009) */
    WSS_END_TIMEOUT,  /* no pong before the deadline */
    WSS_END_ERROR,    /* socket error */
    WSS_END_REJECTED, /* the HTTP upgrade was refused */
    WSS_END_RATE,     /* sent more than limits.max_rx_bytes_per_sec (close 1008) */
    WSS_END_TLS,      /* the TLS handshake failed */
} wss_end_t;

typedef struct wss_conn_s wss_conn_t;

typedef struct {
    size_t max_header_bytes;       /* HTTP request header bound (431 over it) */
    size_t max_message_bytes;      /* inbound message bound (close 1009) */
    size_t queue_bytes;            /* outbound bound; 0 = unbounded */
    uint64_t idle_timeout_ms;      /* ping after this long without input; 0 = never */
    uint64_t pong_timeout_ms;      /* close if nothing arrives this long after the ping */
    uint64_t close_timeout_ms;     /* wait this long for the close handshake/flush */
    uint64_t handshake_timeout_ms; /* whole HTTP request must arrive within this */
    size_t max_rx_bytes_per_sec;   /* bytes read from one peer per second (every frame, and TLS
                                      records as received); over it close 1008; 0 = no limit */
    int deflate;                   /* negotiate permessage-deflate (RFC 7692) with clients that offer it */
    uint64_t write_delay_ms;       /* data frames of an open connection wait this long to leave in one
                                      write with what follows; 0 = written in the loop iteration */
} wss_limits_t;

typedef struct {
    /* The complete upgrade request arrived. Return 0 to accept (then the 101
     * response with extra_headers is sent and on_open follows), or an HTTP
     * status to refuse (body is the plain-text reason; may be left empty).
     * 200 answers a plain page instead: body is sent whole and extra_headers
     * must carry its Content-Type; on_close follows (WSS_END_REJECTED, 200). */
    int (*on_request)(wss_conn_t *c, const http_req_t *req, buf_t *extra_headers, buf_t *body);
    void (*on_open)(wss_conn_t *c);
    /* A complete data message (text is valid UTF-8). data[len] is '\0'. */
    void (*on_message)(wss_conn_t *c, int opcode, const char *data, size_t len);
    /* The socket is closed. Called once for every accepted connection, also
     * for refused upgrades (then on_open never ran). The conn is freed after. */
    void (*on_close)(wss_conn_t *c, wss_end_t why, int close_code);
} wss_callbacks_t;

/* Shared by the connections of one server: limits, callbacks, the loop, and
 * the write batching hook (flushes run once per loop iteration). */
typedef struct wss_ctx_s wss_ctx_t;

int wss_ctx_new(uv_loop_t *loop, const wss_limits_t *lim, const wss_callbacks_t *cbs, wss_ctx_t **out);
/* Frees once every connection is gone (call after closing them). */
void wss_ctx_free(wss_ctx_t *ctx);
/* Serve wss://: every connection accepted from now on runs TLS (server
 * mode, common/tls.h) under the HTTP upgrade. tls is borrowed and must
 * outlive the connections. The handshake counts against
 * handshake_timeout_ms. */
void wss_ctx_set_tls(wss_ctx_t *ctx, tls_ctx_t *tls);

/* Accept one pending connection from a listening stream. On failure nothing
 * is reported later (no on_close). */
int wss_accept(wss_ctx_t *ctx, uv_stream_t *server, void *data, wss_conn_t **out);
/* The same for a socket the caller accepted itself (accept4, non-blocking).
 * The connection owns fd from now on, also on failure (it is closed). */
int wss_accept_fd(wss_ctx_t *ctx, int fd, void *data, wss_conn_t **out);

void *wss_conn_data(const wss_conn_t *c);
int wss_conn_is_open(const wss_conn_t *c); /* upgraded and not closing */
size_t wss_queued_bytes(const wss_conn_t *c);
const char *wss_peer(const wss_conn_t *c);    /* "ip:port" */
const char *wss_peer_ip(const wss_conn_t *c); /* "ip" */

/* Queue a pre-framed frame (wss_frame()); takes its own reference.
 * tag != NULL makes it conflatable: when the peer is behind (a write still
 * in progress and a quarter of the bound queued) or the frame would exceed
 * the bound, a queued frame with the same tag whose write has not started is
 * replaced in place.
 * Returns 0 queued, 1 replaced an older frame, -ENOBUFS when it would exceed
 * limits.queue_bytes (nothing queued; the caller decides, usually close 1013),
 * -EPIPE when the connection is closing or not open yet. */
int wss_send(wss_conn_t *c, rbuf_t *frame, const void *tag);
/* Data frames (wss_send) are compressed for a connection that negotiated
 * permessage-deflate: once per frame and context, on first use, and the
 * compressed frame is shared by every such connection (server_no_context_
 * takeover). Frames under WSS_DEFLATE_MIN payload bytes, and those that do
 * not shrink, go out plain. Replies (wss_send_text) and control frames are
 * never compressed. 1 when c negotiated it. */
#define WSS_DEFLATE_MIN 128
int wss_conn_deflate(const wss_conn_t *c);
/* Frame and queue a text message (not bounded: replies, control). */
int wss_send_text(wss_conn_t *c, const char *data, size_t len);
/* Start the closing handshake with code and reason. drop_queued discards the
 * frames whose write has not started (slow clients). The socket closes when
 * the peer answers, or after limits.close_timeout_ms. */
void wss_close(wss_conn_t *c, int code, const char *reason, int drop_queued);
/* Close the socket now, no handshake. */
void wss_abort(wss_conn_t *c);

/* Upgrade checks (RFC 6455 4.2.1): 0 when req is a valid WebSocket upgrade
 * and accept (29 bytes with NUL; NULL: only check) holds Sec-WebSocket-Accept;
 * else 426 when it is not an upgrade at all or 400 for a bad key, version or
 * method. */
int wss_check_upgrade(const http_req_t *req, char accept[29]);

/* Counters kept by every context since start (for metrics). */
typedef struct {
    uint64_t frames_sent; /* frames fully written */
    uint64_t bytes_sent;
    uint64_t conflated;
    uint64_t pings_sent;
    uint64_t pong_timeouts;
    uint64_t too_big;         /* 1009 */
    uint64_t bad_utf8;        /* 1007 */
    uint64_t protocol_errors; /* 1002 and other wslay errors */
    uint64_t tls_handshake_failures;
    uint64_t rx_rate_closes;    /* over max_rx_bytes_per_sec */
    uint64_t deflate_clients;   /* connections that negotiated permessage-deflate */
    uint64_t deflated;          /* messages compressed (once each, shared) */
    uint64_t deflate_in_bytes;  /* their plain frame bytes */
    uint64_t deflate_out_bytes; /* their compressed frame bytes */
    uint64_t deflate_plain;     /* messages left plain: small, or no smaller compressed */
    uint64_t compressed_frames; /* compressed frames queued on connections */
    uint64_t inflated;          /* compressed client messages inflated */
    size_t queued_bytes;        /* now, over all connections */
} wss_stats_t;
const wss_stats_t *wss_ctx_stats(const wss_ctx_t *ctx);

#endif
