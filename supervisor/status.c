/* The /status snapshot: this instance's role, leadership and session, each
 * worker (from the process table and its last status), the exchanges, the
 * open-files limit, and the rates (rates.c, sampled once a second here). The
 * admin port serves it; nothing else builds it. */
#include "status.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "rates.h"
#include "supervisor.h"
#include "worker.h"

static void on_rate_tick(uv_timer_t *t)
{
    sup_t *s = t->data;
    rates_tick(&s->status.rates, s->procs.list);
}

void status_start(sup_t *s)
{
    if (s->status.rate_timer_on)
        return;
    uv_timer_init(s->loop, &s->status.rate_timer);
    s->status.rate_timer.data = s;
    uv_timer_start(&s->status.rate_timer, on_rate_tick, 1000, 1000);
    uv_unref((uv_handle_t *)&s->status.rate_timer);
    s->status.rate_timer_on = 1;
}

void status_stop(sup_t *s)
{
    if (!s->status.rate_timer_on)
        return;
    s->status.rate_timer_on = 0;
    uv_timer_stop(&s->status.rate_timer);
    uv_close((uv_handle_t *)&s->status.rate_timer, NULL);
}

static const char *role_name(const sup_t *s)
{
    return s->role == ROLE_LEADER ? "leader" : s->role == ROLE_DRAINING ? "draining" : "follower";
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

/* The leader's epoch: ours while leading; on a follower the highest epoch
 * its fanout workers have seen in the data (0 before any). */
static json_int_t leader_epoch_of(const sup_t *s, json_t *workers)
{
    size_t i;
    json_t *w;
    json_int_t leader_epoch = 0;
    if (s->role == ROLE_LEADER)
        return (json_int_t)sup_epoch(s);
    json_array_foreach(workers, i, w)
    {
        json_t *e = json_object_get(w, "epoch");
        int fanout = strcmp(json_string_value(json_object_get(w, "kind")), "fanout") == 0;
        if (fanout && json_is_integer(e) && json_integer_value(e) > leader_epoch)
            leader_epoch = json_integer_value(e);
    }
    return leader_epoch;
}

json_t *status_snapshot(sup_t *s)
{
    uint64_t now = worker_now_ms();
    json_t *workers = json_array(), *exchanges = json_object();
    json_int_t clients = 0;
    for (proc_t *p = s->procs.list; p != NULL; p = p->next) {
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
        s->cfg->service.instance, "role", role_name(s), "epoch", (json_int_t)sup_epoch(s), "leader",
        s->leader_id, "leader_relay", s->leader_relay, "session", s->session_state, "transitions",
        (json_int_t)s->transitions, "since_transition_s",
        (json_int_t)(s->last_transition_ms ? (now - s->last_transition_ms) / 1000 : 0), "workers", workers,
        "exchanges", exchanges, "clients", clients, "ready", sup_is_ready(s), "draining", s->draining,
        "config", "profile", s->cfg->profile ? s->cfg->profile : "", "files",
        s->cfg->files ? s->cfg->files : "", "uptime_s", (json_int_t)((now - s->started_ms) / 1000));
    if (st != NULL) {
        json_int_t leader_epoch = leader_epoch_of(s, workers);
        json_object_set_new(st, "nofile", nofile_json());
        json_object_set_new(st, "leader_epoch", leader_epoch > 0 ? json_integer(leader_epoch) : json_null());
        rates_add_status(&s->status.rates, st);
    }
    return st;
}
