/* The relay endpoint of the ingest worker ([relay] listen): a WebSocket
 * stream of every normalized message for the fanout workers, used when Kafka
 * fails and as the only path when no brokers are configured.
 *
 * Protocol (one connection per fanout worker; path /relay):
 *   upgrade   Authorization: Bearer TOKEN, or ?token=TOKEN, when [relay] token
 *             is set; otherwise 401 (counted, reason="token").
 *   client -> {"op":"resume","epoch":E,"since":{"CHANNEL":SEQ,...},"tail":N}
 *             must be the first message; nothing is sent before it.
 *   server -> for every channel in the ring, oldest first: the messages after
 *             the client's position, then every live message as published.
 *             Position: when E is the relay's epoch, since[CHANNEL] (a channel
 *             missing from since starts at 0: it appeared while the client was
 *             away); when E is 0 (the client knows nothing) the last N per
 *             channel (a warm start); when E is another epoch, the whole ring
 *             (the new epoch restarted every channel at seq 1) when E is older,
             nothing when E is newer (this relay is stale; the client fences
             its messages by epoch anyway).
 *   Replay and live are queued in the same loop turn, so the client sees each
 *   channel's seq strictly increasing; where the ring no longer reaches back
 *   to since+1 the client sees a gap (logged here, visible there by seq).
 *   The replay uses at most half of [relay] client_queue_bytes: when more is
 *   missing, each channel keeps its newest part in proportion and the rest
 *   is a gap too (counted in exchange_relay_replay_gaps_total), so a resume
 *   always succeeds instead of overflowing again on every attempt.
 * Messages are the producer's text, framed once per live message and shared by
 * every connection (rbuf). A connection whose unsent bytes would exceed
 * [relay] client_queue_bytes is closed (1008); the worker reconnects and
 * resumes, so one slow fanout never holds memory or time of the others. */
#ifndef INGEST_RELAY_H
#define INGEST_RELAY_H
#include <jansson.h>

#include "ingest.h"

#define RELAY_PATH "/relay"

typedef struct relay_s relay_t;

/* Listen on in->cfg [relay] listen and hook into in (ingest_set_relay).
 * Returns 0 or a negative errno (logged: bad address, port in use). */
int relay_start(ingest_t *in, relay_t **out);
/* Stop listening and close every connection now (exit paths). The memory is
 * released once the loop ran the close callbacks. */
void relay_stop(relay_t *r);
/* {"listen":..,"clients":N,"messages":N} */
json_t *relay_status(const relay_t *r);

#endif
