/* Leader election. Standalone mode (no ZooKeeper) leads at once with
 * sequence 0; the ZooKeeper recipe lives in election_zk.c. */
#include "election.h"

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
