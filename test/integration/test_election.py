"""Leader election over a real ZooKeeper (issue 5): one ingest worker in the
cluster, failover on kill -9 and SIGTERM, ZooKeeper outages, a frozen
(zombie) leader fenced by epoch, and ingest restarts under one leadership."""
import os
import signal
import time

import pytest

from harness import util
from harness.proxy import Proxy
from harness.service import cluster_nodes, leaders
from harness.wsclient import WsClient

SESSION_MS = 2000


def ingest_pids(svcs):
    pids = []
    for s in svcs:
        if not s.running():
            continue
        for p in s.tree():
            try:
                exe = os.readlink("/proc/%d/exe" % p)
            except OSError:
                continue
            if exe.endswith("exchange-ingest") and util.pid_alive(p):
                pids.append(p)
    return pids


def cluster(service_factory, zk, kafka, sim, n=3, session_ms=SESSION_MS):
    svcs = cluster_nodes(service_factory, zk, sim, n=n, session_ms=session_ms, overrides={
        "kafka": {"brokers": kafka.bootstrap, "topic": kafka.topic, "fallback_after_ms": 60000},
        "exchange.upbit": {"markets": "KRW-BTC"},
        "fanout": {"workers": 1}})
    util.wait_until(lambda: len(leaders(svcs)) == 1 and len(ingest_pids(svcs)) == 1, timeout=20,
                    what="exactly one leader and one ingest worker")
    return svcs


def sim_only_upbit(sim_factory):
    return sim_factory(args=["--upbit-markets", "KRW-BTC", "--rate", "20"])


def subscribe(svc, name):
    return WsClient(svc.ws_url, subscribe=["trade.upbit.BTC-KRW", "ticker.upbit.BTC-KRW"],
                    name=name).start()


def first_epoch_after(client, epoch, t0):
    for t, m in list(client.frames):
        if t >= t0 and isinstance(m, dict) and m.get("epoch", 0) > epoch and "seq" in m:
            return t
    return None


def watched_cluster(zk, kafka, sim_factory, service_factory):
    """Three instances; (leader, the others, the leader's epoch, a client of
    the first follower that has data)."""
    svcs = cluster(service_factory, zk, kafka, sim_only_upbit(sim_factory))
    lead = leaders(svcs)[0]
    others = [s for s in svcs if s is not lead]
    old_epoch = lead.status()["epoch"]
    # Every follower agrees on who leads.
    util.wait_until(lambda: all(s.status()["leader"] == lead.name for s in others), timeout=10,
                    what="followers know the leader")
    c = subscribe(others[0], "watcher")
    c.wait_for(lambda cl: len(cl.data()) >= 3, timeout=15, what="data before the leader goes")
    return lead, others, old_epoch, c


def test_one_leader_and_kill9_failover(zk_server, kafka_broker, sim_factory, service_factory):
    lead, others, old_epoch, c = watched_cluster(zk_server, kafka_broker, sim_factory, service_factory)
    t0 = time.time()
    print("kill at %s" % time.strftime("%H:%M:%S", time.gmtime(t0)) + ("%.3f" % (t0 % 1))[1:])
    lead.proc.send_signal(signal.SIGKILL, group=True)   # the supervisor and its children
    util.wait_until(lambda: len(leaders(others)) == 1, timeout=SESSION_MS / 1000 + 5,
                    what="a follower leads")
    c.wait_for(lambda cl: first_epoch_after(cl, old_epoch, t0) is not None,
               timeout=SESSION_MS / 1000 + 5, what="data from the new leader")
    took = first_epoch_after(c, old_epoch, t0) - t0
    print("kill -9 failover: first client message from the new leader after %.3f s" % took)
    # + 0.5 s: the new producer's init_transactions waits for the dead
    # leader's open transaction to be aborted (librdkafka retries
    # InitProducerId after CONCURRENT_TRANSACTIONS every 500 ms; README).
    assert took <= SESSION_MS / 1000 + 1.5
    assert len(ingest_pids(others)) == 1
    c.close()


def test_sigterm_handover_within_1s(zk_server, kafka_broker, sim_factory, service_factory):
    lead, others, old_epoch, c = watched_cluster(zk_server, kafka_broker, sim_factory, service_factory)
    t0 = time.time()
    lead.signal(signal.SIGTERM)
    util.wait_until(lambda: len(leaders(others)) == 1, timeout=5, interval=0.02, what="handover")
    handover = time.time() - t0
    c.wait_for(lambda cl: first_epoch_after(cl, old_epoch, t0) is not None, timeout=10,
               what="data from the new leader")
    first = first_epoch_after(c, old_epoch, t0) - t0
    print("SIGTERM handover: leader after %.3f s, first client message after %.3f s" % (handover, first))
    assert handover <= 1.0
    assert lead.proc.wait(timeout=15) == 0
    c.close()


def test_kill9_ingest_only_keeps_leadership(zk_server, kafka_broker, sim_factory, service_factory):
    sim = sim_only_upbit(sim_factory)
    svcs = cluster(service_factory, zk_server, kafka_broker, sim, n=2)
    lead = leaders(svcs)[0]
    before = lead.status()
    victim = ingest_pids([lead])[0]
    os.kill(victim, signal.SIGKILL)
    def restarted():
        pids = ingest_pids(svcs)
        return len(pids) == 1 and victim not in pids
    util.wait_until(restarted, timeout=10, what="ingest restarted")
    after = lead.status()
    assert after["role"] == "leader" and leaders(svcs) == [lead]
    # Same leadership, a higher epoch for the new process.
    assert after["epoch"] > before["epoch"]
    assert after["transitions"] == before["transitions"]


def test_zookeeper_outages(zk_factory, kafka_broker, sim_factory, service_factory):
    zk = zk_factory()
    # The instances reach ZooKeeper through a proxy: the short outage is the
    # network's, as long as the test makes it. (A JVM restart there took
    # longer than the leader's stop bound on a loaded machine: that outage
    # was not short.)
    link = Proxy(zk.port)
    sim = sim_only_upbit(sim_factory)
    session_ms = 8000
    try:
        svcs = cluster(service_factory, link, kafka_broker, sim, n=2, session_ms=session_ms)
        zookeeper_outages(zk, link, svcs, session_ms)
    finally:
        link.close()


def session_states(svcs):
    return [s.status()["session"] for s in svcs]


def zookeeper_outages(zk, link, svcs, session_ms):
    lead = leaders(svcs)[0]
    base = lead.status()["transitions"]
    ingest_before = ingest_pids(svcs)
    # Short outage (well under the session timeout): no leadership change,
    # and the leader keeps ingesting throughout.
    link.down()
    util.wait_until(lambda: session_states(svcs) == ["disconnected"] * len(svcs), timeout=5,
                    what="sessions see the outage")
    link.up()
    util.wait_until(lambda: session_states(svcs) == ["connected"] * len(svcs), timeout=15,
                    what="sessions reconnected")
    assert leaders(svcs) == [lead]
    assert lead.status()["transitions"] == base   # the same leadership
    assert ingest_pids(svcs) == ingest_before
    # Long outage: the leader stops ingesting before its session can expire.
    zk.stop()
    t0 = time.monotonic()
    util.wait_until(lambda: not ingest_pids(svcs), timeout=session_ms / 1000 + 2,
                    what="ingest stopped while ZooKeeper is unreachable")
    assert time.monotonic() - t0 < session_ms / 1000   # before the session could expire
    time.sleep(session_ms / 1000 + 1)   # stay down past the session timeout
    zk.start()
    util.wait_until(lambda: len(leaders(svcs)) == 1 and len(ingest_pids(svcs)) == 1, timeout=30,
                    what="one leader again after the outage")


def test_frozen_leader_is_fenced(zk_server, kafka_broker, sim_factory, service_factory):
    sim = sim_only_upbit(sim_factory)
    svcs = cluster(service_factory, zk_server, kafka_broker, sim, n=2)
    lead = leaders(svcs)[0]
    other = [s for s in svcs if s is not lead][0]
    old_epoch = lead.status()["epoch"]
    c = subscribe(other, "watcher")
    c.wait_for(lambda cl: len(cl.data()) >= 3, timeout=15, what="data before the freeze")
    with util.frozen([lead.pid] + lead.tree()):
        util.wait_until(lambda: leaders([other]) == [other], timeout=SESSION_MS / 1000 + 5,
                        what="the other instance leads")
        # The epoch is allocated (through ZooKeeper) just after it leads.
        util.wait_until(lambda: other.status()["epoch"] > old_epoch, timeout=10, what="a higher epoch")
        new_epoch = other.status()["epoch"]
        c.wait_for(lambda cl: any(m["epoch"] == new_epoch for m in cl.data()), timeout=10,
                   what="new leader's data")
    util.wait_until(lambda: lead.status()["role"] == "follower", timeout=10,
                    what="the old leader steps down")
    util.wait_until(lambda: len(ingest_pids(svcs)) == 1, timeout=10, what="one ingest worker")
    # Nothing from the zombie reaches clients after the new epoch started.
    msgs = c.data()
    first_new = next(i for i, m in enumerate(msgs) if m["epoch"] == new_epoch)
    assert all(m["epoch"] >= new_epoch for m in msgs[first_new:])
    c.close()
