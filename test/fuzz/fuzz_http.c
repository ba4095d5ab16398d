/* libFuzzer target: common/http.c request parsing fed with arbitrary splits,
 * including pipelined requests, then every accessor the admin port and the
 * WebSocket upgrade use on the parsed request.
 * Input: byte 0 = flags (header bound), bytes 1-2 = chunking seed, rest =
 * the byte stream from the peer. */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "wsserver.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inspect(const http_req_t *r)
{
    char out[512], accept[29];
    FUZZ_CHECK(r->nheaders >= 0 && r->nheaders <= HTTP_MAX_HEADERS);
    for (int i = 0; i < r->nheaders; i++) {
        const char *n = r->headers[i].name;
        FUZZ_CHECK(n != NULL && r->headers[i].value != NULL);
        for (; *n; n++)
            FUZZ_CHECK(!isupper((unsigned char)*n));
        FUZZ_CHECK(http_req_header(r, r->headers[i].name) == r->headers[i].value);
    }
    int pr = http_req_path(r, out, sizeof out);
    if (pr == 0)
        FUZZ_CHECK(strlen(out) < sizeof out);
    if (http_req_query(r, "channels", out, sizeof out) == 0)
        FUZZ_CHECK(strlen(out) < sizeof out);
    (void)http_req_query(r, "", out, sizeof out);
    (void)http_req_query(r, "channels", out, 1);
    const char *conn = http_req_header(r, "connection");
    (void)http_header_has_token(conn, "upgrade");
    (void)http_header_has_token(http_req_header(r, "upgrade"), "websocket");
    int st = wss_check_upgrade(r, accept);
    FUZZ_CHECK(st == 0 || st == 400 || st == 426 || st < 0);
    if (st == 0)
        FUZZ_CHECK(strlen(accept) == 28);
    buf_t resp;
    buf_init(&resp);
    FUZZ_CHECK(http_response(&resp, r->error ? r->error : 200, "text/plain", r->body.data, r->body.len, "") ==
               0);
    buf_free(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    static const size_t bounds[4] = {8192, 256, 64, 16384};
    size_t maxh = bounds[data[0] & 3];
    fuzz_rng_t rng = {((uint32_t)data[1] << 8 | data[2]) + 1};
    const char *p = (const char *)data + 3;
    size_t left = size - 3;
    http_req_t r;
    int requests = 0;
    http_req_init(&r, maxh);
    while (left > 0 && requests < 16) {
        size_t n = fuzz_chunk(&rng, left);
        long used = http_req_feed(&r, p, n);
        if (used < 0) {
            FUZZ_CHECK(r.error == 400 || r.error == 413 || r.error == 431 || r.error == 500);
            FUZZ_CHECK(http_req_feed(&r, p, n) == -1); /* stays failed */
            break;
        }
        FUZZ_CHECK((size_t)used <= n);
        p += used;
        left -= (size_t)used;
        if (!r.complete) {
            FUZZ_CHECK((size_t)used == n);
            continue;
        }
        FUZZ_CHECK(r.header_bytes <= r.max_header_bytes);
        inspect(&r);
        requests++;
        if (r.upgrade)
            break; /* the rest of the stream is WebSocket */
        http_req_reset(&r);
    }
    http_req_free(&r);
    return 0;
}
