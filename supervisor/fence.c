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

static int64_t epoch;   /* of the running (or last) ingest start; 0: none yet */
static int64_t seen;    /* highest epoch the ingest reported from the topic's tail */
static int allocating;  /* an allocation is in flight */
static int timers_init; /* lease_timer, retry_timer */
static uv_timer_t lease_timer, retry_timer;
static metric_t *m_leases, *m_epoch_allocs;

static void fence_init(void)
{
    if (timers_init)
        return;
    timers_init = 1;
    uv_timer_init(sup.loop, &lease_timer);
    uv_timer_init(sup.loop, &retry_timer);
    uv_unref((uv_handle_t *)&lease_timer);
    uv_unref((uv_handle_t *)&retry_timer);
    m_leases = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_ingest_leases_total",
                                  "Ingest leases: renewed, or withheld (leadership not certain).", NULL, 0);
    m_epoch_allocs = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_epoch_allocations_total",
                                        "Epoch allocations for ingest starts, by result.", NULL, 0);
}

int64_t sup_epoch(void)
{
    return epoch;
}

/* The floor of a new epoch: the highest epoch any of our fanout workers has
 * seen in the data (they read the topic's tail at start) and our own last. */
static int64_t epoch_floor(void)
{
    int64_t f = epoch > seen ? epoch : seen;
    for (proc_t *p = sup.procs.list; p != NULL; p = p->next) {
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
static void send_lease(void)
{
    proc_t *p = procs_ingest(&sup.procs);
    if (p == NULL || p->ipc == NULL || p->state == PS_DRAINING)
        return;
    int64_t ms = cfg_lease_ms(sup.cfg), bound = election_lease_bound_ms();
    if (sup.role != ROLE_LEADER || bound <= 0) {
        metric_inc(metric_labels(m_leases, "result=\"withheld\""));
        return;
    }
    if (bound < ms)
        ms = bound;
    json_t *msg = json_pack("{s:s, s:I}", "t", "lease", "ms", (json_int_t)ms);
    ipc_send(p->ipc, msg);
    json_decref(msg);
    metric_inc(metric_labels(m_leases, "result=\"renewed\""));
}

static void on_lease_timer(uv_timer_t *t)
{
    (void)t;
    send_lease();
}

/* Called by procs.c right after the ingest worker got its configuration. */
void fence_ingest_spawned(void)
{
    fence_init();
    send_lease();
    uint64_t every = (uint64_t)cfg_lease_ms(sup.cfg) / 3;
    uv_timer_start(&lease_timer, on_lease_timer, every, every);
}

/* ---- epoch allocation and ingest start --------------------------------- */

static void on_retry_timer(uv_timer_t *t)
{
    (void)t;
    sup_start_ingest_if_leader();
}

static void on_epoch(int64_t e)
{
    allocating = 0;
    if (e < 0) {
        metric_inc(metric_labels(m_epoch_allocs, "result=\"%s\"", e == -EPERM ? "not_leader" : "failed"));
        if (e != -EPERM) /* -EPERM: the election steps us down */
            uv_timer_start(&retry_timer, on_retry_timer, EPOCH_RETRY_MS, 0);
        return;
    }
    metric_inc(metric_labels(m_epoch_allocs, "result=\"ok\""));
    if (sup.role != ROLE_LEADER || sup.draining || procs_ingest(&sup.procs) != NULL)
        return; /* leadership changed meanwhile: the epoch is simply skipped */
    epoch = e;
    sup.ingest_gen++;
    log_info("starting ingest worker", "epoch=%lld", (long long)epoch);
    sup_send_leader(); /* fanouts learn the new epoch and relay first */
    (void)procs_spawn(&sup.procs, PROC_INGEST, 0);
}

/* Every ingest start goes through an epoch allocation, which (with
 * ZooKeeper) also proves we still hold our election node. */
void sup_start_ingest_if_leader(void)
{
    fence_init();
    if (sup.role != ROLE_LEADER || sup.draining || procs_ingest(&sup.procs) != NULL || allocating)
        return;
    allocating = 1;
    election_alloc_epoch(epoch_floor(), on_epoch);
}

/* ---- stopping the ingest worker ---------------------------------------- */

void sup_stop_ingest(int deposed)
{
    proc_t *p = procs_ingest(&sup.procs);
    if (p == NULL)
        return;
    uv_timer_stop(&lease_timer);
    if (deposed && p->ipc != NULL && p->state != PS_DRAINING) {
        /* Before the drain: a deposed ingest aborts, it never flushes. */
        json_t *msg = json_pack("{s:s}", "t", "deposed");
        ipc_send(p->ipc, msg);
        json_decref(msg);
    }
    int deadline = sup.cfg->supervisor.stop_deadline_ms;
    procs_drain(p, deadline * 2 / 3);
    procs_kill_after(p, deadline);
}

static int resign_pending; /* election node kept until the ingest has exited */

/* SIGTERM: /status and exchange_leader say "draining" from this moment. The
 * election node goes once our ingest has committed its last transaction and
 * exited (bounded by stop_deadline_ms): the next leader's init_transactions
 * then finds no transaction of ours in progress, which would cost it 0.5 s
 * (librdkafka retries InitProducerId after CONCURRENT_TRANSACTIONS). */
void sup_resign(void)
{
    if (sup.role == ROLE_LEADER) {
        sup.transitions++;
        sup.last_transition_ms = worker_now_ms();
        sup.leader_id[0] = '\0';
        sup.leader_relay[0] = '\0';
    }
    sup.role = ROLE_DRAINING;
    if (procs_ingest(&sup.procs) != NULL) {
        resign_pending = 1;
        log_info("resigning once the ingest has committed and exited", LOG_NOFIELDS);
        return;
    }
    election_resign();
}

/* procs.c: an ingest worker exited. */
void fence_ingest_exited(void)
{
    if (!resign_pending)
        return;
    resign_pending = 0;
    election_resign();
}

/* The ingest read the topic's tail at start and found epoch e there
 * ({"t":"epoch_seen","epoch":E}): the rule is "a new epoch is above every
 * epoch in the topic", so an ingest whose epoch is not above e is restarted
 * with an epoch allocated above it. */
void fence_epoch_seen(int64_t e)
{
    if (e <= seen)
        return;
    seen = e;
    if (e < epoch)
        return;
    log_error(
        "the topic holds an epoch not below ours (ZooKeeper data lost?): restarting the ingest above it",
        "epoch=%lld seen=%lld", (long long)epoch, (long long)e);
    sup_stop_ingest(1);
}
