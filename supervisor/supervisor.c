/* Supervisor policy: what the process table's events mean (configuration
 * for a new worker, readiness, the reload hand-over, the end of the graceful
 * shutdown) and the leadership transitions, which start and stop the ingest
 * worker (fence.c allocates its epoch and holds its lease). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sup_metrics.h"
#include "supervisor.h"
#include "worker.h"

/* Ready while not draining and at least one fanout worker serves. */
int sup_is_ready(sup_t *s)
{
    return !s->draining && procs_running(&s->procs, PROC_FANOUT) > 0;
}

json_t *sup_leader_msg(const sup_t *s)
{
    return json_pack("{s:s, s:I, s:s, s:s, s:b}", "t", "leader", "epoch", (json_int_t)sup_epoch(s), "leader",
                     s->leader_id, "relay", s->leader_relay, "is_self", s->role == ROLE_LEADER);
}

void sup_send_leader(sup_t *s)
{
    json_t *msg = sup_leader_msg(s);
    if (msg == NULL) {
        log_error_err(-ENOMEM, "cannot tell the workers the leader", LOG_NOFIELDS);
        return;
    }
    procs_send_all(&s->procs, PROC_FANOUT, msg);
    json_decref(msg);
}

/* ---- process table events ---------------------------------------------- */

static void send_msg(proc_t *p, json_t *msg)
{
    if (msg == NULL) {
        log_error_err(-ENOMEM, "cannot build a worker message", "pid=%d", (int)p->pid);
        return;
    }
    ipc_send(p->ipc, msg);
    json_decref(msg);
}

static void on_spawned(procs_t *ps, proc_t *p)
{
    sup_t *s = ps->data;
    buf_t ini;
    buf_init(&ini);
    cfg_dump(s->cfg, &ini, 0);
    send_msg(p, json_pack("{s:s, s:s, s:s}", "t", "config", "ini", ini.data ? ini.data : "", "name",
                          "supervisor"));
    buf_free(&ini);
    send_msg(p, sup_leader_msg(s));
    if (p->kind == PROC_INGEST)
        fence_ingest_spawned(s);
}

static void on_ready(procs_t *ps, proc_t *p)
{
    sup_t *s = ps->data;
    /* Reload: the new generation is serving, drain the old one. */
    if (p->kind == PROC_FANOUT) {
        for (proc_t *o = ps->list; o != NULL; o = o->next)
            if (o->kind == PROC_FANOUT && o->slot == p->slot && o->generation < p->generation &&
                (o->state == PS_RUNNING || o->state == PS_STARTING))
                procs_drain(o, s->cfg->fanout.drain_ms);
    }
    if (!s->ready_reported && sup_is_ready(s)) {
        s->ready_reported = 1;
        sd_notify_msg("READY=1");
        log_info("service ready", LOG_NOFIELDS);
    }
}

static void on_message(procs_t *ps, proc_t *p, const char *t, json_t *msg)
{
    if (strcmp(t, "epoch_seen") == 0 && p->kind == PROC_INGEST) {
        json_t *e = json_object_get(msg, "epoch");
        if (json_is_integer(e))
            fence_epoch_seen(ps->data, (int64_t)json_integer_value(e));
    }
}

static void on_exited(procs_t *ps, proc_t *p, int status, int crashed)
{
    sup_t *s = ps->data;
    (void)status;
    sup_metrics_retire(s, p);
    if (p->kind == PROC_INGEST) {
        fence_ingest_exited(s);
        if (!crashed && !s->draining)
            sup_start_ingest_if_leader(s); /* a reload or leadership change stopped it */
    }
    sup_check_drained(s);
}

static void on_restart_ingest(procs_t *ps, proc_t *p)
{
    (void)p;
    sup_start_ingest_if_leader(ps->data);
}

const procs_events_t sup_procs_events = {on_spawned, on_ready, on_message, on_exited, on_restart_ingest};

/* ---- leadership ---------------------------------------------------------- */

void sup_become_leader(sup_t *s, int64_t zk_seq)
{
    if (s->draining)
        return; /* resigned: the election node only waits for the ingest to exit */
    int was = s->role == ROLE_LEADER;
    s->role = ROLE_LEADER;
    if (!was || s->zk_seq != zk_seq) {
        s->zk_seq = zk_seq;
        s->transitions++;
        s->last_transition_ms = worker_now_ms();
    }
    snprintf(s->leader_id, sizeof(s->leader_id), "%s", s->cfg->service.instance);
    snprintf(s->leader_relay, sizeof(s->leader_relay), "%s",
             s->cfg->relay.advertise[0] ? s->cfg->relay.advertise : s->cfg->relay.listen);
    log_info("leading", "instance=%s zk_seq=%lld", log_q(s->leader_id), (long long)zk_seq);
    sup_start_ingest_if_leader(s);
}

void sup_become_follower(sup_t *s, const char *leader_id, const char *relay)
{
    if (s->draining)
        return; /* the draining ingest commits or is fenced by the next leader */
    if (s->role == ROLE_LEADER) {
        s->transitions++;
        s->last_transition_ms = worker_now_ms();
        log_warn("stepping down", LOG_NOFIELDS);
    }
    s->role = ROLE_FOLLOWER;
    snprintf(s->leader_id, sizeof(s->leader_id), "%s", leader_id ? leader_id : "");
    snprintf(s->leader_relay, sizeof(s->leader_relay), "%s", relay ? relay : "");
    sup_stop_ingest(s, 1); /* deposed: abort, never flush */
    sup_send_leader(s);
}

/* After every exit: during shutdown, exit once every child is gone. */
void sup_check_drained(sup_t *s)
{
    if (!s->draining || procs_any_alive(&s->procs))
        return;
    log_info("all workers exited, bye", LOG_NOFIELDS);
    uv_stop(s->loop);
}
