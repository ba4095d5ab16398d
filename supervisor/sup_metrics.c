/* /metrics of the supervisor: its own registry, the counters of exited
 * workers (kept, so a _total never drops), its per-worker view (up, uptime,
 * restarts, crash loop, clients, open files), leadership, and the sum of
 * every live worker's last snapshot. */
#include "sup_metrics.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"
#include "supervisor.h"
#include "worker.h"

/* The supervisor's own view, registered in this order for each render. */
enum {
    F_UP,
    F_UPTIME,
    F_RESTARTS,
    F_CRASHLOOP,
    F_CLIENTS,
    F_LEADER,
    F_EPOCH,
    F_TRANSITIONS,
    F_READY,
    F_FDS,
    F_NOFILE,
    F_COUNT
};
static const struct {
    metric_type_t type;
    const char *name, *help;
} own_families[F_COUNT] = {
    {METRIC_GAUGE, "exchange_worker_up", "1 for each live worker process."},
    {METRIC_GAUGE, "exchange_worker_uptime_seconds", "Seconds since the worker started."},
    {METRIC_GAUGE, "exchange_worker_slot_restarts", "Restarts of the worker's slot."},
    {METRIC_GAUGE, "exchange_worker_crashloop", "1 while the worker's slot is in a crash loop."},
    {METRIC_GAUGE, "exchange_worker_clients", "Clients connected to each fanout worker."},
    {METRIC_GAUGE, "exchange_leader", "1 while this instance leads."},
    {METRIC_GAUGE, "exchange_epoch", "The current leader epoch (fencing token)."},
    {METRIC_COUNTER, "exchange_leader_transitions_total", "Leadership changes seen by this instance."},
    {METRIC_GAUGE, "exchange_ready", "1 while /readyz answers 200."},
    {METRIC_GAUGE, "exchange_worker_open_fds", "Open file descriptors of each worker process."},
    {METRIC_GAUGE, "exchange_open_files_limit",
     "The soft open-files limit (RLIMIT_NOFILE) workers run with."},
};

/* ---- retired workers' counters ----------------------------------------------
 * /metrics sums the live workers' snapshots. A worker that exits (reload,
 * drain, crash) would take its counts with it and every _total would drop:
 * rate() reads that as a reset. So the last snapshot of each exited worker
 * is added here, counters and histograms only (gauges describe the live
 * process), and /metrics adds this registry to the live sums. */
void sup_metrics_retire(sup_t *s, const proc_t *p)
{
    size_t i;
    json_t *f, *keep;
    if (p->metrics == NULL)
        return;
    if (s->retired == NULL && (s->retired = metrics_registry_new()) == NULL) {
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
    if (snap == NULL || metrics_merge(s->retired, snap, NULL) < 0)
        log_warn("an exited worker's counters were not all kept", "pid=%d", (int)p->pid);
    json_decref(snap);
}

int sup_metrics_render(sup_t *s, buf_t *out)
{
    metrics_registry_t *agg = metrics_registry_new();
    json_t *own = metrics_snapshot(s->reg);
    metrics_merge(agg, own, NULL);
    json_decref(own);
    if (s->retired != NULL) {
        json_t *old = metrics_snapshot(s->retired);
        metrics_merge(agg, old, NULL);
        json_decref(old);
    }
    /* Per-worker series of the supervisor's own view. */
    metric_t *m[F_COUNT];
    for (int i = 0; i < F_COUNT; i++)
        m[i] = metrics_reg_family(agg, own_families[i].type, own_families[i].name, own_families[i].help, NULL,
                                  0);
    struct rlimit rl = {0, 0};
    (void)getrlimit(RLIMIT_NOFILE, &rl);
    metric_set(m[F_NOFILE], (double)rl.rlim_cur);
    metric_set(m[F_LEADER], s->role == ROLE_LEADER);
    metric_set(m[F_EPOCH], (double)sup_epoch(s));
    metric_add(m[F_TRANSITIONS], (double)s->transitions);
    metric_set(m[F_READY], sup_is_ready(s));
    uint64_t now = worker_now_ms();
    for (proc_t *p = s->procs.list; p != NULL; p = p->next) {
        if (p->state == PS_EXITED && !p->want_restart)
            continue;
        const char *k = proc_kind_name(p->kind);
        metric_set(metric_labels(m[F_UP], "kind=\"%s\",slot=\"%d\"", k, p->slot), p->state != PS_EXITED);
        metric_set(metric_labels(m[F_UPTIME], "kind=\"%s\",slot=\"%d\"", k, p->slot),
                   (double)(now - p->started_ms) / 1000.0);
        metric_set(metric_labels(m[F_RESTARTS], "kind=\"%s\",slot=\"%d\"", k, p->slot), p->restarts);
        metric_set(metric_labels(m[F_CRASHLOOP], "kind=\"%s\",slot=\"%d\"", k, p->slot), p->crashloop);
        int nfd = proc_open_fds(p);
        if (nfd >= 0)
            metric_set(metric_labels(m[F_FDS], "kind=\"%s\",slot=\"%d\"", k, p->slot), nfd);
        if (p->kind == PROC_FANOUT && p->status != NULL) {
            json_t *c = json_object_get(p->status, "clients");
            metric_set(metric_labels(m[F_CLIENTS], "slot=\"%d\",pid=\"%d\"", p->slot, (int)p->pid),
                       json_is_integer(c) ? (double)json_integer_value(c) : 0);
        }
        if (p->metrics != NULL && p->state != PS_EXITED)
            metrics_merge(agg, p->metrics, NULL);
    }
    int r = metrics_render(agg, out);
    metrics_registry_free(agg);
    return r;
}
