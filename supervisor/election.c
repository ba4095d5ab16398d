/* Leader election. Standalone mode (no ZooKeeper) leads at once with
 * sequence 0; the ZooKeeper recipe lives in election_zk.c. */
#include "election.h"

#include <errno.h>
#include <stdint.h>

#include "epoch.h"
#include "log.h"
#include "supervisor.h"

static int use_zk;

int election_start(void)
{
    if (sup.cfg->zookeeper.connect == NULL || sup.cfg->zookeeper.connect[0] == '\0') {
        log_info("standalone: no ZooKeeper configured, this instance always leads", LOG_NOFIELDS);
        snprintf(sup.session_state, sizeof(sup.session_state), "standalone");
        sup_become_leader(0);
        return 0;
    }
    use_zk = 1;
    return election_zk_start();
}

void election_resign(void)
{
    if (use_zk)
        election_zk_resign();
}

void election_stop(void)
{
    if (use_zk)
        election_zk_stop();
}

/* Standalone: epochs live in this process only (a restart starts again
 * above what its fanout workers have seen: the floor). */
void election_alloc_epoch(int64_t floor, election_epoch_cb cb)
{
    static int64_t last;
    if (use_zk) {
        election_zk_alloc_epoch(floor, cb);
        return;
    }
    int64_t e = epoch_next(last, floor);
    if (e > 0)
        last = e;
    cb(e);
}

int64_t election_lease_bound_ms(void)
{
    return use_zk ? election_zk_lease_bound_ms() : INT64_MAX;
}
