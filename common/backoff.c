/* Exponential backoff with full jitter (AWS architecture blog's "full
 * jitter"): the delay is uniform in [0, min(max, base * 2^attempt)], raised
 * to floor. The RNG is per thread, seeded once from getrandom(2). */
#include "backoff.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static __thread uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (rng_state == 0) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ ((uint64_t)getpid() << 16);
        }
        rng_state = seed ? seed : 0x9e3779b97f4a7c15ull;
    }
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, hi] without modulo bias. */
static uint64_t rng_upto(uint64_t hi)
{
    if (hi == UINT64_MAX)
        return rng_next();
    uint64_t range = hi + 1;
    uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t x;
    do
        x = rng_next();
    while (x >= limit);
    return x % range;
}

void backoff_init(backoff_t *b, uint64_t base_ms, uint64_t max_ms, uint64_t floor_ms)
{
    b->base_ms = base_ms;
    b->max_ms = max_ms;
    b->floor_ms = floor_ms;
    b->attempt = 0;
}

void backoff_reset(backoff_t *b)
{
    b->attempt = 0;
}

uint64_t backoff_ceiling(const backoff_t *b)
{
    uint64_t cap;
    if (b->base_ms == 0)
        cap = 0;
    else if (b->attempt >= 63 || b->base_ms > (UINT64_MAX >> b->attempt))
        cap = UINT64_MAX; /* would overflow: clamp below */
    else
        cap = b->base_ms << b->attempt;
    if (cap > b->max_ms)
        cap = b->max_ms;
    return cap;
}

uint64_t backoff_next(backoff_t *b)
{
    uint64_t d = rng_upto(backoff_ceiling(b));
    if (b->attempt < 64)
        b->attempt++;
    return d < b->floor_ms ? b->floor_ms : d;
}
