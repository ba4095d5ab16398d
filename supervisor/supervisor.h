/* The supervisor's state, one sup_t owned by main.c and passed explicitly to
 * its policy modules: readiness and leadership (supervisor.c, fence.c),
 * reload and shutdown (main.c), the election glue (election.c), the admin
 * port and what it serves (admin.c, status.c, sup_metrics.c). The process
 * table (procs.c) and the ZooKeeper election (election_zk.c) are leaves that
 * never see it. Everything runs on one libuv loop. */
#ifndef SUPERVISOR_H
#define SUPERVISOR_H
#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "ipc.h"
#include "metrics.h"
#include "election_zk.h"
#include "procs.h"
#include "rates.h"

/* ROLE_DRAINING: leadership resigned on SIGTERM, workers still draining. */
typedef enum { ROLE_FOLLOWER = 0, ROLE_LEADER, ROLE_DRAINING } role_t;

typedef struct sup_s {
    uv_loop_t *loop;
    cfg_t *cfg;
    cfg_opts_t cfg_opts;
    procs_t procs; /* the process table; generation lives there */
    int ready_reported;
    int draining;
    uint64_t started_ms;

    /* leadership */
    role_t role;
    int64_t zk_seq; /* the leading election node's sequence */
    int ingest_gen; /* ingest starts (each gets a new epoch, fence.c) */
    char leader_id[256];
    char leader_relay[256];
    char session_state[32];
    int64_t transitions;
    uint64_t last_transition_ms;

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    metrics_registry_t *reg; /* the supervisor's own metrics */

    struct {                /* fence.c */
        int64_t epoch;      /* of the running (or last) ingest start; 0: none yet */
        int64_t seen;       /* highest epoch the ingest reported from the topic's tail */
        int allocating;     /* an allocation is in flight */
        int timers_init;    /* lease_timer, retry_timer */
        int resign_pending; /* election node kept until the ingest has exited */
        uv_timer_t lease_timer, retry_timer;
        metric_t *m_leases, *m_epoch_allocs;
    } fence;
    struct { /* election.c */
        int use_zk;
        election_zk_t zk;
        int64_t standalone_last; /* the last epoch allocated without ZooKeeper */
    } election;
    struct { /* status.c */
        rates_t rates;
        uv_timer_t rate_timer;
        int rate_timer_on;
    } status;
    metrics_registry_t *retired; /* sup_metrics.c: exited workers' counters */
    struct {                     /* admin.c */
        uv_tcp_t listener;
        int listening;
        metric_t *m_requests;
    } admin;
} sup_t;

/* admin.c */
int admin_start(sup_t *s, const char *listen_addr);
void admin_stop(sup_t *s);

/* sdnotify.c */
void sd_notify_msg(const char *msg);
void sd_watchdog_start(uv_loop_t *loop); /* WATCHDOG=1 while $WATCHDOG_USEC is set */

/* fence.c */
void sup_start_ingest_if_leader(sup_t *s);   /* allocates an epoch, then spawns */
void sup_stop_ingest(sup_t *s, int deposed); /* deposed: abort instead of commit; SIGKILL past the deadline */
int64_t sup_epoch(const sup_t *s);           /* of the current (or last) ingest start */
void sup_resign(sup_t *s);                   /* SIGTERM: role draining, election node deleted */
void fence_ingest_spawned(sup_t *s);         /* the ingest got its configuration: start renewing the lease */
void fence_epoch_seen(sup_t *s, int64_t e);  /* the ingest found epoch e in the topic's tail */
void fence_ingest_exited(sup_t *s);          /* completes a resign deferred by sup_resign */

/* supervisor.c: the policy (readiness, leadership, what worker events mean) */
extern const procs_events_t sup_procs_events; /* procs_init(..., &sup_procs_events, s) */
int sup_is_ready(sup_t *s);
void sup_become_leader(sup_t *s, int64_t zk_seq);
void sup_become_follower(sup_t *s, const char *leader_id, const char *relay);
void sup_check_drained(sup_t *s);
json_t *sup_leader_msg(const sup_t *s);
void sup_send_leader(sup_t *s); /* tell every fanout worker the leader, its relay and epoch */

#endif
