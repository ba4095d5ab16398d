/* Helpers shared by the libFuzzer targets: a tiny deterministic PRNG seeded
 * from the input (so chunking is reproducible from the crash file alone) and
 * a splitter for inputs that carry several records. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Abort with a message: a broken invariant is a crash libFuzzer records. */
#define FUZZ_CHECK(cond)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                     \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

typedef struct {
    uint32_t s;
} fuzz_rng_t;

static inline uint32_t fuzz_rng_next(fuzz_rng_t *r)
{
    /* xorshift32; never seeded with 0 */
    uint32_t x = r->s ? r->s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    r->s = x;
    return x;
}

/* Chunk length for splitting an input: mostly short, sometimes all at once. */
static inline size_t fuzz_chunk(fuzz_rng_t *r, size_t left)
{
    uint32_t v = fuzz_rng_next(r);
    size_t n;
    switch (v & 3) {
    case 0: n = 1; break;
    case 1: n = 1 + ((v >> 2) & 7); break;
    case 2: n = 1 + ((v >> 2) & 255); break;
    default: n = left; break;
    }
    return n < left ? n : left;
}

/* Next record of data[*off..n) up to (not including) sep; returns its length
 * and moves *off past the separator. */
static inline size_t fuzz_next_record(const uint8_t *data, size_t n, size_t *off, uint8_t sep,
                                      const uint8_t **rec)
{
    size_t s = *off;
    const uint8_t *p = s < n ? memchr(data + s, sep, n - s) : NULL;
    size_t e = p ? (size_t)(p - data) : n;
    *rec = data + s;
    *off = p ? e + 1 : n;
    return e - s;
}

#endif
