/* The ZooKeeper election's state machine (supervisor/election_zk.c) driven
 * by fake events: a fake ops table records the requests it would send, the
 * test answers them through election_zk_on_event, a fake policy records the
 * decisions. Timers (stop deadline, rejoin) run on a real loop, waited for
 * with a deadline. */
#include "unit.h"

#include "loop_wait.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define THREADED 1
#include <zookeeper/zookeeper.h>

#include "election_zk.h"

#define PATH "/exchange-service/c1/election"
#define ME "n_a_tok_"

typedef struct {
    int kind, watch, version;
    char path[256], value[64];
} req_t;

typedef struct {
    uv_loop_t loop;
    metrics_registry_t *reg;
    election_zk_t ez;
    req_t reqs[256];
    int nreq, opens, closes, deletes, timeout_ms;
    /* the fake policy */
    int leading, leads, follows, stepdowns;
    int64_t zk_seq;
    char leader_id[64], relay[64], session[32];
} fx_t;

static fx_t *fx_of(election_zk_t *ez)
{
    return (fx_t *)((char *)ez - offsetof(fx_t, ez));
}

static int record(election_zk_t *ez, int kind, const char *path, const char *value, int watch, int version)
{
    fx_t *fx = fx_of(ez);
    if (kind == EZ_PING)
        return ZOK; /* every sixth of the timeout: not part of the script */
    assert_true(fx->nreq < 256);
    req_t *r = &fx->reqs[fx->nreq++];
    r->kind = kind;
    r->watch = watch;
    r->version = version;
    snprintf(r->path, sizeof r->path, "%s", path);
    snprintf(r->value, sizeof r->value, "%s", value ? value : "");
    return ZOK;
}

static int f_open(election_zk_t *ez)
{
    fx_of(ez)->opens++;
    ez->handle = ez; /* any non-NULL session */
    return 0;
}

static void f_close(election_zk_t *ez)
{
    fx_of(ez)->closes++;
    ez->handle = NULL;
}

static int f_recv_timeout(election_zk_t *ez)
{
    return fx_of(ez)->timeout_ms;
}

static int f_create(election_zk_t *ez, int kind, const char *path, const char *data, int len, int eseq)
{
    (void)len;
    return record(ez, kind, path, data, eseq, 0);
}

static int f_get_children(election_zk_t *ez, int kind, const char *path)
{
    return record(ez, kind, path, NULL, 0, 0);
}

static int f_exists(election_zk_t *ez, int kind, const char *path, int watch)
{
    return record(ez, kind, path, NULL, watch, 0);
}

static int f_get(election_zk_t *ez, int kind, const char *path)
{
    return record(ez, kind, path, NULL, 0, 0);
}

static int f_del(election_zk_t *ez, const char *path)
{
    fx_of(ez)->deletes++;
    return record(ez, 0, path, NULL, 0, 0);
}

static int f_multi(election_zk_t *ez, int kind, const char *node, const char *path, const char *value,
                   int version)
{
    (void)node;
    return record(ez, kind, path, value, 0, version);
}

static const char *f_err(int rc)
{
    return rc == ZOK ? "ok" : "error";
}

static const election_zk_ops_t fake_ops = {f_open,   f_close, f_recv_timeout, f_create, f_get_children,
                                           f_exists, f_get,   f_del,          f_multi,  f_err};

static void p_lead(void *arg, int64_t seq)
{
    fx_t *fx = arg;
    fx->leading = 1;
    fx->zk_seq = seq;
    fx->leads++;
    snprintf(fx->leader_id, sizeof fx->leader_id, "a");
}

static void p_follow(void *arg, const char *id, const char *relay)
{
    fx_t *fx = arg;
    fx->stepdowns += fx->leading;
    fx->leading = 0;
    fx->follows++;
    snprintf(fx->leader_id, sizeof fx->leader_id, "%s", id ? id : "");
    snprintf(fx->relay, sizeof fx->relay, "%s", relay ? relay : "");
}

static void p_leader_seq(void *arg, int64_t seq)
{
    ((fx_t *)arg)->zk_seq = seq;
}

static void p_session(void *arg, const char *state)
{
    fx_t *fx = arg;
    snprintf(fx->session, sizeof fx->session, "%s", state);
}

static void p_view(void *arg, election_view_t *v)
{
    fx_t *fx = arg;
    v->leading = fx->leading;
    v->zk_seq = fx->zk_seq;
    v->leader_id = fx->leader_id;
    v->leader_relay = fx->relay;
}

static const election_policy_t fake_policy = {p_lead, p_follow, p_leader_seq, p_session, p_view};

static fx_t *fx_new(void)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->timeout_ms = 600;
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    fx->reg = metrics_registry_new();
    election_zk_cfg_t cfg = {"127.0.0.1:2181",
                             "/exchange-service",
                             "c1",
                             "a",
                             "",
                             600,
                             "{\"instance\":\"a\",\"relay\":\"a:8091\"}"};
    assert_int_equal(election_zk_init(&fx->ez, &fx->loop, fx->reg, &cfg, "tok", &fake_ops, &fake_policy, fx),
                     0);
    assert_int_equal(fx->opens, 1);
    assert_string_equal(fx->session, "connecting");
    return fx;
}

static void fx_free(fx_t *fx)
{
    election_zk_resign(&fx->ez);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0); /* every handle closed */
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    metrics_registry_free(fx->reg);
    free(fx);
}

/* ---- events ------------------------------------------------------------- */

static void session(fx_t *fx, int state)
{
    ez_event_t e = {.kind = EZ_SESSION, .gen = fx->ez.gen, .type = ZOO_SESSION_EVENT, .state = state};
    election_zk_on_event(&fx->ez, &e);
}

static void reply(fx_t *fx, int kind, int rc, const char *value)
{
    ez_event_t e = {.kind = kind, .gen = fx->ez.gen, .rc = rc, .value = (char *)value};
    election_zk_on_event(&fx->ez, &e);
}

/* The election's children (names without the path), in any order. */
static void children(fx_t *fx, const char *a, const char *b, const char *c)
{
    char *list[3] = {(char *)a, (char *)b, (char *)c};
    ez_event_t e = {.kind = EZ_CHILDREN, .gen = fx->ez.gen, .rc = ZOK, .list = list};
    e.n = c ? 3 : b ? 2 : a ? 1 : 0;
    election_zk_on_event(&fx->ez, &e);
}

static const req_t *last(fx_t *fx)
{
    assert_true(fx->nreq > 0);
    return &fx->reqs[fx->nreq - 1];
}

static int count(fx_t *fx, int kind)
{
    int n = 0;
    for (int i = 0; i < fx->nreq; i++)
        n += fx->reqs[i].kind == kind;
    return n;
}

/* Connected, the election path exists: the children are read. */
static void connect_and_read(fx_t *fx)
{
    session(fx, ZOO_CONNECTED_STATE);
    assert_string_equal(fx->session, "connected");
    assert_int_equal(last(fx)->kind, EZ_PARENTS);
    assert_string_equal(last(fx)->path, PATH);
    reply(fx, EZ_PARENTS, ZNODEEXISTS, NULL);
    assert_int_equal(last(fx)->kind, EZ_CHILDREN);
}

/* Our node is created with sequence 7 and is the lowest: we lead. */
static void become_leader(fx_t *fx)
{
    connect_and_read(fx);
    children(fx, "n_b_x_0000000009", NULL, NULL);
    assert_int_equal(last(fx)->kind, EZ_CREATED);
    assert_string_equal(last(fx)->path, PATH "/" ME);
    assert_true(last(fx)->watch); /* ephemeral sequential */
    reply(fx, EZ_CREATED, ZOK, PATH "/" ME "0000000007");
    assert_int_equal(last(fx)->kind, EZ_CHILDREN);
    children(fx, "n_b_x_0000000009", ME "0000000007", NULL);
    assert_int_equal(fx->leads, 1);
    assert_true(fx->leading);
    assert_int_equal(fx->zk_seq, 7);
}

/* Runs the loop until *counter reaches n or ms pass; returns whether it did. */
static int run_until(fx_t *fx, const int *counter, int n, uint64_t ms)
{
    return loop_wait(&fx->loop, counter, n, ms);
}

static int64_t epoch_result;
static int epoch_calls;

static void on_epoch(void *arg, int64_t e)
{
    assert_non_null(arg); /* the policy's */
    epoch_result = e;
    epoch_calls++;
}

/* ---- tests -------------------------------------------------------------- */

static void test_connected_wins_and_allocates_epoch(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    become_leader(fx);
    assert_true(election_zk_lease_bound_ms(&fx->ez) > 0);
    /* Epoch: read the node, then check our node + set at the version read. */
    epoch_calls = 0;
    election_zk_alloc_epoch(&fx->ez, 50, on_epoch);
    assert_int_equal(last(fx)->kind, EZ_EPOCH_GET);
    assert_string_equal(last(fx)->path, "/exchange-service/c1/epoch");
    election_zk_alloc_epoch(&fx->ez, 50, on_epoch); /* one at a time */
    assert_int_equal(epoch_calls, 1);
    assert_int_equal(epoch_result, -EBUSY);
    ez_event_t get = {.kind = EZ_EPOCH_GET, .gen = fx->ez.gen, .rc = ZOK, .value = "41", .version = 3};
    election_zk_on_event(&fx->ez, &get);
    assert_int_equal(last(fx)->kind, EZ_EPOCH_MULTI);
    assert_string_equal(last(fx)->value, "51"); /* above the floor */
    assert_int_equal(last(fx)->version, 3);
    reply(fx, EZ_EPOCH_MULTI, ZOK, NULL);
    assert_int_equal(epoch_calls, 2);
    assert_int_equal(epoch_result, 51);
    fx_free(fx);
}

/* A leader whose connection just dropped: the stop deadline is running. */
static fx_t *disconnected_leader(void)
{
    fx_t *fx = fx_new();
    become_leader(fx);
    session(fx, ZOO_CONNECTING_STATE);
    assert_string_equal(fx->session, "disconnected");
    assert_true(fx->leading); /* not at once: the session may come back */
    assert_true(uv_is_active((uv_handle_t *)&fx->ez.suspend_timer));
    return fx;
}

static void test_disconnected_leader_stops_before_expiry(void **state)
{
    (void)state;
    fx_t *fx = disconnected_leader();
    /* timeout 600 ms, margin 200 ms: at most 400 ms after the last answer. */
    uint64_t due = uv_timer_get_due_in(&fx->ez.suspend_timer);
    assert_true(due > 0 && due <= 400);
    uint64_t t0 = uv_now(&fx->loop);
    assert_true(run_until(fx, &fx->stepdowns, 1, 5000));
    assert_true(uv_now(&fx->loop) - t0 >= due);
    assert_false(fx->leading);
    fx_free(fx);
}

static void test_reconnect_before_deadline_keeps_leading(void **state)
{
    (void)state;
    fx_t *fx = disconnected_leader();
    session(fx, ZOO_CONNECTED_STATE);
    assert_false(uv_is_active((uv_handle_t *)&fx->ez.suspend_timer));
    assert_false(run_until(fx, &fx->stepdowns, 1, 600)); /* past the deadline */
    assert_true(fx->leading);
    fx_free(fx);
}

static void test_expired_steps_down_and_rejoins(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    become_leader(fx);
    long gen = fx->ez.gen;
    session(fx, ZOO_EXPIRED_SESSION_STATE);
    assert_string_equal(fx->session, "expired");
    assert_int_equal(fx->stepdowns, 1);
    assert_int_equal(fx->closes, 1);
    assert_int_equal(election_zk_lease_bound_ms(&fx->ez), 0);
    /* A late reply of the old session changes nothing. */
    char *list[1] = {ME "0000000007"};
    ez_event_t old = {.kind = EZ_CHILDREN, .gen = gen, .rc = ZOK, .list = list, .n = 1};
    election_zk_on_event(&fx->ez, &old);
    assert_int_equal(fx->leads, 1);
    /* A new session after the retry delay. */
    assert_true(run_until(fx, &fx->opens, 2, 5000));
    assert_string_equal(fx->session, "connecting");
    assert_true(fx->ez.gen > gen);
    fx_free(fx);
}

static void test_lost_create_reply_finds_own_node(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    connect_and_read(fx);
    children(fx, NULL, NULL, NULL);
    assert_int_equal(last(fx)->kind, EZ_CREATED);
    int n = fx->nreq;
    reply(fx, EZ_CREATED, ZCONNECTIONLOSS, NULL); /* the node may exist */
    assert_int_equal(fx->nreq, n);
    session(fx, ZOO_CONNECTING_STATE);
    connect_and_read(fx);
    children(fx, "n_b_0000000003", ME "0000000004", NULL);
    assert_int_equal(count(fx, EZ_CREATED), 1); /* found by prefix, not created twice */
    assert_false(fx->leading);
    assert_int_equal(fx->zk_seq, 3); /* the leader's */
    assert_int_equal(last(fx)->kind, EZ_DATA);
    assert_string_equal(last(fx)->path, PATH "/n_b_0000000003");
    assert_int_equal(fx->reqs[fx->nreq - 2].kind, EZ_EXISTS);
    assert_true(fx->reqs[fx->nreq - 2].watch);
    reply(fx, EZ_DATA, ZOK, "{\"instance\":\"b\",\"relay\":\"b:8091\"}");
    assert_string_equal(fx->leader_id, "b");
    assert_string_equal(fx->relay, "b:8091");
    int follows = fx->follows;
    reply(fx, EZ_DATA, ZOK, "{\"instance\":\"b\",\"relay\":\"b:8091\"}"); /* unchanged: no news */
    assert_int_equal(fx->follows, follows);
    fx_free(fx);
}

static void test_predecessor_deleted_then_leads(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    connect_and_read(fx);
    children(fx, ME "0000000006", "n_c_0000000005", "n_b_0000000003");
    /* Watches the predecessor (c) and the leader (b), reads the leader's data. */
    assert_int_equal(fx->reqs[fx->nreq - 3].kind, EZ_EXISTS);
    assert_string_equal(fx->reqs[fx->nreq - 3].path, PATH "/n_c_0000000005");
    assert_string_equal(fx->reqs[fx->nreq - 2].path, PATH "/n_b_0000000003");
    ez_event_t watch = {.kind = EZ_WATCH, .gen = fx->ez.gen, .type = ZOO_DELETED_EVENT};
    election_zk_on_event(&fx->ez, &watch); /* c is gone */
    assert_int_equal(last(fx)->kind, EZ_CHILDREN);
    children(fx, "n_b_0000000003", ME "0000000006", NULL);
    assert_int_equal(fx->leads, 0);
    /* b is the predecessor and the leader: one watch. */
    assert_int_equal(fx->reqs[fx->nreq - 2].kind, EZ_EXISTS);
    assert_int_equal(fx->reqs[fx->nreq - 3].kind, EZ_CHILDREN);
    reply(fx, EZ_EXISTS, ZNONODE, NULL); /* gone before the watch was set */
    assert_int_equal(last(fx)->kind, EZ_CHILDREN);
    children(fx, ME "0000000006", NULL, NULL);
    assert_int_equal(fx->leads, 1);
    assert_int_equal(fx->zk_seq, 6);
    fx_free(fx);
}

static void test_own_node_gone_steps_down_and_recreates(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    become_leader(fx);
    int creates = count(fx, EZ_CREATED);
    children(fx, "n_b_x_0000000009", NULL, NULL);
    assert_int_equal(fx->stepdowns, 1);
    assert_int_equal(count(fx, EZ_CREATED), creates + 1);
    fx_free(fx);
}

static void test_resign_deletes_node_and_ignores_events(void **state)
{
    (void)state;
    fx_t *fx = fx_new();
    become_leader(fx);
    election_zk_resign(&fx->ez);
    assert_int_equal(fx->deletes, 1);
    assert_string_equal(last(fx)->path, PATH "/" ME "0000000007");
    assert_int_equal(fx->closes, 1);
    int n = fx->nreq;
    session(fx, ZOO_CONNECTED_STATE);
    assert_int_equal(fx->nreq, n);
    fx_free(fx); /* a second resign is a no-op */
}

UNIT_MAIN(cmocka_unit_test(test_connected_wins_and_allocates_epoch),
          cmocka_unit_test(test_disconnected_leader_stops_before_expiry),
          cmocka_unit_test(test_reconnect_before_deadline_keeps_leading),
          cmocka_unit_test(test_expired_steps_down_and_rejoins),
          cmocka_unit_test(test_lost_create_reply_finds_own_node),
          cmocka_unit_test(test_predecessor_deleted_then_leads),
          cmocka_unit_test(test_own_node_gone_steps_down_and_recreates),
          cmocka_unit_test(test_resign_deletes_node_and_ignores_events))
