/* The fanout worker's source switch: Kafka normally, the leader's relay
 * while Kafka fails, and back, without losing or repeating a message.
 *
 * How nothing is lost or repeated:
 *  - Every message from either source passes through here on its way to the
 *    hub; we note each channel's highest (epoch, seq) delivered (a cheap scan
 *    of the producer's fixed prefix, no JSON parse). The hub drops seq <= last
 *    per channel and epoch, so two sources may deliver at once.
 *  - To the relay: after Kafka was unhealthy for [kafka] fallback_after_ms we
 *    connect to the leader's relay and send {"op":"resume","epoch":E,
 *    "since":{CHANNEL:SEQ},"tail":N}; the relay replays each channel after
 *    SEQ from its ring, then goes live in the same loop turn (relay.h). Every
 *    reconnect (slow, leader change) resumes the same way.
 *  - The Kafka consumer is never stopped: it keeps its fetch position through
 *    the outage and delivers the backlog when the brokers return (the ingest
 *    producer retried it). While both run, the hub keeps the newest of the
 *    two streams; each is in order and contiguous, so the merge is too.
 *  - Back to Kafka: once Kafka has been healthy for recover_after_ms and has
 *    caught up (it delivered a message at or past the newest seen on its
 *    channel, or the relay has gone quiet), the relay is closed. Kafka then
 *    continues from its own position, which is at the head: no gap.
 *  - With [kafka] brokers empty the relay is the only source, from the start.
 * A gap the relay's ring could not fill (outage longer than [relay] history)
 * stays visible to clients as a jump in seq; it is never papered over. */
#include "source.h"
#include "source_switch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "relay_proto.h"
#include "strmap.h"

#define TICK_MS 100

#define MODE_KAFKA SWITCH_KAFKA
#define MODE_RELAY SWITCH_RELAY

typedef struct track_s track_t;
struct track_s {
    strmap_node_t node; /* in sw_t.chans, keyed by name */
    int64_t epoch, seq;
    char name[];
};

typedef struct {
    source_t base;
    uv_loop_t *loop;
    const cfg_t *cfg;
    source_sink_t up; /* the hub */
    source_t *kafka, *relay;
    int mode;
    char relay_addr[256];
    int64_t leader_epoch;
    /* Kafka health transitions, uv_now ms */
    int kafka_ok;
    uint64_t kafka_since;
    uint64_t kafka_head_at; /* last Kafka message at or past the newest seen; 0 none */
    uint64_t switched_at;
    uint64_t switches_to_relay, switches_to_kafka;
    uv_timer_t tick;
    int closing, pending;
    void (*on_closed)(void *);
    void *closed_arg;
    /* per-channel highest (epoch, seq) delivered */
    strmap_t chans; /* track_t by channel; allocated on the first message */
    int64_t max_epoch;
    metric_t *m_to_relay, *m_to_kafka, *m_active_kafka, *m_active_relay;
} sw_t;

static const source_vtbl_t vt_kafka, vt_relay;

static uint64_t now_ms(sw_t *s)
{
    uv_update_time(s->loop);
    return uv_now(s->loop);
}

/* ---- per-channel positions ----------------------------------------------- */

static int scan_int(const char *json, size_t len, const char *key, size_t klen, int64_t *out)
{
    const char *p = memmem(json, len, key, klen);
    const char *end = json + len;
    int64_t v = 0;
    if (p == NULL)
        return -1;
    p += klen;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (*p - '0');
    *out = v;
    return 0;
}

/* The ingest worker writes every message as {"channel":"C",...,"seq":N,
 * "epoch":N,...} (msg_begin). Inside a JSON string a quote is always
 * escaped, so the first `,"seq":` is the top-level key. -1 if the text does
 * not look like that (the hub judges such messages itself). */
int switch_scan_meta(const char *json, size_t len, const char **ch, size_t *chlen, int64_t *seq,
                     int64_t *epoch)
{
    static const char pre[] = "{\"channel\":\"";
    if (len < sizeof(pre) || memcmp(json, pre, sizeof(pre) - 1) != 0)
        return -1;
    const char *p = json + sizeof(pre) - 1, *end = json + len;
    const char *q = p;
    while (q < end && *q != '"' && *q != '\\')
        q++;
    if (q >= end || *q != '"' || q == p)
        return -1;
    *ch = p;
    *chlen = (size_t)(q - p);
    if (scan_int(q, (size_t)(end - q), ",\"seq\":", 7, seq) < 0 ||
        scan_int(q, (size_t)(end - q), ",\"epoch\":", 9, epoch) < 0)
        return -1;
    return 0;
}

/* Record one message; returns 1 when it is at or past the newest seen on its
 * channel (the source delivering it is at the head), 0 when behind, -1 when
 * it could not be read. *new_epoch (optional): 1 when it starts a higher
 * epoch on a channel already seen in a lower one. */
static int track(sw_t *s, const char *json, size_t len, int *new_epoch)
{
    const char *ch;
    size_t n;
    int64_t seq, epoch;
    if (new_epoch)
        *new_epoch = 0;
    if (switch_scan_meta(json, len, &ch, &n, &seq, &epoch) < 0)
        return -1;
    if (s->chans.nbuckets == 0 && strmap_init(&s->chans, 256) < 0)
        return -1;
    strmap_node_t *e = strmap_get(&s->chans, ch, n);
    track_t *t = e != NULL ? STRMAP_ENTRY(e, track_t, node) : NULL;
    if (t == NULL) {
        if ((t = calloc(1, sizeof(*t) + n + 1)) == NULL)
            return -1;
        memcpy(t->name, ch, n);
        strmap_put(&s->chans, &t->node, t->name, n);
        t->epoch = -1; /* nothing seen yet */
    }
    if (epoch > s->max_epoch)
        s->max_epoch = epoch;
    /* Positions are (epoch, seq) per channel: a higher epoch is ahead
     * whatever its seq (each epoch restarts at 1). */
    if (epoch < t->epoch || (epoch == t->epoch && seq < t->seq))
        return 0;
    if (new_epoch && t->epoch >= 0 && epoch > t->epoch)
        *new_epoch = 1;
    t->epoch = epoch;
    t->seq = seq;
    return 1;
}

static void track_entry_free(strmap_node_t *n)
{
    free(STRMAP_ENTRY(n, track_t, node));
}

static void track_free(sw_t *s)
{
    strmap_clear(&s->chans, track_entry_free);
}

/* The relay's resume request: our position on every channel of the newest
 * epoch we have seen. */
static json_t *build_resume(void *arg)
{
    sw_t *s = arg;
    json_t *since = json_object();
    size_t b = 0;
    for (strmap_node_t *e = strmap_next(&s->chans, &b, NULL); e != NULL; e = strmap_next(&s->chans, &b, e)) {
        const track_t *t = STRMAP_ENTRY(e, track_t, node);
        if (t->epoch == s->max_epoch)
            json_object_set_new(since, t->name, json_integer(t->seq));
    }
    int tail = s->cfg->fanout.history > 0 ? s->cfg->fanout.history : 1;
    log_info("relay resume", "epoch=%" PRId64 " channels=%zu", s->max_epoch, json_object_size(since));
    return relay_proto_resume_new(s->max_epoch, since, tail);
}

/* ---- sinks (loop thread) ----------------------------------------------------- */

static void from_kafka(void *arg, const char *data, size_t len, const hub_route_t *route)
{
    sw_t *s = arg;
    if (s->closing)
        return;
    if (track(s, data, len, NULL) == 1)
        s->kafka_head_at = now_ms(s);
    s->up.on_message(s->up.arg, data, len, route);
}

static void from_relay(void *arg, const char *data, size_t len, const hub_route_t *route)
{
    sw_t *s = arg;
    if (s->closing)
        return;
    int new_epoch;
    (void)track(s, data, len, &new_epoch);
    if (new_epoch && s->up.on_gap != NULL) {
        /* The relay serves its leader's epoch only: the end of the older
         * epoch on this channel came (if at all) from another relay or from
         * Kafka, and may have been cut off when that source went away. */
        const char *ch;
        size_t n;
        int64_t seq, epoch;
        if (switch_scan_meta(data, len, &ch, &n, &seq, &epoch) == 0)
            s->up.on_gap(s->up.arg, ch, n);
    }
    s->up.on_message(s->up.arg, data, len, route);
}

/* ---- switching ------------------------------------------------------------------- */

static void set_active_metrics(sw_t *s)
{
    metric_set(s->m_active_kafka, s->mode == MODE_KAFKA);
    metric_set(s->m_active_relay, s->mode == MODE_RELAY);
}

static void ensure_relay(sw_t *s)
{
    if (s->relay != NULL || s->closing || s->relay_addr[0] == '\0')
        return;
    source_sink_t sink = {.on_message = from_relay, .arg = s};
    if (source_relay_new(s->loop, s->cfg, s->relay_addr, &sink, build_resume, s, &s->relay) < 0)
        s->relay = NULL; /* logged; the next tick tries again */
}

static void on_source_closed(void *arg)
{
    sw_t *s = arg;
    if (--s->pending > 0 || !s->closing)
        return;
    void (*cb)(void *) = s->on_closed;
    void *cbarg = s->closed_arg;
    track_free(s);
    free(s);
    if (cb)
        cb(cbarg);
}

static void to_relay(sw_t *s, const char *why)
{
    s->mode = MODE_RELAY;
    s->base.vt = &vt_relay;
    s->switched_at = now_ms(s);
    s->switches_to_relay++;
    metric_inc(s->m_to_relay);
    set_active_metrics(s);
    log_warn("source switched to the relay", "why=%s relay=%s", why, log_q(s->relay_addr));
    ensure_relay(s);
}

static void to_kafka(sw_t *s, const char *why)
{
    s->mode = MODE_KAFKA;
    s->base.vt = &vt_kafka;
    s->switched_at = now_ms(s);
    s->switches_to_kafka++;
    metric_inc(s->m_to_kafka);
    set_active_metrics(s);
    log_info("source switched back to kafka", "why=%s", why);
    if (s->relay != NULL) {
        s->pending++;
        s->relay->vt->close(s->relay, on_source_closed, s);
        s->relay = NULL;
    }
}

static void on_tick(uv_timer_t *t)
{
    sw_t *s = t->data;
    if (s->closing)
        return;
    uint64_t now = now_ms(s);
    if (s->kafka == NULL) {
        ensure_relay(s); /* relay only */
        return;
    }
    int ok = source_healthy(s->kafka);
    if (ok != s->kafka_ok) {
        s->kafka_ok = ok;
        s->kafka_since = now;
        log_info(ok ? "kafka source healthy" : "kafka source unhealthy", "mode=%s",
                 s->mode == MODE_KAFKA ? "kafka" : "relay");
    }
    int64_t relay_age = s->relay ? s->relay->vt->last_message_age_ms(s->relay) : -1;
    switch_input_t in = {
        .mode = s->mode,
        .have_kafka = 1,
        .kafka_ok = ok,
        .kafka_held_ms = now - s->kafka_since,
        .kafka_caught_up = s->kafka_head_at > 0 && s->kafka_head_at >= s->kafka_since,
        .relay_quiet = s->relay == NULL || !source_healthy(s->relay) || relay_age < 0 ||
                       relay_age >= (int64_t)s->cfg->kafka.recover_after_ms,
        .fallback_after_ms = s->cfg->kafka.fallback_after_ms,
        .recover_after_ms = s->cfg->kafka.recover_after_ms,
    };
    const char *why = NULL;
    int mode = switch_decide(&in, &why);
    if (mode == MODE_RELAY && s->mode == MODE_KAFKA)
        to_relay(s, why);
    else if (mode == MODE_KAFKA && s->mode == MODE_RELAY)
        to_kafka(s, why);
    if (s->mode == MODE_RELAY)
        ensure_relay(s);
}

int switch_decide(const switch_input_t *in, const char **why)
{
    if (!in->have_kafka)
        return SWITCH_RELAY;
    if (in->mode == SWITCH_KAFKA) {
        if (!in->kafka_ok && in->kafka_held_ms >= (uint64_t)in->fallback_after_ms) {
            *why = "kafka unhealthy for fallback_after_ms";
            return SWITCH_RELAY;
        }
        return SWITCH_KAFKA;
    }
    if (!in->kafka_ok || in->kafka_held_ms < (uint64_t)in->recover_after_ms)
        return SWITCH_RELAY;
    /* Healthy long enough; also caught up? Until then the relay stays and
     * the hub keeps the newer of the two streams. */
    if (in->kafka_caught_up) {
        *why = "kafka healthy for recover_after_ms and caught up";
        return SWITCH_KAFKA;
    }
    if (in->relay_quiet) {
        *why = "kafka healthy for recover_after_ms, relay quiet";
        return SWITCH_KAFKA;
    }
    return SWITCH_RELAY;
}

/* ---- source interface ------------------------------------------------------------------ */

static int sw_healthy(const source_t *base)
{
    const sw_t *s = (const sw_t *)base;
    if (s->mode == MODE_KAFKA)
        return source_healthy(s->kafka);
    return source_healthy(s->relay) || source_healthy(s->kafka);
}

static int64_t sw_age(const source_t *base)
{
    const sw_t *s = (const sw_t *)base;
    int64_t a = s->kafka ? s->kafka->vt->last_message_age_ms(s->kafka) : -1;
    int64_t b = s->relay ? s->relay->vt->last_message_age_ms(s->relay) : -1;
    if (a < 0)
        return b;
    return b >= 0 && b < a ? b : a;
}

static void sw_status(const source_t *base, json_t *out)
{
    const sw_t *s = (const sw_t *)base;
    if (s->kafka != NULL) {
        s->kafka->vt->status(s->kafka, out);
        json_object_set_new(out, "kafka_healthy", json_boolean(source_healthy(s->kafka)));
    }
    if (s->relay != NULL)
        s->relay->vt->status(s->relay, out);
    else
        json_object_set_new(out, "relay", json_pack("{s:s, s:b}", "addr", s->relay_addr, "connected", 0));
    json_object_set_new(out, "source_switches",
                        json_pack("{s:I, s:I}", "relay", (json_int_t)s->switches_to_relay, "kafka",
                                  (json_int_t)s->switches_to_kafka));
}

static void on_tick_closed(uv_handle_t *h)
{
    on_source_closed(h->data);
}

static void sw_close(source_t *base, void (*on_closed)(void *), void *arg)
{
    sw_t *s = (sw_t *)base;
    if (s->closing)
        return;
    s->closing = 1;
    s->on_closed = on_closed;
    s->closed_arg = arg;
    s->pending++; /* the tick timer */
    if (s->kafka != NULL) {
        s->pending++;
        s->kafka->vt->close(s->kafka, on_source_closed, s);
        s->kafka = NULL;
    }
    if (s->relay != NULL) {
        s->pending++;
        s->relay->vt->close(s->relay, on_source_closed, s);
        s->relay = NULL;
    }
    uv_close((uv_handle_t *)&s->tick, on_tick_closed);
}

static const source_vtbl_t vt_kafka = {
    .name = "kafka",
    .healthy = sw_healthy,
    .last_message_age_ms = sw_age,
    .status = sw_status,
    .close = sw_close,
};
static const source_vtbl_t vt_relay = {
    .name = "relay",
    .healthy = sw_healthy,
    .last_message_age_ms = sw_age,
    .status = sw_status,
    .close = sw_close,
};

void source_switch_set_leader(source_t *base, const char *relay_addr, int64_t epoch)
{
    sw_t *s = (sw_t *)base;
    if (s == NULL || s->closing || relay_addr == NULL || relay_addr[0] == '\0')
        return; /* no leader right now: keep the last known relay */
    s->leader_epoch = epoch;
    if (strcmp(relay_addr, s->relay_addr) == 0)
        return;
    log_info("leader relay address", "relay=%s epoch=%" PRId64, log_q(relay_addr), epoch);
    snprintf(s->relay_addr, sizeof s->relay_addr, "%s", relay_addr);
    if (s->relay != NULL)
        (void)source_relay_set_addr(s->relay, s->relay_addr);
    else if (s->mode == MODE_RELAY)
        ensure_relay(s);
}

int source_switch_new(uv_loop_t *loop, const cfg_t *cfg, const source_sink_t *sink, source_t **out)
{
    sw_t *s = calloc(1, sizeof(*s));
    int r;
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->cfg = cfg;
    s->up = *sink;
    metric_t *sw = metric_counter("exchange_fanout_source_switches_total",
                                  "Data source switches, by the source switched to");
    s->m_to_relay = metric_labels(sw, "to=\"relay\"");
    s->m_to_kafka = metric_labels(sw, "to=\"kafka\"");
    metric_t *act = metric_gauge("exchange_fanout_source_active", "1 for the data source in use");
    s->m_active_kafka = metric_labels(act, "source=\"kafka\"");
    s->m_active_relay = metric_labels(act, "source=\"relay\"");
    metric_add(s->m_to_relay, 0);
    metric_add(s->m_to_kafka, 0);
    if (cfg->kafka.brokers != NULL && cfg->kafka.brokers[0] != '\0') {
        source_sink_t ks = {.on_message = from_kafka, .arg = s};
        if ((r = source_kafka_new(loop, cfg, &ks, &s->kafka)) < 0) {
            free(s);
            return r;
        }
        s->mode = MODE_KAFKA;
        s->base.vt = &vt_kafka;
    } else {
        log_info("no kafka brokers: the leader's relay is the only source", LOG_NOFIELDS);
        s->mode = MODE_RELAY;
        s->base.vt = &vt_relay;
    }
    s->kafka_since = now_ms(s); /* Kafka counts as unhealthy from the start */
    set_active_metrics(s);
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    *out = &s->base;
    return 0;
}
