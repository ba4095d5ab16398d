/* Worker process runtime shared by exchange-ingest and exchange-fanout:
 * argument parsing, the IPC channel to the supervisor (config arrives as the
 * first message, EOF means exit), log level changes, periodic stats (metrics
 * snapshot + status) to the supervisor, and the drain command.
 *
 * IPC messages, supervisor -> worker:
 *   {"t":"config","ini":TEXT,"name":SRC}    always first; the validated config
 *   {"t":"leader","epoch":N,"leader":ID,"relay":"host:port","is_self":bool}
 *   {"t":"loglevel","level":"debug"}
 *   {"t":"drain","ms":N}                    stop accepting, drain, exit
 *   {"t":"lease","ms":N}                    ingest: produce for N ms more (renewed every N/3)
 *   {"t":"deposed"}                         ingest: leadership lost: abort, never flush, exit
 * worker -> supervisor:
 *   {"t":"ready"}                           after on_start succeeded
 *   {"t":"stats","metrics":SNAPSHOT,"status":{...}} every stats interval
 *   {"t":"epoch_seen","epoch":E}            ingest: highest epoch in the topic's tail; the
 *                                           supervisor restarts it above E if E >= its epoch
 *
 * Without --ipc-fd the worker loads its configuration itself (--profile,
 * --config, environment) — handy for running one worker by hand. */
#ifndef WORKER_H
#define WORKER_H
#include <jansson.h>
#include <uv.h>
#include "config.h"
#include "ipc.h"

/* Exit codes the supervisor tells apart (counted by reason). */
#define WORKER_EXIT_FENCED 75 /* ingest: Kafka fenced its producer (a newer leader) */
#define WORKER_EXIT_LEASE 76  /* ingest: the supervisor did not renew the lease in time */

typedef struct worker_s worker_t;

typedef struct {
    const char *role;                                        /* "fanout" / "ingest" */
    int (*on_start)(worker_t *w);                            /* config is in w->cfg */
    void (*on_msg)(worker_t *w, const char *t, json_t *msg); /* other messages */
    void (*on_drain)(worker_t *w, int drain_ms);             /* must end with worker_exit() */
    void (*on_status)(worker_t *w, json_t *status);          /* add fields to the stats status */
    void (*on_stop)(worker_t *w); /* parent gone / SIGTERM standalone: quick exit */
} worker_ops_t;

struct worker_s {
    uv_loop_t *loop;
    cfg_t *cfg;
    ipc_t *ipc; /* NULL when standalone */
    const worker_ops_t *ops;
    void *data; /* the worker's own state */
    int draining;
    int exit_code;
    uv_timer_t stats_timer;
    uv_signal_t sigterm, sigint;
};

int worker_main(int argc, char **argv, const worker_ops_t *ops, void *data);
void worker_send(worker_t *w, json_t *msg); /* no-op when standalone */
void worker_exit(worker_t *w, int code);    /* close handles, stop the loop */
uint64_t worker_now_ms(void);               /* wall clock, ms since epoch */
/* Open file descriptors of a process (pid <= 0: this one), from /proc;
 * -errno when unreadable. */
int worker_open_fds(int pid);

#endif
