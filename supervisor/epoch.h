/* Epoch arithmetic: the fencing token stamped on every message. No ceiling
 * on restarts, and JSON/JavaScript safe (below 2^53). */
#ifndef EPOCH_H
#define EPOCH_H
#include <stdint.h>

#define EPOCH_MAX ((int64_t)1 << 53) /* exclusive: 2^53 - 1 is the last epoch */

/* The next epoch after stored (the cluster's last allocated, 0: none or the
 * ZooKeeper data was lost) and floor (the highest epoch seen in the data):
 * max(stored, floor) + 1, or -ERANGE past EPOCH_MAX. */
int64_t epoch_next(int64_t stored, int64_t floor);
/* Decimal text of the epoch node -> *out; -EINVAL for anything else. */
int epoch_parse(const char *s, int64_t *out);

#endif
