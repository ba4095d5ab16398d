/* Leader election over ZooKeeper (DESIGN.md "Leadership"). With
 * [zookeeper] connect empty the instance is standalone: always leader. */
#ifndef ELECTION_H
#define ELECTION_H
#include <stdint.h>

struct sup_s;
int election_start(struct sup_s *s);
void election_resign(struct sup_s *s); /* SIGTERM: delete our node first */
void election_stop(struct sup_s *s);

/* Allocate the epoch of a new ingest start: above every epoch the cluster
 * allocated before and above floor (the highest epoch seen in the data).
 * cb(epoch) on success, cb(negative errno) otherwise: -EPERM not the leader
 * (any more), -EAGAIN try again later, -EBUSY one is already in flight. */
typedef void (*election_epoch_cb)(void *arg, int64_t epoch_or_err);
void election_alloc_epoch(struct sup_s *s, int64_t floor, election_epoch_cb cb); /* cb(s, ...) */
/* How long from now our leadership is certain, in ms (<= 0: not certain):
 * the lease handed to the ingest worker never reaches past it. */
int64_t election_lease_bound_ms(struct sup_s *s);

#endif
