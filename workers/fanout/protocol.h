/* Client commands on /ws/exchange (DESIGN.md "Client protocol"): subscribe,
 * unsubscribe, list, ping; replies and error frames; the per-client request
 * rate limit. Works on a hub client only, so unit tests can drive it. */
#ifndef FANOUT_PROTOCOL_H
#define FANOUT_PROTOCOL_H
#include <stddef.h>
#include <stdint.h>
#include "hub.h"

typedef struct {
    uint64_t window_start_ms;
    int count;
} proto_rate_t;

enum {
    PROTO_OK = 0,
    PROTO_CLOSE_POLICY = 1, /* flooding: close with 1008 */
};

/* Handle one text message from a client. Replies go out through the hub's
 * send op. max_rps <= 0 disables the rate limit. Over max_rps requests in a
 * second each request gets a rate_limited error; over twice that the caller
 * must close the connection (PROTO_CLOSE_POLICY). *rate_limited (optional)
 * is set when the request was refused for the rate. */
int proto_handle(hub_client_t *c, proto_rate_t *rate, int max_rps, const char *text, size_t len,
                 uint64_t now_ms, int *rate_limited);

/* A binary frame: answered with a bad_request error. */
void proto_binary(hub_client_t *c);

/* Subscribe from the URL (?channels=a,b): names already validated.
 * Sends the "subscribed" reply (without id) then snapshots. */
int proto_subscribe_names(hub_client_t *c, char **names, int n);

/* Validate a comma list from the URL: 0, -EINVAL (bad name, *bad gets it) or
 * -E2BIG (more than max). */
int proto_check_names(char **names, int n, int max, const char **bad);

/* Build {"type":"reconnect","reason":R,"after_ms":N} into out (malloc'd). */
char *proto_reconnect_msg(const char *reason, int after_ms);

#endif
