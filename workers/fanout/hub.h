/* The fanout hub: channels (latest snapshot, short history, epoch/seq
 * fencing), client subscriptions (exact names and '*' patterns) and the
 * broadcast of each message, framed once, to every subscriber. Pure logic:
 * clients are opaque pointers and frames leave through hub_ops_t.send, so
 * unit tests drive it with fake clients. */
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
} hub_ops_t;

typedef struct {
    int history;           /* messages kept per channel (0: none) */
    int max_subscriptions; /* per client (0: unlimited) */
} hub_opts_t;

/* Outcome of hub_publish. */
enum {
    HUB_ACCEPTED = 0,
    HUB_FENCED = 1,    /* epoch below the highest seen */
    HUB_DUPLICATE = 2, /* seq not above the channel's last in this epoch */
};

typedef struct {
    uint64_t accepted, fenced, duplicate, invalid;
    uint64_t deliveries;    /* frames handed to clients */
    uint64_t conflated;     /* sends that replaced an older frame */
    uint64_t send_failures; /* sends refused (slow or closing clients) */
} hub_stats_t;

hub_t *hub_new(const hub_opts_t *opts, const hub_ops_t *ops);
void hub_free(hub_t *h); /* clients must be freed first */
const hub_stats_t *hub_stats(const hub_t *h);
int64_t hub_max_epoch(const hub_t *h);
int hub_channel_count(const hub_t *h); /* known channels (with data) */
int hub_max_subscriptions(const hub_t *h);

/* One normalized message from the source. Parses the routing fields, fences,
 * frames it once, stores snapshot/history, sends to subscribers.
 * Returns HUB_ACCEPTED/HUB_FENCED/HUB_DUPLICATE, or -EINVAL for a message
 * without valid routing fields. meta_out (may be NULL) gets ts/recv_ts. */
int hub_publish(hub_t *h, const char *json, size_t len, int64_t *ts_out, int64_t *recv_ts_out);

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

/* Would a subscribe with since=SEQ on this exact channel be recoverable from
 * history (1) or not (0)? */
int hub_can_recover(hub_t *h, const char *channel, int64_t since);
/* Subscribe to a channel or pattern (validated by the caller). Newly covered
 * channels get their snapshot (or, with has_since on an exact channel, the
 * history after since when recoverable, else the snapshot). Returns 0, 1 when
 * already subscribed (nothing sent), -E2BIG over max_subscriptions, -ENOMEM. */
int hub_subscribe(hub_client_t *c, const char *pattern, int has_since, int64_t since);
/* 0, or -ENOENT when not subscribed. */
int hub_unsubscribe(hub_client_t *c, const char *pattern);

/* Channel slots 0..hub_channel_slots()-1; hub_channel_known() gives the name
 * of a slot's channel when it has data, else NULL (subscribed, no data yet). */
int hub_channel_slots(const hub_t *h);
const char *hub_channel_known(const hub_t *h, int i);

#endif
