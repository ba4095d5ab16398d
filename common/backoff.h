/* Exponential backoff with full jitter: delay = random(0, min(max, base*2^n)),
 * never below floor (used for exchanges' connection rate limits). */
#ifndef BACKOFF_H
#define BACKOFF_H
#include <stdint.h>

typedef struct {
    uint64_t base_ms;
    uint64_t max_ms;
    uint64_t floor_ms;
    unsigned attempt;
} backoff_t;

void backoff_init(backoff_t *b, uint64_t base_ms, uint64_t max_ms, uint64_t floor_ms);
uint64_t backoff_next(backoff_t *b); /* delay for this attempt; attempt++ */
void backoff_reset(backoff_t *b);
uint64_t backoff_ceiling(const backoff_t *b); /* the cap the next delay is drawn under */

#endif
