/* Bounded de-duplication of exchange trade ids, one set per channel: a ring
 * of the last N ids (64-bit hashes) and, where the exchange's ids are
 * ordered integers (Binance), a high-water mark, so a trade the exchange
 * re-sends (a SNAPSHOT on subscribe, a REST page overlapping the stream, a
 * new leader reading the same trades) never becomes a new message. */
#ifndef DEDUP_H
#define DEDUP_H
#include <stdint.h>

typedef struct {
    uint64_t *ring; /* hashes of the last cap ids, oldest at head */
    int cap, head, count;
    int64_t hwm; /* highest ordered id added; valid when has_hwm */
    int has_hwm;
} dedup_t;

/* cap ids remembered. 0 or -ENOMEM. */
int dedup_init(dedup_t *d, int cap);
void dedup_free(dedup_t *d);
/* 1 if id was added before (or, ordered, is at or below the high-water
 * mark), else 0. ordered: the ids are decimal integers increasing per
 * channel; a non-numeric id is then only checked against the ring. */
int dedup_seen(const dedup_t *d, const char *id, int ordered);
/* Remember id (evicting the oldest once full); raises the mark if ordered. */
void dedup_add(dedup_t *d, const char *id, int ordered);
/* A decimal integer id (digits only, fits int64) into *v: 0, else -EINVAL. */
int dedup_id_num(const char *id, int64_t *v);

#endif
