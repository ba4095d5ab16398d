/* Per-IP connection counts and connection-rate windows, in a chained hash
 * table that grows with the number of addresses and is swept of idle
 * entries at most once a second. */
#include "iplimits.h"

#include <stdlib.h>
#include <string.h>

#define IP_MAX 48

typedef struct ent_s {
    struct ent_s *next;
    char ip[IP_MAX];
    int open;
    uint64_t window_ms;
    int window_count;
} ent_t;

struct iplimits_s {
    ent_t **b;
    size_t nb, n;
    uint64_t last_sweep_ms;
};

static uint64_t hash_ip(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

iplimits_t *iplimits_new(void)
{
    iplimits_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->nb = 256;
    if ((l->b = calloc(l->nb, sizeof *l->b)) == NULL) {
        free(l);
        return NULL;
    }
    return l;
}

void iplimits_free(iplimits_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->nb; i++)
        for (ent_t *e = l->b[i], *nx; e != NULL; e = nx) {
            nx = e->next;
            free(e);
        }
    free(l->b);
    free(l);
}

static ent_t **find(const iplimits_t *l, const char *ip)
{
    ent_t **pp = &l->b[hash_ip(ip) & (l->nb - 1)];
    while (*pp != NULL && strcmp((*pp)->ip, ip) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void grow(iplimits_t *l)
{
    size_t nb = l->nb * 2;
    ent_t **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < l->nb; i++)
        for (ent_t *e = l->b[i], *nx; e != NULL; e = nx) {
            nx = e->next;
            size_t k = hash_ip(e->ip) & (nb - 1);
            e->next = b[k];
            b[k] = e;
        }
    free(l->b);
    l->b = b;
    l->nb = nb;
}

/* Drop entries with no connection whose window is over. */
static void sweep(iplimits_t *l, uint64_t now_ms)
{
    if (now_ms - l->last_sweep_ms < 1000)
        return;
    l->last_sweep_ms = now_ms;
    for (size_t i = 0; i < l->nb; i++) {
        ent_t **pp = &l->b[i];
        while (*pp != NULL) {
            ent_t *e = *pp;
            if (e->open <= 0 && now_ms - e->window_ms >= 1000) {
                *pp = e->next;
                free(e);
                l->n--;
            } else {
                pp = &e->next;
            }
        }
    }
}

int iplimits_connect(iplimits_t *l, const char *ip, int max_conns, int max_per_sec, uint64_t now_ms)
{
    if (l == NULL || ip == NULL || (max_conns <= 0 && max_per_sec <= 0))
        return IPLIMITS_OK;
    sweep(l, now_ms);
    ent_t **pp = find(l, ip), *e = *pp;
    if (e == NULL) {
        if ((e = calloc(1, sizeof *e)) == NULL)
            return IPLIMITS_OK; /* fail open: memory is the lesser problem */
        strncpy(e->ip, ip, IP_MAX - 1);
        e->window_ms = now_ms;
        *pp = e;
        if (++l->n > l->nb * 2)
            grow(l);
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
    ent_t *e = *find(l, ip);
    if (e != NULL && e->open > 0)
        e->open--;
}

int iplimits_open(const iplimits_t *l, const char *ip)
{
    ent_t *e = l ? *find(l, ip) : NULL;
    return e ? e->open : 0;
}

int iplimits_tracked(const iplimits_t *l)
{
    return l ? (int)l->n : 0;
}
