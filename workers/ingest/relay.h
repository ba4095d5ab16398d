/* The relay endpoint of the ingest worker ([relay] listen): a WebSocket
 * stream of every normalized message for the fanout workers, used when Kafka
 * fails and as the only path when no brokers are configured.
 *
 * The protocol (path, resume request, close codes) is common/relay_proto.h.
 * A resuming client is caught up from the channel rings in paced steps
 * (each fills its queue to at most half of [relay] client_queue_bytes; the
 * next runs once it has read that), then goes live in the same loop turn,
 * so it sees each channel's seq strictly increasing and misses nothing the
 * rings ([relay] history per channel) still hold. Where the ring no longer
 * reaches back to since+1 the client sees a gap (logged here, counted in
 * exchange_relay_replay_gaps_total, visible there by seq).
 * Messages are the producer's text, framed once per live message and shared by
 * every connection (rbuf). A connection whose unsent bytes would exceed
 * [relay] client_queue_bytes is closed (RELAY_CLOSE_POLICY); the worker reconnects and
 * resumes, so one slow fanout never holds memory or time of the others. */
#ifndef INGEST_RELAY_H
#define INGEST_RELAY_H
#include <jansson.h>

#include "ingest.h"

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
