/* WebSocket client transport (ws:// and wss://) on a libuv loop: DNS, TCP,
 * TLS (tls.h), the HTTP upgrade, RFC 6455 framing (wslay), pings, stale-feed
 * detection and reconnection with full-jitter backoff. Used by the ingest
 * worker to reach exchanges and by fanout workers to reach the relay.
 *
 * Lifecycle: wsc_start() -> [attempt -> open -> lost -> backoff]* ->
 * wsc_stop() -> on_stopped. One attempt at a time; attempts are never closer
 * together than reconnect_min_ms (exchanges rate-limit connections).
 *
 * Metrics (default registry), all labelled conn="NAME":
 *   exchange_ws_connected            gauge, 1 while open
 *   exchange_ws_messages_total       data messages received
 *   exchange_ws_bytes_total          payload bytes received
 *   exchange_ws_reconnects_total     {cause=closed|error|stale|http_status|tls|
 *                                     too_big|dns|connect_timeout|user}
 *   exchange_ws_http_status_total    {status="429"} non-101 upgrade answers
 * Single-threaded: every function must be called on the loop's thread. */
#ifndef WSCLIENT_H
#define WSCLIENT_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "backoff.h"
#include "wsclient_parse.h" /* wsc_url_t, the upgrade answer parser */

typedef struct wsc_s wsc_t;

typedef struct {
    const char *name;          /* metric/log label, e.g. "upbit"; required */
    const char *url;           /* ws://host[:port]/path?query or wss://...; required */
    const char *ca_file;       /* wss: trust only this PEM bundle; NULL = system store */
    int insecure_skip_verify;  /* wss: no certificate/hostname check (tests only) */
    size_t max_message_bytes;  /* bigger message -> close 1009, reconnect; 0 = 16 MiB */
    int reconnect_min_ms;      /* least gap between attempts; 0 = 1000 */
    int reconnect_max_ms;      /* backoff ceiling; 0 = 30000 (raised to min if below) */
    int stale_after_ms;        /* no data message for this long -> reconnect; 0 = off */
    int ping_interval_ms;      /* send a ping this often while open; 0 = off */
    int connect_timeout_ms;    /* bound on each of DNS+TCP, TLS handshake, upgrade; 0 = 10000 */
    const char *extra_headers; /* "" / NULL or CRLF-terminated lines, e.g.
                                  "Authorization: Bearer T\r\n" */
} wsc_opts_t;

typedef struct {
    /* The upgrade succeeded; wsc_send_text() works from here on. */
    void (*on_open)(wsc_t *w, void *arg);
    /* One complete (reassembled) data message. data is valid only during
     * the call; for text, data[len] is not guaranteed to be 0. */
    void (*on_message)(wsc_t *w, int binary, const char *data, size_t len, void *arg);
    /* An attempt ended (a lost connection or a failed connect/upgrade; see
     * cause and wsc_last_error/wsc_last_http_status). cause is one of the
     * metric causes, or the string given to wsc_reconnect. A reconnect is
     * already scheduled unless wsc_stop() is called (allowed here). Not
     * called for wsc_stop itself. */
    void (*on_close)(wsc_t *w, const char *cause, void *arg);
    /* wsc_stop() finished: no handle or callback remains; w is freed right
     * after this returns. */
    void (*on_stopped)(wsc_t *w, void *arg);
} wsc_callbacks_t;

/* Copies opts (strings included) and callbacks; the first attempt starts on
 * the next loop iteration. Returns 0, -EINVAL (bad URL, name, headers or
 * numbers; ca_file unreadable) or -ENOMEM; on error no callback is made. */
int wsc_start(uv_loop_t *loop, const wsc_opts_t *opts, const wsc_callbacks_t *cb, void *arg, wsc_t **out);
/* Queue a text message. 0, -ENOTCONN when not open, -ENOBUFS when
 * the socket is backed up (over 16 MiB unsent), -ENOMEM. */
int wsc_send_text(wsc_t *w, const char *data, size_t len);
/* Drop the connection now (close frame best effort) and reconnect after
 * backoff. cause is logged; the metric label is cause when it is one of
 * the known causes, else "user". No-op while waiting for a retry. */
void wsc_reconnect(wsc_t *w, const char *cause);
/* Validate and store a new URL for the next attempt. 0 or -EINVAL. */
int wsc_set_url(wsc_t *w, const char *url);
/* Close frame 1000 (waiting up to 2 s for the peer's), then on_stopped.
 * Safe from inside any callback; later calls are ignored. */
void wsc_stop(wsc_t *w);
int wsc_is_open(const wsc_t *w);
/* Why the last attempt ended, as text ("certificate verify failed: ...",
 * "connection refused", "http status 429"); "" if none yet. */
const char *wsc_last_error(const wsc_t *w);
/* The status of the last non-101 upgrade answer, else 0. */
int wsc_last_http_status(const wsc_t *w);

/* uv_alloc_cb for read callbacks that consume all data before returning
 * (one per-thread slab; also used by common/httpc). */
void wsc_slab_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b);

/* ---- pure helpers, exposed for unit tests ---- */

/* Delay before the next attempt: the backoff draw, raised so that the gap
 * since the previous attempt start (last_attempt_ms, 0 = none) is at least
 * min_ms. */
uint64_t wsc_retry_delay(backoff_t *b, uint64_t now_ms, uint64_t last_attempt_ms, uint64_t min_ms);

#endif
