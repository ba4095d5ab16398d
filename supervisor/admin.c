/* Admin HTTP server (supervisor): /healthz, /readyz, /metrics (own metrics
 * plus the sum of every worker's last snapshot), /status (JSON), / (status
 * page). One request per connection, parsed with http-parser, bounded. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "http.h"
#include "listener.h"
#include "log.h"
#include "status_page.h"
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

/* ---- rates and latency for /status ------------------------------------------
 * Workers send cumulative counters (metrics snapshots, ingest status) every
 * stats_interval_ms. Once a second each tracked counter's increase is added
 * up and sampled into a ring; /status reports the increase over the last
 * RATE_WINDOW seconds: messages per second in and out, per exchange, and the
 * latency percentiles from the fanout histograms' bucket increases. */
#define RATE_WINDOW 5
#define RATE_SLOTS (RATE_WINDOW + 1)
#define RATE_MAX 512
#define LAT_MAX_BUCKETS 32
#define LAT_KINDS 2

typedef struct {
    char key[48];
    double last; /* last raw value */
    double acc;  /* increase since tracked (a counter reset counts from 0) */
    double ring[RATE_SLOTS];
    uint64_t first_tick, seen_tick;
} rate_ctr_t;

static rate_ctr_t rate_ctrs[RATE_MAX];
static int rate_n;
static uint64_t rate_tick;
static uv_timer_t rate_timer;
static int rate_timer_on;
/* 0: ingest receive -> fanout (recv_ts), 1: exchange timestamp -> fanout (ts) */
static const char *const lat_family[LAT_KINDS] = {"exchange_fanout_ingest_latency_seconds",
                                                  "exchange_fanout_exchange_latency_seconds"};
static double lat_bounds[LAT_KINDS][LAT_MAX_BUCKETS];
static int lat_nb[LAT_KINDS];

static rate_ctr_t *rate_find(const char *key)
{
    for (int i = 0; i < rate_n; i++)
        if (strcmp(rate_ctrs[i].key, key) == 0)
            return &rate_ctrs[i];
    return NULL;
}

static void rate_feed(const char *key, double raw)
{
    rate_ctr_t *c = rate_find(key);
    if (c == NULL) {
        if (rate_n >= RATE_MAX || strlen(key) >= sizeof(c->key))
            return;
        c = &rate_ctrs[rate_n++];
        memset(c, 0, sizeof(*c));
        snprintf(c->key, sizeof(c->key), "%s", key);
        c->last = raw;
        c->first_tick = rate_tick;
    } else if (c->seen_tick != rate_tick) {
        c->acc += raw >= c->last ? raw - c->last : raw;
        c->last = raw;
    }
    c->seen_tick = rate_tick;
}

/* Increase over the window (up to RATE_WINDOW seconds); 0 while too new. */
static double rate_delta(const rate_ctr_t *c, double *secs)
{
    uint64_t w = rate_tick - c->first_tick;
    if (w > RATE_WINDOW)
        w = RATE_WINDOW;
    *secs = (double)w;
    return w == 0 ? 0 : c->acc - c->ring[(rate_tick - w) % RATE_SLOTS];
}

/* Per second, or JSON null when the counter is unknown or too new. */
static json_t *rate_json(const char *key)
{
    double secs;
    rate_ctr_t *c = rate_find(key);
    if (c == NULL)
        return json_null();
    double d = rate_delta(c, &secs);
    if (secs <= 0)
        return json_null();
    return json_real((double)(int64_t)(d / secs * 10.0 + 0.5) / 10.0);
}

static json_t *snap_family(json_t *snap, const char *name)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(snap, "families"), i, f)
    {
        if (json_is_string(json_object_get(f, "name")) &&
            strcmp(json_string_value(json_object_get(f, "name")), name) == 0)
            return f;
    }
    return NULL;
}

static double snap_sum(json_t *snap, const char *name)
{
    json_t *series = json_object_get(snap_family(snap, name), "series");
    double v = 0;
    for (size_t i = 0; i < json_array_size(series); i++)
        v += json_number_value(json_object_get(json_array_get(series, i), "value"));
    return v;
}

static void rate_feed_histogram(int kind, pid_t pid, json_t *snap)
{
    json_t *f = snap_family(snap, lat_family[kind]);
    json_t *b = json_object_get(f, "buckets");
    size_t nb = json_array_size(b), i, j;
    char key[48];
    if (f == NULL || nb == 0 || nb > LAT_MAX_BUCKETS - 1)
        return;
    lat_nb[kind] = (int)nb;
    for (i = 0; i < nb; i++)
        lat_bounds[kind][i] = json_number_value(json_array_get(b, i));
    for (i = 0; i <= nb; i++) {
        json_t *series = json_object_get(f, "series");
        double v = 0;
        for (j = 0; j < json_array_size(series); j++)
            v += json_number_value(json_array_get(json_object_get(json_array_get(series, j), "counts"), i));
        snprintf(key, sizeof(key), "lat%d:%d:%zu", kind, (int)pid, i);
        rate_feed(key, v);
    }
}

static void on_rate_tick(uv_timer_t *t)
{
    char key[48];
    (void)t;
    rate_tick++;
    for (proc_t *p = sup.procs.list; p != NULL; p = p->next) {
        if (p->state == PS_EXITED)
            continue;
        if (p->kind == PROC_FANOUT && p->metrics != NULL) {
            snprintf(key, sizeof(key), "out:%d", (int)p->pid);
            rate_feed(key, snap_sum(p->metrics, "exchange_fanout_messages_sent_total"));
            snprintf(key, sizeof(key), "in:%d", (int)p->pid);
            rate_feed(key, snap_sum(p->metrics, "exchange_fanout_messages_received_total"));
            for (int k = 0; k < LAT_KINDS; k++)
                rate_feed_histogram(k, p->pid, p->metrics);
        } else if (p->kind == PROC_INGEST && p->status != NULL) {
            const char *name;
            json_t *e;
            json_object_foreach(json_object_get(p->status, "exchanges"), name, e)
            {
                snprintf(key, sizeof(key), "ex:%s", name);
                rate_feed(key, json_number_value(json_object_get(e, "messages")));
            }
        }
    }
    /* Forget what is gone (exited workers, removed exchanges); ring the rest. */
    for (int i = 0; i < rate_n;) {
        if (rate_ctrs[i].seen_tick != rate_tick) {
            rate_ctrs[i] = rate_ctrs[--rate_n];
            continue;
        }
        rate_ctrs[i].ring[rate_tick % RATE_SLOTS] = rate_ctrs[i].acc;
        i++;
    }
}

/* Like Prometheus' histogram_quantile: linear within the bucket. */
static double bucket_quantile(double q, const double *counts, const double *bounds, int nb, double total)
{
    double rank = q * total, cum = 0;
    for (int i = 0; i <= nb; i++) {
        if (counts[i] > 0 && cum + counts[i] >= rank) {
            if (i == nb)
                return bounds[nb - 1];
            double lo = i > 0 ? bounds[i - 1] : 0, hi = bounds[i];
            return lo + (hi - lo) * (rank - cum) / counts[i];
        }
        cum += counts[i];
    }
    return nb > 0 ? bounds[nb - 1] : 0;
}

static json_t *ms_json(double seconds)
{
    return json_real((double)(int64_t)(seconds * 1000.0 * 100.0 + 0.5) / 100.0);
}

/* {"p50": ms, "p99": ms, "samples": n, "window_s": s} over the fanouts. */
static json_t *latency_json(int kind)
{
    double counts[LAT_MAX_BUCKETS + 1] = {0}, total = 0, window = 0;
    int nb = lat_nb[kind];
    for (int i = 0; i < rate_n; i++) {
        int k, b;
        double secs;
        if (sscanf(rate_ctrs[i].key, "lat%d:%*d:%d", &k, &b) != 2 || k != kind || b < 0 || b > nb)
            continue;
        double d = rate_delta(&rate_ctrs[i], &secs);
        counts[b] += d;
        total += d;
        if (secs > window)
            window = secs;
    }
    json_t *o = json_object();
    const double *bounds = lat_bounds[kind];
    json_object_set_new(o, "p50",
                        total > 0 ? ms_json(bucket_quantile(0.5, counts, bounds, nb, total)) : json_null());
    json_object_set_new(o, "p99",
                        total > 0 ? ms_json(bucket_quantile(0.99, counts, bounds, nb, total)) : json_null());
    json_object_set_new(o, "samples", json_integer((json_int_t)(total + 0.5)));
    json_object_set_new(o, "window_s", json_integer((json_int_t)window));
    return o;
}

/* The rate fields added to a /status document built by sup_status_json. */
static void status_add_rates(json_t *st)
{
    char key[48];
    double out = 0, secs;
    int have_out = 0;
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(st, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "kind")), "fanout") != 0)
            continue;
        int pid = (int)json_integer_value(json_object_get(w, "pid"));
        snprintf(key, sizeof(key), "out:%d", pid);
        json_object_set_new(w, "messages_out_per_s", rate_json(key));
        rate_ctr_t *c = rate_find(key);
        if (c != NULL) {
            double d = rate_delta(c, &secs);
            if (secs > 0) {
                out += d / secs;
                have_out = 1;
            }
        }
        snprintf(key, sizeof(key), "in:%d", pid);
        json_object_set_new(w, "messages_in_per_s", rate_json(key));
    }
    const char *name;
    json_t *e, *exchanges = json_object_get(st, "exchanges");
    json_object_foreach(exchanges, name, e)
    {
        /* The values are the ingest worker's own objects: copy, then add. */
        json_t *cp = json_copy(e);
        snprintf(key, sizeof(key), "ex:%s", name);
        json_object_set_new(cp, "messages_per_s", rate_json(key));
        json_object_set_new(exchanges, name, cp);
    }
    /* The leader's epoch: ours while leading; on a follower the highest
     * epoch its fanout workers have seen in the data (null before any). */
    json_int_t leader_epoch = 0;
    if (sup.role == ROLE_LEADER) {
        leader_epoch = (json_int_t)sup_epoch();
    } else {
        json_array_foreach(json_object_get(st, "workers"), i, w)
        {
            json_t *e = json_object_get(w, "epoch");
            int fanout = strcmp(json_string_value(json_object_get(w, "kind")), "fanout") == 0;
            if (fanout && json_is_integer(e) && json_integer_value(e) > leader_epoch)
                leader_epoch = json_integer_value(e);
        }
    }
    json_object_set_new(st, "leader_epoch", leader_epoch > 0 ? json_integer(leader_epoch) : json_null());
    json_object_set_new(st, "messages_out_per_s",
                        have_out ? json_real((double)(int64_t)(out * 10.0 + 0.5) / 10.0) : json_null());
    json_object_set_new(st, "latency_ms", latency_json(0));
    json_object_set_new(st, "exchange_latency_ms", latency_json(1));
}

static const char *role_name(void)
{
    return sup.role == ROLE_LEADER ? "leader" : sup.role == ROLE_DRAINING ? "draining" : "follower";
}

/* {"soft": N, "hard": N, "supervisor_open_fds": N}: the open-files limit the
 * workers inherit (raised at start, main.c). */
static json_t *nofile_json(void)
{
    struct rlimit rl = {0, 0};
    (void)getrlimit(RLIMIT_NOFILE, &rl);
    return json_pack("{s:I, s:I, s:i}", "soft", (json_int_t)rl.rlim_cur, "hard", (json_int_t)rl.rlim_max,
                     "supervisor_open_fds", worker_open_fds(0));
}

/* A live worker's open file descriptors (/proc/PID/fd); -1 when gone. */
static int proc_open_fds(const proc_t *p)
{
    int n = p->state == PS_EXITED || p->pid <= 0 ? -1 : worker_open_fds((int)p->pid);
    return n < 0 ? -1 : n;
}

json_t *sup_status_json(void)
{
    uint64_t now = worker_now_ms();
    json_t *workers = json_array(), *exchanges = json_object();
    json_int_t clients = 0;
    for (proc_t *p = sup.procs.list; p != NULL; p = p->next) {
        if (p->state == PS_EXITED && !p->want_restart)
            continue;
        json_t *w =
            json_pack("{s:s, s:i, s:s, s:i, s:I, s:i, s:i, s:b}", "kind", proc_kind_name(p->kind), "pid",
                      (int)p->pid, "state", p->state == PS_EXITED ? "backoff" : proc_state_name(p->state),
                      "restarts", p->restarts, "uptime_s", (json_int_t)((now - p->started_ms) / 1000), "slot",
                      p->slot, "generation", p->generation, "crashloop", p->crashloop);
        int fds = proc_open_fds(p);
        json_object_set_new(w, "open_fds", fds >= 0 ? json_integer(fds) : json_null());
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
    json_t *st = json_pack(
        "{s:s, s:s, s:I, s:s, s:s, s:s, s:I, s:I, s:o, s:o, s:I, s:b, s:b, s:{s:s, s:s}, s:I}", "instance",
        sup.cfg->service.instance, "role", role_name(), "epoch", (json_int_t)sup_epoch(), "leader",
        sup.leader_id, "leader_relay", sup.leader_relay, "session", sup.session_state, "transitions",
        (json_int_t)sup.transitions, "since_transition_s",
        (json_int_t)(sup.last_transition_ms ? (now - sup.last_transition_ms) / 1000 : 0), "workers", workers,
        "exchanges", exchanges, "clients", clients, "ready", sup_is_ready(), "draining", sup.draining,
        "config", "profile", sup.cfg->profile ? sup.cfg->profile : "", "files",
        sup.cfg->files ? sup.cfg->files : "", "uptime_s", (json_int_t)((now - sup.started_ms) / 1000));
    if (st != NULL) {
        json_object_set_new(st, "nofile", nofile_json());
        status_add_rates(st);
    }
    return st;
}

/* ---- retired workers' counters -----------------------------------------------
 * /metrics sums the live workers' snapshots. A worker that exits (reload,
 * drain, crash) would take its counts with it and every _total would drop:
 * rate() reads that as a reset. So the last snapshot of each exited worker
 * is added here, counters and histograms only (gauges describe the live
 * process), and /metrics adds this registry to the live sums. */
static metrics_registry_t *retired;

void admin_retire_worker(const proc_t *p)
{
    size_t i;
    json_t *f, *keep;
    if (p->metrics == NULL)
        return;
    if (retired == NULL && (retired = metrics_registry_new()) == NULL) {
        log_error_err(-ENOMEM, "cannot keep an exited worker's counters", "pid=%d", (int)p->pid);
        return;
    }
    keep = json_array();
    json_array_foreach(json_object_get(p->metrics, "families"), i, f)
    {
        const char *t = json_string_value(json_object_get(f, "type"));
        if (t != NULL && strcmp(t, "gauge") != 0)
            json_array_append(keep, f);
    }
    json_t *snap = json_pack("{s:o}", "families", keep);
    if (snap == NULL || metrics_merge(retired, snap, NULL) < 0)
        log_warn("an exited worker's counters were not all kept", "pid=%d", (int)p->pid);
    json_decref(snap);
}

int sup_render_metrics(buf_t *out)
{
    metrics_registry_t *agg = metrics_registry_new();
    json_t *own = metrics_snapshot(sup.reg);
    metrics_merge(agg, own, NULL);
    json_decref(own);
    if (retired != NULL) {
        json_t *old = metrics_snapshot(retired);
        metrics_merge(agg, old, NULL);
        json_decref(old);
    }
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
    metric_t *role =
        metrics_reg_family(agg, METRIC_GAUGE, "exchange_leader", "1 while this instance leads.", NULL, 0);
    metric_t *epoch = metrics_reg_family(agg, METRIC_GAUGE, "exchange_epoch",
                                         "The current leader epoch (fencing token).", NULL, 0);
    metric_t *trans = metrics_reg_family(agg, METRIC_COUNTER, "exchange_leader_transitions_total",
                                         "Leadership changes seen by this instance.", NULL, 0);
    metric_t *ready =
        metrics_reg_family(agg, METRIC_GAUGE, "exchange_ready", "1 while /readyz answers 200.", NULL, 0);
    metric_t *fds = metrics_reg_family(agg, METRIC_GAUGE, "exchange_worker_open_fds",
                                       "Open file descriptors of each worker process.", NULL, 0);
    metric_t *nofile =
        metrics_reg_family(agg, METRIC_GAUGE, "exchange_open_files_limit",
                           "The soft open-files limit (RLIMIT_NOFILE) workers run with.", NULL, 0);
    struct rlimit rl = {0, 0};
    (void)getrlimit(RLIMIT_NOFILE, &rl);
    metric_set(nofile, (double)rl.rlim_cur);
    metric_set(role, sup.role == ROLE_LEADER);
    metric_set(epoch, (double)sup_epoch());
    metric_add(trans, (double)sup.transitions);
    metric_set(ready, sup_is_ready());
    uint64_t now = worker_now_ms();
    for (proc_t *p = sup.procs.list; p != NULL; p = p->next) {
        if (p->state == PS_EXITED && !p->want_restart)
            continue;
        const char *k = proc_kind_name(p->kind);
        metric_set(metric_labels(up, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->state != PS_EXITED);
        metric_set(metric_labels(uptime, "kind=\"%s\",slot=\"%d\"", k, p->slot),
                   (double)(now - p->started_ms) / 1000.0);
        metric_set(metric_labels(restarts, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->restarts);
        metric_set(metric_labels(crashloop, "kind=\"%s\",slot=\"%d\"", k, p->slot), p->crashloop);
        int nfd = proc_open_fds(p);
        if (nfd >= 0)
            metric_set(metric_labels(fds, "kind=\"%s\",slot=\"%d\"", k, p->slot), nfd);
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

/* [admin] token guards /status and / (what the instance is and does);
 * /healthz, /readyz and /metrics stay open for probes and Prometheus. The
 * token comes as Authorization: Bearer T or ?token=T (the status page
 * passes its own ?token= on to its /status requests). */
static int admin_authorized(admin_conn_t *c)
{
    return http_req_token_ok(&c->req, sup.cfg->admin.token);
}

static void respond_unauthorized(admin_conn_t *c)
{
    static const char body[] =
        "unauthorized: this path needs the [admin] token (Authorization: Bearer or ?token=)\n";
    buf_reset(&c->out);
    http_response(&c->out, 401, "text/plain", body, sizeof body - 1,
                  "Cache-Control: no-store\r\nWWW-Authenticate: Bearer realm=\"exchange-service admin\"\r\n");
    uv_write_t *wr = malloc(sizeof(*wr));
    if (wr == NULL) {
        conn_close(c);
        return;
    }
    wr->data = c;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    if (uv_write(wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(wr);
        conn_close(c);
    }
    metric_inc(metric_labels(m_requests, "code=\"401\""));
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
        log_warn_err(status, "admin accept failed", LOG_NOFIELDS);
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
    int r;
    m_requests = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_admin_requests_total",
                                    "Admin HTTP requests by status code.", NULL, 0);
    if (!rate_timer_on) {
        uv_timer_init(sup.loop, &rate_timer);
        uv_timer_start(&rate_timer, on_rate_tick, 1000, 1000);
        uv_unref((uv_handle_t *)&rate_timer);
        rate_timer_on = 1;
    }
    if ((r = listener_tcp(sup.loop, &admin_listener, listen_addr, 128, on_connection, NULL)) < 0) {
        uv_close((uv_handle_t *)&admin_listener, NULL);
        return r;
    }
    admin_listening = 1;
    log_info("admin listening", "addr=%s", listen_addr);
    return 0;
}

void admin_stop(void)
{
    if (rate_timer_on) {
        rate_timer_on = 0;
        uv_timer_stop(&rate_timer);
        uv_close((uv_handle_t *)&rate_timer, NULL);
    }
    if (admin_listening) {
        admin_listening = 0;
        uv_close((uv_handle_t *)&admin_listener, NULL);
    }
}
