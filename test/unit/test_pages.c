/* Unit tests for the pages compiled into the binaries: the fanout's demo
 * page answer (paths, methods, upgrades, the endpoint path written into the
 * page, headers) and the status page's self-containment (no external URL). */
#include "unit.h"

#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "http.h"
#include "demo_page.h"
#include "status_page.h"

static int parse(http_req_t *r, const char *text)
{
    http_req_init(r, 8192);
    long n = http_req_feed(r, text, strlen(text));
    return n < 0 || !r->complete ? -1 : 0;
}

static int answer(const char *request, const char *ws_path, buf_t *extra, buf_t *body)
{
    http_req_t r;
    char path[512];
    buf_init(extra);
    buf_init(body);
    assert_int_equal(parse(&r, request), 0);
    assert_int_equal(http_req_path(&r, path, sizeof path), 0);
    int st = demo_page_answer(&r, path, ws_path, extra, body);
    http_req_free(&r);
    return st;
}

static void test_demo_page_served(void **state)
{
    (void)state;
    buf_t extra, body;
    const char *paths[] = {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET /demo HTTP/1.1\r\nHost: x\r\n\r\n",
                           "GET /?token=abc HTTP/1.1\r\nHost: x\r\n\r\n"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        assert_int_equal(answer(paths[i], "/ws/exchange", &extra, &body), 200);
        assert_contains_all(extra.data, "Content-Type: text/html; charset=utf-8\r\n",
                            "Content-Security-Policy: ");
        assert_contains_all(body.data, "<!doctype html>", "<meta name=\"ws-path\" content=\"/ws/exchange\">");
        assert_contains_none(body.data, "@WS_PATH@", "http://", "https://");
        assert_int_equal(strlen(body.data), body.len);
        buf_free(&extra);
        buf_free(&body);
    }
}

static void test_demo_page_escapes_path(void **state)
{
    (void)state;
    buf_t extra, body;
    assert_int_equal(answer("GET / HTTP/1.1\r\n\r\n", "/a\"><b>&", &extra, &body), 200);
    assert_non_null(strstr(body.data, "content=\"/a&quot;&gt;&lt;b&gt;&amp;\">"));
    buf_free(&extra);
    buf_free(&body);
}

static void test_demo_page_not_served(void **state)
{
    (void)state;
    buf_t extra, body;
    const char *reqs[] = {
        "GET /other HTTP/1.1\r\n\r\n",
        "GET /demo/x HTTP/1.1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        /* a WebSocket client at the wrong path keeps its 404 */
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        assert_int_equal(answer(reqs[i], "/ws/exchange", &extra, &body), 0);
        assert_int_equal(body.len, 0);
        assert_int_equal(extra.len, 0);
        buf_free(&extra);
        buf_free(&body);
    }
}

static void test_status_page_self_contained(void **state)
{
    (void)state;
    assert_contains_all(status_page_html, "<!doctype html>", "fetch(\"status\" + Q");
    assert_contains_none(status_page_html, "http://", "https://", "<script src", "<link rel=\"stylesheet\"");
}

UNIT_MAIN(cmocka_unit_test(test_demo_page_served), cmocka_unit_test(test_demo_page_escapes_path),
          cmocka_unit_test(test_demo_page_not_served), cmocka_unit_test(test_status_page_self_contained))
