/* The fanout hub: channels (latest snapshot, short history across epochs,
 * per-channel epoch/seq order), client subscriptions (exact names and '*'
 * patterns), resume from a client's position, and the broadcast of each
 * message, framed once, to every subscriber. Pure logic: clients are opaque
 * pointers and frames leave through hub_ops_t.send, so unit tests drive it
 * with fake clients. */
#ifndef FANOUT_HUB_H
#define FANOUT_HUB_H
#include <stddef.h>
#include <stdint.h>
#include "rbuf.h"

typedef struct hub_s hub_t;
typedef struct hub_client_s hub_client_t;
typedef struct hub_channel_s hub_channel_t;

typedef struct {
    /* Queue a framed message on a client. tag != NULL: the frame may replace
     * a queued, unstarted frame with the same tag (conflation). Returns >= 0
     * when queued (1: replaced an older frame), < 0 when the client could not
     * take it (the callee closes slow clients; the hub just moves on). */
    int (*send)(void *user, rbuf_t *frame, const void *tag);
    /* Optional: a message was accepted that does not follow the channel's
     * previous one without loss (seq jump, a new epoch not starting at 1, a
     * break the source reported). from_* is the previous position. */
    void (*gap)(const char *channel, int64_t from_epoch, int64_t from_seq, int64_t epoch, int64_t seq);
    /* Optional: the bytes a resume's replay may queue on the client now
     * (*idle = 1 when nothing is queued: then one frame goes even when it is
     * bigger). NULL: every replay is queued at once. A replay that does not
     * fit waits for hub_replay_step; live messages of that channel wait for
     * it in the history, so the client sees them in order, none missed. */
    size_t (*room)(void *user, int *idle);
    /* Optional: a replay waits for room; call hub_replay_step soon. */
    void (*replay_wanted)(void);
    /* Optional: the history moved past a waiting replay (its client read
     * too slowly): after (epoch, seq) it gets (next_epoch, next_seq). */
    void (*replay_gap)(void *user, const char *channel, int64_t epoch, int64_t seq, int64_t next_epoch,
                       int64_t next_seq);
} hub_ops_t;

typedef struct {
    int history;           /* messages kept per channel (0: none) */
    int max_subscriptions; /* per client (0: unlimited) */
} hub_opts_t;

/* Outcome of hub_publish. */
enum {
    HUB_ACCEPTED = 0,
    HUB_FENCED = 1,    /* epoch below the channel's last */
    HUB_DUPLICATE = 2, /* seq not above the channel's last in this epoch */
    HUB_MISMATCH = 3,  /* the transport's key or epoch differs from the message's */
};

/* What the transport says about a message beside its bytes: a Kafka record's
 * key (its channel) and its `epoch` header. The relay has neither. */
typedef enum {
    HUB_EPOCH_NONE = 0, /* no epoch header: nothing to check */
    HUB_EPOCH_BAD,      /* a header that is not a decimal int64: never matches */
    HUB_EPOCH_SET,      /* a header holding epoch */
} hub_epoch_hdr_t;

typedef struct {
    const char *key; /* not terminated; NULL: no key */
    size_t key_len;
    hub_epoch_hdr_t epoch_hdr;
    int64_t epoch; /* HUB_EPOCH_SET */
} hub_route_t;

/* A position on a channel. has_epoch 0: a legacy since, a seq in the
 * channel's current epoch on this instance. */
typedef struct {
    int64_t epoch, seq;
    int has_epoch;
} hub_pos_t;

/* A client's resume position on one exact channel. */
typedef struct {
    const char *channel;
    hub_pos_t pos;
} hub_since_t;

typedef struct {
    uint64_t accepted, fenced, duplicate, invalid, mismatched;
    uint64_t gaps;          /* accepted messages not continuous with the previous */
    uint64_t deliveries;    /* frames handed to clients */
    uint64_t conflated;     /* sends that replaced an older frame */
    uint64_t send_failures; /* sends refused (slow or closing clients) */
    uint64_t replay_gaps;   /* replays that found the history moved past them (too slow a reader) */
} hub_stats_t;

hub_t *hub_new(const hub_opts_t *opts, const hub_ops_t *ops);
void hub_free(hub_t *h); /* clients must be freed first */
const hub_stats_t *hub_stats(const hub_t *h);
int64_t hub_max_epoch(const hub_t *h); /* highest epoch accepted on any channel */
int hub_channel_count(const hub_t *h); /* known channels (with data) */
int hub_max_subscriptions(const hub_t *h);

/* One normalized message from the source. Parses the routing fields, checks
 * them against route (may be NULL: nothing to check; a key must be the
 * channel, an epoch header the epoch), orders it on its channel (a higher
 * epoch, any seq; or the same epoch, a higher seq; anything else is
 * dropped), frames it once, stores snapshot/history, sends to subscribers.
 * Returns HUB_ACCEPTED/HUB_FENCED/HUB_DUPLICATE/HUB_MISMATCH, or -EINVAL for
 * a message without valid routing fields. ts_out/recv_ts_out (may be NULL)
 * get ts/recv_ts. */
int hub_publish(hub_t *h, const char *json, size_t len, const hub_route_t *route, int64_t *ts_out,
                int64_t *recv_ts_out);

/* Clients. */
hub_client_t *hub_client_new(hub_t *h, void *user);
void hub_client_free(hub_client_t *c); /* drops every subscription */
void *hub_client_user(const hub_client_t *c);
hub_t *hub_client_hub(const hub_client_t *c);
int hub_client_sub_count(const hub_client_t *c);
const char *hub_client_sub(const hub_client_t *c, int i);
int hub_client_has_sub(const hub_client_t *c, const char *pattern);
/* Queue a reply (framed here, never conflated). */
int hub_client_send_text(hub_client_t *c, const char *text, size_t len);

/* The source may have lost messages on channel (len bytes, not terminated)
 * before its next one: that message will not vouch for continuity. */
void hub_channel_break(hub_t *h, const char *channel, size_t len);

/* The "recovered" answer for a resume of c from since on an exact channel,
 * given before hub_subscribe acts on it: 1 when this instance holds every
 * message the client missed (it is in the history, contiguous from since, or
 * since is at or ahead of the channel's newest message here and the channel
 * has data), else 0 (the snapshot follows). On a channel c already covers
 * nothing is replayed: 1 only when since is at or past the newest. */
int hub_resume_check(const hub_client_t *c, const char *channel, const hub_pos_t *since);
/* Subscribe to a channel or pattern (validated by the caller). Each channel
 * the subscription newly covers gets, when since (n entries, exact names)
 * names it, the history after that position (recoverable) or nothing (since
 * ahead of this instance) or the snapshot (gap); otherwise its snapshot.
 * No message at or below a since is ever sent to c on that channel (one
 * ahead of this instance is kept as c's floor there, also across an
 * unsubscribe). Returns 0, 1 when already subscribed (nothing sent, a since
 * only sets the floor), -E2BIG over max_subscriptions, -ENOMEM. */
int hub_subscribe(hub_client_t *c, const char *pattern, const hub_since_t *since, int n);
/* 0, or -ENOENT when not subscribed. */
int hub_unsubscribe(hub_client_t *c, const char *pattern);
/* Continue the replays waiting for room (ops.room); returns how many still
 * wait. */
int hub_replay_step(hub_t *h);

/* Channel slots 0..hub_channel_slots()-1; hub_channel_known() gives the name
 * of a slot's channel when it has data, else NULL (subscribed, no data yet). */
int hub_channel_slots(const hub_t *h);
const char *hub_channel_known(const hub_t *h, int i);

#endif
