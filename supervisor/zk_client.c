/* The election's ZooKeeper calls (election_zk_ops_t) over libzookeeper_mt.
 * The C client calls back on its own thread: every callback copies its reply
 * into an event and queues it for the loop (election_zk_push); the
 * election's state is touched only on the loop. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define THREADED 1 /* the synchronous API of libzookeeper_mt */
#include <zookeeper/zookeeper.h>

#include "election_zk.h"
#include "log.h"

/* One per session: the watcher context, freed once the session is closed. */
typedef struct {
    election_zk_t *ez;
    long gen;
} zk_session_t;

/* One per asynchronous request. */
typedef struct {
    election_zk_t *ez;
    int kind;
    long gen;
    char *path;
} zk_req_t;

/* The epoch transaction: the operations point into it until the reply. */
typedef struct {
    zk_req_t req;
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    char node[1024], path[560], value[32];
} zk_multi_t;

static zhandle_t *zh_of(election_zk_t *ez)
{
    return ez->handle;
}

/* An event lost to a failed allocation is like a lost reply: the ping, the
 * next session event or watch brings the election back. */
static ez_event_t *ev_new(int kind, long gen, int rc)
{
    ez_event_t *e = malloc(sizeof(*e));
    if (e != NULL)
        *e = (ez_event_t){.kind = kind, .gen = gen, .rc = rc};
    return e;
}

static zk_req_t *req_new(election_zk_t *ez, int kind, const char *path)
{
    zk_req_t *c = malloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    *c = (zk_req_t){.ez = ez, .kind = kind, .gen = ez->gen};
    if (path != NULL && (c->path = strdup(path)) == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

static void req_free(zk_req_t *c)
{
    if (c != NULL)
        free(c->path);
    free(c);
}

/* The request was sent (its reply frees c) or not (freed here). */
static int sent(zk_req_t *c, int rc)
{
    if (rc != ZOK)
        req_free(c);
    return rc;
}

/* Takes the request's path into the event; frees the request. */
static ez_event_t *ev_from_req(zk_req_t *c, int rc)
{
    ez_event_t *e = ev_new(c->kind, c->gen, rc);
    if (e != NULL) {
        e->path = c->path;
        c->path = NULL;
    }
    return e;
}

static void push_done(zk_req_t *c, ez_event_t *e)
{
    election_zk_t *ez = c->ez;
    req_free(c);
    if (e != NULL)
        election_zk_push(ez, e);
}

/* Runs on the ZooKeeper client's thread (session and node watches). */
static void on_watch(zhandle_t *h, int type, int state, const char *path, void *ctx)
{
    zk_session_t *s = ctx;
    (void)h;
    ez_event_t *e = ev_new(type == ZOO_SESSION_EVENT ? EZ_SESSION : EZ_WATCH, s->gen, 0);
    if (e == NULL)
        return;
    e->type = type;
    e->state = state;
    e->path = path ? strdup(path) : NULL;
    election_zk_push(s->ez, e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_string_done(int rc, const char *value, const void *data)
{
    zk_req_t *c = (zk_req_t *)data;
    ez_event_t *e = ev_from_req(c, rc);
    if (e != NULL)
        e->value = value ? strdup(value) : NULL;
    push_done(c, e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_children_done(int rc, const struct String_vector *sv, const void *data)
{
    zk_req_t *c = (zk_req_t *)data;
    ez_event_t *e = ev_from_req(c, rc);
    if (e != NULL && rc == ZOK && sv != NULL) {
        e->list = calloc((size_t)(sv->count > 0 ? sv->count : 1), sizeof(char *));
        if (e->list == NULL)
            e->rc = ZSYSTEMERROR;
        for (int i = 0; e->list != NULL && i < sv->count; i++)
            if ((e->list[e->n] = strdup(sv->data[i])) != NULL)
                e->n++;
        if (e->list != NULL && e->n < sv->count)
            e->rc = ZSYSTEMERROR; /* a partial list could elect the wrong node */
    }
    push_done(c, e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_stat_done(int rc, const struct Stat *st, const void *data)
{
    (void)st;
    zk_req_t *c = (zk_req_t *)data;
    push_done(c, ev_from_req(c, rc));
}

/* Runs on the ZooKeeper client's thread. */
static void on_data_done(int rc, const char *value, int len, const struct Stat *st, const void *data)
{
    zk_req_t *c = (zk_req_t *)data;
    ez_event_t *e = ev_from_req(c, rc);
    if (e != NULL) {
        if (rc == ZOK && value != NULL && len > 0)
            e->value = strndup(value, (size_t)len);
        e->version = st != NULL ? st->version : -1;
    }
    push_done(c, e);
}

/* Runs on the ZooKeeper client's thread. */
static void on_multi_done(int rc, const void *data)
{
    zk_multi_t *m = (zk_multi_t *)data;
    ez_event_t *e = ev_new(m->req.kind, m->req.gen, rc);
    election_zk_t *ez = m->req.ez;
    if (e != NULL) {
        e->op_err[0] = m->res[0].err;
        e->op_err[1] = m->res[1].err;
    }
    free(m);
    if (e != NULL)
        election_zk_push(ez, e);
}

static int zk_open(election_zk_t *ez)
{
    zk_session_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->ez = ez;
    s->gen = ez->gen;
    zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
    errno = 0;
    zhandle_t *zh = zookeeper_init(ez->connect, on_watch, ez->session_timeout_ms, NULL, s, 0);
    if (zh == NULL) {
        int r = errno ? -errno : -EINVAL;
        free(s);
        return r;
    }
    ez->handle = zh;
    ez->handle_ctx = s;
    /* Queued before any other request of the session, so every create runs
     * authenticated; the client library repeats it on each reconnect. */
    if (ez->auth[0] != '\0') {
        int rc = zoo_add_auth(zh, "digest", ez->auth, (int)strlen(ez->auth), NULL, NULL);
        if (rc != ZOK)
            log_error("zookeeper add_auth failed", "scheme=digest err=%s", log_q(zerror(rc)));
    }
    return 0;
}

static void zk_close(election_zk_t *ez)
{
    zookeeper_close(zh_of(ez)); /* outstanding completions run before it returns */
    free(ez->handle_ctx);
    ez->handle = NULL;
    ez->handle_ctx = NULL;
}

static int zk_recv_timeout(election_zk_t *ez)
{
    return zoo_recv_timeout(zh_of(ez));
}

/* [zookeeper] auth: the nodes we create are then creator-only
 * (ZOO_CREATOR_ALL_ACL): a client without the same credentials can neither
 * read, create under, change nor delete the election. Nodes that already
 * exist keep their ACL. */
static struct ACL_vector *zk_acl(election_zk_t *ez)
{
    return ez->auth[0] != '\0' ? &ZOO_CREATOR_ALL_ACL : &ZOO_OPEN_ACL_UNSAFE;
}

static int zk_create(election_zk_t *ez, int kind, const char *path, const char *data, int len,
                     int ephemeral_seq)
{
    zk_req_t *c = req_new(ez, kind, path);
    return c == NULL ? ZSYSTEMERROR
                     : sent(c, zoo_acreate(zh_of(ez), path, data, len, zk_acl(ez),
                                           ephemeral_seq ? ZOO_EPHEMERAL_SEQUENTIAL : ZOO_PERSISTENT,
                                           on_string_done, c));
}

static int zk_get_children(election_zk_t *ez, int kind, const char *path)
{
    zk_req_t *c = req_new(ez, kind, NULL);
    return c == NULL ? ZSYSTEMERROR : sent(c, zoo_aget_children(zh_of(ez), path, 0, on_children_done, c));
}

static int zk_exists(election_zk_t *ez, int kind, const char *path, int watch)
{
    zk_req_t *c = req_new(ez, kind, watch ? path : NULL);
    return c == NULL
               ? ZSYSTEMERROR
               : sent(c, watch ? zoo_awexists(zh_of(ez), path, on_watch, ez->handle_ctx, on_stat_done, c)
                               : zoo_aexists(zh_of(ez), path, 0, on_stat_done, c));
}

static int zk_get(election_zk_t *ez, int kind, const char *path)
{
    zk_req_t *c = req_new(ez, kind, kind == EZ_DATA ? path : NULL);
    return c == NULL ? ZSYSTEMERROR : sent(c, zoo_aget(zh_of(ez), path, 0, on_data_done, c));
}

static int zk_del(election_zk_t *ez, const char *path)
{
    return zoo_delete(zh_of(ez), path, -1);
}

static int zk_epoch_multi(election_zk_t *ez, int kind, const char *node, const char *path, const char *value,
                          int version)
{
    zk_multi_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return ZSYSTEMERROR;
    m->req.ez = ez;
    m->req.kind = kind;
    m->req.gen = ez->gen;
    snprintf(m->node, sizeof(m->node), "%s", node);
    snprintf(m->path, sizeof(m->path), "%s", path);
    snprintf(m->value, sizeof(m->value), "%s", value);
    zoo_check_op_init(&m->ops[0], m->node, -1);
    if (version >= 0)
        zoo_set_op_init(&m->ops[1], m->path, m->value, (int)strlen(m->value), version, NULL);
    else
        zoo_create_op_init(&m->ops[1], m->path, m->value, (int)strlen(m->value), &ZOO_OPEN_ACL_UNSAFE,
                           ZOO_PERSISTENT, NULL, 0);
    int rc = zoo_amulti(zh_of(ez), 2, m->ops, m->res, on_multi_done, m);
    if (rc != ZOK)
        free(m);
    return rc;
}

const election_zk_ops_t election_zk_real_ops = {
    .open = zk_open,
    .close = zk_close,
    .recv_timeout = zk_recv_timeout,
    .create = zk_create,
    .get_children = zk_get_children,
    .exists = zk_exists,
    .get = zk_get,
    .del = zk_del,
    .epoch_multi = zk_epoch_multi,
    .err = zerror,
};
