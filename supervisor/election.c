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

static void policy_lead(void *arg, int64_t zk_seq)
{
    sup_become_leader(arg, zk_seq);
}

static void policy_follow(void *arg, const char *leader_id, const char *relay)
{
    sup_become_follower(arg, leader_id, relay);
}

static void policy_leader_seq(void *arg, int64_t zk_seq)
{
    sup_t *s = arg;
    s->zk_seq = zk_seq;
}

static void policy_session(void *arg, const char *state)
{
    sup_t *s = arg;
    snprintf(s->session_state, sizeof(s->session_state), "%s", state);
}

static void policy_view(void *arg, election_view_t *out)
{
    const sup_t *s = arg;
    out->leading = s->role == ROLE_LEADER;
    out->zk_seq = s->zk_seq;
    out->leader_id = s->leader_id;
    out->leader_relay = s->leader_relay;
}

static const election_policy_t policy = {policy_lead, policy_follow, policy_leader_seq, policy_session,
                                         policy_view};

static int zk_start(sup_t *s)
{
    char token[16];
    const cfg_t *c = s->cfg;
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
    int r = election_zk_init(&s->election.zk, s->loop, s->reg, &zc, token, &election_zk_real_ops, &policy, s);
    free(data);
    return r;
}

int election_start(sup_t *s)
{
    if (s->cfg->zookeeper.connect == NULL || s->cfg->zookeeper.connect[0] == '\0') {
        log_info("standalone: no ZooKeeper configured, this instance always leads", LOG_NOFIELDS);
        snprintf(s->session_state, sizeof(s->session_state), "standalone");
        sup_become_leader(s, 0);
        return 0;
    }
    s->election.use_zk = 1;
    return zk_start(s);
}

void election_resign(sup_t *s)
{
    if (s->election.use_zk)
        election_zk_resign(&s->election.zk);
}

void election_stop(sup_t *s)
{
    election_resign(s); /* a no-op once resigned */
}

/* Standalone: epochs live in this process only (a restart starts again
 * above what its fanout workers have seen: the floor). */
void election_alloc_epoch(sup_t *s, int64_t floor, election_epoch_cb cb)
{
    if (s->election.use_zk) {
        election_zk_alloc_epoch(&s->election.zk, floor, cb);
        return;
    }
    int64_t e = epoch_next(s->election.standalone_last, floor);
    if (e > 0)
        s->election.standalone_last = e;
    cb(s, e);
}

int64_t election_lease_bound_ms(sup_t *s)
{
    return s->election.use_zk ? election_zk_lease_bound_ms(&s->election.zk) : INT64_MAX;
}
