/* HTTP/1.1 request parsing (http-parser) for the admin port and the
 * WebSocket upgrade, plus response helpers. Bounded: header bytes over
 * max_header_bytes and more than HTTP_MAX_HEADERS headers are errors. */
#ifndef HTTP_H
#define HTTP_H
#include <http_parser.h>
#include <stddef.h>
#include "buf.h"

#define HTTP_MAX_HEADERS 64

typedef struct {
    char *name; /* lower-cased */
    char *value;
} http_header_t;

typedef struct {
    http_parser parser;
    http_parser_settings settings;
    size_t max_header_bytes;
    size_t header_bytes;
    char method[16];
    buf_t url;
    buf_t body;
    http_header_t headers[HTTP_MAX_HEADERS];
    int nheaders;
    int complete; /* message complete (or headers complete for upgrade) */
    int upgrade;  /* Connection: upgrade seen */
    int error;    /* HTTP status to answer with: 400, 431, 413 */
    int in_value;
    buf_t cur_name, cur_value;
} http_req_t;

void http_req_init(http_req_t *r, size_t max_header_bytes);
void http_req_free(http_req_t *r);
/* Free and re-init with the same limit, for the next request on a connection. */
void http_req_reset(http_req_t *r);
/* Feed bytes. Returns bytes consumed (>= 0) or -1 on a parse error (then
 * r->error holds the status to send). After r->complete, stop feeding; for
 * upgrades the bytes after the headers are left unconsumed. */
long http_req_feed(http_req_t *r, const char *data, size_t n);
const char *http_req_header(const http_req_t *r, const char *lname);
/* The path part of the URL (before '?'), copied into out. */
int http_req_path(const http_req_t *r, char *out, size_t outsz);
/* Value of a query parameter (URL-decoded) into out; -ENOENT if absent. */
int http_req_query(const http_req_t *r, const char *key, char *out, size_t outsz);
/* True if a comma-separated header contains token (case-insensitive). */
int http_header_has_token(const char *value, const char *token);

/* Secrets compared in constant time (over their SHA-256), whatever matches
 * and whatever the lengths. 0 for NULL. */
int http_secret_equal(const char *a, size_t alen, const char *b, size_t blen);
/* The token of an "Authorization: Bearer T" header (spaces around T
 * trimmed): 1 and tok, n set, else 0 (absent, another scheme, empty). */
int http_bearer(const char *authorization, const char **tok, size_t *n);
/* The one shared-token check (admin, relay): 1 when want is empty or the
 * request presents it. The Bearer header wins (it stays out of access logs);
 * without one, ?token= is looked at. authorization and query_token may be
 * NULL. */
int http_token_ok(const char *want, const char *authorization, const char *query_token);
/* http_token_ok on a parsed request (its Authorization and ?token=). */
int http_req_token_ok(const http_req_t *r, const char *want);

const char *http_status_text(int status);
/* A full response with Content-Length and Connection: close. extra_headers is
 * "" or CRLF-terminated header lines. */
int http_response(buf_t *out, int status, const char *content_type, const char *body, size_t n,
                  const char *extra_headers);

#endif
