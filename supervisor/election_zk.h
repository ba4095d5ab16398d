/* The ZooKeeper election's state machine (election_zk.c): one struct that
 * takes events (session state, watches, request replies) through
 * election_zk_on_event, from the ZooKeeper client's completion queue or from
 * a unit test; its requests go through an ops table (real: libzookeeper_mt)
 * and its decisions to a policy (lead, follow, step down). */
#ifndef ELECTION_ZK_H
#define ELECTION_ZK_H
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "election.h"
#include "metrics.h"

/* Event kinds; the numbers are the exchange_zk_events_total kind labels. */
enum {
    EZ_SESSION = 1,                  /* type, state: a session event */
    EZ_WATCH,                        /* a watched node changed (deleted) */
    EZ_PARENTS,                      /* the election path's create reply (it exists) */
    EZ_CREATED,                      /* our election node's create reply; value: its name */
    EZ_CHILDREN,                     /* list, n: the election's children */
    EZ_EXISTS,                       /* a watch was set (rc ZNONODE: the node is already gone) */
    EZ_DATA,                         /* value: the leader node's data */
    EZ_PING,                         /* a ping's reply */
    EZ_EPOCH_GET,                    /* value, version: the epoch node */
    EZ_EPOCH_MULTI,                  /* op_err: check our node + set the epoch node */
    EZ_PARENT_MID = EZ_PARENTS + 100 /* an ancestor of the election path created */
};

typedef struct ez_event_s {
    struct ez_event_s *next; /* the completion queue */
    int kind, rc, type, state;
    long gen;    /* session generation: events of older sessions are ignored */
    char *path;  /* watched/created/read path */
    char *value; /* data, created name */
    char **list; /* children */
    int n;
    int version;   /* EZ_EPOCH_GET: the node's data version */
    int op_err[2]; /* EZ_EPOCH_MULTI: each operation's result */
} ez_event_t;

typedef struct election_zk_s election_zk_t;

/* The ZooKeeper calls. Each asynchronous request's reply comes back as one
 * event of the given kind with the generation of the session that sent it.
 * Results are ZooKeeper codes (ZOK...) except open (0 or -errno). */
typedef struct {
    int (*open)(election_zk_t *ez); /* a new session (ez->gen), authenticated when ez->auth is set */
    void (*close)(election_zk_t *ez);
    int (*recv_timeout)(election_zk_t *ez); /* negotiated session timeout, <= 0 unknown */
    int (*create)(election_zk_t *ez, int kind, const char *path, const char *data, int len,
                  int ephemeral_seq);
    int (*get_children)(election_zk_t *ez, int kind, const char *path);
    int (*exists)(election_zk_t *ez, int kind, const char *path, int watch);
    int (*get)(election_zk_t *ez, int kind, const char *path);
    int (*del)(election_zk_t *ez, const char *path); /* synchronous */
    /* One transaction: node exists, and path is set to value at version
     * (created when version < 0). */
    int (*epoch_multi)(election_zk_t *ez, int kind, const char *node, const char *path, const char *value,
                       int version);
    const char *(*err)(int rc);
} election_zk_ops_t;

extern const election_zk_ops_t election_zk_real_ops;

/* What the policy holds now: the election reads it, never writes it. */
typedef struct {
    int leading;
    int64_t zk_seq; /* the leading node's sequence */
    const char *leader_id, *leader_relay;
} election_view_t;

typedef struct {
    void (*lead)(void *arg, int64_t zk_seq);                             /* our node is the lowest */
    void (*follow)(void *arg, const char *leader_id, const char *relay); /* "", "": step down */
    void (*leader_seq)(void *arg, int64_t zk_seq);                       /* the leading node's, for /status */
    void (*session)(void *arg, const char *state);                       /* connecting, connected, ... */
    void (*view)(void *arg, election_view_t *out);
} election_policy_t;

typedef struct {
    const char *connect, *root, *cluster, *instance, *auth;
    int session_timeout_ms;
    const char *node_data; /* JSON stored in our election node */
} election_zk_cfg_t;

struct election_zk_s {
    uv_loop_t *loop;
    const election_zk_ops_t *ops;
    election_policy_t policy;
    void *arg;
    void *handle; /* the ops' session (zhandle_t) */
    void *handle_ctx;
    long gen;
    int connected, ever_connected, creating, resigned, stopping;
    /* When the server last answered us (loop time, ms): the base of the bound
     * on how long a disconnected leader may keep ingesting. */
    uint64_t last_contact_ms;
    char connect[1024], auth[256], node_data[1024];
    int session_timeout_ms;
    char election_path[512], node_prefix[300], my_node[1024];
    int64_t my_seq;
    pthread_mutex_t q_lock; /* the completion thread's hand-over */
    ez_event_t *q_head, *q_tail;
    uv_async_t async;
    uv_timer_t suspend_timer, retry_timer, ping_timer;
    metric_t *m_events, *m_session;
    struct { /* the epoch allocation in flight */
        election_epoch_cb cb;
        int64_t floor, next;
        char path[560], node[1024], value[32];
    } ea;
};

/* Sets up and starts the first session. token makes our node prefix unique
 * per process (it finds our node again after a lost create reply). */
int election_zk_init(election_zk_t *ez, uv_loop_t *loop, metrics_registry_t *reg,
                     const election_zk_cfg_t *cfg, const char *token, const election_zk_ops_t *ops,
                     const election_policy_t *policy, void *arg);
/* One event, on the loop thread; the caller keeps ownership of ev. */
void election_zk_on_event(election_zk_t *ez, const ez_event_t *ev);
/* Runs on the ZooKeeper client's thread: queue ev (heap) for the loop. */
void election_zk_push(election_zk_t *ez, ez_event_t *ev);
void election_zk_resign(election_zk_t *ez); /* delete our node, close the session and the handles */
void election_zk_alloc_epoch(election_zk_t *ez, int64_t floor, election_epoch_cb cb); /* cb(ez's arg, ...) */
int64_t election_zk_lease_bound_ms(election_zk_t *ez);

#endif
