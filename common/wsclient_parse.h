/* The WebSocket client's parsers (wsclient_parse.c): URL and upgrade answer. */
#ifndef WSCLIENT_PARSE_H
#define WSCLIENT_PARSE_H
#include <stddef.h>

typedef struct {
    int tls;
    char host[256]; /* without brackets for IPv6 */
    int port;
    char path[2048];   /* path + "?query", at least "/" */
    char hosthdr[270]; /* Host header value: host[:port], brackets for IPv6 */
} wsc_url_t;

/* Parse ws:// or wss:// (scheme case-insensitive). Rejects other schemes,
 * userinfo, fragments, empty hosts, bad ports, spaces/control chars and
 * over-long parts with -EINVAL. */
int wsc_url_parse(const char *url, wsc_url_t *out);

/* Incremental parser for the server's upgrade answer (http_parser,
 * HTTP_RESPONSE), bounded to max_bytes of header (0: 16 KiB). */
typedef struct {
    void *parser; /* http_parser, allocated by wsc_upgrade_init */
    size_t bytes, max_bytes;
    int done, status, in_value, cur;
    char field[40];
    size_t field_len;
    char upgrade[64], connection[128], accept[64];
    int has_extensions;
} wsc_upgrade_t;

int wsc_upgrade_init(wsc_upgrade_t *u, size_t max_bytes);
void wsc_upgrade_free(wsc_upgrade_t *u);
/* Returns bytes consumed (the rest, after a 101, is WebSocket data), or
 * -EPROTO (not HTTP) or -E2BIG (header over max_bytes). u->done is set
 * once the status line and headers are in. */
long wsc_upgrade_feed(wsc_upgrade_t *u, const char *data, size_t n);
/* After done: 0 if it is a valid 101 answer to key; the HTTP status (> 0)
 * when it is not 101; -EPROTO for a 101 with a wrong accept, missing
 * Upgrade/Connection tokens, or an extension we did not ask for. */
int wsc_upgrade_verify(const wsc_upgrade_t *u, const char *key);

#endif
