/* Per-channel trade id sets (dedup.h). The ring is scanned linearly: a few
 * thousand 64-bit compares per trade cost less than a hash table's upkeep
 * at exchange trade rates. */
#include "dedup.h"

#include <errno.h>
#include <stdlib.h>

static uint64_t id_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int dedup_init(dedup_t *d, int cap)
{
    d->cap = cap > 0 ? cap : 1;
    d->head = d->count = 0;
    d->hwm = 0;
    d->has_hwm = 0;
    d->ring = calloc((size_t)d->cap, sizeof(*d->ring));
    return d->ring != NULL ? 0 : -ENOMEM;
}

void dedup_free(dedup_t *d)
{
    free(d->ring);
    d->ring = NULL;
    d->count = 0;
}

int dedup_id_num(const char *id, int64_t *v)
{
    int64_t x = 0;
    if (*id == '\0')
        return -EINVAL;
    int n = 0;
    for (; *id; id++, n++) {
        if (*id < '0' || *id > '9' || n >= 18)
            return -EINVAL;
        x = x * 10 + (*id - '0');
    }
    *v = x;
    return 0;
}

int dedup_seen(const dedup_t *d, const char *id, int ordered)
{
    int64_t v;
    if (ordered && d->has_hwm && dedup_id_num(id, &v) == 0 && v <= d->hwm)
        return 1;
    uint64_t h = id_hash(id);
    for (int i = 0; i < d->count; i++)
        if (d->ring[(d->head + i) % d->cap] == h)
            return 1;
    return 0;
}

void dedup_add(dedup_t *d, const char *id, int ordered)
{
    int64_t v;
    if (ordered && dedup_id_num(id, &v) == 0 && (!d->has_hwm || v > d->hwm)) {
        d->hwm = v;
        d->has_hwm = 1;
    }
    if (d->ring == NULL)
        return;
    if (d->count == d->cap) {
        d->head = (d->head + 1) % d->cap;
        d->count--;
    }
    d->ring[(d->head + d->count) % d->cap] = id_hash(id);
    d->count++;
}
