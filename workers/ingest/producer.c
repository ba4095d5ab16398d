/* Kafka producer for the ingest worker: configuration mapping, produce with
 * key and epoch header, delivery-report metrics, topic creation through the
 * Admin API, and bounded flush on drain. All librdkafka callbacks run on the
 * loop thread because rd_kafka_poll() is only called from poll_timer. */
#include "producer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>

#include "backoff.h"
#include "log.h"
#include "metrics.h"
#include "rbuf.h"

#define TOPIC_RETRY_MS 5000
#define PRODUCER_REJECTED_MAX 64
#define ADMIN_TIMEOUT_MS 10000
/* Between rebuilds of a failed transactional client (backoff with jitter). */
#define REBUILD_BASE_MS 200
#define REBUILD_MAX_MS 5000

/* One message kept by the transactional producer until its transaction is
 * committed: an aborted transaction is produced again, in order, from these.
 * The value is the caller's buffer, referenced (never copied): librdkafka is
 * handed its bytes without RD_KAFKA_MSG_F_COPY, and the reference held here
 * keeps them alive until the transaction is over and every delivery report
 * is served. Produced again after an abort or a rebuild: the same bytes. */
typedef struct txmsg_s {
    struct txmsg_s *next;
    int64_t epoch;
    uint64_t t0; /* uv_hrtime()/1000 at producer_send */
    uint64_t id; /* the delivery report's opaque (transactional mode) */
    rbuf_t *val; /* one reference, dropped by txmsg_free */
    size_t klen;
    char key[];
} txmsg_t;

typedef struct {
    txmsg_t *head, *tail;
    int n;
} txlist_t;

/* Transaction states. Only INIT, COMMIT and ABORT have a blocking librdkafka
 * call running on a libuv work thread; the loop thread never blocks.
 * REBUILD: the failed client is destroyed on a work thread (rd_kafka_destroy
 * may block), then a new one is created after a backoff and goes to INIT. */
typedef enum { TX_OFF = 0, TX_INIT, TX_IDLE, TX_OPEN, TX_COMMIT, TX_ABORT, TX_DEAD, TX_REBUILD } tx_state_t;

/* A blocking librdkafka call on a libuv work thread. op TX_OFF with warm:
 * the metadata warm-up alone (not transactional). */
typedef struct {
    uv_work_t req;
    producer_t *p;
    rd_kafka_t *rk;
    tx_state_t op;
    rd_kafka_error_t *error; /* result, NULL: success */
    /* warm-up first (warm_topic_metadata): what it found */
    int warm;
    rd_kafka_resp_err_t warm_err;
    int partitions, replicas; /* -1: not found */
    char topic[];
} txwork_t;

struct producer_s {
    uv_loop_t *loop;
    const cfg_t *cfg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *admin_q;
    rd_kafka_queue_t *main_q; /* delivery reports (events), errors, logs */
    int wake_fd[2];           /* librdkafka writes to [1] when main_q gets an event */
    uv_poll_t wake;
    uv_timer_t poll_timer;
    int topic_ready;         /* created or found existing */
    uint64_t topic_retry_at; /* uv_now() of the next CreateTopics attempt, 0: pending */
    int fatal;               /* set by error_cb: rebuild the client (or stop, transactional) */
    int brokers_down;        /* for logging the transition once */
    /* transactions */
    tx_state_t tx;
    txlist_t txn;     /* produced in the open transaction, in order */
    txlist_t pending; /* waiting for the next transaction, in order */
    uv_timer_t commit_timer, retry_timer;
    int work_busy;        /* a txwork_t is in flight: destroy must wait for it */
    int destroyed;        /* producer_destroy ran: the memory goes when the last handle closed */
    int stopping;         /* producer_abort: no new transaction */
    int retry_delay;      /* ms, doubles on retriable errors */
    uint64_t lease_until; /* uv_hrtime()/1e6 after which nothing is produced; 0: no lease */
    uint64_t next_id;
    /* Messages the broker refused for good (too large, invalid): never
     * produced again after the abort, or the transaction would fail forever. */
    uint64_t rejected[PRODUCER_REJECTED_MAX];
    int nrejected;
    void (*fatal_cb)(void *arg, int fenced);
    void *fatal_arg;
    void (*ready_cb)(void *arg);
    void *ready_arg;
    int ready;                 /* transactions initialised once (or not transactional) */
    backoff_t rebuild_backoff; /* between client rebuilds; reset by a commit */
    uint64_t rebuild_delay;    /* ms, of the rebuild under way */
    void (*abort_done)(void *arg);
    void *abort_arg;
    int found_partitions; /* of the topic at start (metadata warm-up), -1 unknown */
    int found_replicas;
    int warm_next;          /* a new client: the next work item warms its metadata first */
    int warming;            /* a warm-up is running on a work thread */
    const char *exists_how; /* "kafka topic exists" waits for the warm-up's figures */
    /* drain */
    void (*drain_done)(void *arg, int remaining);
    void *drain_arg;
    uint64_t drain_deadline;
    /* metrics */
    metric_t *m_produced, *m_failed, *m_dropped, *m_dropped_full, *m_queue, *m_latency;
    metric_t *m_txn, *m_rebuilds;
    int closed; /* handles closed so far (4: memory may go) */
};

static void set_prop(rd_kafka_conf_t *conf, const char *k, const char *v, int *bad)
{
    char errstr[256];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        log_error("kafka property rejected", "key=%s value=%s err=%s", k, log_q(v), log_q(errstr));
        *bad = 1;
    }
}

static void set_prop_int(rd_kafka_conf_t *conf, const char *k, long v, int *bad)
{
    char s[32];
    snprintf(s, sizeof(s), "%ld", v);
    set_prop(conf, k, s, bad);
}

static int nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* Per-message errors that no retry can fix. */
static int rejected_for_good(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || err == RD_KAFKA_RESP_ERR_INVALID_MSG ||
           err == RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE || err == RD_KAFKA_RESP_ERR_INVALID_RECORD ||
           err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE || err == RD_KAFKA_RESP_ERR__INVALID_ARG;
}

/* The topic is there (CreateTopics said so, or a message was delivered to
 * it): say once what was found. Used as it is: a partition count is only
 * ever raised by an operator (it moves keys between partitions). */
static void say_topic_exists(producer_t *p, const char *how)
{
    if (p->found_partitions <= 0) /* not in the metadata at start: nothing to compare */
        log_info("kafka topic exists", "topic=%s how=%s", log_q(p->cfg->kafka.topic), how);
    else if (p->found_partitions != p->cfg->kafka.partitions)
        log_warn("kafka topic exists with another partition count, used as it is",
                 "topic=%s partitions=%d replication=%d configured_partitions=%d how=%s",
                 log_q(p->cfg->kafka.topic), p->found_partitions, p->found_replicas, p->cfg->kafka.partitions,
                 how);
    else
        log_info("kafka topic exists", "topic=%s partitions=%d replication=%d how=%s",
                 log_q(p->cfg->kafka.topic), p->found_partitions, p->found_replicas, how);
}

static void note_topic_exists(producer_t *p, const char *how)
{
    if (p->topic_ready)
        return;
    p->topic_ready = 1;
    if (p->warming) /* said once the warm-up's figures are in (warm_done) */
        p->exists_how = how;
    else
        say_topic_exists(p, how);
}

/* Runs on the loop thread: delivery reports are events on main_q, served
 * only by serve_main_queue (rd_kafka_flush inside commit_transaction, on a
 * work thread, then waits for them instead of serving them). */
static void on_delivery(producer_t *p, const rd_kafka_message_t *m)
{
    if (p->tx == TX_OFF) /* librdkafka is done with the bytes: drop its reference */
        rbuf_unref(m->_private);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        metric_inc(p->m_produced);
        if (!p->topic_ready) {
            /* A delivery proves the topic exists (a cluster may refuse
             * CreateTopics to this client): stop retrying. */
            note_topic_exists(p, "delivery");
        }
        if (p->tx != TX_OFF)
            return; /* latency is observed at commit: what read-committed consumers wait */
        int64_t us = rd_kafka_message_latency(m); /* since producev */
        if (us >= 0)
            metric_observe(p->m_latency, (double)us / 1e6);
        return;
    }
    metric_inc(metric_labels(p->m_failed, "error=\"%s\"", rd_kafka_err2name(m->err)));
    if (p->tx != TX_OFF && rejected_for_good(m->err)) {
        log_error("kafka refused a message for good: it is not produced again", "err=%s bytes=%zu",
                  rd_kafka_err2name(m->err), m->len);
        if (p->nrejected < PRODUCER_REJECTED_MAX)
            p->rejected[p->nrejected++] = (uint64_t)(uintptr_t)m->_private;
    }
    log_debug("kafka delivery failed", "err=%s", rd_kafka_err2name(m->err));
}

/* Runs on the loop thread: log.queue is on and the log queue is the main
 * queue, served by serve_main_queue. librdkafka's own lines become ours. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    /* FAIL lines repeat what error_cb reports: keep them out of warn. */
    if (level <= 3 && strcmp(fac, "FAIL") != 0)
        log_warn("librdkafka", "fac=%s detail=%s", log_q(fac), log_q(buf));
    else if (level <= 6)
        log_info("librdkafka", "fac=%s detail=%s", log_q(fac), log_q(buf));
    else
        log_debug("librdkafka", "fac=%s detail=%s", log_q(fac), log_q(buf));
}

/* Runs on the loop thread (served by serve_main_queue). */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    producer_t *p = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));
        log_error(p->tx != TX_OFF ? "kafka fatal error: the transactional client is rebuilt unless deposed"
                                  : "kafka fatal error, producer will be rebuilt",
                  "err=%s reason=%s", rd_kafka_err2name(orig), log_q(buf));
        p->fatal = 1;
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (!p->brokers_down)
            log_warn("kafka: all brokers down", "reason=%s", log_q(reason));
        p->brokers_down = 1;
        return;
    }
    /* Transport errors repeat on every reconnect attempt: debug once down. */
    int transport = err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE;
    if (p->brokers_down && transport)
        log_debug("kafka error", "err=%s reason=%s", rd_kafka_err2name(err), log_q(reason));
    else
        log_warn("kafka error", "err=%s reason=%s", rd_kafka_err2name(err), log_q(reason));
    /* A transactional producer's brokers going down often raise no
     * ALL_BROKERS_DOWN (measured: none while a transaction is being set up,
     * nor for a single broker lost with transactions running, librdkafka's
     * transaction coordinator handle not counting as down): still note the
     * outage, so its end is logged ("delivering again"). */
    if (transport && p->tx != TX_OFF)
        p->brokers_down = 1;
}

/* librdkafka learns a new topic's partitions only on its 1 s topic scan, so
 * the first messages of a fresh producer wait up to a second (measured: 0.7-
 * 1.0 s). After a failover that second is on every client's clock: fetch the
 * topic's metadata now. Runs on a libuv work thread (it blocks up to 1 s, no
 * feed waits for it), once per client: the first work item of a new client
 * (make_client sets warm_next) does it before its own call. With Kafka down
 * it gives up and the normal path retries. Notes what it found of an
 * existing topic (partitions, replicas) for the "kafka topic exists" line. */
static void warm_topic_metadata(txwork_t *w)
{
    const struct rd_kafka_metadata *md = NULL;
    w->partitions = w->replicas = -1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(w->rk, w->topic, NULL);
    if (rkt == NULL)
        return;
    w->warm_err = rd_kafka_metadata(w->rk, 0, rkt, &md, 1000);
    if (w->warm_err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < md->topic_cnt; i++) {
            const rd_kafka_metadata_topic_t *t = &md->topics[i];
            if (strcmp(t->topic, w->topic) != 0 || t->err != RD_KAFKA_RESP_ERR_NO_ERROR ||
                t->partition_cnt <= 0)
                continue;
            w->partitions = t->partition_cnt;
            w->replicas = t->partitions[0].replica_cnt;
        }
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
}

/* Loop thread: the warm-up's result. */
static void warm_done(producer_t *p, const txwork_t *w)
{
    p->warming = 0;
    p->found_partitions = w->partitions;
    p->found_replicas = w->replicas;
    if (w->warm_err != RD_KAFKA_RESP_ERR_NO_ERROR)
        log_warn("kafka metadata warm-up failed", "topic=%s err=%s", log_q(w->topic),
                 rd_kafka_err2name(w->warm_err));
    if (p->exists_how != NULL) {
        say_topic_exists(p, p->exists_how);
        p->exists_how = NULL;
    }
}

/* A new client: its first work item warms the topic's metadata. */
static rd_kafka_t *make_client(producer_t *p)
{
    const cfg_t *c = p->cfg;
    char errstr[512], id[160];
    int bad = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    set_prop(conf, "bootstrap.servers", c->kafka.brokers, &bad);
    snprintf(id, sizeof(id), "exchange-ingest-%s", nonempty(c->service.instance) ? c->service.instance : "0");
    set_prop(conf, "client.id", id, &bad);
    set_prop(conf, "enable.idempotence", "true", &bad);
    set_prop(conf, "acks", "all", &bad);
    set_prop_int(conf, "linger.ms", c->kafka.linger_ms, &bad);
    set_prop_int(conf, "queue.buffering.max.messages",
                 c->kafka.buffer_messages > 0 ? c->kafka.buffer_messages : 100000, &bad);
    if (c->kafka.transactions) {
        char tid[300];
        cfg_transactional_id(c, tid, sizeof(tid));
        set_prop(conf, "transactional.id", tid, &bad);
        /* An open transaction of a dead leader holds read-committed consumers
         * back until the next leader's init_transactions aborts it, or this. */
        set_prop_int(conf, "transaction.timeout.ms", PRODUCER_TXN_TIMEOUT_MS, &bad);
        set_prop_int(conf, "message.timeout.ms", PRODUCER_TXN_TIMEOUT_MS, &bad);
    } else {
        set_prop_int(conf, "message.timeout.ms", PRODUCER_MESSAGE_TIMEOUT_MS, &bad);
    }
    set_prop(conf, "compression.type", "lz4", &bad);
    set_prop(conf, "socket.keepalive.enable", "true", &bad);
    set_prop(conf, "log.queue", "true", &bad);
    /* librdkafka's default backoff cap (10 s) would keep a recovered broker
     * unused for seconds after an outage; a few brokers can take 1/s. */
    set_prop(conf, "reconnect.backoff.ms", "100", &bad);
    set_prop(conf, "reconnect.backoff.max.ms", "1000", &bad);
    if (nonempty(c->kafka.security_protocol))
        set_prop(conf, "security.protocol", c->kafka.security_protocol, &bad);
    /* SASL keys have defaults; they only mean something with a SASL_* protocol. */
    if (nonempty(c->kafka.security_protocol) && strncasecmp(c->kafka.security_protocol, "SASL", 4) == 0) {
        if (nonempty(c->kafka.sasl_mechanism))
            set_prop(conf, "sasl.mechanism", c->kafka.sasl_mechanism, &bad);
        if (nonempty(c->kafka.sasl_username))
            set_prop(conf, "sasl.username", c->kafka.sasl_username, &bad);
        if (nonempty(c->kafka.sasl_password))
            set_prop(conf, "sasl.password", c->kafka.sasl_password, &bad);
    }
    if (nonempty(c->kafka.ssl_ca))
        set_prop(conf, "ssl.ca.location", c->kafka.ssl_ca, &bad);
    if (bad) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, p);
    /* Delivery reports as events: commit_transaction's internal flush (on a
     * work thread) must not run our callbacks; the loop thread serves them. */
    rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        log_error("kafka producer creation failed", "err=%s", log_q(errstr));
        rd_kafka_conf_destroy(conf); /* still ours when rd_kafka_new fails */
        return NULL;
    }
    rd_kafka_set_log_queue(rk, NULL); /* NULL: the main queue, served by serve_main_queue */
    p->warm_next = 1;
    return rk;
}

static void create_topic(producer_t *p)
{
    char errstr[256];
    int partitions = p->cfg->kafka.partitions > 0 ? p->cfg->kafka.partitions : 1;
    int repl = p->cfg->kafka.replication > 0 ? p->cfg->kafka.replication : -1;
    rd_kafka_NewTopic_t *nt =
        rd_kafka_NewTopic_new(p->cfg->kafka.topic, partitions, repl, errstr, sizeof(errstr));
    if (nt == NULL) {
        log_error("kafka topic spec rejected", "topic=%s err=%s", log_q(p->cfg->kafka.topic), log_q(errstr));
        p->topic_ready = 1; /* nothing we can do; producing will report the errors */
        return;
    }
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(p->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, ADMIN_TIMEOUT_MS, errstr, sizeof(errstr));
    rd_kafka_AdminOptions_set_operation_timeout(opts, ADMIN_TIMEOUT_MS, errstr, sizeof(errstr));
    rd_kafka_CreateTopics(p->rk, &nt, 1, opts, p->admin_q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    p->topic_retry_at = 0;
}

static void handle_admin_event(producer_t *p, rd_kafka_event_t *ev)
{
    if (rd_kafka_event_type(ev) != RD_KAFKA_EVENT_CREATETOPICS_RESULT)
        return;
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    const char *why = rd_kafka_event_error_string(ev);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        size_t n = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        for (size_t i = 0; i < n; i++) {
            err = rd_kafka_topic_result_error(res[i]);
            why = rd_kafka_topic_result_error_string(res[i]);
        }
    }
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        log_info("kafka topic created", "topic=%s partitions=%d replication=%d", log_q(p->cfg->kafka.topic),
                 p->cfg->kafka.partitions, p->cfg->kafka.replication);
        p->topic_ready = 1;
    } else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        note_topic_exists(p, "create");
    } else {
        if (p->topic_ready)
            return; /* a delivery already showed the topic is there */
        log_warn("kafka topic creation failed, will retry", "topic=%s err=%s detail=%s",
                 log_q(p->cfg->kafka.topic), rd_kafka_err2name(err), log_q(why ? why : ""));
        p->topic_retry_at = uv_now(p->loop) + TOPIC_RETRY_MS;
    }
}

static int count_remaining(producer_t *p, const char *what)
{
    /* Transactional: what librdkafka holds is txn (referenced). */
    int n = p->tx != TX_OFF ? p->txn.n + p->pending.n : rd_kafka_outq_len(p->rk);
    if (n > 0)
        log_warn("kafka messages not delivered", "when=%s remaining=%d", what, n);
    return n;
}

/* ---- main queue: delivery reports, errors, logs (loop thread) ---------- */

static void serve_main_queue(producer_t *p)
{
    rd_kafka_event_t *ev;
    while (p->main_q != NULL && (ev = rd_kafka_queue_poll(p->main_q, 0)) != NULL) {
        const rd_kafka_message_t *m;
        const char *fac, *text;
        int level;
        switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_DR:
            while ((m = rd_kafka_event_message_next(ev)) != NULL)
                on_delivery(p, m);
            break;
        case RD_KAFKA_EVENT_ERROR:
            on_error(p->rk, rd_kafka_event_error(ev), rd_kafka_event_error_string(ev), p);
            break;
        case RD_KAFKA_EVENT_LOG:
            if (rd_kafka_event_log(ev, &fac, &text, &level) == 0)
                on_log(p->rk, level, fac, text);
            break;
        default: break;
        }
        rd_kafka_event_destroy(ev);
    }
}

/* Runs on the loop thread: librdkafka wrote to wake_fd[1] because main_q
 * went from empty to non-empty. */
static void on_wake(uv_poll_t *h, int status, int events)
{
    producer_t *p = h->data;
    char junk[64];
    (void)status;
    (void)events;
    while (read(p->wake_fd[0], junk, sizeof(junk)) > 0) {
    }
    serve_main_queue(p);
}

static void attach_client(producer_t *p)
{
    p->admin_q = rd_kafka_queue_new(p->rk);
    p->main_q = rd_kafka_queue_get_main(p->rk);
    rd_kafka_queue_io_event_enable(p->main_q, p->wake_fd[1], "1", 1);
}

static void detach_client(producer_t *p)
{
    if (p->main_q != NULL) {
        rd_kafka_queue_io_event_enable(p->main_q, -1, NULL, 0);
        serve_main_queue(p);
        rd_kafka_queue_destroy(p->main_q);
    }
    if (p->admin_q != NULL)
        rd_kafka_queue_destroy(p->admin_q);
    p->main_q = p->admin_q = NULL;
}

static void tx_work(uv_work_t *req);
static void tx_work_done(uv_work_t *req, int status);

/* Queues op (TX_OFF: nothing but the warm-up) on a libuv work thread for
 * rk; the first work item of a new client warms its metadata first.
 * p->work_busy until tx_work_done. */
static int start_work(producer_t *p, tx_state_t op, rd_kafka_t *rk)
{
    int warm = p->warm_next && op != TX_REBUILD;
    size_t tlen = warm ? strlen(p->cfg->kafka.topic) : 0;
    txwork_t *w = calloc(1, sizeof(*w) + tlen + 1);
    if (w == NULL)
        abort();
    w->p = p;
    w->rk = rk;
    w->op = op;
    w->req.data = w;
    w->warm = warm;
    if (warm)
        memcpy(w->topic, p->cfg->kafka.topic, tlen);
    int r = uv_queue_work(p->loop, &w->req, tx_work, tx_work_done);
    if (r < 0) { /* cannot happen with valid arguments */
        free(w);
        return r;
    }
    p->work_busy = 1;
    if (warm) {
        p->warm_next = 0;
        p->warming = 1;
    }
    return 0;
}

/* Not transactional: a new client's warm-up, alone on a work thread. */
static void warm_start(producer_t *p)
{
    int r;
    if (p->tx == TX_OFF && p->warm_next && !p->work_busy && (r = start_work(p, TX_OFF, p->rk)) < 0)
        log_error_err(r, "uv_queue_work failed: no metadata warm-up", LOG_NOFIELDS);
}

/* Tear down a client whose idempotent state is broken and start a new one.
 * What was queued is lost: count it. Non-transactional mode only: a
 * transactional producer's fatal error means it was fenced (or worse). */
static void rebuild(producer_t *p)
{
    p->fatal = 0;
    (void)count_remaining(p, "fatal_error");
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    detach_client(p);
    rd_kafka_destroy(p->rk);
    p->rk = make_client(p);
    if (p->rk == NULL) {
        log_error("kafka producer could not be rebuilt", "brokers=%s", log_q(p->cfg->kafka.brokers));
        return;
    }
    attach_client(p);
    warm_start(p);
}

/* ---- transactions ------------------------------------------------------ */

static const char *tx_name(tx_state_t s)
{
    static const char *const n[] = {"off", "init", "idle", "open", "commit", "abort", "dead", "rebuild"};
    return n[s];
}

static void list_push(txlist_t *l, txmsg_t *m)
{
    m->next = NULL;
    if (l->tail != NULL)
        l->tail->next = m;
    else
        l->head = m;
    l->tail = m;
    l->n++;
}

/* Appends b to a (b emptied): keeps the order a then b. */
static void list_concat(txlist_t *a, txlist_t *b)
{
    if (b->head == NULL)
        return;
    if (a->tail != NULL)
        a->tail->next = b->head;
    else
        a->head = b->head;
    a->tail = b->tail;
    a->n += b->n;
    b->head = b->tail = NULL;
    b->n = 0;
}

static void txmsg_free(txmsg_t *m)
{
    rbuf_unref(m->val);
    free(m);
}

static void list_free(txlist_t *l)
{
    txmsg_t *m = l->head;
    while (m != NULL) {
        txmsg_t *next = m->next;
        txmsg_free(m);
        m = next;
    }
    l->head = l->tail = NULL;
    l->n = 0;
}

/* The value is referenced, not copied (no RD_KAFKA_MSG_F_COPY nor _FREE):
 * its owner keeps val alive until the delivery report is served (key and
 * header are copied by librdkafka). opaque: the rbuf_t itself, whose
 * reference on_delivery drops (not transactional), else the txmsg_t's id. */
static rd_kafka_resp_err_t produce_one(producer_t *p, const char *key, size_t klen, const rbuf_t *val,
                                       int64_t epoch, void *opaque)
{
    char ep[24];
    int eplen = snprintf(ep, sizeof(ep), "%" PRId64, epoch);
    return rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(p->cfg->kafka.topic), RD_KAFKA_V_MSGFLAGS(0),
                             RD_KAFKA_V_KEY(key, klen), RD_KAFKA_V_VALUE((void *)val->data, val->len),
                             RD_KAFKA_V_HEADER("epoch", ep, eplen), RD_KAFKA_V_OPAQUE(opaque),
                             RD_KAFKA_V_END);
}

static uint64_t now_ms_mono(void)
{
    return uv_hrtime() / 1000000u;
}

static int lease_expired(const producer_t *p)
{
    return p->lease_until != 0 && now_ms_mono() >= p->lease_until;
}

static int fenced_err(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__FENCED || err == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
           err == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

/* Deposed, or the lease lapsed (a newer leader may exist): stop for good. */
static void tx_dead(producer_t *p, const char *why, rd_kafka_resp_err_t err)
{
    int fenced = fenced_err(err);
    if (p->tx == TX_DEAD)
        return;
    p->tx = TX_DEAD;
    uv_timer_stop(&p->commit_timer);
    uv_timer_stop(&p->retry_timer);
    metric_inc(metric_labels(p->m_txn, "result=\"%s\"", fenced ? "fenced" : "fatal"));
    log_error(fenced ? "kafka producer fenced: a newer leader took the transactional id, producing stops"
                     : "kafka transactional producer failed, producing stops",
              "why=%s err=%s lost=%d stopping=%d lease_expired=%d", why, rd_kafka_err2name(err),
              p->txn.n + p->pending.n, p->stopping, lease_expired(p));
    metric_inc(metric_labels(p->m_dropped, "reason=\"%s\"", fenced ? "fenced" : "fatal"));
    if (p->rk != NULL) /* librdkafka references txn's bytes: it lets go of them first */
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    list_free(&p->txn);
    list_free(&p->pending);
    if (p->fatal_cb != NULL)
        p->fatal_cb(p->fatal_arg, fenced);
}

static void tx_start_work(producer_t *p, tx_state_t op);
static void tx_pump(producer_t *p);

/* After an abort: leave out what the broker refused for good, counted. */
static void drop_rejected(producer_t *p)
{
    txmsg_t **pp = &p->txn.head, *last = NULL;
    while (*pp != NULL) {
        txmsg_t *m = *pp;
        int hit = 0;
        for (int i = 0; i < p->nrejected && !hit; i++)
            hit = p->rejected[i] == m->id;
        if (hit) {
            *pp = m->next;
            p->txn.n--;
            metric_inc(metric_labels(p->m_dropped, "reason=\"rejected\""));
            txmsg_free(m);
        } else {
            last = m;
            pp = &m->next;
        }
    }
    p->txn.tail = last;
    p->nrejected = 0;
}

/* The messages of the transaction that did not commit go first, in their
 * order, before what waits: produced again with their original bytes. */
static void requeue_txn(producer_t *p)
{
    drop_rejected(p);
    list_concat(&p->txn, &p->pending);
    p->pending = p->txn;
    p->txn.head = p->txn.tail = NULL;
    p->txn.n = 0;
}

/* Runs on a libuv work thread: the only place the blocking calls (the
 * metadata warm-up, the transactional calls, the destruction of a failed
 * client) run. Touches nothing but its own txwork_t. */
static void tx_work(uv_work_t *req)
{
    txwork_t *w = req->data;
    if (w->warm)
        warm_topic_metadata(w);
    switch (w->op) {
    case TX_INIT: w->error = rd_kafka_init_transactions(w->rk, PRODUCER_TXN_TIMEOUT_MS); break;
    case TX_COMMIT: w->error = rd_kafka_commit_transaction(w->rk, -1); break;
    case TX_ABORT: w->error = rd_kafka_abort_transaction(w->rk, -1); break;
    case TX_REBUILD: rd_kafka_destroy(w->rk); break;
    default: break;
    }
}

static void on_rebuild_timer(uv_timer_t *t);

/* TX_REBUILD, the old client gone and the backoff over: a new client with
 * the same transactional.id; its init_transactions (on a work thread)
 * fences whatever is left of the old one. */
static void rebuild_create(producer_t *p)
{
    p->rk = make_client(p);
    if (p->rk == NULL) {
        log_error("kafka transactional producer could not be rebuilt, will retry", "brokers=%s pending=%d",
                  log_q(p->cfg->kafka.brokers), p->pending.n);
        uv_timer_start(&p->retry_timer, on_rebuild_timer, backoff_next(&p->rebuild_backoff), 0);
        return;
    }
    attach_client(p);
    p->retry_delay = PRODUCER_POLL_MS;
    tx_start_work(p, TX_INIT);
}

/* TX_REBUILD: the backoff is over. */
static void on_rebuild_timer(uv_timer_t *t)
{
    producer_t *p = t->data;
    if (p->tx != TX_REBUILD || p->stopping)
        return;
    if (lease_expired(p)) { /* a newer leader may exist: its producer must not be fenced */
        tx_dead(p, "rebuild", RD_KAFKA_RESP_ERR__STATE);
        return;
    }
    rebuild_create(p);
}

/* The client failed (abort refused, fatal error, fenced after the
 * coordinator timed the transaction out) while this ingest still leads: no
 * newer leader exists (the lease ends before our ZooKeeper session could),
 * so its messages are not given up. The client is rebuilt and what did not
 * commit is produced again, first and in order, with the same bytes (same
 * epoch and seq: consumers drop what they already have). Deposed or past
 * the lease: stop for good. */
static void tx_fail(producer_t *p, const char *why, rd_kafka_resp_err_t err)
{
    if (p->tx == TX_DEAD || p->tx == TX_REBUILD)
        return;
    if (p->stopping || lease_expired(p)) {
        tx_dead(p, why, err);
        return;
    }
    uv_timer_stop(&p->commit_timer);
    uv_timer_stop(&p->retry_timer);
    requeue_txn(p);
    uint64_t delay = backoff_next(&p->rebuild_backoff);
    metric_inc(p->m_rebuilds);
    metric_inc(metric_labels(p->m_txn, "result=\"failed\""));
    log_warn("kafka transactional producer failed while this ingest leads: rebuilding the client, its "
             "messages are produced again",
             "why=%s err=%s pending=%d attempt=%u delay_ms=%" PRIu64, why, rd_kafka_err2name(err),
             p->pending.n, p->rebuild_backoff.attempt, delay);
    p->tx = TX_REBUILD;
    p->rebuild_delay = delay;
    if (!p->topic_ready) /* the old client's CreateTopics result is lost with it */
        p->topic_retry_at = uv_now(p->loop) + TOPIC_RETRY_MS;
    rd_kafka_t *old = p->rk;
    rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    detach_client(p); /* serves what the old client still reported */
    p->rk = NULL;
    p->fatal = 0;
    /* rd_kafka_destroy waits for librdkafka's threads: off the loop. */
    if (start_work(p, TX_REBUILD, old) < 0)
        abort(); /* cannot fail with valid arguments */
}

static void on_retry(uv_timer_t *t)
{
    producer_t *p = t->data;
    if (p->tx == TX_INIT || p->tx == TX_COMMIT || p->tx == TX_ABORT)
        tx_start_work(p, p->tx);
}

static void retry_later(producer_t *p)
{
    uv_timer_start(&p->retry_timer, on_retry, (uint64_t)p->retry_delay, 0);
    p->retry_delay = p->retry_delay * 2 > 2000 ? 2000 : p->retry_delay * 2;
}

static void became_ready(producer_t *p)
{
    if (p->ready)
        return;
    p->ready = 1;
    if (p->ready_cb != NULL)
        p->ready_cb(p->ready_arg);
}

/* Runs on the loop thread once the work thread returned. */
static void tx_work_done(uv_work_t *req, int status)
{
    txwork_t *w = req->data;
    producer_t *p = w->p;
    rd_kafka_error_t *e = w->error;
    tx_state_t op = w->op;
    rd_kafka_t *rk = w->rk;
    if (w->warm)
        warm_done(p, w);
    free(w);
    p->work_busy = 0;
    if (p->destroyed || status == UV_ECANCELED) { /* destroyed meanwhile */
        if (e != NULL)
            rd_kafka_error_destroy(e);
        if (p->destroyed && op == TX_OFF)
            rd_kafka_destroy(rk); /* the warm-up's client: producer_destroy left it to us */
        if (p->destroyed && p->closed == 4)
            free(p); /* producer_destroy left the memory to us */
        return;
    }
    if (op == TX_OFF)
        return;             /* the warm-up alone */
    if (op == TX_REBUILD) { /* the old client is gone */
        if (p->stopping) {
            p->tx = TX_IDLE;
            tx_pump(p); /* finishes the stop */
        } else {
            uv_timer_start(&p->retry_timer, on_rebuild_timer, p->rebuild_delay, 0);
        }
        return;
    }
    serve_main_queue(p);
    if (e == NULL) {
        p->retry_delay = PRODUCER_POLL_MS;
        if (op == TX_INIT) {
            log_info("kafka transactions initialised: any older producer of this id is fenced",
                     "pending=%d rebuild_attempts=%u", p->pending.n, p->rebuild_backoff.attempt);
        } else if (op == TX_COMMIT) {
            metric_inc(metric_labels(p->m_txn, "result=\"committed\""));
            uint64_t now = uv_hrtime() / 1000u;
            for (txmsg_t *m = p->txn.head; m != NULL; m = m->next)
                metric_observe(p->m_latency, (double)(now - m->t0) / 1e6);
            list_free(&p->txn);
            backoff_reset(&p->rebuild_backoff);
        } else {
            metric_inc(metric_labels(p->m_txn, "result=\"aborted\""));
            /* The aborted messages are invisible to read-committed consumers:
             * produce them again, first, in their order. */
            if (!p->stopping)
                requeue_txn(p);
            else
                list_free(&p->txn);
        }
        p->tx = TX_IDLE;
        if (op == TX_INIT)
            became_ready(p);
        tx_pump(p);
        return;
    }
    rd_kafka_resp_err_t err = rd_kafka_error_code(e);
    const char *what = rd_kafka_error_string(e);
    if (p->stopping && op == TX_INIT) {
        /* Deposed meanwhile: nothing of ours is open, nothing to retry. */
        log_info("kafka transactional call failed while stopping", "op=%s err=%s", tx_name(op),
                 rd_kafka_err2name(err));
        rd_kafka_error_destroy(e);
        list_free(&p->txn);
        p->tx = TX_IDLE;
        tx_pump(p); /* finishes the stop */
        return;
    }
    if (rd_kafka_error_is_fatal(e)) {
        char buf[256];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(p->rk, buf, sizeof(buf));
        rd_kafka_error_destroy(e);
        tx_fail(p, tx_name(op), orig != RD_KAFKA_RESP_ERR_NO_ERROR ? orig : err);
        return;
    }
    if (op != TX_ABORT && rd_kafka_error_txn_requires_abort(e)) {
        log_warn("kafka transaction failed, aborting it and producing its messages again",
                 "op=%s err=%s detail=%s", tx_name(op), rd_kafka_err2name(err), log_q(what));
        rd_kafka_error_destroy(e);
        tx_start_work(p, TX_ABORT);
        return;
    }
    if (rd_kafka_error_is_retriable(e)) {
        log_warn("kafka transaction call will be retried", "op=%s err=%s detail=%s", tx_name(op),
                 rd_kafka_err2name(err), log_q(what));
        rd_kafka_error_destroy(e);
        metric_inc(metric_labels(p->m_txn, "result=\"retried\""));
        p->tx = op;
        retry_later(p);
        return;
    }
    log_warn("kafka transactional call failed, neither retriable nor abortable", "op=%s err=%s detail=%s",
             tx_name(op), rd_kafka_err2name(err), log_q(what));
    rd_kafka_error_destroy(e);
    tx_fail(p, tx_name(op), err);
}

static void tx_start_work(producer_t *p, tx_state_t op)
{
    p->tx = op;
    int r = start_work(p, op, p->rk);
    if (r < 0) {
        log_error_err(r, "uv_queue_work failed", LOG_NOFIELDS);
        retry_later(p);
    }
}

static void on_commit_timer(uv_timer_t *t)
{
    producer_t *p = t->data;
    if (p->tx == TX_OPEN && p->txn.n > 0)
        tx_start_work(p, TX_COMMIT);
}

/* In TX_IDLE: open a transaction for what is pending, or finish a stop. */
static void tx_pump(producer_t *p)
{
    if (p->tx != TX_IDLE)
        return;
    if (p->stopping) {
        list_free(&p->pending);
        if (p->abort_done != NULL) {
            void (*done)(void *) = p->abort_done;
            p->abort_done = NULL;
            done(p->abort_arg);
        }
        return;
    }
    if (p->pending.n == 0 || lease_expired(p))
        return;
    rd_kafka_error_t *e = rd_kafka_begin_transaction(p->rk);
    if (e != NULL) {
        rd_kafka_resp_err_t err = rd_kafka_error_code(e);
        int fatal = rd_kafka_error_is_fatal(e);
        log_error("kafka begin_transaction failed", "err=%s detail=%s", rd_kafka_err2name(err),
                  log_q(rd_kafka_error_string(e)));
        rd_kafka_error_destroy(e);
        if (fatal)
            tx_fail(p, "begin", err);
        return;
    }
    p->tx = TX_OPEN;
    /* Everything pending goes into this transaction, in order; a message
     * librdkafka refuses (its queue full) and those after it wait. */
    txlist_t todo = p->pending;
    p->pending.head = p->pending.tail = NULL;
    p->pending.n = 0;
    txmsg_t *m;
    while ((m = todo.head) != NULL) {
        rd_kafka_resp_err_t err = produce_one(p, m->key, m->klen, m->val, m->epoch, (void *)(uintptr_t)m->id);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR && !rejected_for_good(err))
            break; /* queue full, or the transaction failed: it waits */
        todo.head = m->next;
        if (todo.head == NULL)
            todo.tail = NULL;
        todo.n--;
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            list_push(&p->txn, m);
        } else {
            log_error("kafka refused a message for good", "err=%s bytes=%zu", rd_kafka_err2name(err),
                      m->val->len);
            metric_inc(metric_labels(p->m_dropped, "reason=\"rejected\""));
            txmsg_free(m);
        }
    }
    p->pending = todo;
    if (p->txn.n == 0) {
        /* Nothing went in (librdkafka refused): commit the empty transaction
         * to get back to IDLE and try again. */
        tx_start_work(p, TX_COMMIT);
        return;
    }
    uint64_t every = p->drain_done != NULL ? 0 : (uint64_t)p->cfg->kafka.transaction_commit_ms;
    uv_timer_start(&p->commit_timer, on_commit_timer, every, 0);
}

/* ---- poll timer: housekeeping ------------------------------------------ */

static void finish_drain(producer_t *p, int q)
{
    void (*done)(void *, int) = p->drain_done;
    p->drain_done = NULL;
    if (q > 0)
        count_remaining(p, "drain");
    else
        log_info("kafka flushed", "topic=%s", log_q(p->cfg->kafka.topic));
    done(p->drain_arg, q);
}

static void on_poll(uv_timer_t *t)
{
    producer_t *p = t->data;
    if (p->destroyed)
        return;
    if (p->fatal && p->tx == TX_OFF && !p->work_busy) /* not under the warm-up's feet */
        rebuild(p);
    if (p->rk == NULL && p->tx == TX_OFF)
        return;
    if (p->rk != NULL) {
        serve_main_queue(p);
        if (p->fatal && p->tx != TX_OFF && p->tx != TX_DEAD && !p->work_busy) {
            char buf[256];
            tx_fail(p, "error_cb", rd_kafka_fatal_error(p->rk, buf, sizeof(buf)));
        }
    }
    /* p->rk is NULL while a transactional client is rebuilt. */
    int q = p->tx == TX_OFF ? rd_kafka_outq_len(p->rk) : p->txn.n + p->pending.n;
    if (p->brokers_down && q == 0 && p->tx != TX_INIT && p->tx != TX_REBUILD) {
        /* Everything delivered again: brokers are reachable. */
        log_info("kafka: delivering again", "brokers=%s", log_q(p->cfg->kafka.brokers));
        p->brokers_down = 0;
    }
    rd_kafka_event_t *ev;
    while (p->admin_q != NULL && (ev = rd_kafka_queue_poll(p->admin_q, 0)) != NULL) {
        handle_admin_event(p, ev);
        rd_kafka_event_destroy(ev);
    }
    if (p->rk != NULL && !p->topic_ready && p->topic_retry_at != 0 && uv_now(p->loop) >= p->topic_retry_at)
        create_topic(p);
    metric_set(p->m_queue, q);
    if (p->tx == TX_OPEN && p->drain_done != NULL && !uv_is_active((uv_handle_t *)&p->commit_timer))
        uv_timer_start(&p->commit_timer, on_commit_timer, 0, 0);
    if (p->drain_done != NULL && (q == 0 || p->tx == TX_DEAD || uv_now(p->loop) >= p->drain_deadline))
        finish_drain(p, q);
}

int producer_create(uv_loop_t *loop, const cfg_t *cfg, producer_t **out)
{
    producer_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    p->cfg = cfg;
    p->m_produced = metric_counter("exchange_ingest_kafka_produced_total", "Messages acknowledged by Kafka");
    p->m_failed = metric_counter("exchange_ingest_kafka_failed_total",
                                 "Messages Kafka failed to deliver, by librdkafka error name");
    p->m_dropped = metric_counter("exchange_ingest_kafka_dropped_total",
                                  "Messages dropped before reaching the Kafka queue, by reason");
    p->m_dropped_full = metric_labels(p->m_dropped, "reason=\"queue_full\"");
    p->m_queue =
        metric_gauge("exchange_ingest_kafka_queue_messages", "Messages queued or in flight to Kafka");
    p->m_latency = metric_histogram("exchange_ingest_kafka_delivery_seconds",
                                    "Time from produce to delivery report", NULL, 0);
    p->m_txn =
        metric_counter("exchange_ingest_kafka_transactions_total",
                       "Kafka transactions by result (committed, aborted, retried, failed, fenced, fatal)");
    p->m_rebuilds = metric_counter("exchange_ingest_kafka_producer_rebuilds_total",
                                   "Transactional clients rebuilt after a failure while leading (their "
                                   "uncommitted messages produced again)");
    backoff_init(&p->rebuild_backoff, REBUILD_BASE_MS, REBUILD_MAX_MS, REBUILD_BASE_MS / 2);
    if (pipe2(p->wake_fd, O_NONBLOCK | O_CLOEXEC) < 0) {
        int r = -errno;
        free(p);
        return r;
    }
    p->retry_delay = PRODUCER_POLL_MS;
    p->tx = cfg->kafka.transactions ? TX_INIT : TX_OFF;
    p->ready = p->tx == TX_OFF;
    p->rk = make_client(p);
    if (p->rk == NULL) {
        close(p->wake_fd[0]);
        close(p->wake_fd[1]);
        free(p);
        return -EINVAL;
    }
    attach_client(p);
    uv_poll_init(loop, &p->wake, p->wake_fd[0]);
    p->wake.data = p;
    uv_poll_start(&p->wake, UV_READABLE, on_wake);
    uv_timer_init(loop, &p->poll_timer);
    p->poll_timer.data = p;
    uv_timer_init(loop, &p->commit_timer);
    p->commit_timer.data = p;
    uv_timer_init(loop, &p->retry_timer);
    p->retry_timer.data = p;
    uv_timer_start(&p->poll_timer, on_poll, PRODUCER_POLL_MS, PRODUCER_POLL_MS);
    create_topic(p);
    if (p->tx == TX_INIT)
        tx_start_work(p, TX_INIT); /* warms the metadata first */
    else
        warm_start(p);
    log_info("kafka producer started",
             "brokers=%s topic=%s linger_ms=%d buffer_messages=%d transactions=%d commit_ms=%d",
             log_q(cfg->kafka.brokers), log_q(cfg->kafka.topic), cfg->kafka.linger_ms,
             cfg->kafka.buffer_messages, cfg->kafka.transactions, cfg->kafka.transaction_commit_ms);
    *out = p;
    return 0;
}

void producer_on_fatal(producer_t *p, void (*cb)(void *arg, int fenced), void *arg)
{
    p->fatal_cb = cb;
    p->fatal_arg = arg;
}

void producer_on_ready(producer_t *p, void (*cb)(void *arg), void *arg)
{
    p->ready_cb = cb;
    p->ready_arg = arg;
    if (p->ready)
        cb(arg);
}

void producer_set_lease(producer_t *p, uint64_t until_ms)
{
    p->lease_until = until_ms;
    if (p->tx == TX_IDLE)
        tx_pump(p); /* messages that waited for the lease */
}

static int send_transactional(producer_t *p, const char *channel, rbuf_t *value, int64_t epoch)
{
    size_t klen = strlen(channel);
    if (p->tx == TX_DEAD || p->stopping) {
        metric_inc(metric_labels(p->m_dropped, "reason=\"%s\"", p->stopping ? "stopping" : "fenced"));
        return -EIO;
    }
    if (p->txn.n + p->pending.n >= p->cfg->kafka.buffer_messages) {
        metric_inc(p->m_dropped_full);
        return -ENOBUFS;
    }
    txmsg_t *m = malloc(sizeof(*m) + klen);
    if (m == NULL) {
        metric_inc(metric_labels(p->m_dropped, "reason=\"no_memory\""));
        return -ENOMEM;
    }
    m->epoch = epoch;
    m->t0 = uv_hrtime() / 1000u;
    m->id = ++p->next_id;
    m->klen = klen;
    m->val = rbuf_ref(value);
    memcpy(m->key, channel, klen);
    /* Straight into the open transaction only when nothing waits before it:
     * the topic keeps the order of producer_send. */
    if (p->tx == TX_OPEN && p->pending.n == 0 &&
        produce_one(p, m->key, klen, value, epoch, (void *)(uintptr_t)m->id) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        list_push(&p->txn, m);
        return 0;
    }
    list_push(&p->pending, m);
    if (p->tx == TX_IDLE)
        tx_pump(p);
    return 0;
}

int producer_send(producer_t *p, const char *channel, rbuf_t *value, int64_t epoch)
{
    /* A transactional client being rebuilt (rk NULL) keeps what is sent. */
    if (p->destroyed || (p->rk == NULL && p->tx == TX_OFF)) {
        metric_inc(metric_labels(p->m_dropped, "reason=\"no_client\""));
        return -EIO;
    }
    if (lease_expired(p)) {
        metric_inc(metric_labels(p->m_dropped, "reason=\"lease_expired\""));
        return -EPERM;
    }
    if (p->tx != TX_OFF)
        return send_transactional(p, channel, value, epoch);
    /* librdkafka holds a reference until the delivery report (on_delivery). */
    rd_kafka_resp_err_t err = produce_one(p, channel, strlen(channel), value, epoch, rbuf_ref(value));
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    rbuf_unref(value);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        metric_inc(p->m_dropped_full);
        return -ENOBUFS;
    }
    metric_inc(metric_labels(p->m_dropped, "reason=\"%s\"", rd_kafka_err2name(err)));
    return -EIO;
}

int producer_queue_len(const producer_t *p)
{
    if (p->tx != TX_OFF)
        return p->txn.n + p->pending.n;
    return p->rk != NULL ? rd_kafka_outq_len(p->rk) : 0;
}

int producer_busy(const producer_t *p)
{
    return p != NULL && p->work_busy;
}

const char *producer_tx_state(const producer_t *p)
{
    return tx_name(p->tx);
}

void producer_drain(producer_t *p, int timeout_ms, void (*done)(void *arg, int remaining), void *arg)
{
    p->drain_done = done;
    p->drain_arg = arg;
    p->drain_deadline = uv_now(p->loop) + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    /* The poll timer finishes the drain (and commits at once); make sure it is running. */
    if (!uv_is_active((uv_handle_t *)&p->poll_timer))
        uv_timer_start(&p->poll_timer, on_poll, 0, PRODUCER_POLL_MS);
}

void producer_abort(producer_t *p, void (*done)(void *arg), void *arg)
{
    int dropped = p->pending.n;
    p->stopping = 1;
    p->abort_done = done;
    p->abort_arg = arg;
    if (dropped > 0)
        metric_add(metric_labels(p->m_dropped, "reason=\"stopping\""), dropped);
    log_warn("kafka producer stopping without flushing: the open transaction is aborted",
             "state=%s unsent=%d", tx_name(p->tx), p->txn.n + p->pending.n);
    list_free(&p->pending);
    uv_timer_stop(&p->commit_timer);
    switch (p->tx) {
    case TX_OPEN: tx_start_work(p, TX_ABORT); break;
    case TX_IDLE: tx_pump(p); break;
    case TX_OFF:
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        /* fall through */
    case TX_DEAD:
        p->abort_done = NULL;
        done(arg);
        break;
    case TX_INIT:
    case TX_REBUILD:
        if (!p->work_busy) { /* waiting for a retry or a rebuild: nothing of ours is open */
            uv_timer_stop(&p->retry_timer);
            p->tx = TX_IDLE;
            tx_pump(p);
        } /* else tx_work_done finishes the stop */
        break;
    default: break; /* COMMIT/ABORT in flight: tx_work_done pumps, and pump finishes the stop */
    }
}

int producer_flush(producer_t *p, int timeout_ms)
{
    if (p->tx != TX_OFF)
        return count_remaining(p, "stop"); /* no commit without a supervisor: we may be deposed */
    if (p->rk == NULL)
        return 0;
    rd_kafka_flush(p->rk, timeout_ms);
    serve_main_queue(p);
    return count_remaining(p, "flush");
}

static void on_handle_closed(uv_handle_t *h)
{
    producer_t *p = h->data;
    if (++p->closed == 4 && !p->work_busy)
        free(p);
}

void producer_destroy(producer_t *p)
{
    if (p == NULL)
        return;
    p->destroyed = 1;
    if (p->rk != NULL) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        detach_client(p);
        /* A transactional call still on its work thread holds rk: that
         * thread is stuck in the blocking call; leave the client to exit(). */
        if (!p->work_busy)
            rd_kafka_destroy(p->rk);
        p->rk = NULL;
    }
    /* A transactional call stuck on its work thread: its client still
     * references txn's bytes, left to exit() with it. */
    if (!p->work_busy)
        list_free(&p->txn);
    list_free(&p->pending);
    close(p->wake_fd[1]);
    uv_poll_stop(&p->wake);
    close(p->wake_fd[0]); /* out of epoll since uv_poll_stop */
    uv_close((uv_handle_t *)&p->wake, on_handle_closed);
    uv_close((uv_handle_t *)&p->poll_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->commit_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->retry_timer, on_handle_closed);
}
