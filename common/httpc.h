/* A small asynchronous HTTP/1.1 GET client on libuv (http:// and https://):
 * one connection per request (Connection: close), the whole answer buffered
 * up to a bound, one deadline over every step. Used by the ingest worker's
 * REST backfill. TLS is common/tls, the URL parser wsclient's. */
#ifndef HTTPC_H
#define HTTPC_H
#include <stddef.h>
#include <uv.h>
#include "buf.h"
#include "tls.h"
#include "wsclient.h"

typedef struct httpc_s httpc_t;

typedef struct {
    int status;       /* HTTP status of the answer */
    const char *body; /* NUL-terminated, body_len bytes (chunked decoded) */
    size_t body_len;
    int retry_after_s; /* Retry-After in seconds; -1 when absent */
} httpc_result_t;

/* err: 0 with res set, or a negative errno (-ETIMEDOUT, -EPROTO for a bad
 * answer or TLS failure, -E2BIG over max_body, a uv error) with res NULL and
 * detail naming the cause. Runs on the loop thread; the request is freed
 * after it returns. */
typedef void (*httpc_cb)(void *arg, int err, const char *detail, const httpc_result_t *res);

/* GET url. tls: the client context for https:// (may be NULL for http://).
 * 0, or a negative errno (-EINVAL bad URL, -ENOTSUP https without tls), and
 * then cb is never called. */
int httpc_get(uv_loop_t *loop, tls_ctx_t *tls, const char *url, int timeout_ms, size_t max_body, httpc_cb cb,
              void *arg, httpc_t **out);
/* Abandon a request: cb is not called; memory goes once libuv lets go. */
void httpc_cancel(httpc_t *h);

/* ---- pure helpers, exposed for unit tests ---- */
/* http:// or https:// (any case) into out (tls set for https). */
int httpc_url_parse(const char *url, wsc_url_t *out);

typedef struct {
    void *parser; /* http_parser (HTTP_RESPONSE) */
    buf_t body;
    size_t max_body, header_bytes;
    int done, status, retry_after_s, in_retry, in_value;
    char field[32];
    size_t field_len;
    int too_big;
} httpc_resp_t;
int httpc_resp_init(httpc_resp_t *r, size_t max_body);
void httpc_resp_free(httpc_resp_t *r);
/* Feed received bytes; n == 0 signals EOF. 0, -EPROTO (not HTTP), -E2BIG.
 * r->done once the whole answer is in. */
int httpc_resp_feed(httpc_resp_t *r, const char *data, size_t n);

#endif
