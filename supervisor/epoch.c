/* The epoch rule (README "Leadership"), kept pure for the unit tests: a new
 * epoch is one more than the highest of the last epoch the cluster allocated
 * (ZooKeeper's epoch node) and every epoch seen in the data (the floor). */
#include "epoch.h"

#include <errno.h>
#include <stddef.h>

int64_t epoch_next(int64_t stored, int64_t floor)
{
    int64_t base = stored > floor ? stored : floor;
    if (base < 0)
        base = 0;
    if (base >= EPOCH_MAX - 1)
        return -ERANGE;
    return base + 1;
}

int epoch_parse(const char *s, int64_t *out)
{
    int64_t v = 0;
    if (s == NULL || *s == '\0')
        return -EINVAL;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > EPOCH_MAX / 10)
            return -EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (v >= EPOCH_MAX)
        return -EINVAL;
    *out = v;
    return 0;
}
