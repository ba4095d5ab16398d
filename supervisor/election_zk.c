/* ZooKeeper leader election (DESIGN.md "Leadership"): an ephemeral
 * sequential node under ROOT/CLUSTER/election/ per instance; the lowest
 * leads and its sequence is the epoch; each follower watches only its
 * predecessor (plus the leader's node, to learn the relay address). The C
 * client calls back on its own thread: every callback copies its event into
 * a queue and wakes the loop with uv_async_send; all state lives on the loop. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define THREADED 1 /* the synchronous API of libzookeeper_mt */
#include <zookeeper/zookeeper.h>

#include "election.h"
#include "epoch.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

enum {
    EV_SESSION = 1,
    EV_WATCH,
    EV_PARENTS,
    EV_CREATED,
    EV_CHILDREN,
    EV_EXISTS,
    EV_DATA,
    EV_PING,
    EV_EPOCH_GET,
    EV_EPOCH_MULTI
};

typedef struct zev_s {
    struct zev_s *next;
    int kind, rc, type, state;
    long gen;
    char *path;  /* watched/created/read path */
    char *value; /* data, created name */
    char **list; /* children */
    int n;
    int version; /* EV_EPOCH_GET: the node's data version */
} zev_t;

typedef struct {
    int kind;
    long gen;
    char *path;
} zctx_t;

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static zev_t *q_head, *q_tail;
static uv_async_t z_async;
static uv_timer_t z_suspend_timer, z_retry_timer, z_ping_timer;
/* When the server last answered us (loop time, ms): the base of the bound on
 * how long a disconnected leader may keep ingesting. */
static uint64_t last_contact_ms;

static zhandle_t *zh;
static long zgen; /* session generation: events of older sessions are ignored */
static int connected, ever_connected, creating, resigned, stopping;
static char election_path[512], node_prefix[300], my_node[1024];
static int64_t my_seq = -1;
static metric_t *m_events, *m_session;

/* ---- completion-thread side: copy and hand over ------------------------ */

static void push(zev_t *e)
{
    pthread_mutex_lock(&q_lock);
    if (q_tail)
        q_tail->next = e;
    else
        q_head = e;
    q_tail = e;
    pthread_mutex_unlock(&q_lock);
    uv_async_send(&z_async);
}

static zev_t *ev_new(int kind, long gen, int rc)
{
    zev_t *e = calloc(1, sizeof(*e));
    e->kind = kind;
    e->gen = gen;
    e->rc = rc;
    return e;
}

static zctx_t *ctx_new(int kind, const char *path)
{
    zctx_t *c = calloc(1, sizeof(*c));
    c->kind = kind;
    c->gen = zgen;
    c->path = path ? strdup(path) : NULL;
    return c;
}

static zev_t *ev_from_ctx(const void *data, int rc)
{
    zctx_t *c = (zctx_t *)data;
    zev_t *e = ev_new(c->kind, c->gen, rc);
    e->path = c->path;
    free(c);
    return e;
}

/* Runs on the ZooKeeper client's thread. */
static void on_session_event(zhandle_t *h, int type, int state, const char *path, void *ctx)
{
    (void)h;
    zev_t *e = ev_new(EV_SESSION, (long)(intptr_t)ctx, 0);
    e->type = type;
    e->state = state;
    e->path = path ? strdup(path) : NULL;
    push(e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_node_watch(zhandle_t *h, int type, int state, const char *path, void *ctx)
{
    (void)h;
    zev_t *e = ev_new(type == ZOO_SESSION_EVENT ? EV_SESSION : EV_WATCH, (long)(intptr_t)ctx, 0);
    e->type = type;
    e->state = state;
    e->path = path ? strdup(path) : NULL;
    push(e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_string_done(int rc, const char *value, const void *data)
{
    zev_t *e = ev_from_ctx(data, rc);
    e->value = value ? strdup(value) : NULL;
    push(e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_children_done(int rc, const struct String_vector *sv, const void *data)
{
    zev_t *e = ev_from_ctx(data, rc);
    if (rc == ZOK && sv != NULL) {
        e->n = sv->count;
        e->list = calloc((size_t)(sv->count > 0 ? sv->count : 1), sizeof(char *));
        for (int i = 0; i < sv->count; i++)
            e->list[i] = strdup(sv->data[i]);
    }
    push(e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_stat_done(int rc, const struct Stat *st, const void *data)
{
    (void)st;
    push(ev_from_ctx(data, rc));
}

/* Runs on the ZooKeeper client's thread. */
static void on_data_done(int rc, const char *value, int len, const struct Stat *st, const void *data)
{
    (void)st;
    zev_t *e = ev_from_ctx(data, rc);
    if (rc == ZOK && value != NULL && len > 0)
        e->value = strndup(value, (size_t)len);
    push(e);
}

/* ---- loop-thread side -------------------------------------------------- */

static void ev_free(zev_t *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->list[i]);
    free(e->list);
    free(e->path);
    free(e->value);
    free(e);
}

static void set_session_state(const char *s)
{
    snprintf(sup.session_state, sizeof(sup.session_state), "%s", s);
    metric_inc(metric_labels(m_session, "state=\"%s\"", s));
}

static int64_t node_seq(const char *name)
{
    size_t n = strlen(name);
    if (n < 10)
        return -1;
    return strtoll(name + n - 10, NULL, 10);
}

static void node_data(buf_t *b)
{
    json_t *d = json_pack("{s:s, s:s, s:s, s:i}", "instance", sup.cfg->service.instance, "relay",
                          sup.cfg->relay.advertise[0] ? sup.cfg->relay.advertise : sup.cfg->relay.listen,
                          "admin", sup.cfg->admin.listen, "pid", (int)getpid());
    char *s = json_dumps(d, JSON_COMPACT);
    buf_puts(b, s);
    free(s);
    json_decref(d);
}

static void request_children(void)
{
    int rc = zoo_aget_children(zh, election_path, 0, on_children_done, ctx_new(EV_CHILDREN, NULL));
    if (rc != ZOK)
        log_warn("zookeeper get_children failed", "err=%s", log_q(zerror(rc)));
}

/* [zookeeper] auth: digest credentials for the session, and the nodes we
 * create are then creator-only (ZOO_CREATOR_ALL_ACL): a client without the
 * same credentials can neither read, create under, change nor delete the
 * election. Nodes that already exist keep their ACL. */
static struct ACL_vector *zk_acl(void)
{
    return sup.cfg->zookeeper.auth[0] != '\0' ? &ZOO_CREATOR_ALL_ACL : &ZOO_OPEN_ACL_UNSAFE;
}

/* Queued before any other request of the session, so every create runs
 * authenticated; the client library repeats it on each reconnect. */
static void zk_add_auth(void)
{
    const char *a = sup.cfg->zookeeper.auth;
    if (a[0] == '\0')
        return;
    int rc = zoo_add_auth(zh, "digest", a, (int)strlen(a), NULL, NULL);
    if (rc != ZOK)
        log_error("zookeeper add_auth failed", "scheme=digest err=%s", log_q(zerror(rc)));
}

static void create_node(void)
{
    char path[1024];
    buf_t d;
    buf_init(&d);
    node_data(&d);
    snprintf(path, sizeof(path), "%s/%s", election_path, node_prefix);
    creating = 1;
    int rc = zoo_acreate(zh, path, d.data, (int)d.len, zk_acl(), ZOO_EPHEMERAL_SEQUENTIAL, on_string_done,
                         ctx_new(EV_CREATED, path));
    if (rc != ZOK) {
        creating = 0;
        log_warn("zookeeper create failed", "err=%s", log_q(zerror(rc)));
    }
    buf_free(&d);
}

static void ensure_parents(void)
{
    char p[512];
    const char *parts[3];
    snprintf(p, sizeof(p), "%s", sup.cfg->zookeeper.root);
    /* Create each ancestor in order; the session runs requests in order, so
     * the last completion means all exist. */
    char *acc = calloc(1, 1024);
    const char *s = election_path + 1;
    (void)parts;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash ? (size_t)(slash - election_path) : strlen(election_path);
        memcpy(acc, election_path, len);
        acc[len] = '\0';
        zoo_acreate(zh, acc, "", 0, zk_acl(), ZOO_PERSISTENT, on_string_done,
                    ctx_new(slash ? EV_PARENTS + 100 : EV_PARENTS, acc));
        if (!slash)
            break;
        s = slash + 1;
    }
    free(acc);
}

static int cmp_seq(const void *a, const void *b)
{
    int64_t x = node_seq(*(char *const *)a), y = node_seq(*(char *const *)b);
    return x < y ? -1 : x > y;
}

static void on_children(zev_t *e)
{
    if (e->rc != ZOK) {
        log_warn("zookeeper children read failed", "err=%s", log_q(zerror(e->rc)));
        if (e->rc == ZNONODE)
            ensure_parents();
        return;
    }
    qsort(e->list, (size_t)e->n, sizeof(char *), cmp_seq);
    int mine = -1;
    for (int i = 0; i < e->n; i++)
        if (strncmp(e->list[i], node_prefix, strlen(node_prefix)) == 0)
            mine = i;
    if (mine < 0) {
        my_seq = -1;
        my_node[0] = '\0';
        if (sup.role == ROLE_LEADER) {
            log_warn("our election node is gone: stepping down", LOG_NOFIELDS);
            sup_become_follower("", "");
        }
        if (!creating && !resigned)
            create_node();
        return;
    }
    snprintf(my_node, sizeof(my_node), "%s/%s", election_path, e->list[mine]);
    my_seq = node_seq(e->list[mine]);
    if (mine == 0) {
        if (sup.role != ROLE_LEADER || sup.zk_seq != my_seq)
            log_info("election won", "node=%s epoch_base=%lld", log_q(my_node), (long long)my_seq);
        sup_become_leader(my_seq);
        return;
    }
    char pred[1024], lead[1024];
    snprintf(pred, sizeof(pred), "%s/%s", election_path, e->list[mine - 1]);
    snprintf(lead, sizeof(lead), "%s/%s", election_path, e->list[0]);
    if (sup.role == ROLE_LEADER) {
        log_warn("a lower node exists: stepping down", "leader_node=%s", log_q(lead));
        sup_become_follower("", "");
    }
    sup.zk_seq = node_seq(e->list[0]); /* the leader's, for /status */
    zoo_awexists(zh, pred, on_node_watch, (void *)(intptr_t)zgen, on_stat_done, ctx_new(EV_EXISTS, pred));
    if (mine - 1 != 0)
        zoo_awexists(zh, lead, on_node_watch, (void *)(intptr_t)zgen, on_stat_done, ctx_new(EV_EXISTS, lead));
    zoo_aget(zh, lead, 0, on_data_done, ctx_new(EV_DATA, lead));
}

/* A cheap read every sixth of the session timeout: its answer proves the
 * server heard from us, which is what its expiry clock counts from. */
static void on_ping_timer(uv_timer_t *t)
{
    (void)t;
    if (zh == NULL || !connected)
        return;
    int rc = zoo_aexists(zh, election_path, 0, on_stat_done, ctx_new(EV_PING, NULL));
    if (rc != ZOK)
        log_debug("zookeeper ping failed", "err=%s", log_q(zerror(rc)));
}

static int session_timeout_ms(void)
{
    int t = zh != NULL ? zoo_recv_timeout(zh) : 0;
    return t > 0 ? t : sup.cfg->zookeeper.session_timeout_ms;
}

static void on_suspend_timer(uv_timer_t *t)
{
    (void)t;
    if (connected || sup.role != ROLE_LEADER)
        return;
    log_warn("zookeeper unreachable: stopping ingest before our session could expire", LOG_NOFIELDS);
    sup_become_follower("", "");
}

static void session_start(void);

static void on_retry_timer(uv_timer_t *t)
{
    (void)t;
    session_start();
}

static void session_close(void)
{
    if (zh != NULL) {
        zookeeper_close(zh); /* loop thread: never from the client's thread */
        zh = NULL;
    }
    connected = 0;
    creating = 0;
    zgen++;
}

static void on_session(zev_t *e)
{
    if (e->type != ZOO_SESSION_EVENT)
        return;
    if (e->state == ZOO_CONNECTED_STATE) {
        connected = 1;
        last_contact_ms = uv_now(sup.loop);
        uv_timer_stop(&z_suspend_timer);
        uint64_t every = (uint64_t)session_timeout_ms() / 6;
        uv_timer_start(&z_ping_timer, on_ping_timer, every < 100 ? 100 : every, every < 100 ? 100 : every);
        log_info(ever_connected ? "zookeeper reconnected" : "zookeeper connected", "negotiated_timeout_ms=%d",
                 zoo_recv_timeout(zh));
        ever_connected = 1;
        set_session_state("connected");
        if (!resigned)
            ensure_parents();
    } else if (e->state == ZOO_CONNECTING_STATE) {
        if (connected)
            log_warn("zookeeper disconnected", LOG_NOFIELDS);
        connected = 0;
        set_session_state("disconnected");
        uv_timer_stop(&z_ping_timer);
        if (sup.role == ROLE_LEADER) {
            /* The server expires the session one timeout after it last heard
             * from us; we know a lower bound of that moment (our last answered
             * request). Stop ingesting a margin before it. */
            int64_t timeout = session_timeout_ms(), margin = timeout / 6 > 200 ? timeout / 6 : 200;
            int64_t left = (int64_t)last_contact_ms + timeout - margin - (int64_t)uv_now(sup.loop);
            log_warn("leader disconnected from zookeeper", "stop_ingest_in_ms=%lld timeout_ms=%lld",
                     (long long)(left > 0 ? left : 0), (long long)timeout);
            uv_timer_start(&z_suspend_timer, on_suspend_timer, (uint64_t)(left > 0 ? left : 0), 0);
        }
    } else if (e->state == ZOO_EXPIRED_SESSION_STATE || e->state == ZOO_AUTH_FAILED_STATE) {
        log_error("zookeeper session lost: stepping down and rejoining", "state=%s",
                  e->state == ZOO_EXPIRED_SESSION_STATE ? "expired" : "auth_failed");
        set_session_state("expired");
        if (sup.role == ROLE_LEADER)
            sup_become_follower("", "");
        my_node[0] = '\0';
        my_seq = -1;
        session_close();
        uv_timer_start(&z_retry_timer, on_retry_timer, 500, 0);
    }
}

static void epoch_on_get(zev_t *e);
static void epoch_on_multi(zev_t *e);

static void on_async(uv_async_t *a)
{
    (void)a;
    pthread_mutex_lock(&q_lock);
    zev_t *e = q_head;
    q_head = q_tail = NULL;
    pthread_mutex_unlock(&q_lock);
    while (e != NULL) {
        zev_t *next = e->next;
        if (e->gen == zgen && !stopping && e->kind != EV_SESSION && e->rc == ZOK)
            last_contact_ms = uv_now(sup.loop); /* any answer proves the server heard us */
        if (e->gen == zgen && !stopping) {
            metric_inc(metric_labels(m_events, "kind=\"%d\"", e->kind > 100 ? EV_PARENTS : e->kind));
            switch (e->kind) {
            case EV_SESSION: on_session(e); break;
            case EV_PING: break;
            case EV_WATCH: request_children(); break;
            case EV_PARENTS:
                if (e->rc != ZOK && e->rc != ZNODEEXISTS)
                    log_warn("zookeeper create parent failed", "path=%s err=%s", log_q(e->path),
                             log_q(zerror(e->rc)));
                request_children();
                break;
            case EV_CREATED:
                creating = 0;
                if (e->rc == ZOK)
                    log_info("election node created", "node=%s", log_q(e->value));
                else
                    log_warn("election node create failed", "err=%s", log_q(zerror(e->rc)));
                /* On connection loss the reply may be lost while the node
                 * exists: the next children read finds it by prefix. */
                if (e->rc == ZOK || e->rc == ZNONODE)
                    request_children();
                if (e->rc == ZNONODE)
                    ensure_parents();
                break;
            case EV_CHILDREN: on_children(e); break;
            case EV_EPOCH_GET: epoch_on_get(e); break;
            case EV_EPOCH_MULTI: epoch_on_multi(e); break;
            case EV_EXISTS:
                if (e->rc == ZNONODE)
                    request_children(); /* gone before we could watch it */
                break;
            case EV_DATA:
                if (e->rc == ZOK && e->value != NULL && sup.role != ROLE_LEADER) {
                    json_t *d = json_loads(e->value, 0, NULL);
                    const char *id = json_string_value(json_object_get(d, "instance"));
                    const char *relay = json_string_value(json_object_get(d, "relay"));
                    if (id != NULL && (strcmp(id, sup.leader_id) != 0 ||
                                       strcmp(relay ? relay : "", sup.leader_relay) != 0)) {
                        log_info("following", "leader=%s relay=%s", log_q(id), log_q(relay ? relay : ""));
                        sup_become_follower(id, relay);
                    }
                    json_decref(d);
                } else if (e->rc == ZNONODE) {
                    request_children();
                }
                break;
            default:
                if (e->kind > 100)
                    break; /* an intermediate parent */
                break;
            }
        }
        ev_free(e);
        e = next;
    }
}

static void session_start(void)
{
    zgen++;
    zh = zookeeper_init(sup.cfg->zookeeper.connect, on_session_event, sup.cfg->zookeeper.session_timeout_ms,
                        NULL, (void *)(intptr_t)zgen, 0);
    if (zh == NULL) {
        log_error_err(-errno, "zookeeper init failed, retrying", "connect=%s",
                      log_q(sup.cfg->zookeeper.connect));
        uv_timer_start(&z_retry_timer, on_retry_timer, 2000, 0);
        return;
    }
    zk_add_auth();
    set_session_state("connecting");
    log_info("zookeeper session starting", "connect=%s timeout_ms=%d auth=%s acl=%s",
             log_q(sup.cfg->zookeeper.connect), sup.cfg->zookeeper.session_timeout_ms,
             sup.cfg->zookeeper.auth[0] ? "digest" : "none",
             sup.cfg->zookeeper.auth[0] ? "creator_all" : "open");
}

int election_zk_start(void)
{
    char token[16];
    snprintf(election_path, sizeof(election_path), "%s/%s/election",
             strcmp(sup.cfg->zookeeper.root, "/") == 0 ? "" : sup.cfg->zookeeper.root,
             sup.cfg->service.cluster);
    snprintf(token, sizeof(token), "%08x", (unsigned)(getpid() ^ (unsigned)worker_now_ms()));
    /* Unique per process: finds our node again after a lost create reply. */
    snprintf(node_prefix, sizeof(node_prefix), "n_%s_%s_", sup.cfg->service.instance, token);
    for (char *p = node_prefix; *p; p++)
        if (*p == '/')
            *p = '_';
    m_events = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_zk_events_total",
                                  "ZooKeeper events handled on the loop, by kind.", NULL, 0);
    m_session = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_zk_session_transitions_total",
                                   "ZooKeeper session state changes.", NULL, 0);
    zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
    uv_async_init(sup.loop, &z_async, on_async);
    uv_timer_init(sup.loop, &z_suspend_timer);
    uv_timer_init(sup.loop, &z_retry_timer);
    uv_timer_init(sup.loop, &z_ping_timer);
    log_info("joining election", "path=%s", log_q(election_path));
    session_start();
    return 0;
}

void election_zk_resign(void)
{
    resigned = 1;
    if (zh != NULL && my_node[0] != '\0' && connected) {
        int rc = zoo_delete(zh, my_node, -1);
        log_info("resigned: election node deleted", "node=%s rc=%s", log_q(my_node), log_q(zerror(rc)));
    }
    my_node[0] = '\0';
    /* Closing the session also removes anything ephemeral left behind. */
    stopping = 1;
    session_close();
    uv_timer_stop(&z_suspend_timer);
    uv_timer_stop(&z_retry_timer);
    uv_timer_stop(&z_ping_timer);
    uv_close((uv_handle_t *)&z_ping_timer, NULL);
    uv_close((uv_handle_t *)&z_async, NULL);
    uv_close((uv_handle_t *)&z_suspend_timer, NULL);
    uv_close((uv_handle_t *)&z_retry_timer, NULL);
}

void election_zk_stop(void)
{
    if (!stopping)
        election_zk_resign();
}

/* ---- epoch allocation and lease bound ---------------------------------- */
/* ROOT/CLUSTER/epoch holds the last epoch the cluster allocated. The leader
 * allocates the next one per ingest start with one multi-op: check that its
 * election node exists (so only the leader can allocate) and set the node
 * at the version it read (so two allocations never return the same epoch).
 * A missing node (first start, or ZooKeeper's data was lost) starts from the
 * floor: the highest epoch seen in the data. */

static struct {
    election_epoch_cb cb;
    int64_t floor;
    int64_t next;
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    char path[560], node[1024], value[32];
} ea;

static void epoch_path(char *out, size_t n)
{
    /* election_path is ROOT/CLUSTER/election: the epoch node is its sibling. */
    snprintf(out, n, "%.*s/epoch", (int)(strrchr(election_path, '/') - election_path), election_path);
}

static void epoch_finish(int64_t r)
{
    election_epoch_cb cb = ea.cb;
    ea.cb = NULL;
    if (cb != NULL)
        cb(r);
}

/* Runs on the ZooKeeper client's thread. */
static void on_epoch_data_done(int rc, const char *value, int len, const struct Stat *st, const void *data)
{
    zev_t *e = ev_from_ctx(data, rc);
    if (rc == ZOK && value != NULL && len > 0)
        e->value = strndup(value, (size_t)len);
    e->version = st != NULL ? st->version : -1;
    push(e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_multi_done(int rc, const void *data)
{
    push(ev_from_ctx(data, rc));
}

static void epoch_request(void)
{
    int rc = zoo_aget(zh, ea.path, 0, on_epoch_data_done, ctx_new(EV_EPOCH_GET, NULL));
    if (rc != ZOK) {
        log_warn("zookeeper epoch read failed", "err=%s", zerror(rc));
        epoch_finish(-EAGAIN);
    }
}

static void epoch_on_get(zev_t *e)
{
    int64_t stored = 0;
    if (e->rc == ZOK) {
        if (epoch_parse(e->value, &stored) < 0) {
            log_error("zookeeper epoch node holds no epoch: refusing to allocate", "path=%s value=%s",
                      log_q(ea.path), log_q(e->value ? e->value : ""));
            epoch_finish(-EINVAL);
            return;
        }
    } else if (e->rc == ZNONODE) {
        log_warn("zookeeper epoch node missing (first start, or ZooKeeper lost its data): starting above the "
                 "highest epoch seen",
                 "path=%s floor=%lld", log_q(ea.path), (long long)ea.floor);
    } else {
        log_warn("zookeeper epoch read failed", "err=%s", zerror(e->rc));
        epoch_finish(-EAGAIN);
        return;
    }
    ea.next = epoch_next(stored, ea.floor);
    if (ea.next < 0) {
        log_error("epoch space exhausted", "stored=%lld floor=%lld", (long long)stored, (long long)ea.floor);
        epoch_finish(ea.next);
        return;
    }
    snprintf(ea.value, sizeof(ea.value), "%lld", (long long)ea.next);
    snprintf(ea.node, sizeof(ea.node), "%s", my_node);
    zoo_check_op_init(&ea.ops[0], ea.node, -1);
    if (e->rc == ZOK)
        zoo_set_op_init(&ea.ops[1], ea.path, ea.value, (int)strlen(ea.value), e->version, NULL);
    else
        zoo_create_op_init(&ea.ops[1], ea.path, ea.value, (int)strlen(ea.value), &ZOO_OPEN_ACL_UNSAFE,
                           ZOO_PERSISTENT, NULL, 0);
    int rc = zoo_amulti(zh, 2, ea.ops, ea.res, on_multi_done, ctx_new(EV_EPOCH_MULTI, NULL));
    if (rc != ZOK) {
        log_warn("zookeeper epoch write failed", "err=%s", zerror(rc));
        epoch_finish(-EAGAIN);
    }
}

static void epoch_on_multi(zev_t *e)
{
    if (e->rc == ZOK) {
        log_info("epoch allocated", "epoch=%lld node=%s", (long long)ea.next, log_q(ea.node));
        epoch_finish(ea.next);
    } else if (ea.res[0].err != ZOK && ea.res[0].err != ZRUNTIMEINCONSISTENCY) {
        log_warn("epoch not allocated: our election node is gone", "err=%s", zerror(ea.res[0].err));
        epoch_finish(-EPERM);
    } else if (ea.res[1].err == ZBADVERSION || ea.res[1].err == ZNODEEXISTS) {
        epoch_request(); /* another allocation won the race: read again */
    } else {
        log_warn("zookeeper epoch write failed", "err=%s", zerror(e->rc));
        epoch_finish(-EAGAIN);
    }
}

void election_zk_alloc_epoch(int64_t floor, election_epoch_cb cb)
{
    if (zh == NULL || !connected || my_node[0] == '\0' || ea.cb != NULL) {
        cb(ea.cb != NULL ? -EBUSY : -EAGAIN);
        return;
    }
    ea.cb = cb;
    ea.floor = floor;
    epoch_path(ea.path, sizeof(ea.path));
    epoch_request();
}

/* The server expires our session one timeout after it last heard from us;
 * last_contact_ms is a lower bound of that moment (the suspend timer uses
 * the same bound, so a short disconnection does not stop the ingest). */
int64_t election_zk_lease_bound_ms(void)
{
    if (zh == NULL || my_node[0] == '\0')
        return 0;
    int64_t timeout = session_timeout_ms(), margin = timeout / 6 > 200 ? timeout / 6 : 200;
    return (int64_t)last_contact_ms + timeout - margin - (int64_t)uv_now(sup.loop);
}
