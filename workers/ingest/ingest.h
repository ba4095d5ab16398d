/* The ingest worker's shared state: the leader epoch, the per-channel table
 * (last seq + a bounded ring of recent messages for the relay), the exchange
 * feeds and the Kafka producer. main.c wires it to the worker runtime;
 * feed.c owns the channel table and one feed per exchange; producer.c the
 * Kafka side; relay.c serves the stream to standby fanouts through
 * ingest_relay_t. */
#ifndef INGEST_H
#define INGEST_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>
#include "config.h"
#include "rbuf.h"
#include "strmap.h"

typedef struct producer_s producer_t;
typedef struct feed_s feed_t;
typedef struct ingest_chan_s ingest_chan_t;
typedef struct backfill_s backfill_t;
struct norm_trade_s;

/* The relay hook. relay.c fills one of these and calls ingest_set_relay();
 * every published message (data and status.*) is handed over on the loop
 * thread, in seq order per channel, after it was queued to Kafka. msg holds
 * the JSON text exactly as produced; take a reference (rbuf_ref) to keep it.
 * epoch_changed: a new epoch began, every channel restarts at seq 1 and the
 * history was cleared. */
typedef struct {
    void *arg;
    void (*publish)(void *arg, const char *channel, int64_t seq, rbuf_t *msg);
    void (*epoch_changed)(void *arg, int64_t epoch);
} ingest_relay_t;

typedef struct ingest_s {
    uv_loop_t *loop;
    const cfg_t *cfg;
    int64_t epoch;
    /* Highest epoch in the topic's tail read at start (tail.c); 0: none seen
     * or not read. A new epoch must be above it. */
    int64_t tail_max_epoch;
    int history;             /* ring size per channel ([relay] history) */
    producer_t *producer;    /* NULL when [kafka] brokers is empty */
    feed_t *feeds[EX_COUNT]; /* NULL for disabled exchanges */
    const ingest_relay_t *relay;
    strmap_t chans;  /* channel table (ingest_chan_t by name) */
    uv_timer_t tick; /* 100 ms: every connector's on_tick */
    int draining;
} ingest_t;

/* ---- feed.c: channel table, publishing -------------------------------- */
int ingest_init(ingest_t *in, uv_loop_t *loop, const cfg_t *cfg, int64_t epoch);
void ingest_free(ingest_t *in); /* channel table only; feeds/producer are stopped by main */
/* Next seq for channel (1, 2, ...): the per-channel counter in this epoch. */
int64_t ingest_next_seq(ingest_t *in, const char *channel);
/* Start a new epoch: every channel restarts at 1, history is cleared, the
 * feeds stamp the new epoch and the relay is told. Same epoch: no-op. */
void ingest_set_epoch(ingest_t *in, int64_t epoch);
/* One normalized message: to Kafka (if configured), into the channel's
 * history ring, and to the relay hook. seq is the message's seq. */
void ingest_publish(ingest_t *in, const char *channel, int64_t seq, const char *json, size_t len);
void ingest_set_relay(ingest_t *in, const ingest_relay_t *relay);

/* History for the relay. Calls cb for every message of channel with
 * seq > since, oldest first; a non-zero return from cb stops. Returns 0
 * when the history covers since+1 (no gap), -ERANGE when messages after
 * `since` were already evicted (cb still gets what is left), -ENOENT for an
 * unknown channel. */
typedef int (*ingest_hist_cb)(void *arg, int64_t seq, rbuf_t *msg);
int ingest_history(ingest_t *in, const char *channel, int64_t since, ingest_hist_cb cb, void *arg);
/* Every known channel with its last seq and latest message (NULL if the
 * ring is disabled); a non-zero return from cb stops. */
typedef int (*ingest_chan_cb)(void *arg, const char *channel, int64_t last_seq, rbuf_t *latest);
void ingest_channels(ingest_t *in, ingest_chan_cb cb, void *arg);

/* Seq of a normalized message read from its text (the `,"seq":N` that
 * msg_begin writes); -1 if absent. Cheap: no JSON parse. */
int64_t ingest_msg_seq(const char *json, size_t len);

/* ---- feed.c: trades, once each ----------------------------------------- */
/* A trade of exchange ex on channel ("trade.EX.SYM"): dropped and counted
 * when its id was already published on the channel (a re-send), held while
 * the channel's backfill runs, else published (seq and epoch stamped now). */
void ingest_trade(ingest_t *in, int ex, const char *channel, const struct norm_trade_s *t);
/* Remember a trade published before (the topic's tail at start): its id
 * joins the channel's set; the newest becomes the channel's last trade. */
void ingest_trade_seed(ingest_t *in, int ex, const char *channel, const char *trade_id, int64_t ts);
/* The channel's last published trade: 0, or -ENOENT when none is known. */
int ingest_trade_last(ingest_t *in, const char *channel, char *id, size_t idsz, int64_t *ts);
/* Hold live trades of channel while its backfill runs; release publishes
 * what was held (de-duplicated against what the backfill published).
 * first_held: the earliest held trade's id/ts, for the backfill to stop at;
 * 0 or -ENOENT. */
void ingest_trade_hold(ingest_t *in, const char *channel);
void ingest_trade_release(ingest_t *in, int ex, const char *channel);
int ingest_trade_first_held(ingest_t *in, const char *channel, char *id, size_t idsz, int64_t *ts);
/* Is id among the live trades held on channel? */
int ingest_trade_held(ingest_t *in, const char *channel, const char *id);
/* Has channel's trade id set seen id? */
int ingest_trade_seen(ingest_t *in, int ex, const char *channel, const char *id);

/* ---- feed.c: one exchange connection ----------------------------------- */
/* Connector + WebSocket client for exchange ex (EX_UPBIT..). */
int feed_start(ingest_t *in, int ex, feed_t **out);
/* Close the connection (the feed's memory is released once the WebSocket
 * client has stopped; the loop must keep running for that). */
void feed_stop(feed_t *f);
void feed_tick(feed_t *f, int64_t now_ms);
void feed_set_epoch(feed_t *f, int64_t epoch);
/* A span of trades the ingest could not backfill: a status.EXCHANGE message
 * with state "gap" and {"channel","from_ts","to_ts","last_trade_id"}, counted
 * in exchange_ingest_backfill_gaps_total. */
void feed_gap(feed_t *f, const char *channel, int64_t from_ts, int64_t to_ts, const char *last_trade_id);
/* {"state":..,"last_message_age_ms":N|null,"messages":N,"reconnects":N};
 * also refreshes the last-message-age gauge. */
json_t *feed_status(feed_t *f, int64_t now_ms);

#endif
