/* Per-IP connection counts and connection-rate windows, in a hash table
 * (strmap) swept of idle entries at most once a second. */
#include "iplimits.h"

#include <stdlib.h>
#include <string.h>

#include "strmap.h"

#define IP_MAX 48

typedef struct {
    strmap_node_t node; /* keyed by ip */
    char ip[IP_MAX];
    int open;
    uint64_t window_ms;
    int window_count;
} ent_t;

struct iplimits_s {
    strmap_t map;
    uint64_t last_sweep_ms;
};

iplimits_t *iplimits_new(void)
{
    iplimits_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    if (strmap_init(&l->map, 256) < 0) {
        free(l);
        return NULL;
    }
    return l;
}

static void ent_free(strmap_node_t *n)
{
    free(STRMAP_ENTRY(n, ent_t, node));
}

void iplimits_free(iplimits_t *l)
{
    if (l == NULL)
        return;
    strmap_clear(&l->map, ent_free);
    free(l);
}

static ent_t *find(const iplimits_t *l, const char *ip)
{
    strmap_node_t *e = strmap_get(&l->map, ip, strlen(ip));
    return e != NULL ? STRMAP_ENTRY(e, ent_t, node) : NULL;
}

/* Drop entries with no connection whose window is over. */
static void sweep(iplimits_t *l, uint64_t now_ms)
{
    if (now_ms - l->last_sweep_ms < 1000)
        return;
    l->last_sweep_ms = now_ms;
    size_t b = 0;
    strmap_node_t *n = strmap_next(&l->map, &b, NULL), *next;
    for (; n != NULL; n = next) {
        next = strmap_next(&l->map, &b, n);
        ent_t *e = STRMAP_ENTRY(n, ent_t, node);
        if (e->open <= 0 && now_ms - e->window_ms >= 1000) {
            strmap_del(&l->map, n);
            free(e);
        }
    }
}

int iplimits_connect(iplimits_t *l, const char *ip, int max_conns, int max_per_sec, uint64_t now_ms)
{
    if (l == NULL || ip == NULL || (max_conns <= 0 && max_per_sec <= 0))
        return IPLIMITS_OK;
    sweep(l, now_ms);
    ent_t *e = find(l, ip);
    if (e == NULL) {
        if ((e = calloc(1, sizeof *e)) == NULL)
            return IPLIMITS_OK; /* fail open: memory is the lesser problem */
        strncpy(e->ip, ip, IP_MAX - 1);
        e->window_ms = now_ms;
        strmap_put(&l->map, &e->node, e->ip, strlen(e->ip));
    }
    e->open++;
    if (now_ms - e->window_ms >= 1000) {
        e->window_ms = now_ms;
        e->window_count = 0;
    }
    e->window_count++;
    if (max_conns > 0 && e->open > max_conns)
        return IPLIMITS_CONNECTIONS;
    if (max_per_sec > 0 && e->window_count > max_per_sec)
        return IPLIMITS_RATE;
    return IPLIMITS_OK;
}

void iplimits_disconnect(iplimits_t *l, const char *ip)
{
    if (l == NULL || ip == NULL)
        return;
    ent_t *e = find(l, ip);
    if (e != NULL && e->open > 0)
        e->open--;
}

int iplimits_open(const iplimits_t *l, const char *ip)
{
    ent_t *e = l ? find(l, ip) : NULL;
    return e ? e->open : 0;
}

int iplimits_tracked(const iplimits_t *l)
{
    return l ? (int)l->map.count : 0;
}
