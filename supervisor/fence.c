/* Fencing on the supervisor side (README "Leadership"): the epoch of each
 * ingest start (allocated through the election, above everything seen), the
 * lease the ingest worker needs to keep producing (renewed over IPC, never
 * past the moment our leadership is certain), the stop of a deposed ingest
 * (abort, then SIGKILL past [supervisor] stop_deadline_ms) and the draining
 * role once leadership is resigned. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>

#include "election.h"
#include "epoch.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

#define EPOCH_RETRY_MS 500

static void fence_init(sup_t *s)
{
    if (s->fence.timers_init)
        return;
    s->fence.timers_init = 1;
    uv_timer_init(s->loop, &s->fence.lease_timer);
    uv_timer_init(s->loop, &s->fence.retry_timer);
    s->fence.lease_timer.data = s->fence.retry_timer.data = s;
    uv_unref((uv_handle_t *)&s->fence.lease_timer);
    uv_unref((uv_handle_t *)&s->fence.retry_timer);
    s->fence.m_leases =
        metrics_reg_family(s->reg, METRIC_COUNTER, "exchange_ingest_leases_total",
                           "Ingest leases: renewed, or withheld (leadership not certain).", NULL, 0);
    s->fence.m_epoch_allocs = metrics_reg_family(s->reg, METRIC_COUNTER, "exchange_epoch_allocations_total",
                                                 "Epoch allocations for ingest starts, by result.", NULL, 0);
}

int64_t sup_epoch(const sup_t *s)
{
    return s->fence.epoch;
}

/* The floor of a new epoch: the highest epoch any of our fanout workers has
 * seen in the data (they read the topic's tail at start) and our own last. */
static int64_t epoch_floor(const sup_t *s)
{
    int64_t f = s->fence.epoch > s->fence.seen ? s->fence.epoch : s->fence.seen;
    for (proc_t *p = s->procs.list; p != NULL; p = p->next) {
        json_t *e = p->kind == PROC_FANOUT ? json_object_get(p->status, "epoch") : NULL;
        if (json_is_integer(e) && json_integer_value(e) > f)
            f = json_integer_value(e);
    }
    return f;
}

/* ---- lease ------------------------------------------------------------- */

/* Renew the ingest worker's lease: never past the moment our leadership is
 * certain (the ZooKeeper session could expire then), so a supervisor that is
 * frozen, or cut off from ZooKeeper, stops its ingest in time. */
static void send_lease(sup_t *s)
{
    proc_t *p = procs_ingest(&s->procs);
    if (p == NULL || p->ipc == NULL || p->state == PS_DRAINING)
        return;
    int64_t ms = cfg_lease_ms(s->cfg), bound = election_lease_bound_ms(s);
    if (s->role != ROLE_LEADER || bound <= 0) {
        metric_inc(metric_labels(s->fence.m_leases, "result=\"withheld\""));
        return;
    }
    if (bound < ms)
        ms = bound;
    json_t *msg = json_pack("{s:s, s:I}", "t", "lease", "ms", (json_int_t)ms);
    ipc_send(p->ipc, msg);
    json_decref(msg);
    metric_inc(metric_labels(s->fence.m_leases, "result=\"renewed\""));
}

static void on_lease_timer(uv_timer_t *t)
{
    send_lease(t->data);
}

/* The policy (supervisor.c) right after the ingest worker got its configuration. */
void fence_ingest_spawned(sup_t *s)
{
    fence_init(s);
    send_lease(s);
    uint64_t every = (uint64_t)cfg_lease_ms(s->cfg) / 3;
    uv_timer_start(&s->fence.lease_timer, on_lease_timer, every, every);
}

/* ---- epoch allocation and ingest start --------------------------------- */

static void on_retry_timer(uv_timer_t *t)
{
    sup_start_ingest_if_leader(t->data);
}

static void on_epoch(void *arg, int64_t e)
{
    sup_t *s = arg;
    s->fence.allocating = 0;
    if (e < 0) {
        metric_inc(
            metric_labels(s->fence.m_epoch_allocs, "result=\"%s\"", e == -EPERM ? "not_leader" : "failed"));
        if (e != -EPERM) /* -EPERM: the election steps us down */
            uv_timer_start(&s->fence.retry_timer, on_retry_timer, EPOCH_RETRY_MS, 0);
        return;
    }
    metric_inc(metric_labels(s->fence.m_epoch_allocs, "result=\"ok\""));
    if (s->role != ROLE_LEADER || s->draining || procs_ingest(&s->procs) != NULL)
        return; /* leadership changed meanwhile: the epoch is simply skipped */
    s->fence.epoch = e;
    s->ingest_gen++;
    log_info("starting ingest worker", "epoch=%lld", (long long)s->fence.epoch);
    sup_send_leader(s); /* fanouts learn the new epoch and relay first */
    (void)procs_spawn(&s->procs, PROC_INGEST, 0);
}

/* Every ingest start goes through an epoch allocation, which (with
 * ZooKeeper) also proves we still hold our election node. */
void sup_start_ingest_if_leader(sup_t *s)
{
    fence_init(s);
    if (s->role != ROLE_LEADER || s->draining || procs_ingest(&s->procs) != NULL || s->fence.allocating)
        return;
    s->fence.allocating = 1;
    election_alloc_epoch(s, epoch_floor(s), on_epoch);
}

/* ---- stopping the ingest worker ---------------------------------------- */

void sup_stop_ingest(sup_t *s, int deposed)
{
    proc_t *p = procs_ingest(&s->procs);
    if (p == NULL)
        return;
    uv_timer_stop(&s->fence.lease_timer);
    if (deposed && p->ipc != NULL && p->state != PS_DRAINING) {
        /* Before the drain: a deposed ingest aborts, it never flushes. */
        json_t *msg = json_pack("{s:s}", "t", "deposed");
        ipc_send(p->ipc, msg);
        json_decref(msg);
    }
    int deadline = s->cfg->supervisor.stop_deadline_ms;
    procs_drain(p, deadline * 2 / 3);
    procs_kill_after(p, deadline);
}

/* SIGTERM: /status and exchange_leader say "draining" from this moment. The
 * election node goes once our ingest has committed its last transaction and
 * exited (bounded by stop_deadline_ms): the next leader's init_transactions
 * then finds no transaction of ours in progress, which would cost it 0.5 s
 * (librdkafka retries InitProducerId after CONCURRENT_TRANSACTIONS). */
void sup_resign(sup_t *s)
{
    if (s->role == ROLE_LEADER) {
        s->transitions++;
        s->last_transition_ms = worker_now_ms();
        s->leader_id[0] = '\0';
        s->leader_relay[0] = '\0';
    }
    s->role = ROLE_DRAINING;
    if (procs_ingest(&s->procs) != NULL) {
        s->fence.resign_pending = 1;
        log_info("resigning once the ingest has committed and exited", LOG_NOFIELDS);
        return;
    }
    election_resign(s);
}

/* The policy (supervisor.c): an ingest worker exited. */
void fence_ingest_exited(sup_t *s)
{
    if (!s->fence.resign_pending)
        return;
    s->fence.resign_pending = 0;
    election_resign(s);
}

/* The ingest read the topic's tail at start and found epoch e there
 * ({"t":"epoch_seen","epoch":E}): the rule is "a new epoch is above every
 * epoch in the topic", so an ingest whose epoch is not above e is restarted
 * with an epoch allocated above it. */
void fence_epoch_seen(sup_t *s, int64_t e)
{
    if (e <= s->fence.seen)
        return;
    s->fence.seen = e;
    if (e < s->fence.epoch)
        return;
    log_error(
        "the topic holds an epoch not below ours (ZooKeeper data lost?): restarting the ingest above it",
        "epoch=%lld seen=%lld", (long long)s->fence.epoch, (long long)e);
    sup_stop_ingest(s, 1);
}
