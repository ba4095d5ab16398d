/* ZooKeeper leader election (DESIGN.md "Leadership"): an ephemeral
 * sequential node under ROOT/CLUSTER/election/ per instance; the lowest
 * leads and its sequence is the epoch; each follower watches only its
 * predecessor (plus the leader's node, to learn the relay address). The state
 * lives in election_zk_t and moves only on events (election_zk_on_event);
 * the ZooKeeper calls are behind ops (zk_client.c), the decisions go to the
 * policy (election.c). */
#include "election_zk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define THREADED 1 /* the synchronous API of libzookeeper_mt */
#include <zookeeper/zookeeper.h>

#include "epoch.h"
#include "log.h"

/* ---- completion-thread side: hand over --------------------------------- */

/* Runs on the ZooKeeper client's thread. */
void election_zk_push(election_zk_t *ez, ez_event_t *e)
{
    pthread_mutex_lock(&ez->q_lock);
    if (ez->q_tail)
        ez->q_tail->next = e;
    else
        ez->q_head = e;
    ez->q_tail = e;
    pthread_mutex_unlock(&ez->q_lock);
    uv_async_send(&ez->async);
}

static void ev_free(ez_event_t *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->list[i]);
    free(e->list);
    free(e->path);
    free(e->value);
    free(e);
}

/* ---- loop-thread side -------------------------------------------------- */

static election_view_t view(election_zk_t *ez)
{
    election_view_t v = {0, 0, "", ""};
    if (ez->policy.view != NULL)
        ez->policy.view(ez->arg, &v);
    return v;
}

static void lead(election_zk_t *ez, int64_t seq)
{
    if (ez->policy.lead != NULL)
        ez->policy.lead(ez->arg, seq);
}

static void follow(election_zk_t *ez, const char *id, const char *relay)
{
    if (ez->policy.follow != NULL)
        ez->policy.follow(ez->arg, id, relay);
}

static void set_session_state(election_zk_t *ez, const char *s)
{
    if (ez->policy.session != NULL)
        ez->policy.session(ez->arg, s);
    metric_inc(metric_labels(ez->m_session, "state=\"%s\"", s));
}

static int64_t node_seq(const char *name)
{
    size_t n = strlen(name);
    if (n < 10)
        return -1;
    return strtoll(name + n - 10, NULL, 10);
}

static void request_children(election_zk_t *ez)
{
    int rc = ez->ops->get_children(ez, EZ_CHILDREN, ez->election_path);
    if (rc != ZOK)
        log_warn("zookeeper get_children failed", "err=%s", log_q(ez->ops->err(rc)));
}

static void create_node(election_zk_t *ez)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", ez->election_path, ez->node_prefix);
    ez->creating = 1;
    int rc = ez->ops->create(ez, EZ_CREATED, path, ez->node_data, (int)strlen(ez->node_data), 1);
    if (rc != ZOK) {
        ez->creating = 0;
        log_warn("zookeeper create failed", "err=%s", log_q(ez->ops->err(rc)));
    }
}

/* Create each ancestor in order; the session runs requests in order, so the
 * last completion (EZ_PARENTS) means all exist. */
static void ensure_parents(election_zk_t *ez)
{
    char acc[sizeof(ez->election_path)];
    const char *s = ez->election_path + 1;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash ? (size_t)(slash - ez->election_path) : strlen(ez->election_path);
        memcpy(acc, ez->election_path, len);
        acc[len] = '\0';
        (void)ez->ops->create(ez, slash ? EZ_PARENT_MID : EZ_PARENTS, acc, "", 0, 0);
        if (!slash)
            break;
        s = slash + 1;
    }
}

static int cmp_seq(const void *a, const void *b)
{
    int64_t x = node_seq(*(char *const *)a), y = node_seq(*(char *const *)b);
    return x < y ? -1 : x > y;
}

static void on_children(election_zk_t *ez, const ez_event_t *e)
{
    if (e->rc != ZOK) {
        log_warn("zookeeper children read failed", "err=%s", log_q(ez->ops->err(e->rc)));
        if (e->rc == ZNONODE)
            ensure_parents(ez);
        return;
    }
    char **list = calloc((size_t)(e->n > 0 ? e->n : 1), sizeof(char *));
    if (list == NULL) {
        log_error_err(-ENOMEM, "cannot sort the election's children", LOG_NOFIELDS);
        return;
    }
    memcpy(list, e->list, (size_t)e->n * sizeof(char *));
    qsort(list, (size_t)e->n, sizeof(char *), cmp_seq);
    election_view_t v = view(ez);
    int mine = -1;
    for (int i = 0; i < e->n; i++)
        if (strncmp(list[i], ez->node_prefix, strlen(ez->node_prefix)) == 0)
            mine = i;
    if (mine < 0) {
        ez->my_seq = -1;
        ez->my_node[0] = '\0';
        if (v.leading) {
            log_warn("our election node is gone: stepping down", LOG_NOFIELDS);
            follow(ez, "", "");
        }
        if (!ez->creating && !ez->resigned)
            create_node(ez);
        goto out;
    }
    snprintf(ez->my_node, sizeof(ez->my_node), "%s/%s", ez->election_path, list[mine]);
    ez->my_seq = node_seq(list[mine]);
    if (mine == 0) {
        if (!v.leading || v.zk_seq != ez->my_seq)
            log_info("election won", "node=%s epoch_base=%lld", log_q(ez->my_node), (long long)ez->my_seq);
        lead(ez, ez->my_seq);
        goto out;
    }
    char pred[1024], leader[1024];
    snprintf(pred, sizeof(pred), "%s/%s", ez->election_path, list[mine - 1]);
    snprintf(leader, sizeof(leader), "%s/%s", ez->election_path, list[0]);
    if (v.leading) {
        log_warn("a lower node exists: stepping down", "leader_node=%s", log_q(leader));
        follow(ez, "", "");
    }
    if (ez->policy.leader_seq != NULL)
        ez->policy.leader_seq(ez->arg, node_seq(list[0]));
    (void)ez->ops->exists(ez, EZ_EXISTS, pred, 1);
    if (mine - 1 != 0)
        (void)ez->ops->exists(ez, EZ_EXISTS, leader, 1);
    (void)ez->ops->get(ez, EZ_DATA, leader);
out:
    free(list);
}

/* The leader node's data says who leads and where its relay listens. */
static void on_leader_data(election_zk_t *ez, const ez_event_t *e)
{
    election_view_t v = view(ez);
    if (e->rc == ZOK && e->value != NULL && !v.leading) {
        json_t *d = json_loads(e->value, 0, NULL);
        const char *id = json_string_value(json_object_get(d, "instance"));
        const char *relay = json_string_value(json_object_get(d, "relay"));
        if (id != NULL && (strcmp(id, v.leader_id) != 0 || strcmp(relay ? relay : "", v.leader_relay) != 0)) {
            log_info("following", "leader=%s relay=%s", log_q(id), log_q(relay ? relay : ""));
            follow(ez, id, relay);
        }
        json_decref(d);
    } else if (e->rc == ZNONODE) {
        request_children(ez);
    }
}

/* A cheap read every sixth of the session timeout: its answer proves the
 * server heard from us, which is what its expiry clock counts from. */
static void on_ping_timer(uv_timer_t *t)
{
    election_zk_t *ez = t->data;
    if (ez->handle == NULL || !ez->connected)
        return;
    int rc = ez->ops->exists(ez, EZ_PING, ez->election_path, 0);
    if (rc != ZOK)
        log_debug("zookeeper ping failed", "err=%s", log_q(ez->ops->err(rc)));
}

static int session_timeout_ms(election_zk_t *ez)
{
    int t = ez->handle != NULL ? ez->ops->recv_timeout(ez) : 0;
    return t > 0 ? t : ez->session_timeout_ms;
}

/* The server expires the session one timeout after it last heard from us;
 * last_contact_ms is a lower bound of that moment. A margin before it. */
static int64_t certain_for_ms(election_zk_t *ez)
{
    int64_t timeout = session_timeout_ms(ez), margin = timeout / 6 > 200 ? timeout / 6 : 200;
    return (int64_t)ez->last_contact_ms + timeout - margin - (int64_t)uv_now(ez->loop);
}

static void on_suspend_timer(uv_timer_t *t)
{
    election_zk_t *ez = t->data;
    if (ez->connected || !view(ez).leading)
        return;
    log_warn("zookeeper unreachable: stopping ingest before our session could expire", LOG_NOFIELDS);
    follow(ez, "", "");
}

static void session_start(election_zk_t *ez);

static void on_retry_timer(uv_timer_t *t)
{
    session_start(t->data);
}

static void session_close(election_zk_t *ez)
{
    if (ez->handle != NULL)
        ez->ops->close(ez); /* loop thread: never from the client's thread */
    ez->handle = NULL;
    ez->connected = 0;
    ez->creating = 0;
    ez->gen++;
}

static void on_session(election_zk_t *ez, const ez_event_t *e)
{
    if (e->type != ZOO_SESSION_EVENT)
        return;
    if (e->state == ZOO_CONNECTED_STATE) {
        ez->connected = 1;
        ez->last_contact_ms = uv_now(ez->loop);
        uv_timer_stop(&ez->suspend_timer);
        uint64_t every = (uint64_t)session_timeout_ms(ez) / 6;
        uv_timer_start(&ez->ping_timer, on_ping_timer, every < 100 ? 100 : every, every < 100 ? 100 : every);
        log_info(ez->ever_connected ? "zookeeper reconnected" : "zookeeper connected",
                 "negotiated_timeout_ms=%d", ez->ops->recv_timeout(ez));
        ez->ever_connected = 1;
        set_session_state(ez, "connected");
        if (!ez->resigned)
            ensure_parents(ez);
    } else if (e->state == ZOO_CONNECTING_STATE) {
        if (ez->connected)
            log_warn("zookeeper disconnected", LOG_NOFIELDS);
        ez->connected = 0;
        set_session_state(ez, "disconnected");
        uv_timer_stop(&ez->ping_timer);
        if (view(ez).leading) {
            /* Stop ingesting a margin before the server could expire us. */
            int64_t left = certain_for_ms(ez);
            log_warn("leader disconnected from zookeeper", "stop_ingest_in_ms=%lld timeout_ms=%lld",
                     (long long)(left > 0 ? left : 0), (long long)session_timeout_ms(ez));
            uv_timer_start(&ez->suspend_timer, on_suspend_timer, (uint64_t)(left > 0 ? left : 0), 0);
        }
    } else if (e->state == ZOO_EXPIRED_SESSION_STATE || e->state == ZOO_AUTH_FAILED_STATE) {
        log_error("zookeeper session lost: stepping down and rejoining", "state=%s",
                  e->state == ZOO_EXPIRED_SESSION_STATE ? "expired" : "auth_failed");
        set_session_state(ez, "expired");
        if (view(ez).leading)
            follow(ez, "", "");
        ez->my_node[0] = '\0';
        ez->my_seq = -1;
        session_close(ez);
        uv_timer_start(&ez->retry_timer, on_retry_timer, 500, 0);
    }
}

static void epoch_on_get(election_zk_t *ez, const ez_event_t *e);
static void epoch_on_multi(election_zk_t *ez, const ez_event_t *e);

void election_zk_on_event(election_zk_t *ez, const ez_event_t *e)
{
    if (e->gen != ez->gen || ez->stopping)
        return;
    if (e->kind != EZ_SESSION && e->rc == ZOK)
        ez->last_contact_ms = uv_now(ez->loop); /* any answer proves the server heard us */
    metric_inc(metric_labels(ez->m_events, "kind=\"%d\"", e->kind == EZ_PARENT_MID ? EZ_PARENTS : e->kind));
    switch (e->kind) {
    case EZ_SESSION: on_session(ez, e); break;
    case EZ_WATCH: request_children(ez); break;
    case EZ_PARENTS:
        if (e->rc != ZOK && e->rc != ZNODEEXISTS)
            log_warn("zookeeper create parent failed", "path=%s err=%s", log_q(e->path ? e->path : ""),
                     log_q(ez->ops->err(e->rc)));
        request_children(ez);
        break;
    case EZ_CREATED:
        ez->creating = 0;
        if (e->rc == ZOK)
            log_info("election node created", "node=%s", log_q(e->value ? e->value : ""));
        else
            log_warn("election node create failed", "err=%s", log_q(ez->ops->err(e->rc)));
        /* On connection loss the reply may be lost while the node exists:
         * the next children read finds it by prefix. */
        if (e->rc == ZOK || e->rc == ZNONODE)
            request_children(ez);
        if (e->rc == ZNONODE)
            ensure_parents(ez);
        break;
    case EZ_CHILDREN: on_children(ez, e); break;
    case EZ_EPOCH_GET: epoch_on_get(ez, e); break;
    case EZ_EPOCH_MULTI: epoch_on_multi(ez, e); break;
    case EZ_EXISTS:
        if (e->rc == ZNONODE)
            request_children(ez); /* gone before we could watch it */
        break;
    case EZ_DATA: on_leader_data(ez, e); break;
    default: break; /* EZ_PING, EZ_PARENT_MID: the answer is all */
    }
}

/* Takes what the completion thread queued; handle: 0 frees it unread. */
static void drain_queue(election_zk_t *ez, int handle)
{
    pthread_mutex_lock(&ez->q_lock);
    ez_event_t *e = ez->q_head;
    ez->q_head = ez->q_tail = NULL;
    pthread_mutex_unlock(&ez->q_lock);
    while (e != NULL) {
        ez_event_t *next = e->next;
        if (handle)
            election_zk_on_event(ez, e);
        ev_free(e);
        e = next;
    }
}

static void on_async(uv_async_t *a)
{
    drain_queue(a->data, 1);
}

static void session_start(election_zk_t *ez)
{
    int r;
    ez->gen++;
    if ((r = ez->ops->open(ez)) < 0) {
        log_error_err(r, "zookeeper init failed, retrying", "connect=%s", log_q(ez->connect));
        uv_timer_start(&ez->retry_timer, on_retry_timer, 2000, 0);
        return;
    }
    set_session_state(ez, "connecting");
    log_info("zookeeper session starting", "connect=%s timeout_ms=%d auth=%s acl=%s", log_q(ez->connect),
             ez->session_timeout_ms, ez->auth[0] ? "digest" : "none", ez->auth[0] ? "creator_all" : "open");
}

int election_zk_init(election_zk_t *ez, uv_loop_t *loop, metrics_registry_t *reg,
                     const election_zk_cfg_t *cfg, const char *token, const election_zk_ops_t *ops,
                     const election_policy_t *policy, void *arg)
{
    memset(ez, 0, sizeof(*ez));
    ez->loop = loop;
    ez->ops = ops;
    ez->policy = *policy;
    ez->arg = arg;
    ez->my_seq = -1;
    snprintf(ez->connect, sizeof(ez->connect), "%s", cfg->connect);
    snprintf(ez->auth, sizeof(ez->auth), "%s", cfg->auth);
    snprintf(ez->node_data, sizeof(ez->node_data), "%s", cfg->node_data);
    ez->session_timeout_ms = cfg->session_timeout_ms;
    snprintf(ez->election_path, sizeof(ez->election_path), "%s/%s/election",
             strcmp(cfg->root, "/") == 0 ? "" : cfg->root, cfg->cluster);
    /* Unique per process: finds our node again after a lost create reply. */
    snprintf(ez->node_prefix, sizeof(ez->node_prefix), "n_%s_%s_", cfg->instance, token);
    for (char *p = ez->node_prefix; *p; p++)
        if (*p == '/')
            *p = '_';
    ez->m_events = metrics_reg_family(reg, METRIC_COUNTER, "exchange_zk_events_total",
                                      "ZooKeeper events handled on the loop, by kind.", NULL, 0);
    ez->m_session = metrics_reg_family(reg, METRIC_COUNTER, "exchange_zk_session_transitions_total",
                                       "ZooKeeper session state changes.", NULL, 0);
    pthread_mutex_init(&ez->q_lock, NULL);
    uv_async_init(loop, &ez->async, on_async);
    uv_timer_init(loop, &ez->suspend_timer);
    uv_timer_init(loop, &ez->retry_timer);
    uv_timer_init(loop, &ez->ping_timer);
    ez->async.data = ez->suspend_timer.data = ez->retry_timer.data = ez->ping_timer.data = ez;
    log_info("joining election", "path=%s", log_q(ez->election_path));
    session_start(ez);
    return 0;
}

void election_zk_resign(election_zk_t *ez)
{
    if (ez->stopping)
        return;
    ez->resigned = 1;
    if (ez->handle != NULL && ez->my_node[0] != '\0' && ez->connected) {
        int rc = ez->ops->del(ez, ez->my_node);
        log_info("resigned: election node deleted", "node=%s rc=%s", log_q(ez->my_node),
                 log_q(ez->ops->err(rc)));
    }
    ez->my_node[0] = '\0';
    /* Closing the session also removes anything ephemeral left behind. */
    ez->stopping = 1;
    session_close(ez);
    uv_timer_stop(&ez->suspend_timer);
    uv_timer_stop(&ez->retry_timer);
    uv_timer_stop(&ez->ping_timer);
    uv_close((uv_handle_t *)&ez->ping_timer, NULL);
    uv_close((uv_handle_t *)&ez->async, NULL);
    uv_close((uv_handle_t *)&ez->suspend_timer, NULL);
    uv_close((uv_handle_t *)&ez->retry_timer, NULL);
    drain_queue(ez, 0); /* anything the completion thread queued meanwhile */
}

/* ---- epoch allocation and lease bound ---------------------------------- */
/* ROOT/CLUSTER/epoch holds the last epoch the cluster allocated. The leader
 * allocates the next one per ingest start with one multi-op: check that its
 * election node exists (so only the leader can allocate) and set the node
 * at the version it read (so two allocations never return the same epoch).
 * A missing node (first start, or ZooKeeper's data was lost) starts from the
 * floor: the highest epoch seen in the data. */

static void epoch_finish(election_zk_t *ez, int64_t r)
{
    election_epoch_cb cb = ez->ea.cb;
    ez->ea.cb = NULL;
    if (cb != NULL)
        cb(ez->arg, r);
}

static void epoch_request(election_zk_t *ez)
{
    int rc = ez->ops->get(ez, EZ_EPOCH_GET, ez->ea.path);
    if (rc != ZOK) {
        log_warn("zookeeper epoch read failed", "err=%s", ez->ops->err(rc));
        epoch_finish(ez, -EAGAIN);
    }
}

static void epoch_on_get(election_zk_t *ez, const ez_event_t *e)
{
    int64_t stored = 0;
    if (e->rc == ZOK) {
        if (epoch_parse(e->value, &stored) < 0) {
            log_error("zookeeper epoch node holds no epoch: refusing to allocate", "path=%s value=%s",
                      log_q(ez->ea.path), log_q(e->value ? e->value : ""));
            epoch_finish(ez, -EINVAL);
            return;
        }
    } else if (e->rc == ZNONODE) {
        log_warn("zookeeper epoch node missing (first start, or ZooKeeper lost its data): starting above the "
                 "highest epoch seen",
                 "path=%s floor=%lld", log_q(ez->ea.path), (long long)ez->ea.floor);
    } else {
        log_warn("zookeeper epoch read failed", "err=%s", ez->ops->err(e->rc));
        epoch_finish(ez, -EAGAIN);
        return;
    }
    ez->ea.next = epoch_next(stored, ez->ea.floor);
    if (ez->ea.next < 0) {
        log_error("epoch space exhausted", "stored=%lld floor=%lld", (long long)stored,
                  (long long)ez->ea.floor);
        epoch_finish(ez, ez->ea.next);
        return;
    }
    snprintf(ez->ea.value, sizeof(ez->ea.value), "%lld", (long long)ez->ea.next);
    snprintf(ez->ea.node, sizeof(ez->ea.node), "%s", ez->my_node);
    int rc = ez->ops->epoch_multi(ez, EZ_EPOCH_MULTI, ez->ea.node, ez->ea.path, ez->ea.value,
                                  e->rc == ZOK ? e->version : -1);
    if (rc != ZOK) {
        log_warn("zookeeper epoch write failed", "err=%s", ez->ops->err(rc));
        epoch_finish(ez, -EAGAIN);
    }
}

static void epoch_on_multi(election_zk_t *ez, const ez_event_t *e)
{
    if (e->rc == ZOK) {
        log_info("epoch allocated", "epoch=%lld node=%s", (long long)ez->ea.next, log_q(ez->ea.node));
        epoch_finish(ez, ez->ea.next);
    } else if (e->op_err[0] != ZOK && e->op_err[0] != ZRUNTIMEINCONSISTENCY) {
        log_warn("epoch not allocated: our election node is gone", "err=%s", ez->ops->err(e->op_err[0]));
        epoch_finish(ez, -EPERM);
    } else if (e->op_err[1] == ZBADVERSION || e->op_err[1] == ZNODEEXISTS) {
        epoch_request(ez); /* another allocation won the race: read again */
    } else {
        log_warn("zookeeper epoch write failed", "err=%s", ez->ops->err(e->rc));
        epoch_finish(ez, -EAGAIN);
    }
}

void election_zk_alloc_epoch(election_zk_t *ez, int64_t floor, election_epoch_cb cb)
{
    if (ez->handle == NULL || !ez->connected || ez->my_node[0] == '\0' || ez->ea.cb != NULL) {
        cb(ez->arg, ez->ea.cb != NULL ? -EBUSY : -EAGAIN);
        return;
    }
    ez->ea.cb = cb;
    ez->ea.floor = floor;
    /* election_path is ROOT/CLUSTER/election: the epoch node is its sibling. */
    snprintf(ez->ea.path, sizeof(ez->ea.path), "%.*s/epoch",
             (int)(strrchr(ez->election_path, '/') - ez->election_path), ez->election_path);
    epoch_request(ez);
}

/* How long our leadership is certain (the suspend timer uses the same bound,
 * so a short disconnection does not stop the ingest). */
int64_t election_zk_lease_bound_ms(election_zk_t *ez)
{
    if (ez->handle == NULL || ez->my_node[0] == '\0')
        return 0;
    return certain_for_ms(ez);
}
