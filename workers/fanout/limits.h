/* Per-IP abuse limits of one fanout worker: open connections (handshakes
 * included) and new connections per second from one address. Counts live in
 * a small hash table; an entry lives while it has connections or its rate
 * window is recent, so connecting and closing fast cannot reset it. */
#ifndef FANOUT_LIMITS_H
#define FANOUT_LIMITS_H
#include <stdint.h>

typedef struct limits_s limits_t;

enum {
    LIMITS_OK = 0,
    LIMITS_CONNECTIONS = 1, /* over max_conns open from this address */
    LIMITS_RATE = 2,        /* over max_per_sec new connections this second */
};

limits_t *limits_new(void);
void limits_free(limits_t *l);
/* A connection from ip was accepted: counted whatever the verdict (the
 * caller calls limits_disconnect for it later). 0 / negative limits: off. */
int limits_connect(limits_t *l, const char *ip, int max_conns, int max_per_sec, uint64_t now_ms);
void limits_disconnect(limits_t *l, const char *ip);
/* Open connections counted for ip (tests). */
int limits_open(const limits_t *l, const char *ip);
/* Addresses tracked now (tests, metrics). */
int limits_tracked(const limits_t *l);

#endif
