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
#include <librdkafka/rdkafka.h>

#include "log.h"
#include "metrics.h"

#define TOPIC_RETRY_MS 5000
#define ADMIN_TIMEOUT_MS 10000

struct producer_s {
    uv_loop_t *loop;
    const cfg_t *cfg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *admin_q;
    uv_timer_t poll_timer;
    int topic_ready;         /* created or found existing */
    uint64_t topic_retry_at; /* uv_now() of the next CreateTopics attempt, 0: pending */
    int fatal;               /* set by error_cb: rebuild the client in the poll timer */
    int brokers_down;        /* for logging the transition once */
    int found_partitions;    /* of the topic at start (metadata warm-up), -1 unknown */
    int found_replicas;
    /* drain */
    void (*drain_done)(void *arg, int remaining);
    void *drain_arg;
    uint64_t drain_deadline;
    /* metrics */
    metric_t *m_produced, *m_failed, *m_dropped, *m_dropped_full, *m_queue, *m_latency;
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

/* Runs on the loop thread (served by rd_kafka_poll). */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    producer_t *p = opaque;
    (void)rk;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        metric_inc(p->m_produced);
        if (!p->topic_ready) {
            /* A delivery proves the topic exists (a cluster may refuse
             * CreateTopics to this client): stop retrying. */
            log_info("kafka topic exists", "topic=%s how=delivery", log_q(p->cfg->kafka.topic));
            p->topic_ready = 1;
        }
        uint64_t t0 = (uint64_t)(uintptr_t)m->_private; /* uv_hrtime()/1000 at enqueue */
        uint64_t now = uv_hrtime() / 1000u;
        if (t0 != 0 && now >= t0)
            metric_observe(p->m_latency, (double)(now - t0) / 1e6);
        return;
    }
    metric_inc(metric_labels(p->m_failed, "error=\"%s\"", rd_kafka_err2name(m->err)));
    log_debug("kafka delivery failed", "err=%s", rd_kafka_err2name(m->err));
}

/* Runs on the loop thread: log.queue is on and the log queue is the main
 * queue, served by rd_kafka_poll. librdkafka's own lines become ours. */
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

/* Runs on the loop thread (served by rd_kafka_poll). */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    producer_t *p = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));
        log_error("kafka fatal error, producer will be rebuilt", "err=%s reason=%s", rd_kafka_err2name(orig),
                  log_q(buf));
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
    if (p->brokers_down && (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE))
        log_debug("kafka error", "err=%s reason=%s", rd_kafka_err2name(err), log_q(reason));
    else
        log_warn("kafka error", "err=%s reason=%s", rd_kafka_err2name(err), log_q(reason));
}

/* librdkafka learns a new topic's partitions only on its 1 s topic scan, so
 * the first messages of a fresh producer wait up to a second (measured: 0.7-
 * 1.0 s). After a failover that second is on every client's clock: fetch the
 * topic's metadata now. Bounded; with Kafka down it gives up and the normal
 * path retries. Runs once per client, at start (before any feed connects).
 * Notes what it found of an existing topic (partitions, replicas) for the
 * "kafka topic exists" log line. */
static void warm_topic_metadata(producer_t *p, rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    p->found_partitions = p->found_replicas = -1;
    if (rkt == NULL)
        return;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 1000);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < md->topic_cnt; i++) {
            const rd_kafka_metadata_topic_t *t = &md->topics[i];
            if (strcmp(t->topic, topic) != 0 || t->err != RD_KAFKA_RESP_ERR_NO_ERROR || t->partition_cnt <= 0)
                continue;
            p->found_partitions = t->partition_cnt;
            p->found_replicas = t->partitions[0].replica_cnt;
        }
        rd_kafka_metadata_destroy(md);
    } else
        log_warn("kafka metadata warm-up failed", "topic=%s err=%s", log_q(topic), rd_kafka_err2name(err));
    rd_kafka_topic_destroy(rkt);
}

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
    set_prop_int(conf, "message.timeout.ms", PRODUCER_MESSAGE_TIMEOUT_MS, &bad);
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
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        log_error("kafka producer creation failed", "err=%s", log_q(errstr));
        rd_kafka_conf_destroy(conf); /* still ours when rd_kafka_new fails */
        return NULL;
    }
    rd_kafka_set_log_queue(rk, NULL); /* NULL: the main queue, served by rd_kafka_poll */
    warm_topic_metadata(p, rk, c->kafka.topic);
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
        /* Used as it is: a partition count is only ever raised by an
         * operator (it moves keys between partitions). */
        if (p->found_partitions > 0 && p->found_partitions != p->cfg->kafka.partitions)
            log_warn("kafka topic exists with another partition count, used as it is",
                     "topic=%s partitions=%d replication=%d configured_partitions=%d",
                     log_q(p->cfg->kafka.topic), p->found_partitions, p->found_replicas,
                     p->cfg->kafka.partitions);
        else
            log_info("kafka topic exists", "topic=%s partitions=%d replication=%d",
                     log_q(p->cfg->kafka.topic), p->found_partitions, p->found_replicas);
        p->topic_ready = 1;
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
    int n = rd_kafka_outq_len(p->rk);
    if (n > 0)
        log_warn("kafka messages not delivered", "when=%s remaining=%d", what, n);
    return n;
}

/* Tear down a client whose idempotent state is broken and start a new one.
 * What was queued is lost: count it. */
static void rebuild(producer_t *p)
{
    p->fatal = 0;
    (void)count_remaining(p, "fatal_error");
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0); /* delivery reports for the purged messages */
    if (p->admin_q != NULL)
        rd_kafka_queue_destroy(p->admin_q);
    rd_kafka_destroy(p->rk);
    p->admin_q = NULL;
    p->rk = make_client(p);
    if (p->rk == NULL) {
        log_error("kafka producer could not be rebuilt", "brokers=%s", log_q(p->cfg->kafka.brokers));
        return;
    }
    p->admin_q = rd_kafka_queue_new(p->rk);
}

static void on_poll(uv_timer_t *t)
{
    producer_t *p = t->data;
    if (p->rk == NULL)
        return;
    if (p->fatal)
        rebuild(p);
    if (p->rk == NULL)
        return;
    rd_kafka_poll(p->rk, 0);
    if (p->brokers_down && rd_kafka_outq_len(p->rk) == 0) {
        /* Everything delivered again: brokers are reachable. */
        log_info("kafka: delivering again", "brokers=%s", log_q(p->cfg->kafka.brokers));
        p->brokers_down = 0;
    }
    rd_kafka_event_t *ev;
    while (p->admin_q != NULL && (ev = rd_kafka_queue_poll(p->admin_q, 0)) != NULL) {
        handle_admin_event(p, ev);
        rd_kafka_event_destroy(ev);
    }
    if (!p->topic_ready && p->topic_retry_at != 0 && uv_now(p->loop) >= p->topic_retry_at)
        create_topic(p);
    int q = rd_kafka_outq_len(p->rk);
    metric_set(p->m_queue, q);
    if (p->drain_done != NULL && (q == 0 || uv_now(p->loop) >= p->drain_deadline)) {
        void (*done)(void *, int) = p->drain_done;
        p->drain_done = NULL;
        if (q > 0)
            count_remaining(p, "drain");
        else
            log_info("kafka flushed", "topic=%s", log_q(p->cfg->kafka.topic));
        done(p->drain_arg, q);
    }
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
    p->rk = make_client(p);
    if (p->rk == NULL) {
        free(p);
        return -EINVAL;
    }
    p->admin_q = rd_kafka_queue_new(p->rk);
    uv_timer_init(loop, &p->poll_timer);
    p->poll_timer.data = p;
    uv_timer_start(&p->poll_timer, on_poll, PRODUCER_POLL_MS, PRODUCER_POLL_MS);
    create_topic(p);
    log_info("kafka producer started", "brokers=%s topic=%s linger_ms=%d buffer_messages=%d",
             log_q(cfg->kafka.brokers), log_q(cfg->kafka.topic), cfg->kafka.linger_ms,
             cfg->kafka.buffer_messages);
    *out = p;
    return 0;
}

int producer_send(producer_t *p, const char *channel, const char *json, size_t len, int64_t epoch)
{
    char ep[24];
    if (p->rk == NULL) {
        metric_inc(metric_labels(p->m_dropped, "reason=\"no_client\""));
        return -EIO;
    }
    int eplen = snprintf(ep, sizeof(ep), "%" PRId64, epoch);
    void *t0 = (void *)(uintptr_t)(uv_hrtime() / 1000u);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(p->cfg->kafka.topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(channel, strlen(channel)), RD_KAFKA_V_VALUE((void *)json, len),
        RD_KAFKA_V_HEADER("epoch", ep, eplen), RD_KAFKA_V_OPAQUE(t0), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        metric_inc(p->m_dropped_full);
        return -ENOBUFS;
    }
    metric_inc(metric_labels(p->m_dropped, "reason=\"%s\"", rd_kafka_err2name(err)));
    return -EIO;
}

int producer_queue_len(const producer_t *p)
{
    return p->rk != NULL ? rd_kafka_outq_len(p->rk) : 0;
}

void producer_drain(producer_t *p, int timeout_ms, void (*done)(void *arg, int remaining), void *arg)
{
    p->drain_done = done;
    p->drain_arg = arg;
    p->drain_deadline = uv_now(p->loop) + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    /* The poll timer finishes the drain; make sure it is running. */
    if (!uv_is_active((uv_handle_t *)&p->poll_timer))
        uv_timer_start(&p->poll_timer, on_poll, 0, PRODUCER_POLL_MS);
}

int producer_flush(producer_t *p, int timeout_ms)
{
    if (p->rk == NULL)
        return 0;
    rd_kafka_flush(p->rk, timeout_ms);
    return count_remaining(p, "flush");
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void producer_destroy(producer_t *p)
{
    if (p == NULL)
        return;
    if (p->rk != NULL) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(p->rk, 0);
        if (p->admin_q != NULL)
            rd_kafka_queue_destroy(p->admin_q);
        rd_kafka_destroy(p->rk);
        p->rk = NULL;
        p->admin_q = NULL;
    }
    uv_timer_stop(&p->poll_timer);
    uv_close((uv_handle_t *)&p->poll_timer, on_timer_closed);
}
