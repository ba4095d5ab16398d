/* Supervisor control: leadership transitions start and stop the ingest
 * worker (fence.c allocates its epoch and holds its lease), and the end of
 * the graceful shutdown sequence. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "supervisor.h"
#include "worker.h"

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
