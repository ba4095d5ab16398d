/* Reading the topic's tail (tail.h). The consumer runs on a libuv worker
 * thread (uv_queue_work): it touches nothing but its own result, handed to
 * the loop thread in the after-work callback. */
#include "tail.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "msg.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tail_parse_record(const char *json, size_t len, tail_trade_t *t, int64_t *epoch)
{
    msg_meta_t m;
    if (msg_parse_meta(json, len, &m) < 0)
        return -EINVAL;
    *epoch = m.epoch;
    if (strcmp(m.type, "trade") != 0)
        return 0;
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *id = root ? json_object_get(root, "trade_id") : NULL;
    int r = 0;
    if (json_is_string(id) && json_string_length(id) < sizeof(t->trade_id)) {
        memset(t, 0, sizeof(*t));
        snprintf(t->channel, sizeof(t->channel), "%s", m.channel);
        memcpy(t->trade_id, json_string_value(id), json_string_length(id) + 1);
        t->ts = m.ts;
        t->epoch = m.epoch;
        t->seq = m.seq;
        r = 1;
    }
    json_decref(root);
    return r;
}

void tail_result_free(tail_result_t *res)
{
    free(res->trades);
    res->trades = NULL;
    res->ntrades = 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, tail_result_t *res)
{
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) == RD_KAFKA_CONF_OK)
        return 0;
    snprintf(res->detail, sizeof(res->detail), "kafka property %s: %.150s", k, err);
    return -EINVAL;
}

static int nonempty(const char *s)
{
    return s != NULL && *s != '\0';
}

static int add_trade(tail_result_t *res, int *cap, const tail_trade_t *t)
{
    if (res->ntrades == *cap) {
        int n = *cap ? *cap * 2 : 1024;
        tail_trade_t *v = realloc(res->trades, sizeof(*v) * (size_t)n);
        if (v == NULL)
            return -ENOMEM;
        res->trades = v;
        *cap = n;
    }
    res->trades[res->ntrades++] = *t;
    return 0;
}

/* The epoch header the producer writes ("epoch", decimal text). */
static int64_t header_epoch(rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t n;
    char buf[24];
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, "epoch", &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR || n == 0 ||
        n >= sizeof(buf))
        return 0;
    memcpy(buf, v, n);
    buf[n] = '\0';
    return strtoll(buf, NULL, 10);
}

int tail_read(const cfg_t *cfg, int per_partition, int timeout_ms, tail_result_t *res)
{
    char err[512];
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    const rd_kafka_metadata_t *md = NULL;
    int64_t start = mono_ms(), deadline = start + timeout_ms, *ends = NULL;
    int cap = 0, r = -EINVAL, left = 0;
    memset(res, 0, sizeof(*res));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", cfg->kafka.brokers, res) < 0 ||
        conf_set(conf, "client.id", "exchange-ingest-tail", res) < 0 ||
        conf_set(conf, "group.id", "exchange-ingest-tail", res) < 0 ||
        conf_set(conf, "isolation.level", "read_committed", res) < 0 ||
        conf_set(conf, "enable.auto.commit", "false", res) < 0 ||
        conf_set(conf, "enable.partition.eof", "true", res) < 0 ||
        conf_set(conf, "reconnect.backoff.max.ms", "500", res) < 0 ||
        (nonempty(cfg->kafka.security_protocol) &&
         conf_set(conf, "security.protocol", cfg->kafka.security_protocol, res) < 0) ||
        (nonempty(cfg->kafka.security_protocol) &&
         strncasecmp(cfg->kafka.security_protocol, "SASL", 4) == 0 && nonempty(cfg->kafka.sasl_mechanism) &&
         (conf_set(conf, "sasl.mechanisms", cfg->kafka.sasl_mechanism, res) < 0 ||
          conf_set(conf, "sasl.username", cfg->kafka.sasl_username ? cfg->kafka.sasl_username : "", res) <
              0 ||
          conf_set(conf, "sasl.password", cfg->kafka.sasl_password ? cfg->kafka.sasl_password : "", res) <
              0)) ||
        (nonempty(cfg->kafka.ssl_ca) && conf_set(conf, "ssl.ca.location", cfg->kafka.ssl_ca, res) < 0)) {
        rd_kafka_conf_destroy(conf);
        goto out;
    }
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(res->detail, sizeof(res->detail), "rd_kafka_new: %.200s", err);
        goto out;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, cfg->kafka.topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, (int)(deadline - mono_ms()));
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1) {
        r = e == RD_KAFKA_RESP_ERR__TIMED_OUT || e == RD_KAFKA_RESP_ERR__TRANSPORT ? -ETIMEDOUT : -EIO;
        snprintf(res->detail, sizeof(res->detail), "metadata: %s", rd_kafka_err2name(e));
        goto out;
    }
    if (md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || md->topics[0].partition_cnt == 0) {
        r = 0; /* no topic yet: nothing was published */
        snprintf(res->detail, sizeof(res->detail), "topic does not exist yet");
        goto out;
    }
    int np = md->topics[0].partition_cnt;
    parts = rd_kafka_topic_partition_list_new(np);
    ends = calloc((size_t)np, sizeof(*ends));
    if (ends == NULL) {
        r = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < np; i++) {
        int32_t p = md->topics[0].partitions[i].id;
        int64_t lo = 0, hi = 0;
        int ms = (int)(deadline - mono_ms());
        e = rd_kafka_query_watermark_offsets(rk, cfg->kafka.topic, p, &lo, &hi, ms > 0 ? ms : 1);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            r = e == RD_KAFKA_RESP_ERR__TIMED_OUT ? -ETIMEDOUT : -EIO;
            snprintf(res->detail, sizeof(res->detail), "watermarks of partition %d: %s", (int)p,
                     rd_kafka_err2name(e));
            goto out;
        }
        ends[i] = hi;
        int64_t from = hi - per_partition > lo ? hi - per_partition : lo;
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(parts, cfg->kafka.topic, p)->offset = from;
            left++;
        }
    }
    res->partitions = np;
    if (left == 0) {
        r = 0;
        goto out;
    }
    if ((e = rd_kafka_assign(rk, parts)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        r = -EIO;
        snprintf(res->detail, sizeof(res->detail), "assign: %s", rd_kafka_err2name(e));
        goto out;
    }
    while (left > 0) {
        int ms = (int)(deadline - mono_ms());
        if (ms <= 0) {
            r = -ETIMEDOUT;
            snprintf(res->detail, sizeof(res->detail), "%d partitions not read to their end in time", left);
            goto out;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, ms < 100 ? ms : 100);
        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            left--;
        } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->payload != NULL) {
            tail_trade_t t;
            int64_t ep = header_epoch(m), mep = 0;
            res->records++;
            int k = tail_parse_record(m->payload, m->len, &t, &mep);
            if (mep > ep)
                ep = mep;
            if (ep > res->max_epoch)
                res->max_epoch = ep;
            if (k == 1 && add_trade(res, &cap, &t) < 0) {
                rd_kafka_message_destroy(m);
                r = -ENOMEM;
                goto out;
            }
        }
        rd_kafka_message_destroy(m);
    }
    r = 0;
out:
    res->err = r;
    res->elapsed_ms = mono_ms() - start;
    free(ends);
    if (parts != NULL)
        rd_kafka_topic_partition_list_destroy(parts);
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    if (rk != NULL) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    return r;
}

typedef struct {
    uv_work_t work;
    cfg_t cfg; /* the [kafka] strings copied: a reload may free the loop's cfg meanwhile */
    int per_partition, timeout_ms;
    tail_done_cb done;
    void *arg;
    tail_result_t res;
} tail_job_t;

/* Runs on a libuv worker thread. */
static void tail_work(uv_work_t *w)
{
    tail_job_t *j = w->data;
    (void)tail_read(&j->cfg, j->per_partition, j->timeout_ms, &j->res);
}

static void job_free(tail_job_t *j)
{
    char **s[] = {&j->cfg.kafka.brokers,        &j->cfg.kafka.topic,         &j->cfg.kafka.security_protocol,
                  &j->cfg.kafka.sasl_mechanism, &j->cfg.kafka.sasl_username, &j->cfg.kafka.sasl_password,
                  &j->cfg.kafka.ssl_ca};
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        free(*s[i]);
    free(j);
}

static char *dup0(const char *s)
{
    return strdup(s != NULL ? s : "");
}

static void tail_after(uv_work_t *w, int status)
{
    tail_job_t *j = w->data;
    if (status < 0) {
        j->res.err = status;
        snprintf(j->res.detail, sizeof(j->res.detail), "%s", uv_strerror(status));
    }
    j->done(j->arg, &j->res);
    tail_result_free(&j->res);
    job_free(j);
}

int tail_start(uv_loop_t *loop, const cfg_t *cfg, int per_partition, int timeout_ms, tail_done_cb done,
               void *arg)
{
    tail_job_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    j->cfg.kafka.brokers = dup0(cfg->kafka.brokers);
    j->cfg.kafka.topic = dup0(cfg->kafka.topic);
    j->cfg.kafka.security_protocol = dup0(cfg->kafka.security_protocol);
    j->cfg.kafka.sasl_mechanism = dup0(cfg->kafka.sasl_mechanism);
    j->cfg.kafka.sasl_username = dup0(cfg->kafka.sasl_username);
    j->cfg.kafka.sasl_password = dup0(cfg->kafka.sasl_password);
    j->cfg.kafka.ssl_ca = dup0(cfg->kafka.ssl_ca);
    if (!j->cfg.kafka.brokers || !j->cfg.kafka.topic || !j->cfg.kafka.security_protocol ||
        !j->cfg.kafka.sasl_mechanism || !j->cfg.kafka.sasl_username || !j->cfg.kafka.sasl_password ||
        !j->cfg.kafka.ssl_ca) {
        job_free(j);
        return -ENOMEM;
    }
    j->per_partition = per_partition;
    j->timeout_ms = timeout_ms;
    j->done = done;
    j->arg = arg;
    j->work.data = j;
    int r = uv_queue_work(loop, &j->work, tail_work, tail_after);
    if (r < 0)
        job_free(j);
    return r;
}
