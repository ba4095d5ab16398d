/* The fanout worker's state shared by its modules: the hub, the client
 * server, the data source and the metrics they report. */
#ifndef FANOUT_FANOUT_H
#define FANOUT_FANOUT_H
#include <uv.h>
#include "config.h"
#include "hub.h"
#include "metrics.h"
#include "source.h"
#include "worker.h"
#include "wsserver.h"

typedef struct client_s client_t;

typedef struct {
    metric_t *clients;     /* gauge */
    metric_t *accepted;    /* counter */
    metric_t *rejected;    /* family, reason= */
    metric_t *limit_hits;  /* family, limit= */
    metric_t *disconnects; /* family, reason= */
    metric_t *messages_sent, *bytes_sent;
    metric_t *received; /* messages from the source */
    metric_t *dropped;  /* family, reason= */
    metric_t *drop_fenced, *drop_duplicate, *drop_conflated, *drop_invalid, *drop_mismatch;
    metric_t *slow_closes;
    metric_t *replay_gaps; /* counter: resume replays overtaken by the history */
    metric_t *queue_bytes; /* gauge */
    metric_t *channels;    /* gauge */
    metric_t *latency_ts, *latency_recv;
    metric_t *max_epoch;     /* gauge */
    metric_t *source_gaps;   /* counter */
    metric_t *auth_failures; /* family, reason= (4001 jwt reasons, 4003 forbidden_channel) */
    metric_t *accept_errors; /* family, reason= (emfile, enfile, enobufs, enomem, setup, other) */
    metric_t *deflate_clients, *deflated, *compressed_frames, *inflated; /* counters */
    metric_t *deflate_ratio;                                             /* gauge */
} fanout_metrics_t;

typedef struct fanout_s {
    worker_t *w;
    uv_loop_t *loop;
    const cfg_t *cfg;
    hub_t *hub;
    source_t *src;
    wss_ctx_t *wss;
    uv_poll_t listener; /* readable: accept4() on listen_fd (server.c) */
    int listen_fd;
    int listening;
    uv_timer_t accept_timer; /* resumes accepting after a pause (EMFILE) */
    int accept_pauses;       /* pauses in a row, 0 once an accept succeeds */
    int port;                /* bound port */
    char **origins;
    int norigins;
    client_t *active;                               /* open clients (not yet told to drain) */
    client_t *drained;                              /* told to reconnect, closing */
    int nclients;                                   /* upgraded, not yet closed */
    int pid;                                        /* getpid() once, for X-Exchange-Worker */
    uint64_t mismatch_logged_at, mismatch_unlogged; /* key/epoch mismatch log, once a second */
    int draining;
    int drain_total, drain_per_tick;
    uv_timer_t drain_timer, deadline_timer, sync_timer;
    uv_timer_t replay_timer; /* runs hub_replay_step while a resume replay waits for room */
    int timers_init;
    fanout_metrics_t m;
    struct iplimits_s *limits; /* per-IP connection limits (iplimits.h) */
    tls_ctx_t *tls;            /* wss:// serving ([tls] cert), read at start */
    /* last values copied from wss/hub stats into counters */
    uint64_t synced_frames, synced_bytes, synced_conflated;
    uint64_t synced_dclients, synced_deflated, synced_zframes, synced_inflated, synced_replay_gaps;
} fanout_t;

void fanout_metrics_init(fanout_metrics_t *m);

/* server.c: listener, upgrade checks, client lifecycle, drain. */
int server_start(fanout_t *f);
void server_drain(fanout_t *f, int drain_ms);
void server_stop(fanout_t *f);
/* hub_ops_t.send for connected clients. */
int server_client_send(void *user, rbuf_t *frame, const void *tag);
/* hub_ops_t.room, and what its replay_wanted does: a resume replay queues at
 * most half of [fanout] client_queue_bytes at a time, the rest once the
 * client read it (a timer steps the hub while replays wait). */
size_t server_client_room(void *user, int *idle);
void server_client_replay_gap(void *user, const char *channel, int64_t epoch, int64_t seq, int64_t next_epoch,
                              int64_t next_seq);
void server_replay_wanted(fanout_t *f);
/* Copy hot counters (kept as plain integers) into the metrics registry. */
void server_sync_metrics(fanout_t *f);

#endif
