/* The process table (procs.c): a leaf. It spawns workers, reaps them,
 * restarts crashed slots with backoff and reports crash loops; what the
 * events mean (readiness, leadership, shutdown) is the policy's, told
 * through procs_events_t. */
#ifndef PROCS_H
#define PROCS_H
#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "backoff.h"
#include "ipc.h"
#include "metrics.h"

typedef enum { PROC_FANOUT = 0, PROC_INGEST } proc_kind_t;
typedef enum { PS_STARTING = 0, PS_RUNNING, PS_DRAINING, PS_EXITED } proc_state_t;

typedef struct proc_s {
    struct proc_s *next;
    struct procs_s *table;
    proc_kind_t kind;
    int slot;       /* fanout slot index; 0 for ingest */
    int generation; /* config generation it runs */
    pid_t pid;
    proc_state_t state;
    ipc_t *ipc;
    uint64_t started_ms;
    int restarts; /* restarts of this slot */
    int crashes_in_window;
    uint64_t window_start_ms;
    int crashloop;
    backoff_t backoff; /* the slot's restart delay (deterministic: its ceiling) */
    int want_restart;  /* exit is unexpected: restart the slot */
    json_t *metrics;   /* last snapshot */
    json_t *status;    /* last status */
    uv_timer_t restart_timer;
    uv_timer_t kill_timer; /* procs_kill_after */
    int open_handles;      /* freed when both timers are closed */
} proc_t;

typedef struct procs_s procs_t;

/* A slot's restart history, carried from one process of the slot to the
 * next. */
typedef struct {
    int restarts, crashes_in_window, crashloop;
    uint64_t window_start_ms;
    unsigned attempt; /* of the backoff */
} proc_history_t;

/* What the table reports; every callback is optional. */
typedef struct {
    void (*spawned)(procs_t *ps, proc_t *p); /* its IPC channel is open: hand it its configuration */
    void (*ready)(procs_t *ps, proc_t *p);   /* it said {"t":"ready"}; p is running */
    void (*message)(procs_t *ps, proc_t *p, const char *t, json_t *msg); /* other than ready/stats */
    /* Reaped. crashed: unexpected, and a restart is scheduled (fanout) or
     * the restart_ingest callback comes after the backoff (ingest). */
    void (*exited)(procs_t *ps, proc_t *p, int status, int crashed);
    /* A crashed ingest worker's backoff is over: the policy starts the next
     * one (it needs an epoch first, so now or later); procs_spawn carries
     * the history over (ingest_carry). */
    void (*restart_ingest)(procs_t *ps, proc_t *p);
} procs_events_t;

/* [supervisor] restart keys (reloadable: procs_set_limits). */
typedef struct {
    int restart_min_ms, restart_max_ms, crash_window_ms, crash_limit;
} procs_limits_t;

struct procs_s {
    uv_loop_t *loop;
    char exe_dir[4096]; /* where exchange-fanout and exchange-ingest are */
    procs_limits_t limits;
    int generation; /* of new spawns; a reload increments it */
    int draining;   /* procs_shutdown: no restarts any more */
    proc_t *list;
    procs_events_t ev;
    void *data; /* the policy's */
    /* A crashed ingest's restart history, kept from its restart_ingest until
     * the policy spawns the next one (after an epoch allocation, later):
     * the backoff and crash-loop count go on across ingest processes. */
    proc_history_t ingest_carry;
    int ingest_carry_valid;
    uv_signal_t sig_chld;
    metric_t *m_spawns, *m_exits, *m_restarts, *m_crashloops, *m_kills, *m_ingest_stops;
};

/* Registers the metrics in reg and reaps on SIGCHLD. */
int procs_init(procs_t *ps, uv_loop_t *loop, metrics_registry_t *reg, const char *exe_dir,
               const procs_limits_t *limits, const procs_events_t *ev, void *data);
/* Closes the table's handles and frees every entry (children are left). */
void procs_close(procs_t *ps);
void procs_set_limits(procs_t *ps, const procs_limits_t *limits);

int procs_spawn(procs_t *ps, proc_kind_t kind, int slot);
void procs_reap(procs_t *ps); /* waitpid(-1, WNOHANG) until none is left */
void procs_send_all(procs_t *ps, proc_kind_t kind, json_t *msg);
void procs_drain(proc_t *p, int ms);
void procs_kill_after(proc_t *p, int ms); /* SIGKILL p unless it has exited by then */
/* Shutdown: no more restarts; every fanout drains within drain_ms. */
void procs_shutdown(procs_t *ps, int drain_ms);
proc_t *procs_ingest(procs_t *ps); /* the live ingest worker, or NULL */
int procs_running(procs_t *ps, proc_kind_t kind);
void procs_kill_all(procs_t *ps, int sig);
int procs_any_alive(procs_t *ps);
int proc_open_fds(const proc_t *p); /* a live worker's (/proc/PID/fd); -1 when gone */
const char *proc_state_name(proc_state_t s);
const char *proc_kind_name(proc_kind_t k);

#endif
