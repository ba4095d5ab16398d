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
int sup_is_ready(void)
{
    return !sup.draining && procs_running(&sup.procs, PROC_FANOUT) > 0;
}

json_t *sup_leader_msg(void)
{
    return json_pack("{s:s, s:I, s:s, s:s, s:b}", "t", "leader", "epoch", (json_int_t)sup_epoch(), "leader",
                     sup.leader_id, "relay", sup.leader_relay, "is_self", sup.role == ROLE_LEADER);
}

void sup_send_leader(void)
{
    json_t *msg = sup_leader_msg();
    if (msg == NULL) {
        log_error_err(-ENOMEM, "cannot tell the workers the leader", LOG_NOFIELDS);
        return;
    }
    procs_send_all(&sup.procs, PROC_FANOUT, msg);
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
    buf_t ini;
    (void)ps;
    buf_init(&ini);
    cfg_dump(sup.cfg, &ini, 0);
    send_msg(p, json_pack("{s:s, s:s, s:s}", "t", "config", "ini", ini.data ? ini.data : "", "name",
                          "supervisor"));
    buf_free(&ini);
    send_msg(p, sup_leader_msg());
    if (p->kind == PROC_INGEST)
        fence_ingest_spawned();
}

static void on_ready(procs_t *ps, proc_t *p)
{
    /* Reload: the new generation is serving, drain the old one. */
    if (p->kind == PROC_FANOUT) {
        for (proc_t *o = ps->list; o != NULL; o = o->next)
            if (o->kind == PROC_FANOUT && o->slot == p->slot && o->generation < p->generation &&
                (o->state == PS_RUNNING || o->state == PS_STARTING))
                procs_drain(o, sup.cfg->fanout.drain_ms);
    }
    if (!sup.ready_reported && sup_is_ready()) {
        sup.ready_reported = 1;
        sd_notify_msg("READY=1");
        log_info("service ready", LOG_NOFIELDS);
    }
}

static void on_message(procs_t *ps, proc_t *p, const char *t, json_t *msg)
{
    (void)ps;
    if (strcmp(t, "epoch_seen") == 0 && p->kind == PROC_INGEST) {
        json_t *e = json_object_get(msg, "epoch");
        if (json_is_integer(e))
            fence_epoch_seen((int64_t)json_integer_value(e));
    }
}

static void on_exited(procs_t *ps, proc_t *p, int status, int crashed)
{
    (void)ps;
    (void)status;
    sup_metrics_retire(p);
    if (p->kind == PROC_INGEST) {
        fence_ingest_exited();
        if (!crashed && !sup.draining)
            sup_start_ingest_if_leader(); /* a reload or leadership change stopped it */
    }
    sup_check_drained();
}

static void on_restart_ingest(procs_t *ps, proc_t *p)
{
    (void)ps;
    (void)p;
    sup_start_ingest_if_leader();
}

const procs_events_t sup_procs_events = {on_spawned, on_ready, on_message, on_exited, on_restart_ingest};

/* ---- leadership ---------------------------------------------------------- */

void sup_become_leader(int64_t zk_seq)
{
    if (sup.draining)
        return; /* resigned: the election node only waits for the ingest to exit */
    int was = sup.role == ROLE_LEADER;
    sup.role = ROLE_LEADER;
    if (!was || sup.zk_seq != zk_seq) {
        sup.zk_seq = zk_seq;
        sup.transitions++;
        sup.last_transition_ms = worker_now_ms();
    }
    snprintf(sup.leader_id, sizeof(sup.leader_id), "%s", sup.cfg->service.instance);
    snprintf(sup.leader_relay, sizeof(sup.leader_relay), "%s",
             sup.cfg->relay.advertise[0] ? sup.cfg->relay.advertise : sup.cfg->relay.listen);
    log_info("leading", "instance=%s zk_seq=%lld", log_q(sup.leader_id), (long long)zk_seq);
    sup_start_ingest_if_leader();
}

void sup_become_follower(const char *leader_id, const char *relay)
{
    if (sup.draining)
        return; /* the draining ingest commits or is fenced by the next leader */
    if (sup.role == ROLE_LEADER) {
        sup.transitions++;
        sup.last_transition_ms = worker_now_ms();
        log_warn("stepping down", LOG_NOFIELDS);
    }
    sup.role = ROLE_FOLLOWER;
    snprintf(sup.leader_id, sizeof(sup.leader_id), "%s", leader_id ? leader_id : "");
    snprintf(sup.leader_relay, sizeof(sup.leader_relay), "%s", relay ? relay : "");
    sup_stop_ingest(1); /* deposed: abort, never flush */
    sup_send_leader();
}

/* After every exit: during shutdown, exit once every child is gone. */
void sup_check_drained(void)
{
    if (!sup.draining || procs_any_alive(&sup.procs))
        return;
    log_info("all workers exited, bye", LOG_NOFIELDS);
    uv_stop(sup.loop);
}
