/* The relay protocol, shared by its two ends: the leader's ingest serves it
 * (workers/ingest/relay.c) and each fanout's relay source speaks it
 * (workers/fanout/source_relay.c, source_switch.c builds the request).
 *
 * One connection per fanout worker, on RELAY_PATH:
 *   upgrade   Authorization: Bearer TOKEN, or ?token=TOKEN, when [relay] token
 *             is set; otherwise 401.
 *   client -> {"op":"resume","epoch":E,"since":{"CHANNEL":SEQ,...},"tail":N}
 *             must be the first message; nothing is sent before it.
 *   server -> for every channel, oldest first: the messages after the
 *             client's position, then every live message as published.
 *             Position: when E is the relay's epoch, since[CHANNEL] (a channel
 *             missing from since starts at 0); when E is 0 (the client knows
 *             nothing) the last N per channel; when E is older, the whole ring
 *             (the new epoch restarted every channel at seq 1); when E is
 *             newer, nothing (this relay is stale; the client fences it).
 *   close     RELAY_CLOSE_POLICY when the connection's queue limit is
 *             exceeded or the first message is not a resume request;
 *             RELAY_CLOSE_ERROR when the relay cannot send. The client
 *             reconnects and resumes in every case. */
#ifndef RELAY_PROTO_H
#define RELAY_PROTO_H
#include <jansson.h>
#include <stdint.h>

#define RELAY_PATH "/relay"

/* For a client that fell behind 1013 (try again later) would say it best,
 * but wslay, under the fanout's wsclient, only accepts 1000-1011 and
 * 3000-4999 and would report a protocol error instead. */
enum {
    RELAY_CLOSE_POLICY = 1008, /* over the queue limit, or not a resume request */
    RELAY_CLOSE_ERROR = 1011,  /* the relay could not send: resume again */
};

/* A parsed resume request. since is borrowed from the request. */
typedef struct {
    int64_t epoch;       /* 0: the client knows nothing (warm start) */
    const json_t *since; /* {"CHANNEL":SEQ,...}; NULL when absent */
    int64_t tail;        /* messages per channel for a warm start (default 1) */
} relay_resume_t;

/* {"op":"resume","epoch":E,"since":since,"tail":N}: takes since (NULL is
 * {}); tail < 0 leaves "tail" out. NULL when out of memory. */
json_t *relay_proto_resume_new(int64_t epoch, json_t *since, int64_t tail);
/* 0 and *out filled when req is a resume request, else -EINVAL. A missing
 * or non-integer epoch is 0; a missing or negative tail is 1. */
int relay_proto_resume_parse(const json_t *req, relay_resume_t *out);
/* The client's position on channel: since[channel], 0 when absent. */
int64_t relay_proto_resume_since(const relay_resume_t *r, const char *channel);

#endif
