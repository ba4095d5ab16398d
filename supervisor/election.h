/* Leader election over ZooKeeper (DESIGN.md "Leadership"). With
 * [zookeeper] connect empty the instance is standalone: always leader. */
#ifndef ELECTION_H
#define ELECTION_H

int election_start(void);
void election_resign(void); /* SIGTERM: delete our node first */
void election_stop(void);

/* The ZooKeeper recipe (election_zk.c), used by election.c when
 * [zookeeper] connect is set. */
int election_zk_start(void);
void election_zk_resign(void);
void election_zk_stop(void);

#endif
