/* Where the fanout worker's messages come from. A source delivers normalized
 * messages (one JSON object each) on the loop thread through source_sink_t and
 * reports its health. source_kafka.c reads Kafka, source_relay.c the leader's
 * WebSocket relay, and source_switch.c chooses between them. */
#ifndef FANOUT_SOURCE_H
#define FANOUT_SOURCE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "config.h"
#include "hub.h"

typedef struct {
    /* One message; called on the loop thread. data and route are valid
     * during the call; route is NULL when the transport tells nothing beside
     * the bytes (the relay), else Kafka's record key and epoch header. */
    void (*on_message)(void *arg, const char *data, size_t len, const hub_route_t *route);
    /* Optional: messages on channel (len bytes, not terminated) may have been
     * lost before the next one this source delivers on it. */
    void (*on_gap)(void *arg, const char *channel, size_t len);
    void *arg;
} source_sink_t;

typedef struct source_s source_t;

typedef struct {
    const char *name;                                  /* "kafka", "relay" */
    int (*healthy)(const source_t *s);                 /* can deliver now */
    int64_t (*last_message_age_ms)(const source_t *s); /* -1: none yet */
    void (*status)(const source_t *s, json_t *out);    /* extra fields */
    /* Stop delivering and release everything; on_closed (may be NULL) runs
     * once the last libuv handle is closed. */
    void (*close)(source_t *s, void (*on_closed)(void *arg), void *arg);
} source_vtbl_t;

struct source_s {
    const source_vtbl_t *vt;
};

/* Kafka: every partition of [kafka] topic, no consumer group. Each record
 * goes to the sink with its key and `epoch` header (hub_route_t). */
int source_kafka_new(uv_loop_t *loop, const cfg_t *cfg, const source_sink_t *sink, source_t **out);
/* An `epoch` header's value (n bytes, as the producer writes it: decimal
 * digits, PRId64) into *epoch: 0, or -EINVAL for anything else. */
int source_kafka_epoch_header(const void *v, size_t n, int64_t *epoch);

/* Relay (source_relay.c): the leader's relay at addr ("host:port"), with the
 * [relay] token. On every (re)connect it sends the request resume(arg)
 * returns ({"op":"resume",...}, see workers/ingest/relay.h; the source frees
 * it), so the relay replays what this worker has not delivered yet. */
typedef json_t *(*source_resume_fn)(void *arg);
int source_relay_new(uv_loop_t *loop, const cfg_t *cfg, const char *addr, const source_sink_t *sink,
                     source_resume_fn resume, void *resume_arg, source_t **out);
/* Follow a new leader: reconnect to addr (no-op when unchanged or empty). */
int source_relay_set_addr(source_t *s, const char *addr);

/* Switch (source_switch.c): the worker's one source. Kafka while it is
 * healthy, the relay after [kafka] fallback_after_ms of Kafka failing, Kafka
 * again once healthy for recover_after_ms and caught up; relay only when
 * [kafka] brokers is empty. source_name() is the active one. */
int source_switch_new(uv_loop_t *loop, const cfg_t *cfg, const source_sink_t *sink, source_t **out);
/* The supervisor's "leader" message: the current leader's relay address. */
void source_switch_set_leader(source_t *s, const char *relay_addr, int64_t epoch);

static inline const char *source_name(const source_t *s)
{
    return s ? s->vt->name : "none";
}
static inline int source_healthy(const source_t *s)
{
    return s ? s->vt->healthy(s) : 0;
}

#endif
