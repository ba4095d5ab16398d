/* Kafka source: a librdkafka consumer without a consumer group that reads
 * every partition of [kafka] topic into one queue, starting start_tail
 * messages before the end so snapshots are warm. The queue signals a pipe
 * (rd_kafka_queue_io_event_enable) watched by uv_poll; messages, errors and
 * librdkafka's logs are all served on the loop thread. Metadata is refreshed
 * on the libuv thread pool to follow partition count changes. A broker that
 * leads some partitions and stops answering (hung) or is gone is seen in
 * librdkafka's statistics: the errors alone do not say that partitions stall. */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "log.h"
#include "metrics.h"

/* At most BATCH messages per loop turn: client writes go out between turns,
 * so one turn's burst is all a keeping-up client ever has queued. */
#define BATCH 256
#define BATCHES_PER_TURN 1
#define MAX_PARTITIONS 4096

typedef struct {
    source_t base;
    uv_loop_t *loop;
    source_sink_t sink;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    rd_kafka_queue_t *q;
    rd_kafka_queue_t *mainq;
    char *topic;
    int start_tail;
    int pipefd[2];
    uv_poll_t poll;
    uv_timer_t timer; /* metadata refresh */
    uv_idle_t idle;   /* more messages than one turn drains */
    int handles;
    int partitions; /* started 0..partitions-1 */
    uint64_t refresh_ms, meta_timeout_ms, stale_ms;
    uint64_t hung_ms;    /* a broker leading our partitions silent or away this long: unhealthy */
    uint64_t down_since; /* uv_now ms since when such a broker is not connected, 0: all are */
    int hung;            /* such a broker seen in the last statistics */
    /* metadata on the thread pool */
    uv_work_t work;
    int meta_busy;
    int meta_partitions; /* result: -1 unknown topic */
    rd_kafka_resp_err_t meta_err;
    /* health (uv_now ms) */
    uint64_t last_msg, last_ok, last_err;
    int have_msg, have_ok, have_err;
    int closing;
    void (*on_closed)(void *);
    void *closed_arg;
    metric_t *m_msgs, *m_errors, *m_healthy, *m_partitions;
} ksrc_t;

static uint64_t now_ms(ksrc_t *k)
{
    uv_update_time(k->loop);
    return uv_now(k->loop);
}

static void note_error(ksrc_t *k, const char *what, rd_kafka_resp_err_t err, const char *reason)
{
    k->last_err = now_ms(k);
    k->have_err = 1;
    metric_inc(metric_labels(k->m_errors, "source=\"kafka\",error=\"%s\"", rd_kafka_err2name(err)));
    log_warn("kafka consumer error", "what=%s err=%s reason=%s", what, rd_kafka_err2name(err),
             log_q(reason ? reason : rd_kafka_err2str(err)));
}

/* ---- librdkafka callbacks: served by rd_kafka_poll() on the loop thread ---- */

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    note_error(opaque, "client", (rd_kafka_resp_err_t)err, reason);
}

/* librdkafka statistics (every refresh_ms). A broker that leads some of our
 * partitions stalls them until the cluster moves their leadership (the
 * controller's broker session timeout, 9 s by default) and tells us nothing
 * meanwhile: unhealthy once such a broker has a request outstanding and has
 * sent nothing for hung_ms (hung: SIGSTOP, a stuck disk, a half-open
 * connection), or has not been connected for hung_ms (dead). */
static int on_kafka_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    ksrc_t *k = opaque;
    json_error_t jerr;
    json_t *st = json_loadb(json, len, 0, &jerr), *brokers = json_object_get(st, "brokers"), *b;
    const char *name, *bad_name = NULL, *bad_state = "";
    int64_t silent_ms = -1;
    int down = 0;
    uint64_t now = now_ms(k);
    (void)rk;
    json_object_foreach(brokers, name, b)
    {
        const char *state = json_string_value(json_object_get(b, "state"));
        int64_t idle_us = json_integer_value(json_object_get(b, "rxidle"));
        if (json_integer_value(json_object_get(b, "nodeid")) < 0 ||
            json_object_size(json_object_get(b, "toppars")) == 0)
            continue;
        if (state == NULL || strcmp(state, "UP") != 0) {
            down = 1;
            if (k->down_since != 0 && now - k->down_since >= k->hung_ms) {
                bad_name = name;
                bad_state = state ? state : "";
                silent_ms = (int64_t)(now - k->down_since);
            }
        } else if (json_integer_value(json_object_get(b, "waitresp_cnt")) > 0 && idle_us >= 0 &&
                   (uint64_t)idle_us / 1000 >= k->hung_ms) {
            bad_name = name;
            bad_state = state;
            silent_ms = idle_us / 1000;
        }
    }
    k->down_since = down ? (k->down_since ? k->down_since : now) : 0;
    if (bad_name != NULL && !k->hung) {
        k->hung = 1;
        metric_inc(metric_labels(k->m_errors, "source=\"kafka\",error=\"broker_not_answering\""));
        log_warn("kafka broker not answering, source unhealthy",
                 "broker=%s state=%s silent_ms=%lld after_ms=%llu", log_q(bad_name), bad_state,
                 (long long)silent_ms, (unsigned long long)k->hung_ms);
    } else if (bad_name == NULL && k->hung) {
        k->hung = 0;
        log_info("kafka brokers answering again", "topic=%s", log_q(k->topic));
    }
    metric_set(k->m_healthy, k->base.vt->healthy(&k->base));
    json_decref(st);
    return 0; /* json is librdkafka's to free */
}

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 3)
        log_error("librdkafka", "fac=%s msg=%s", log_q(fac), log_q(buf));
    else if (level <= 5)
        log_warn("librdkafka", "fac=%s msg=%s", log_q(fac), log_q(buf));
    else
        log_debug("librdkafka", "fac=%s msg=%s", log_q(fac), log_q(buf));
}

/* ---- consuming --------------------------------------------------------- */

int source_kafka_epoch_header(const void *v, size_t n, int64_t *epoch)
{
    char num[24];
    if (v == NULL || n == 0 || n >= sizeof num)
        return -EINVAL;
    memcpy(num, v, n);
    num[n] = '\0';
    if (num[0] < '0' || num[0] > '9')
        return -EINVAL;
    char *end;
    errno = 0;
    long long e = strtoll(num, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *epoch = e;
    return 0;
}

/* The record's key (the producer's channel) and its `epoch` header, for the
 * hub to check against the message's own prefix. */
static void record_route(const rd_kafka_message_t *m, hub_route_t *r)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *v = NULL;
    size_t n = 0;
    *r = (hub_route_t){.key = m->key, .key_len = m->key_len};
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, "epoch", &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    r->epoch_hdr = source_kafka_epoch_header(v, n, &r->epoch) == 0 ? HUB_EPOCH_SET : HUB_EPOCH_BAD;
}

static int drain_queue(ksrc_t *k)
{
    rd_kafka_message_t *msgs[BATCH];
    int total = 0;
    (void)rd_kafka_poll(k->rk, 0); /* errors, logs */
    for (int b = 0; b < BATCHES_PER_TURN && !k->closing; b++) {
        ssize_t n = rd_kafka_consume_batch_queue(k->q, 0, msgs, BATCH);
        if (n <= 0)
            return total;
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    note_error(k, "fetch", m->err, rd_kafka_message_errstr(m));
            } else if (!k->closing) {
                k->last_msg = k->last_ok = now_ms(k);
                k->have_msg = k->have_ok = 1;
                metric_inc(k->m_msgs);
                hub_route_t route;
                record_route(m, &route);
                k->sink.on_message(k->sink.arg, m->payload ? (const char *)m->payload : "", m->len, &route);
            }
            rd_kafka_message_destroy(m);
        }
        total += (int)n;
        if (n < BATCH)
            return total;
    }
    return -1; /* maybe more: continue next loop iteration */
}

static void on_idle(uv_idle_t *h)
{
    ksrc_t *k = h->data;
    if (k->closing || drain_queue(k) >= 0)
        uv_idle_stop(h);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    ksrc_t *k = h->data;
    char junk[256];
    (void)events;
    if (status < 0) {
        log_error_err(status, "kafka wakeup pipe failed", LOG_NOFIELDS);
        return;
    }
    while (read(k->pipefd[0], junk, sizeof junk) > 0) {
    }
    if (!k->closing && drain_queue(k) < 0)
        uv_idle_start(&k->idle, on_idle);
}

/* ---- metadata (thread pool) ----------------------------------------------- */

/* Runs on a libuv thread-pool thread: only librdkafka calls and fields of k
 * that the loop thread does not touch while meta_busy is set. */
static void meta_work(uv_work_t *w)
{
    ksrc_t *k = w->data;
    const struct rd_kafka_metadata *md = NULL;
    k->meta_partitions = -1;
    k->meta_err = rd_kafka_metadata(k->rk, 0, k->rkt, &md, (int)k->meta_timeout_ms);
    if (k->meta_err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, k->topic) != 0)
            continue;
        if (md->topics[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
            k->meta_err = md->topics[i].err;
        else
            k->meta_partitions = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
}

static void source_finish_close(ksrc_t *k);

static void start_partitions(ksrc_t *k, int n)
{
    if (n > MAX_PARTITIONS)
        n = MAX_PARTITIONS;
    for (int p = k->partitions; p < n; p++) {
        /* At start: the tail, so snapshots are warm. A partition added later
         * is read from its beginning: nothing in it was seen yet. */
        int64_t off = k->partitions == 0
                          ? (k->start_tail > 0 ? RD_KAFKA_OFFSET_TAIL(k->start_tail) : RD_KAFKA_OFFSET_END)
                          : RD_KAFKA_OFFSET_BEGINNING;
        if (k->partitions > 0 || p == 0)
            log_info("kafka partitions assigned", "topic=%s from=%d to=%d offset=%s", log_q(k->topic), p,
                     n - 1, k->partitions == 0 ? "tail" : "beginning");
        if (rd_kafka_consume_start_queue(k->rkt, p, off, k->q) < 0) {
            note_error(k, "assign", rd_kafka_last_error(), NULL);
            n = p;
            break;
        }
    }
    if (n > k->partitions) {
        k->partitions = n;
        metric_set(k->m_partitions, n);
    }
}

static void meta_done(uv_work_t *w, int status)
{
    ksrc_t *k = w->data;
    k->meta_busy = 0;
    if (k->closing) {
        source_finish_close(k);
        return;
    }
    if (status < 0)
        return;
    if (k->meta_err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        note_error(k, "metadata", k->meta_err, NULL);
    } else if (k->meta_partitions <= 0) {
        note_error(k, "metadata", RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, "topic not found");
    } else {
        k->last_ok = now_ms(k);
        k->have_ok = 1;
        if (k->meta_partitions > k->partitions)
            start_partitions(k, k->meta_partitions);
    }
    metric_set(k->m_healthy, k->base.vt->healthy(&k->base));
}

static void on_timer(uv_timer_t *t)
{
    ksrc_t *k = t->data;
    if (k->closing || k->meta_busy)
        return;
    k->meta_busy = 1;
    k->work.data = k;
    if (uv_queue_work(k->loop, &k->work, meta_work, meta_done) < 0)
        k->meta_busy = 0;
    metric_set(k->m_healthy, k->base.vt->healthy(&k->base));
}

/* ---- source interface ------------------------------------------------------- */

static int k_healthy(const source_t *s)
{
    ksrc_t *k = (ksrc_t *)s;
    if (k->partitions == 0 || !k->have_ok || k->hung)
        return 0;
    uint64_t now = now_ms(k);
    if (now - k->last_ok > k->stale_ms)
        return 0;
    return !(k->have_err && k->last_err > k->last_ok);
}

static int64_t k_age(const source_t *s)
{
    ksrc_t *k = (ksrc_t *)s;
    return k->have_msg ? (int64_t)(now_ms(k) - k->last_msg) : -1;
}

static void k_status(const source_t *s, json_t *out)
{
    const ksrc_t *k = (const ksrc_t *)s;
    json_object_set_new(out, "kafka_partitions", json_integer(k->partitions));
    json_object_set_new(out, "kafka_topic", json_string(k->topic));
}

static void on_handle_closed(uv_handle_t *h)
{
    ksrc_t *k = h->data;
    if (--k->handles > 0)
        return;
    void (*cb)(void *) = k->on_closed;
    void *arg = k->closed_arg;
    for (int p = 0; p < k->partitions; p++)
        rd_kafka_consume_stop(k->rkt, p);
    rd_kafka_queue_destroy(k->q);
    rd_kafka_queue_destroy(k->mainq);
    rd_kafka_topic_destroy(k->rkt);
    rd_kafka_destroy(k->rk);
    close(k->pipefd[0]);
    close(k->pipefd[1]);
    free(k->topic);
    free(k);
    if (cb)
        cb(arg);
}

static void source_finish_close(ksrc_t *k)
{
    if (k->meta_busy)
        return; /* meta_done comes back here */
    k->handles = 3;
    uv_close((uv_handle_t *)&k->poll, on_handle_closed);
    uv_close((uv_handle_t *)&k->timer, on_handle_closed);
    uv_close((uv_handle_t *)&k->idle, on_handle_closed);
}

static void k_close(source_t *s, void (*on_closed)(void *), void *arg)
{
    ksrc_t *k = (ksrc_t *)s;
    if (k->closing)
        return;
    k->closing = 1;
    k->on_closed = on_closed;
    k->closed_arg = arg;
    uv_poll_stop(&k->poll);
    uv_timer_stop(&k->timer);
    uv_idle_stop(&k->idle);
    source_finish_close(k);
}

static const source_vtbl_t kafka_vtbl = {
    .name = "kafka",
    .healthy = k_healthy,
    .last_message_age_ms = k_age,
    .status = k_status,
    .close = k_close,
};

/* ---- setup -------------------------------------------------------------------- */

static int set(rd_kafka_conf_t *conf, const char *key, const char *val)
{
    char err[256];
    if (rd_kafka_conf_set(conf, key, val, err, sizeof err) != RD_KAFKA_CONF_OK) {
        log_error("kafka config rejected", "key=%s err=%s", key, log_q(err));
        return -EINVAL;
    }
    return 0;
}

int source_kafka_new(uv_loop_t *loop, const cfg_t *cfg, const source_sink_t *sink, source_t **out)
{
    ksrc_t *k = calloc(1, sizeof(*k));
    rd_kafka_conf_t *conf = NULL;
    char num[32], errstr[512];
    int r = -EINVAL;
    if (k == NULL)
        return -ENOMEM;
    k->pipefd[0] = k->pipefd[1] = -1;
    k->base.vt = &kafka_vtbl;
    k->loop = loop;
    k->sink = *sink;
    k->start_tail = cfg->kafka.start_tail;
    if ((k->topic = strdup(cfg->kafka.topic)) == NULL) {
        r = -ENOMEM;
        goto fail;
    }
    /* Metadata is refreshed a few times within fallback_after_ms so a dead
     * cluster shows as unhealthy well before the relay fallback decides. */
    uint64_t fb = cfg->kafka.fallback_after_ms > 0 ? (uint64_t)cfg->kafka.fallback_after_ms : 5000;
    k->refresh_ms = fb / 4 < 250 ? 250 : fb / 4 > 5000 ? 5000 : fb / 4;
    k->meta_timeout_ms = k->refresh_ms * 2 < 1000 ? 1000 : k->refresh_ms * 2;
    k->stale_ms = k->refresh_ms * 2 + k->meta_timeout_ms;
    /* A fetch unanswered as long as a metadata request may take (plus the
     * time the broker may hold an empty fetch) is as bad as a failed one. */
    k->hung_ms = k->meta_timeout_ms + (uint64_t)cfg->kafka.fetch_wait_max_ms;

    k->m_msgs = metric_labels(
        metric_counter("exchange_fanout_source_messages_total", "Messages received from the data source"),
        "source=\"kafka\"");
    k->m_errors =
        metric_counter("exchange_fanout_source_errors_total", "Data source errors by source and error name");
    k->m_healthy =
        metric_labels(metric_gauge("exchange_fanout_source_healthy", "1 when the data source can deliver"),
                      "source=\"kafka\"");
    k->m_partitions = metric_gauge("exchange_fanout_kafka_partitions", "Kafka partitions consumed");

    conf = rd_kafka_conf_new();
    snprintf(num, sizeof num, "%llu", (unsigned long long)k->refresh_ms);
    if (set(conf, "statistics.interval.ms", num) < 0)
        goto fail;
    snprintf(num, sizeof num, "%d", cfg->kafka.fetch_wait_max_ms);
    /* Low latency over throughput: the broker answers a fetch as soon as one
     * byte is there (fetch.min.bytes=1) or after fetch_wait_max_ms without
     * data (measured idle: 10 ms made each worker fetch 100 times a second,
     * 0.15 CPU-s/s of broker against 0.05 at 500, for no latency); errors and
     * reconnects back off briefly; Nagle off. No group: offsets are never
     * committed (each worker reads the whole topic from its tail). Logs and
     * errors go to the main queue, served on the loop thread. read_committed:
     * a deposed leader's open transaction is aborted by the new leader's
     * producer (fencing) and must never reach a client. */
    if (set(conf, "bootstrap.servers", cfg->kafka.brokers) < 0 ||
        set(conf, "client.id", "exchange-fanout") < 0 || set(conf, "fetch.wait.max.ms", num) < 0 ||
        set(conf, "fetch.min.bytes", "1") < 0 || set(conf, "fetch.error.backoff.ms", "100") < 0 ||
        set(conf, "queued.min.messages", "10000") < 0 || set(conf, "socket.nagle.disable", "true") < 0 ||
        set(conf, "socket.keepalive.enable", "true") < 0 || set(conf, "reconnect.backoff.ms", "100") < 0 ||
        set(conf, "reconnect.backoff.max.ms", "2000") < 0 || set(conf, "enable.partition.eof", "false") < 0 ||
        set(conf, "enable.auto.commit", "false") < 0 || set(conf, "enable.auto.offset.store", "false") < 0 ||
        set(conf, "auto.offset.reset", "latest") < 0 || set(conf, "log.queue", "true") < 0 ||
        set(conf, "isolation.level", "read_committed") < 0)
        goto fail;
    if (cfg->kafka.security_protocol && *cfg->kafka.security_protocol &&
        set(conf, "security.protocol", cfg->kafka.security_protocol) < 0)
        goto fail;
    /* SASL settings only matter (and only pass librdkafka's checks) when the
     * protocol is SASL_PLAINTEXT or SASL_SSL. */
    if (cfg->kafka.security_protocol && strncasecmp(cfg->kafka.security_protocol, "SASL", 4) == 0 &&
        cfg->kafka.sasl_mechanism && *cfg->kafka.sasl_mechanism &&
        (set(conf, "sasl.mechanisms", cfg->kafka.sasl_mechanism) < 0 ||
         set(conf, "sasl.username", cfg->kafka.sasl_username ? cfg->kafka.sasl_username : "") < 0 ||
         set(conf, "sasl.password", cfg->kafka.sasl_password ? cfg->kafka.sasl_password : "") < 0))
        goto fail;
    if (cfg->kafka.ssl_ca && *cfg->kafka.ssl_ca && set(conf, "ssl.ca.location", cfg->kafka.ssl_ca) < 0)
        goto fail;
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_stats_cb(conf, on_kafka_stats);
    rd_kafka_conf_set_opaque(conf, k);
    if ((k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr)) == NULL) {
        log_error("kafka consumer not created", "err=%s", log_q(errstr));
        goto fail;
    }
    conf = NULL; /* owned by rk now */
    k->mainq = rd_kafka_queue_get_main(k->rk);
    rd_kafka_set_log_queue(k->rk, k->mainq);
    if ((k->rkt = rd_kafka_topic_new(k->rk, k->topic, NULL)) == NULL) {
        log_error("kafka topic handle not created", "topic=%s err=%s", log_q(k->topic),
                  rd_kafka_err2name(rd_kafka_last_error()));
        goto fail;
    }
    k->q = rd_kafka_queue_new(k->rk);
    if (pipe2(k->pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
        r = -errno;
        goto fail;
    }
    rd_kafka_queue_io_event_enable(k->q, k->pipefd[1], "1", 1);
    rd_kafka_queue_io_event_enable(k->mainq, k->pipefd[1], "1", 1);
    uv_poll_init(loop, &k->poll, k->pipefd[0]);
    k->poll.data = k;
    uv_timer_init(loop, &k->timer);
    k->timer.data = k;
    uv_idle_init(loop, &k->idle);
    k->idle.data = k;
    uv_poll_start(&k->poll, UV_READABLE, on_poll);
    uv_timer_start(&k->timer, on_timer, 0, k->refresh_ms);
    log_info("kafka source started", "brokers=%s topic=%s start_tail=%d fetch_wait_max_ms=%d",
             log_q(cfg->kafka.brokers), log_q(k->topic), k->start_tail, cfg->kafka.fetch_wait_max_ms);
    *out = &k->base;
    return 0;
fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (k->q)
        rd_kafka_queue_destroy(k->q);
    if (k->mainq)
        rd_kafka_queue_destroy(k->mainq);
    if (k->rkt)
        rd_kafka_topic_destroy(k->rkt);
    if (k->rk)
        rd_kafka_destroy(k->rk);
    if (k->pipefd[0] >= 0) {
        close(k->pipefd[0]);
        close(k->pipefd[1]);
    }
    free(k->topic);
    free(k);
    return r;
}
