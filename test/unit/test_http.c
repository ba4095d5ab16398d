/* Unit tests for HTTP request parsing: a real WebSocket upgrade request with
 * the frame bytes after it left unconsumed, pipelined requests, split input,
 * header limits (431), parse errors (400), query decoding, tokens, responses. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const char upgrade_req[] =
    "GET /ws/exchange?channels=ticker.upbit.BTC-KRW,trade.*.ETH-KRW&x=a%20b+c HTTP/1.1\r\n"
    "Host: localhost:8080\r\n"
    "User-Agent: Python/3.11 websockets/10.4\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "Origin: http://localhost\r\n"
    "\r\n";

static void test_upgrade_request(void **state)
{
    (void)state;
    http_req_t r;
    http_req_init(&r, 8192);
    /* a WebSocket frame right behind the request (client sent eagerly) */
    char data[sizeof upgrade_req + 8];
    size_t n = strlen(upgrade_req);
    memcpy(data, upgrade_req, n);
    memcpy(data + n, "\x81\x85XYZW", 6);
    long used = http_req_feed(&r, data, n + 6);
    assert_int_equal(used, (long)n);
    assert_true(r.complete);
    assert_true(r.upgrade);
    assert_int_equal(r.error, 0);
    assert_string_equal(r.method, "GET");
    assert_string_equal(http_req_header(&r, "upgrade"), "websocket");
    assert_string_equal(http_req_header(&r, "sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
    assert_string_equal(http_req_header(&r, "Sec-WebSocket-Version"), "13");
    assert_true(http_header_has_token(http_req_header(&r, "connection"), "upgrade"));
    assert_null(http_req_header(&r, "cookie"));
    char out[256];
    assert_int_equal(http_req_path(&r, out, sizeof out), 0);
    assert_string_equal(out, "/ws/exchange");
    assert_int_equal(http_req_query(&r, "channels", out, sizeof out), 0);
    assert_string_equal(out, "ticker.upbit.BTC-KRW,trade.*.ETH-KRW");
    assert_int_equal(http_req_query(&r, "x", out, sizeof out), 0);
    assert_string_equal(out, "a b c");
    assert_int_equal(http_req_query(&r, "nope", out, sizeof out), -ENOENT);
    assert_int_equal(http_req_query(&r, "channels", out, 5), -ENOSPC);
    /* feeding after completion consumes nothing */
    assert_int_equal(http_req_feed(&r, "more", 4), 0);
    http_req_free(&r);
}

static void test_split_feeds(void **state)
{
    (void)state;
    size_t n = strlen(upgrade_req);
    /* byte by byte, then in every two-piece split */
    http_req_t r;
    http_req_init(&r, 8192);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        long u = http_req_feed(&r, upgrade_req + i, 1);
        assert_int_equal(u, 1);
        total += (size_t)u;
        assert_int_equal(r.complete, i == n - 1);
    }
    assert_int_equal(total, n);
    assert_string_equal(http_req_header(&r, "origin"), "http://localhost");
    http_req_free(&r);
    for (size_t cut = 1; cut < n; cut += 7) {
        http_req_init(&r, 8192);
        assert_int_equal(http_req_feed(&r, upgrade_req, cut), (long)cut);
        assert_false(r.complete);
        assert_int_equal(http_req_feed(&r, upgrade_req + cut, n - cut), (long)(n - cut));
        assert_true(r.complete);
        assert_string_equal(http_req_header(&r, "host"), "localhost:8080");
        http_req_free(&r);
    }
}

static void test_pipelined(void **state)
{
    (void)state;
    const char two[] = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                       "POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello"
                       "GET /status HTTP/1.1\r\n\r\n";
    size_t n = strlen(two);
    http_req_t r;
    http_req_init(&r, 0);
    long u1 = http_req_feed(&r, two, n);
    assert_int_equal(u1, (long)strlen("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_true(r.complete);
    assert_false(r.upgrade);
    char path[64];
    http_req_path(&r, path, sizeof path);
    assert_string_equal(path, "/healthz");
    assert_string_equal(http_req_header(&r, "host"), "a");

    http_req_reset(&r);
    long u2 = http_req_feed(&r, two + u1, n - (size_t)u1);
    assert_true(r.complete);
    assert_string_equal(r.method, "POST");
    assert_int_equal(r.body.len, 5);
    assert_memory_equal(r.body.data, "hello", 5);
    http_req_reset(&r);
    long u3 = http_req_feed(&r, two + u1 + u2, n - (size_t)(u1 + u2));
    assert_int_equal(u1 + u2 + u3, (long)n);
    http_req_path(&r, path, sizeof path);
    assert_string_equal(path, "/status");
    assert_int_equal(http_req_query(&r, "a", path, sizeof path), -ENOENT);
    http_req_free(&r);
}

static void test_repeated_headers(void **state)
{
    (void)state;
    const char req[] = "GET / HTTP/1.1\r\nX-A: one\r\nx-a: two  \r\nConnection: keep-alive\r\n"
                       "CONNECTION: Upgrade\r\n\r\n";
    http_req_t r;
    http_req_init(&r, 0);
    assert_int_equal(http_req_feed(&r, req, strlen(req)), (long)strlen(req));
    assert_string_equal(http_req_header(&r, "x-a"), "one, two");
    assert_string_equal(http_req_header(&r, "connection"), "keep-alive, Upgrade");
    assert_int_equal(r.nheaders, 2);
    assert_string_equal(r.headers[0].name, "x-a");
    assert_true(http_header_has_token(http_req_header(&r, "connection"), "upgrade"));
    assert_false(r.upgrade); /* no Upgrade header */
    http_req_free(&r);
}

static void test_header_limits(void **state)
{
    (void)state;
    http_req_t r;
    /* one huge header value past max_header_bytes */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "GET / HTTP/1.1\r\nX-Big: ");
    for (int i = 0; i < 10000; i++)
        buf_puts(&b, "a");
    buf_puts(&b, "\r\n\r\n");
    http_req_init(&r, 4096);
    assert_int_equal(http_req_feed(&r, b.data, b.len), -1);
    assert_int_equal(r.error, 431);
    assert_int_equal(http_req_feed(&r, "x", 1), -1);
    http_req_free(&r);

    /* many small header lines adding up, fed in small pieces */
    buf_reset(&b);
    buf_puts(&b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 60; i++)
        buf_printf(&b, "X-H%d: %080d\r\n", i, i);
    buf_puts(&b, "\r\n");
    http_req_init(&r, 2048);
    long rc = 0;
    for (size_t off = 0; off < b.len && rc >= 0; off += 10)
        rc = http_req_feed(&r, b.data + off, b.len - off < 10 ? b.len - off : 10);
    assert_int_equal(rc, -1);
    assert_int_equal(r.error, 431);
    http_req_free(&r);
    /* the same request fits a larger limit */
    http_req_init(&r, 65536);
    assert_int_equal(http_req_feed(&r, b.data, b.len), (long)b.len);
    assert_int_equal(r.nheaders, 60);
    http_req_free(&r);

    /* more than HTTP_MAX_HEADERS distinct headers */
    buf_reset(&b);
    buf_puts(&b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS + 1; i++)
        buf_printf(&b, "H%d: v\r\n", i);
    buf_puts(&b, "\r\n");
    http_req_init(&r, 65536);
    assert_int_equal(http_req_feed(&r, b.data, b.len), -1);
    assert_int_equal(r.error, 431);
    http_req_free(&r);

    /* long URL counts too */
    buf_reset(&b);
    buf_puts(&b, "GET /");
    for (int i = 0; i < 5000; i++)
        buf_puts(&b, "u");
    buf_puts(&b, " HTTP/1.1\r\n\r\n");
    http_req_init(&r, 4096);
    assert_int_equal(http_req_feed(&r, b.data, b.len), -1);
    assert_int_equal(r.error, 431);
    http_req_free(&r);
    buf_free(&b);
}

static void test_parse_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        "GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n", "GET / HTTP/9.9x\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00", /* a TLS ClientHello on a plain port */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_req_t r;
        http_req_init(&r, 0);
        assert_int_equal(http_req_feed(&r, bad[i], strlen(bad[i]) ? strlen(bad[i]) : 7), -1);
        assert_int_equal(r.error, 400);
        http_req_free(&r);
    }
    /* body too large: 413 */
    http_req_t r;
    http_req_init(&r, 0);
    const char *h = "POST /x HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n";
    assert_int_equal(http_req_feed(&r, h, strlen(h)), (long)strlen(h));
    char *body = calloc(1, 2u << 20);
    assert_int_equal(http_req_feed(&r, body, 2u << 20), -1);
    assert_int_equal(r.error, 413);
    free(body);
    http_req_free(&r);
}

static void test_query_decoding(void **state)
{
    (void)state;
    http_req_t r;
    http_req_init(&r, 0);
    const char *req =
        "GET /a%2Fb/c+d?k=%41%42+%2b&empty=&flag&k2=%zz&utf=%E2%82%AC&k=second HTTP/1.1\r\n\r\n";
    assert_int_equal(http_req_feed(&r, req, strlen(req)), (long)strlen(req));
    char out[64];
    assert_int_equal(http_req_path(&r, out, sizeof out), 0);
    assert_string_equal(out, "/a/b/c+d"); /* '+' is literal in the path */
    assert_int_equal(http_req_query(&r, "k", out, sizeof out), 0);
    assert_string_equal(out, "AB +"); /* first occurrence */
    assert_int_equal(http_req_query(&r, "empty", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(http_req_query(&r, "flag", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(http_req_query(&r, "k2", out, sizeof out), 0);
    assert_string_equal(out, "%zz"); /* invalid escapes kept */
    assert_int_equal(http_req_query(&r, "utf", out, sizeof out), 0);
    assert_string_equal(out, "\xe2\x82\xac");
    assert_int_equal(http_req_path(&r, out, 4), -ENOSPC);
    http_req_free(&r);

    /* absolute-form request target */
    http_req_init(&r, 0);
    req = "GET http://example.com:8090/metrics?x=1 HTTP/1.1\r\n\r\n";
    assert_int_equal(http_req_feed(&r, req, strlen(req)), (long)strlen(req));
    assert_int_equal(http_req_path(&r, out, sizeof out), 0);
    assert_string_equal(out, "/metrics");
    assert_int_equal(http_req_query(&r, "x", out, sizeof out), 0);
    assert_string_equal(out, "1");
    http_req_free(&r);
}

static void test_tokens_and_responses(void **state)
{
    (void)state;
    assert_true(http_header_has_token("keep-alive, Upgrade", "upgrade"));
    assert_true(http_header_has_token("Upgrade", "UPGRADE"));
    assert_true(http_header_has_token(" a ,\tb\t, c", "b"));
    assert_false(http_header_has_token("upgraded", "upgrade"));
    assert_false(http_header_has_token("", "upgrade"));
    assert_false(http_header_has_token(NULL, "upgrade"));

    const int codes[] = {101, 200, 204, 400, 401, 403, 404, 405, 408, 413, 426, 429, 431, 500, 503};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_string_not_equal(http_status_text(codes[i]), "Unknown");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(426), "Upgrade Required");

    buf_t b;
    buf_init(&b);
    assert_int_equal(http_response(&b, 404, "text/plain", "nope\n", 5, ""), 0);
    assert_string_equal(b.data, "HTTP/1.1 404 Not Found\r\n"
                                "Content-Type: text/plain\r\n"
                                "Content-Length: 5\r\n"
                                "Connection: close\r\n"
                                "\r\n"
                                "nope\n");
    buf_reset(&b);
    assert_int_equal(http_response(&b, 426, "text/plain", "", 0, "Sec-WebSocket-Version: 13\r\n"), 0);
    assert_string_equal(b.data, "HTTP/1.1 426 Upgrade Required\r\n"
                                "Content-Type: text/plain\r\n"
                                "Content-Length: 0\r\n"
                                "Connection: close\r\n"
                                "Sec-WebSocket-Version: 13\r\n"
                                "\r\n");
    buf_reset(&b);
    assert_int_equal(http_response(&b, 204, NULL, NULL, 0, NULL), 0);
    assert_string_equal(b.data, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    buf_free(&b);
}

static void test_secret_equal(void **state)
{
    (void)state;
    assert_true(http_secret_equal("abc", 3, "abc", 3));
    assert_false(http_secret_equal("abc", 3, "abd", 3));
    assert_false(http_secret_equal("abc", 3, "abcd", 4));
    assert_false(http_secret_equal(NULL, 0, "", 0));
}

/* An "Authorization: Bearer" value alone: trimmed, other schemes refused. */
static void test_bearer(void **state)
{
    (void)state;
    const char *t = NULL;
    size_t n = 0;
    assert_true(http_bearer("bearer   abc  ", &t, &n));
    assert_int_equal(n, 3);
    assert_memory_equal(t, "abc", 3);
    assert_false(http_bearer("Basic abc", &t, &n));
    assert_false(http_bearer("Bearer   ", &t, &n));
    assert_false(http_bearer(NULL, &t, &n));
}

static void test_token_ok(void **state)
{
    (void)state;
    assert_true(http_token_ok("", NULL, NULL)); /* no token configured */
    assert_true(http_token_ok(NULL, "Bearer x", NULL));
    assert_false(http_token_ok("s3cret", NULL, NULL)); /* nothing presented */
    assert_true(http_token_ok("s3cret", "Bearer s3cret", NULL));
    assert_true(http_token_ok("s3cret", "bearer   s3cret", NULL));
    assert_false(http_token_ok("s3cret", "Bearer s3cre", NULL));
    assert_false(http_token_ok("s3cret", "Bearer s3cretX", NULL));
    assert_false(http_token_ok("s3cret", "Basic s3cret", NULL));
    assert_false(http_token_ok("s3cret", "Bearer ", NULL));
    assert_true(http_token_ok("s3cret", NULL, "s3cret"));
    assert_false(http_token_ok("s3cret", NULL, ""));
    /* The header wins over the query when both are given. */
    assert_false(http_token_ok("s3cret", "Bearer wrong", "s3cret"));
    assert_true(http_token_ok("s3cret", "Basic abc", "s3cret"));
}

UNIT_MAIN(cmocka_unit_test(test_secret_equal), cmocka_unit_test(test_bearer), cmocka_unit_test(test_token_ok),
          cmocka_unit_test(test_upgrade_request), cmocka_unit_test(test_split_feeds),
          cmocka_unit_test(test_pipelined), cmocka_unit_test(test_repeated_headers),
          cmocka_unit_test(test_header_limits), cmocka_unit_test(test_parse_errors),
          cmocka_unit_test(test_query_decoding), cmocka_unit_test(test_tokens_and_responses))
