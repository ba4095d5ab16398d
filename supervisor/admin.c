/* Admin HTTP server (supervisor): the routes only. /healthz, /readyz (the
 * policy's readiness), /metrics (sup_metrics.c), /status (the snapshot of
 * status.c, JSON), / (status page). One request per connection, parsed with
 * http-parser, bounded. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http.h"
#include "listener.h"
#include "log.h"
#include "status.h"
#include "status_page.h"
#include "sup_metrics.h"
#include "supervisor.h"
#include "worker.h"

#define ADMIN_MAX_HEADER 8192
#define ADMIN_TIMEOUT_MS 10000

typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr; /* the one response */
    sup_t *sup;    /* whose admin port */
    http_req_t req;
    char in[4096];
    buf_t out;
    int closing;
    int handles;
} admin_conn_t;

static void on_conn_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    if (--c->handles == 0) {
        http_req_free(&c->req);
        buf_free(&c->out);
        free(c);
    }
}

static void conn_close(admin_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_written(uv_write_t *wr, int status)
{
    admin_conn_t *c = wr->data;
    (void)status;
    conn_close(c); /* one request per connection */
}

static void respond_with(admin_conn_t *c, int status, const char *ctype, const char *body, size_t n,
                         const char *headers)
{
    buf_reset(&c->out);
    http_response(&c->out, status, ctype, body, n, headers);
    c->wr.data = c;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
    metric_inc(metric_labels(c->sup->admin.m_requests, "code=\"%d\"", status));
}

static void respond(admin_conn_t *c, int status, const char *ctype, const char *body, size_t n)
{
    respond_with(c, status, ctype, body, n, "Cache-Control: no-store\r\n");
}

/* [admin] token guards /status and / (what the instance is and does);
 * /healthz, /readyz and /metrics stay open for probes and Prometheus. The
 * token comes as Authorization: Bearer T or ?token=T (the status page
 * passes its own ?token= on to its /status requests). */
static int admin_authorized(admin_conn_t *c)
{
    return http_req_token_ok(&c->req, c->sup->cfg->admin.token);
}

static void respond_unauthorized(admin_conn_t *c)
{
    static const char body[] =
        "unauthorized: this path needs the [admin] token (Authorization: Bearer or ?token=)\n";
    respond_with(c, 401, "text/plain", body, sizeof body - 1,
                 "Cache-Control: no-store\r\nWWW-Authenticate: Bearer realm=\"exchange-service admin\"\r\n");
}

/* The status snapshot as indented JSON (keys in the order built). */
static void respond_status(admin_conn_t *c)
{
    json_t *st = status_snapshot(c->sup);
    char *s = st != NULL ? json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(st);
    if (s == NULL) {
        log_error_err(-ENOMEM, "cannot build /status", LOG_NOFIELDS);
        respond(c, 500, "text/plain", "internal error\n", 15);
        return;
    }
    respond(c, 200, "application/json", s, strlen(s));
    free(s);
}

static void route(admin_conn_t *c)
{
    char path[512];
    buf_t body;
    if (strcmp(c->req.method, "GET") != 0 && strcmp(c->req.method, "HEAD") != 0) {
        respond(c, 405, "text/plain", "method not allowed\n", 19);
        return;
    }
    if (http_req_path(&c->req, path, sizeof(path)) < 0) {
        respond(c, 400, "text/plain", "bad request\n", 12);
        return;
    }
    if ((strcmp(path, "/status") == 0 || strcmp(path, "/") == 0) && !admin_authorized(c)) {
        respond_unauthorized(c);
        return;
    }
    buf_init(&body);
    if (strcmp(path, "/healthz") == 0) {
        respond(c, 200, "text/plain", "ok\n", 3);
    } else if (strcmp(path, "/readyz") == 0) {
        int ok = sup_is_ready(c->sup);
        respond(c, ok ? 200 : 503, "text/plain", ok ? "ready\n" : "not ready\n", ok ? 6 : 10);
    } else if (strcmp(path, "/metrics") == 0) {
        sup_metrics_render(c->sup, &body);
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body.data, body.len);
    } else if (strcmp(path, "/status") == 0) {
        respond_status(c);
    } else if (strcmp(path, "/") == 0) {
        respond(c, 200, "text/html; charset=utf-8", status_page_html, strlen(status_page_html));
    } else {
        respond(c, 404, "text/plain", "not found\n", 10);
    }
    buf_free(&body);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    admin_conn_t *c = h->data;
    (void)hint;
    *b = uv_buf_init(c->in, sizeof(c->in));
}

/* Feeds the request parser; routes once the request is complete. */
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    admin_conn_t *c = s->data;
    if (n < 0)
        conn_close(c);
    if (n <= 0 || c->req.complete)
        return;
    if (http_req_feed(&c->req, b->base, (size_t)n) < 0) {
        uv_read_stop(s);
        int st = c->req.error ? c->req.error : 400;
        respond(c, st, "text/plain", http_status_text(st), strlen(http_status_text(st)));
        return;
    }
    if (c->req.complete) {
        uv_read_stop(s);
        route(c);
    }
}

static void on_timeout(uv_timer_t *t)
{
    admin_conn_t *c = t->data;
    conn_close(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    sup_t *s = server->data;
    admin_conn_t *c = status < 0 ? NULL : calloc(1, sizeof(*c));
    if (c == NULL) { /* a failed accept, or no memory for the connection */
        log_warn_err(status < 0 ? status : -ENOMEM, "admin accept failed", LOG_NOFIELDS);
        return;
    }
    c->sup = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    http_req_init(&c->req, ADMIN_MAX_HEADER);
    buf_init(&c->out);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int admin_start(sup_t *s, const char *listen_addr)
{
    int r;
    s->admin.m_requests = metrics_reg_family(s->reg, METRIC_COUNTER, "exchange_admin_requests_total",
                                             "Admin HTTP requests by status code.", NULL, 0);
    status_start(s);
    if ((r = listener_tcp(s->loop, &s->admin.listener, listen_addr, 128, on_connection, NULL)) < 0) {
        uv_close((uv_handle_t *)&s->admin.listener, NULL);
        return r;
    }
    s->admin.listener.data = s;
    s->admin.listening = 1;
    log_info("admin listening", "addr=%s", listen_addr);
    return 0;
}

void admin_stop(sup_t *s)
{
    status_stop(s);
    if (s->admin.listening) {
        s->admin.listening = 0;
        uv_close((uv_handle_t *)&s->admin.listener, NULL);
    }
}
