/* Unit tests for common/httpc: the answer parser (length, chunked, read to
 * EOF, Retry-After, bounds), URL parsing, and real GETs on a loopback
 * libuv server (an answer, a 429, a stall hitting the deadline, a cancel). */
#include "unit_url.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "httpc.h"
#include "log.h"

static void test_url(void **state)
{
    (void)state;
    static const unit_url_case_t good[] = {
        {"https://api.upbit.com/v1/trades/ticks?market=KRW-BTC", 1, "api.upbit.com", 443,
         "/v1/trades/ticks?market=KRW-BTC", "api.upbit.com"},
        {"HTTP://127.0.0.1:9101", 0, "127.0.0.1", 9101, "/", "127.0.0.1:9101"},
    };
    assert_urls(httpc_url_parse, good);
    wsc_url_t u;
    assert_int_equal(httpc_url_parse("ws://x/", &u), -EINVAL);
    assert_int_equal(httpc_url_parse("https://user@x/", &u), -EINVAL);
    assert_int_equal(httpc_url_parse(NULL, &u), -EINVAL);
}

static void feed_all(httpc_resp_t *r, const char *s, size_t step)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        assert_int_equal(httpc_resp_feed(r, s + i, k), 0);
    }
}

static void test_parser(void **state)
{
    (void)state;
    httpc_resp_t r;
    static const char LEN[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
                              "Remaining-Req: group=trade; min=599; sec=9\r\n\r\n[1,2,3]";
    for (size_t step = 1; step <= sizeof(LEN); step += 7) {
        assert_int_equal(httpc_resp_init(&r, 1024), 0);
        feed_all(&r, LEN, step);
        assert_true(r.done);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.retry_after_s, -1);
        assert_int_equal(r.body.len, 7);
        assert_memory_equal(r.body.data, "[1,2,3]", 7);
        httpc_resp_free(&r);
    }
    static const char CHUNKED[] =
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 12\r\nTransfer-Encoding: chunked"
        "\r\n\r\n5\r\nToo m\r\n11\r\nany API requests.\r\n0\r\n\r\n";
    assert_int_equal(httpc_resp_init(&r, 1024), 0);
    feed_all(&r, CHUNKED, 3);
    assert_true(r.done);
    assert_int_equal(r.status, 429);
    assert_int_equal(r.retry_after_s, 12);
    assert_int_equal(r.body.len, 22);
    assert_memory_equal(r.body.data, "Too many API requests.", 22);
    httpc_resp_free(&r);
    /* no length: the body ends with the connection */
    assert_int_equal(httpc_resp_init(&r, 1024), 0);
    feed_all(&r, "HTTP/1.0 200 OK\r\n\r\nabc", 4);
    assert_false(r.done);
    assert_int_equal(httpc_resp_feed(&r, NULL, 0), 0);
    assert_true(r.done);
    assert_int_equal(r.body.len, 3);
    httpc_resp_free(&r);
    /* closed early, over the bound, not HTTP */
    assert_int_equal(httpc_resp_init(&r, 1024), 0);
    feed_all(&r, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 100);
    assert_int_equal(httpc_resp_feed(&r, NULL, 0), -EPROTO);
    httpc_resp_free(&r);
    assert_int_equal(httpc_resp_init(&r, 4), 0);
    assert_int_equal(httpc_resp_feed(&r, LEN, strlen(LEN)), -E2BIG);
    httpc_resp_free(&r);
    assert_int_equal(httpc_resp_init(&r, 4), 0);
    assert_int_equal(httpc_resp_feed(&r, "SSH-2.0-OpenSSH\r\n", 17), -EPROTO);
    httpc_resp_free(&r);
}

/* ---- loopback server: answers each connection with `answer` (NULL: stalls) */

typedef struct {
    uv_tcp_t srv;
    const char *answer;
    char request[2048];
    size_t reqlen;
    int conns;
} server_t;

typedef struct {
    uv_tcp_t tcp;
    server_t *s;
    uv_write_t wr;
} sconn_t;

static void s_closed(uv_handle_t *h)
{
    free(h->data);
}

static void s_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char slab[4096];
    *b = uv_buf_init(slab, sizeof(slab));
}

static void s_written(uv_write_t *w, int status)
{
    (void)status;
    uv_close((uv_handle_t *)w->handle, s_closed);
}

static void s_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    sconn_t *c = st->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)st))
            uv_close((uv_handle_t *)st, s_closed);
        return;
    }
    server_t *s = c->s;
    size_t room = sizeof(s->request) - 1 - s->reqlen;
    size_t k = (size_t)n < room ? (size_t)n : room;
    memcpy(s->request + s->reqlen, b->base, k);
    s->reqlen += k;
    s->request[s->reqlen] = 0;
    if (strstr(s->request, "\r\n\r\n") && s->answer) {
        uv_read_stop(st);
        uv_buf_t out = uv_buf_init((char *)s->answer, (unsigned)strlen(s->answer));
        uv_write(&c->wr, st, &out, 1, s_written);
    }
}

static void s_conn(uv_stream_t *srv, int status)
{
    server_t *s = srv->data;
    assert_int_equal(status, 0);
    sconn_t *c = calloc(1, sizeof(*c));
    c->s = s;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&c->tcp), 0);
    s->conns++;
    uv_read_start((uv_stream_t *)&c->tcp, s_alloc, s_read);
}

static int server_start(uv_loop_t *loop, server_t *s)
{
    struct sockaddr_in a;
    int len = sizeof(a);
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &s->srv);
    s->srv.data = s;
    assert_int_equal(uv_tcp_bind(&s->srv, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->srv, 16, s_conn), 0);
    uv_tcp_getsockname(&s->srv, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

typedef struct {
    int calls, err, status, retry;
    char body[256];
    char detail[128];
} got_t;

static void on_done(void *arg, int err, const char *detail, const httpc_result_t *res)
{
    got_t *g = arg;
    g->calls++;
    g->err = err;
    snprintf(g->detail, sizeof(g->detail), "%s", detail ? detail : "");
    if (res != NULL) {
        g->status = res->status;
        g->retry = res->retry_after_s;
        snprintf(g->body, sizeof(g->body), "%.*s", (int)res->body_len, res->body);
    }
}

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, h->type == UV_TCP && h->data != NULL && h->data != arg ? s_closed : NULL);
}

static void run_get(const char *answer, int timeout_ms, int cancel, got_t *g, server_t *s)
{
    uv_loop_t loop;
    char url[128];
    httpc_t *h;
    uv_loop_init(&loop);
    memset(s, 0, sizeof(*s));
    s->answer = answer;
    int port = server_start(&loop, s);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/trades/ticks?market=KRW-BTC&count=2", port);
    assert_int_equal(httpc_get(&loop, NULL, url, timeout_ms, 4096, on_done, g, &h), 0);
    uv_timer_t wake; /* ends the wait when a cancelled request has nothing more to say */
    uv_timer_init(&loop, &wake);
    if (cancel) {
        uv_run(&loop, UV_RUN_NOWAIT);
        httpc_cancel(h);
        uv_timer_start(&wake, on_wake, 300, 0);
    }
    while (g->calls == 0 && (!cancel || uv_is_active((uv_handle_t *)&wake)))
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&s->srv, NULL);
    uv_walk(&loop, close_walk, s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_get_loopback(void **state)
{
    (void)state;
    got_t g = {0};
    server_t s;
    run_get("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n[{}]\n", 5000, 0, &g, &s);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.err, 0);
    assert_int_equal(g.status, 200);
    assert_string_equal(g.body, "[{}]\n");
    assert_non_null(strstr(s.request, "GET /v1/trades/ticks?market=KRW-BTC&count=2 HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nConnection: close\r\n"));
    memset(&g, 0, sizeof(g));
    run_get("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 22\r\n\r\nToo many API "
            "requests.",
            5000, 0, &g, &s);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.status, 429);
    assert_int_equal(g.retry, 3);
    /* a server that never answers: the deadline ends it */
    memset(&g, 0, sizeof(g));
    run_get(NULL, 200, 0, &g, &s);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.err, -ETIMEDOUT);
    /* cancelled: no callback, everything freed (the loop closes clean) */
    memset(&g, 0, sizeof(g));
    run_get(NULL, 5000, 1, &g, &s);
    assert_int_equal(g.calls, 0);
    /* nothing listens: the connect error is reported */
    uv_loop_t loop;
    httpc_t *h;
    uv_loop_init(&loop);
    memset(&g, 0, sizeof(g));
    assert_int_equal(httpc_get(&loop, NULL, "http://127.0.0.1:1/", 2000, 100, on_done, &g, &h), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.err, UV_ECONNREFUSED);
    assert_int_equal(uv_loop_close(&loop), 0);
    /* https without a TLS context, a bad URL: refused up front */
    assert_int_equal(httpc_get(&loop, NULL, "https://127.0.0.1:1/", 2000, 100, on_done, &g, &h), -ENOTSUP);
    assert_int_equal(httpc_get(&loop, NULL, "ftp://x/", 2000, 100, on_done, &g, &h), -EINVAL);
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_parser),
        cmocka_unit_test(test_get_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
