"""`make cluster` (test/cluster/cluster.py) on free ports: ZooKeeper, a real
Kafka broker, the simulator and two backends come up, both backends serve
data, one leads and is named, and SIGTERM to the script leaves no process
and no process behind."""
import json
import os
import re
import signal
import sys

from harness import REPO, util
from harness.wsclient import WsClient

SCRIPT = os.path.join(REPO, "test", "cluster", "cluster.py")


def test_make_cluster_serves_from_two_backends_and_stops_clean(tmp_path, build_dir):
    info_path = str(tmp_path / "info.json")
    p = util.Proc([sys.executable, SCRIPT, "--free-ports", "--dir", tmp_path / "cluster", "--info", info_path],
                  tmp_path, name="cluster", env={"EXCHANGE_BUILD": build_dir})
    p.start()
    clients = []
    try:
        def ready():
            if not p.running():
                raise AssertionError("cluster.py exited rc=%s\n%s" % (p.returncode(), p.logs(80)))
            return os.path.exists(info_path)
        util.wait_until(ready, timeout=150, interval=0.2, what="the cluster to be ready")
        info = json.load(open(info_path))
        out = open(p.stdout_path).read()
        m = re.search(r"leader: (backend[12])", out)
        assert m, out
        assert "kill -9 -- -" in out and "kcat -b %s" % info["kafka"] in out, out

        names = {b["name"] for b in info["backends"]}
        assert names == {"backend1", "backend2"}
        for b in info["backends"]:
            st, _, body = util.http_get("http://127.0.0.1:%d/status" % b["admin_port"])
            s = json.loads(body)
            assert st == 200 and s["leader"] == m.group(1), s
            assert s["role"] == ("leader" if b["name"] == m.group(1) else "follower"), s
            c = WsClient("ws://127.0.0.1:%d/ws/exchange" % b["port"], subscribe=["trade.*.*"],
                         name=b["name"]).start()
            clients.append(c)
        for c in clients:
            c.wait_for(lambda msgs, c=c: len(c.data("trade.")) >= 3, timeout=30,
                       what="trades from %s" % c.name)
    finally:
        for c in clients:
            c.close()
        # The script alone (not its process group): it stops what it started.
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=90)
        finally:
            p.stop(timeout=1)
    assert rc == 0, p.logs(80)
    assert not p.stragglers, p.stragglers
    for pid in info["pids"]:
        assert not util.pid_alive(pid) and not util.pids_in_session(pid), (pid, p.logs(80))
    # (No port check: on a shared machine another process may take a freed
    # port at once; nothing of ours holds one, every session above is empty
    # and the service's processes never leave their session.)
    assert "stopping" in open(p.stdout_path).read()
