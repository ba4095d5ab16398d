/* Per-IP abuse limits of one fanout worker: open connections (handshakes
 * included) and new connections per second from one address. Counts live in
 * a small hash table; an entry lives while it has connections or its rate
 * window is recent, so connecting and closing fast cannot reset it. */
#ifndef FANOUT_IPLIMITS_H
#define FANOUT_IPLIMITS_H
#include <stdint.h>

typedef struct iplimits_s iplimits_t;

enum {
    IPLIMITS_OK = 0,
    IPLIMITS_CONNECTIONS = 1, /* over max_conns open from this address */
    IPLIMITS_RATE = 2,        /* over max_per_sec new connections this second */
};

iplimits_t *iplimits_new(void);
void iplimits_free(iplimits_t *l);
/* A connection from ip was accepted: counted whatever the verdict (the
 * caller calls iplimits_disconnect for it later). 0 / negative limits: off. */
int iplimits_connect(iplimits_t *l, const char *ip, int max_conns, int max_per_sec, uint64_t now_ms);
void iplimits_disconnect(iplimits_t *l, const char *ip);
/* Open connections counted for ip (tests). */
int iplimits_open(const iplimits_t *l, const char *ip);
/* Addresses tracked now (tests, metrics). */
int iplimits_tracked(const iplimits_t *l);

#endif
