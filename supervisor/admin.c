/* Admin HTTP server (supervisor): /healthz, /readyz, /metrics (own metrics
 * plus the sum of every worker's last snapshot), /status (JSON), / (status
 * page). One request per connection, parsed with http-parser, bounded. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

#define ADMIN_MAX_HEADER 8192
#define ADMIN_TIMEOUT_MS 10000

typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_req_t req;
    buf_t out;
    int closing;
    int handles;
} admin_conn_t;

static uv_tcp_t admin_listener;
static int admin_listening;
static metric_t *m_requests;

extern const char status_page_html[];

static const char *role_name(void) { return sup.role == ROLE_LEADER ? "leader" : "follower"; }

int sup_is_ready(void)
{
    if (sup.draining)
        return 0;
    int fanouts = 0;
    for (proc_t *p = sup.procs; p != NULL; p = p->next) {
        if (p->kind != PROC_FANOUT || p->state != PS_RUNNING)
            continue;
        fanouts++;
    }
    return fanouts > 0;
}

json_t *sup_status_json(void)
{
    uint64_t now = worker_now_ms();
    json_t *workers = json_array(), *exchanges = json_object();
    json_int_t clients = 0;
    for (proc_t *p = sup.procs; p != NULL; p = p->next) {
        if (p->state == PS_EXITED && !p->want_restart)
            continue;
        json_t *w = json_pack("{s:s, s:i, s:s, s:i, s:I, s:i, s:i, s:b}", "kind",
                              proc_kind_name(p->kind), "pid", (int)p->pid, "state",
                              p->state == PS_EXITED ? "backoff" : proc_state_name(p->state),
                              "restarts", p->restarts, "uptime_s",
                              (json_int_t)((now - p->started_ms) / 1000), "slot", p->slot,
                              "generation", p->generation, "crashloop", p->crashloop);
        if (p->status != NULL) {
            const char *k;
            json_t *v;
            json_object_foreach(p->status, k, v)
            {
                if (strcmp(k, "exchanges") == 0 && p->kind == PROC_INGEST)
                    json_object_update(exchanges, v);
                else if (json_object_get(w, k) == NULL)
                    json_object_set(w, k, v);
            }
            json_t *c = json_object_get(p->status, "clients");
            if (json_is_integer(c) && p->state != PS_EXITED)
                clients += json_integer_value(c);
        }
        json_array_append_new(workers, w);
    }
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:I, s:I, s:o, s:o, s:I, s:b, s:b, s:{s:s, s:s}, s:I}",
                     "instance", sup.cfg->service.instance, "role", role_name(), "epoch",
                     (json_int_t)sup_epoch(), "leader", sup.leader_id, "leader_relay",
                     sup.leader_relay, "session", sup.session_state, "transitions",
                     (json_int_t)sup.transitions, "since_transition_s",
                     (json_int_t)(sup.last_transition_ms ? (now - sup.last_transition_ms) / 1000 : 0),
                     "workers", workers, "exchanges", exchanges, "clients", clients, "ready",
                     sup_is_ready(), "draining", sup.draining, "config", "profile",
                     sup.cfg->profile ? sup.cfg->profile : "", "files",
                     sup.cfg->files ? sup.cfg->files : "", "uptime_s",
                     (json_int_t)((now - sup.started_ms) / 1000));
}

int sup_render_metrics(buf_t *out)
{
    metrics_registry_t *agg = metrics_registry_new();
    json_t *own = metrics_snapshot(sup.reg);
    metrics_merge(agg, own, NULL);
    json_decref(own);
    /* Per-worker series of the supervisor's own view. */
    metric_t *up = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_up",
                                      "1 for each live worker process.", NULL, 0);
    metric_t *uptime = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_uptime_seconds",
                                          "Seconds since the worker started.", NULL, 0);
    metric_t *restarts = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_slot_restarts",
                                            "Restarts of the worker's slot.", NULL, 0);
    metric_t *crashloop = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_crashloop",
                                             "1 while the worker's slot is in a crash loop.", NULL, 0);
    metric_t *clients = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_clients",
                                           "Clients connected to each fanout worker.", NULL, 0);
    metric_t *role = metrics_reg_family(agg, METRIC_GAUGE, "exchange_leader",
                                        "1 while this instance leads.", NULL, 0);
    metric_t *epoch = metrics_reg_family(agg, METRIC_GAUGE, "exchange_epoch",
                                         "The current leader epoch (fencing token).", NULL, 0);
    metric_t *trans = metrics_reg_family(agg, METRIC_COUNTER, "exchange_leader_transitions_total",
                                         "Leadership changes seen by this instance.", NULL, 0);
    metric_t *ready = metrics_reg_family(agg, METRIC_GAUGE, "exchange_ready",
                                         "1 while /readyz answers 200.", NULL, 0);
    metric_set(role, sup.role == ROLE_LEADER);
    metric_set(epoch, (double)sup_epoch());
    metric_add(trans, (double)sup.transitions);
    metric_set(ready, sup_is_ready());
    uint64_t now = worker_now_ms();
    for (proc_t *p = sup.procs; p != NULL; p = p->next) {
        if (p->state == PS_EXITED && !p->want_restart)
            continue;
        const char *k = proc_kind_name(p->kind);
        metric_set(metric_labels(up, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->state != PS_EXITED);
        metric_set(metric_labels(uptime, "kind=\"%s\",slot=\"%d\"", k, p->slot),
                   (double)(now - p->started_ms) / 1000.0);
        metric_set(metric_labels(restarts, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->restarts);
        metric_set(metric_labels(crashloop, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->crashloop);
        if (p->kind == PROC_FANOUT && p->status != NULL) {
            json_t *c = json_object_get(p->status, "clients");
            metric_set(metric_labels(clients, "slot=\"%d\",pid=\"%d\"", p->slot, (int)p->pid),
                       json_is_integer(c) ? (double)json_integer_value(c) : 0);
        }
        if (p->metrics != NULL && p->state != PS_EXITED)
            metrics_merge(agg, p->metrics, NULL);
    }
    int r = metrics_render(agg, out);
    metrics_registry_free(agg);
    return r;
}

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
    free(wr);
    conn_close(c); /* one request per connection */
}

static void respond(admin_conn_t *c, int status, const char *ctype, const char *body, size_t n)
{
    buf_reset(&c->out);
    http_response(&c->out, status, ctype, body, n, "Cache-Control: no-store\r\n");
    uv_write_t *wr = malloc(sizeof(*wr));
    wr->data = c;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    if (uv_write(wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(wr);
        conn_close(c);
    }
    metric_inc(metric_labels(m_requests, "code=\"%d\"", status));
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
    buf_init(&body);
    if (strcmp(path, "/healthz") == 0) {
        respond(c, 200, "text/plain", "ok\n", 3);
    } else if (strcmp(path, "/readyz") == 0) {
        int ok = sup_is_ready();
        respond(c, ok ? 200 : 503, "text/plain", ok ? "ready\n" : "not ready\n", ok ? 6 : 10);
    } else if (strcmp(path, "/metrics") == 0) {
        sup_render_metrics(&body);
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body.data, body.len);
    } else if (strcmp(path, "/status") == 0) {
        json_t *st = sup_status_json();
        char *s = json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        respond(c, 200, "application/json", s, strlen(s));
        free(s);
        json_decref(st);
    } else if (strcmp(path, "/") == 0) {
        respond(c, 200, "text/html; charset=utf-8", status_page_html, strlen(status_page_html));
    } else {
        respond(c, 404, "text/plain", "not found\n", 10);
    }
    buf_free(&body);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char slab[16384];
    *b = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    admin_conn_t *c = s->data;
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (n == 0 || c->req.complete)
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
    if (status < 0) {
        log_warn("admin accept failed", "err=%s", log_q(uv_strerror(status)));
        return;
    }
    admin_conn_t *c = calloc(1, sizeof(*c));
    uv_tcp_init(sup.loop, &c->tcp);
    uv_timer_init(sup.loop, &c->timer);
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

int admin_start(const char *listen_addr)
{
    char host[256];
    int port, r;
    struct sockaddr_storage ss;
    m_requests = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_admin_requests_total",
                                    "Admin HTTP requests by status code.", NULL, 0);
    if ((r = cfg_parse_addr(listen_addr, host, sizeof(host), &port)) < 0)
        return r;
    if (uv_ip4_addr(host[0] ? host : "0.0.0.0", port, (struct sockaddr_in *)&ss) != 0 &&
        (r = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)) != 0)
        return r;
    uv_tcp_init(sup.loop, &admin_listener);
    if ((r = uv_tcp_bind(&admin_listener, (struct sockaddr *)&ss, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&admin_listener, 128, on_connection)) < 0) {
        uv_close((uv_handle_t *)&admin_listener, NULL);
        return r;
    }
    admin_listening = 1;
    log_info("admin listening", "addr=%s", listen_addr);
    return 0;
}

void admin_stop(void)
{
    if (admin_listening) {
        admin_listening = 0;
        uv_close((uv_handle_t *)&admin_listener, NULL);
    }
}
