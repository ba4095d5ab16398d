/* String-keyed intrusive hash table (strmap.h). */
#include "strmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

uint64_t strmap_hash(const void *key, size_t n)
{
    const unsigned char *p = key;
    uint64_t h = 14695981039346656037ull; /* FNV-1a 64 offset basis */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int strmap_init(strmap_t *m, size_t nbuckets)
{
    m->count = 0;
    m->nbuckets = nbuckets ? nbuckets : 1;
    m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
    if (m->buckets == NULL) {
        m->nbuckets = 0;
        return -ENOMEM;
    }
    return 0;
}

void strmap_free(strmap_t *m)
{
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = m->count = 0;
}

void strmap_clear(strmap_t *m, void (*free_entry)(strmap_node_t *node))
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        strmap_node_t *e = m->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            free_entry(e);
        }
    }
    strmap_free(m);
}

strmap_node_t *strmap_get(const strmap_t *m, const char *key, size_t n)
{
    if (m->nbuckets == 0)
        return NULL;
    uint64_t h = strmap_hash(key, n);
    for (strmap_node_t *e = m->buckets[h & (m->nbuckets - 1)]; e != NULL; e = e->next)
        if (e->hash == h && e->klen == n && memcmp(e->key, key, n) == 0)
            return e;
    return NULL;
}

static void grow(strmap_t *m)
{
    size_t n = m->nbuckets * 2;
    strmap_node_t **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        strmap_node_t *e = m->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void strmap_put(strmap_t *m, strmap_node_t *node, const char *key, size_t n)
{
    if (m->count >= m->nbuckets)
        grow(m);
    node->key = key;
    node->klen = n;
    node->hash = strmap_hash(key, n);
    strmap_node_t **b = &m->buckets[node->hash & (m->nbuckets - 1)];
    node->next = *b;
    *b = node;
    m->count++;
}

void strmap_del(strmap_t *m, strmap_node_t *node)
{
    strmap_node_t **pp = &m->buckets[node->hash & (m->nbuckets - 1)];
    while (*pp != NULL && *pp != node)
        pp = &(*pp)->next;
    if (*pp == node) {
        *pp = node->next;
        m->count--;
    }
}

strmap_node_t *strmap_next(const strmap_t *m, size_t *bucket, const strmap_node_t *prev)
{
    if (prev != NULL && prev->next != NULL)
        return prev->next;
    size_t i = prev != NULL ? *bucket + 1 : *bucket;
    for (; i < m->nbuckets; i++)
        if (m->buckets[i] != NULL) {
            *bucket = i;
            return m->buckets[i];
        }
    *bucket = m->nbuckets;
    return NULL;
}
