/* Supervisor control: leadership transitions start and stop the ingest
 * worker, the epoch handed to it, and the graceful shutdown sequence. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "supervisor.h"
#include "worker.h"

/* The fencing token stamped on every message: the leadership's ZooKeeper
 * sequence number times 1000 plus the ingest worker's start count within that
 * leadership. Ordering between leaders is ZooKeeper's; a restarted ingest
 * worker (which starts every channel's seq at 1 again) gets a higher epoch so
 * fanout workers do not take its messages for duplicates. */
int64_t sup_epoch(void)
{
    return sup.zk_seq * 1000 + (sup.ingest_gen > 999 ? 999 : sup.ingest_gen);
}

void sup_start_ingest_if_leader(void)
{
    if (sup.role != ROLE_LEADER || sup.draining || procs_ingest() != NULL)
        return;
    sup.ingest_gen++;
    if (sup.ingest_gen > 999)
        log_warn("ingest restarted more than 999 times in one leadership; epoch no longer grows",
                 LOG_NOFIELDS);
    log_info("starting ingest worker", "epoch=%lld", (long long)sup_epoch());
    procs_on_leader_change(); /* fanouts learn the new epoch and relay first */
    (void)procs_spawn(PROC_INGEST, 0);
}

void sup_stop_ingest(void)
{
    proc_t *p = procs_ingest();
    if (p != NULL)
        procs_drain(p, 5000);
}

void sup_become_leader(int64_t zk_seq)
{
    int was = sup.role == ROLE_LEADER;
    sup.role = ROLE_LEADER;
    if (sup.zk_seq != zk_seq) {
        sup.ingest_gen = 0; /* same node again (after a suspension): keep counting */
    }
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
    if (sup.role == ROLE_LEADER) {
        sup.transitions++;
        sup.last_transition_ms = worker_now_ms();
        log_warn("stepping down", LOG_NOFIELDS);
    }
    sup.role = ROLE_FOLLOWER;
    snprintf(sup.leader_id, sizeof(sup.leader_id), "%s", leader_id ? leader_id : "");
    snprintf(sup.leader_relay, sizeof(sup.leader_relay), "%s", relay ? relay : "");
    sup_stop_ingest();
    procs_on_leader_change();
}

/* Called after every reap: during shutdown, exit once every child is gone. */
void sup_check_drained(void)
{
    if (!sup.draining || procs_any_alive())
        return;
    log_info("all workers exited, bye", LOG_NOFIELDS);
    uv_stop(sup.loop);
}
