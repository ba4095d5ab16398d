/* The one hash table: string keys, FNV-1a, chained, power-of-two buckets
 * that double when the entries outnumber them. Intrusive: an entry embeds a
 * strmap_node_t and owns its key bytes (usually a flexible name[] member);
 * the table never allocates or frees entries. */
#ifndef STRMAP_H
#define STRMAP_H
#include <stddef.h>
#include <stdint.h>

typedef struct strmap_node_s strmap_node_t;
struct strmap_node_s {
    strmap_node_t *next;
    uint64_t hash;
    const char *key; /* not NUL-terminated necessarily; klen bytes */
    size_t klen;
};

typedef struct {
    strmap_node_t **buckets;
    size_t nbuckets, count;
} strmap_t;

/* The entry that embeds node as member. */
#define STRMAP_ENTRY(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

uint64_t strmap_hash(const void *key, size_t n); /* FNV-1a */
/* nbuckets: a power of two. 0 or -ENOMEM. */
int strmap_init(strmap_t *m, size_t nbuckets);
/* Frees the bucket array, not the entries (free them first, strmap_next). */
void strmap_free(strmap_t *m);
/* free_entry(node) for every entry (unlinked first), then strmap_free. */
void strmap_clear(strmap_t *m, void (*free_entry)(strmap_node_t *node));
strmap_node_t *strmap_get(const strmap_t *m, const char *key, size_t n);
/* Insert node under key (which must stay valid while the node is in; not
 * already present). Grows the table when it can (a failed grow keeps
 * longer chains). */
void strmap_put(strmap_t *m, strmap_node_t *node, const char *key, size_t n);
/* Unlink node (in the table). */
void strmap_del(strmap_t *m, strmap_node_t *node);
/* Iterate: the first node with prev NULL, then the one after prev; NULL at
 * the end. *bucket is the cursor (start it at 0). Read the next node before
 * freeing prev. */
strmap_node_t *strmap_next(const strmap_t *m, size_t *bucket, const strmap_node_t *prev);

#endif
