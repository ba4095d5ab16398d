/* Leader election, the supervisor's side: standalone mode (no ZooKeeper)
 * leads at once with sequence 0; otherwise the ZooKeeper state machine
 * (election_zk.c) runs with the supervisor's leadership policy
 * (supervisor.c) as its policy. */
#include "election.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "election_zk.h"
#include "epoch.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

static int use_zk;
static election_zk_t zk;

static void policy_lead(void *arg, int64_t zk_seq)
{
    (void)arg;
    sup_become_leader(zk_seq);
}

static void policy_follow(void *arg, const char *leader_id, const char *relay)
{
    (void)arg;
    sup_become_follower(leader_id, relay);
}

static void policy_leader_seq(void *arg, int64_t zk_seq)
{
    (void)arg;
    sup.zk_seq = zk_seq;
}

static void policy_session(void *arg, const char *state)
{
    (void)arg;
    snprintf(sup.session_state, sizeof(sup.session_state), "%s", state);
}

static void policy_view(void *arg, election_view_t *out)
{
    (void)arg;
    out->leading = sup.role == ROLE_LEADER;
    out->zk_seq = sup.zk_seq;
    out->leader_id = sup.leader_id;
    out->leader_relay = sup.leader_relay;
}

static const election_policy_t policy = {policy_lead, policy_follow, policy_leader_seq, policy_session,
                                         policy_view};

static int zk_start(void)
{
    char token[16];
    const cfg_t *c = sup.cfg;
    json_t *d = json_pack("{s:s, s:s, s:s, s:i}", "instance", c->service.instance, "relay",
                          c->relay.advertise[0] ? c->relay.advertise : c->relay.listen, "admin",
                          c->admin.listen, "pid", (int)getpid());
    char *data = d != NULL ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    if (data == NULL)
        return -ENOMEM;
    election_zk_cfg_t zc = {c->zookeeper.connect,
                            c->zookeeper.root,
                            c->service.cluster,
                            c->service.instance,
                            c->zookeeper.auth,
                            c->zookeeper.session_timeout_ms,
                            data};
    snprintf(token, sizeof(token), "%08x", (unsigned)(getpid() ^ (unsigned)worker_now_ms()));
    int r = election_zk_init(&zk, sup.loop, sup.reg, &zc, token, &election_zk_real_ops, &policy, NULL);
    free(data);
    return r;
}

int election_start(void)
{
    if (sup.cfg->zookeeper.connect == NULL || sup.cfg->zookeeper.connect[0] == '\0') {
        log_info("standalone: no ZooKeeper configured, this instance always leads", LOG_NOFIELDS);
        snprintf(sup.session_state, sizeof(sup.session_state), "standalone");
        sup_become_leader(0);
        return 0;
    }
    use_zk = 1;
    return zk_start();
}

void election_resign(void)
{
    if (use_zk)
        election_zk_resign(&zk);
}

void election_stop(void)
{
    if (use_zk)
        election_zk_resign(&zk);
}

/* Standalone: epochs live in this process only (a restart starts again
 * above what its fanout workers have seen: the floor). */
void election_alloc_epoch(int64_t floor, election_epoch_cb cb)
{
    static int64_t last;
    if (use_zk) {
        election_zk_alloc_epoch(&zk, floor, cb);
        return;
    }
    int64_t e = epoch_next(last, floor);
    if (e > 0)
        last = e;
    cb(e);
}

int64_t election_lease_bound_ms(void)
{
    return use_zk ? election_zk_lease_bound_ms(&zk) : INT64_MAX;
}
