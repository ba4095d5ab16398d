/* Supervisor state shared by its policy modules: readiness and leadership
 * (supervisor.c, fence.c), reload and shutdown (main.c); the process table
 * (procs.c) and the ZooKeeper election (election_zk.c) are leaves with their
 * own structs. Everything runs on one libuv loop. */
#ifndef SUPERVISOR_H
#define SUPERVISOR_H
#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "ipc.h"
#include "metrics.h"
#include "procs.h"

/* ROLE_DRAINING: leadership resigned on SIGTERM, workers still draining. */
typedef enum { ROLE_FOLLOWER = 0, ROLE_LEADER, ROLE_DRAINING } role_t;

typedef struct {
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
    uv_timer_t reload_timer;
    metrics_registry_t *reg; /* the supervisor's own metrics */
} sup_t;

extern sup_t sup;

/* admin.c */
int admin_start(const char *listen_addr);
void admin_stop(void);

/* sdnotify.c */
void sd_notify_msg(const char *msg);
void sd_watchdog_start(uv_loop_t *loop); /* WATCHDOG=1 while $WATCHDOG_USEC is set */

/* fence.c */
void sup_start_ingest_if_leader(void); /* allocates an epoch, then spawns */
void sup_stop_ingest(int deposed);     /* deposed: abort instead of commit; SIGKILL past the deadline */
int64_t sup_epoch(void);               /* of the current (or last) ingest start */
void sup_resign(void);                 /* SIGTERM: role draining, election node deleted */
void fence_ingest_spawned(void);       /* procs.c: start renewing the lease */
void fence_epoch_seen(int64_t e);      /* the ingest found epoch e in the topic's tail */
void fence_ingest_exited(void);        /* procs.c: completes a resign deferred by sup_resign */

/* supervisor.c: the policy (readiness, leadership, what worker events mean) */
extern const procs_events_t sup_procs_events;
int sup_is_ready(void);
void sup_become_leader(int64_t zk_seq);
void sup_become_follower(const char *leader_id, const char *relay);
void sup_check_drained(void);
json_t *sup_leader_msg(void);
void sup_send_leader(void); /* tell every fanout worker the leader, its relay and epoch */

#endif
