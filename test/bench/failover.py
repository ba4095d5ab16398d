"""Bench scenarios 5 and 6 (bench.py calls run()): the real pipeline with the
exchange simulator, a real ZooKeeper and a real Kafka broker (KRaft), through the
integration harness (test/integration/harness).

(5) failover: two instances; a client on the follower's fanout; kill -9 (the
    leader's whole process group) or SIGTERM (the supervisor) of the leader;
    time from the signal to the first client message carrying a higher epoch
    (from the new leader). The old leader is restarted between repetitions.
(6) Kafka -> relay: one instance, a client on its fanout, all brokers down
    until every fanout worker reports source "relay", then up until "kafka";
    the longest time the client went without a data message around each
    switch, against the longest gap before (baseline), and seq gaps/repeats."""
import os
import signal
import shutil
import statistics
import time

from harness import util
from harness.kafka import start_kafka
from harness.service import Service
from harness.sim import Sim
from harness.wsclient import WsClient
from harness.zk import ZooKeeperServer, classpath

SESSION_MS = 2000
CHANNELS = ["trade.upbit.BTC-KRW", "ticker.upbit.BTC-KRW"]


def _leaders(svcs):
    out = []
    for s in svcs:
        if not s.running():
            continue
        try:
            if s.status()["role"] == "leader":
                out.append(s)
        except Exception:  # noqa: BLE001 - a dying instance
            pass
    return out


def _first_epoch_after(client, epoch, t0):
    for t, m in list(client.frames):
        if t >= t0 and isinstance(m, dict) and "seq" in m and m.get("epoch", 0) > epoch:
            return t
    return None


def _sim(d):
    return Sim(d, args=["--upbit-markets", "KRW-BTC", "--rate", "20"], name="sim").start()


def _kafka(d):
    """A fresh one-node Kafka (the harness keeps a node's data across starts:
    a second bench run would find the topic already there)."""
    kd = os.path.join(d, "kafka")
    shutil.rmtree(kd, ignore_errors=True)
    return start_kafka(kd, nodes=1, topics=["exchange:3"])


def _svc(d, name, sim, kafka, zk=None, extra=None):
    ov = {"service": {"cluster": "bench"},
          "kafka": {"brokers": kafka.bootstrap, "topic": kafka.topic},
          "exchange.upbit": {"markets": "KRW-BTC"},
          "fanout": {"workers": 1},
          "log": {"level": "warn"}}
    if zk:
        ov["zookeeper"] = {"connect": zk.connect, "session_timeout_ms": SESSION_MS}
    for k, v in (extra or {}).items():
        ov.setdefault(k, {}).update(v)
    return Service(d, name=name, sim_ports=sim.ports, overrides=ov).start()


def failover(d, reps, log):
    zk = ZooKeeperServer(os.path.join(d, "zk")).start()
    kafka = sim = None
    svcs = []
    out = {}
    try:
        kafka = _kafka(d)
        sim = _sim(d)
        svcs = [_svc(d, "node%d" % i, sim, kafka, zk, {"kafka": {"fallback_after_ms": 60000}})
                for i in range(2)]
        for s in svcs:
            s.wait_ready(timeout=30)
        util.wait_until(lambda: len(_leaders(svcs)) == 1, timeout=30, what="one leader")
        for name, sig in (("kill -9", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
            times = []
            for i in range(reps):
                lead = _leaders(svcs)[0]
                other = [s for s in svcs if s is not lead][0]
                util.wait_until(lambda: other.status()["leader"] == lead.name, timeout=15,
                                what="follower knows the leader")
                old = lead.status()["epoch"]
                c = WsClient(other.ws_url, subscribe=CHANNELS, name="watcher").start()
                try:
                    c.wait_for(lambda cl: len(cl.data()) >= 3, timeout=15, what="data before the signal")
                    t0 = time.time()
                    if sig == signal.SIGKILL:
                        lead.proc.send_signal(signal.SIGKILL, group=True)
                    else:
                        lead.signal(signal.SIGTERM)
                    c.wait_for(lambda cl: _first_epoch_after(cl, old, t0) is not None,
                               timeout=SESSION_MS / 1000 + 20, what="data from the new leader")
                    times.append(_first_epoch_after(c, old, t0) - t0)
                    log("failover %s #%d: %.3f s" % (name, i + 1, times[-1]))
                finally:
                    c.close()
                lead.stop(timeout=15)
                lead.start()
                lead.wait_ready(timeout=30)
                util.wait_until(lambda: len(_leaders(svcs)) == 1, timeout=30, what="one leader again")
            out[name] = {"times": times, "median_s": statistics.median(times), "max_s": max(times),
                         "session_timeout_ms": SESSION_MS}
    finally:
        for s in svcs:
            s.stop(timeout=15)
        for x in (sim, kafka, zk):  # whatever started, also when a later start failed
            if x:
                x.stop()
    return out


def _gaps(frames, t_from, t_to):
    ts = [t for t, m in frames if isinstance(m, dict) and "seq" in m]
    inside = [t for t in ts if t_from <= t <= t_to]
    before = [t for t in ts if t < t_from]
    seq = ([before[-1]] if before else []) + inside
    g = [b - a for a, b in zip(seq, seq[1:])]
    if inside:
        g.append(t_to - inside[-1]) if not [t for t in ts if t > t_to] else None
    return max(g) if g else t_to - t_from


def switch(d, log):
    kafka = _kafka(d)
    sim = _sim(d)
    svc = None
    fallback_ms, recover_ms = 2000, 2000
    try:
        svc = _svc(d, "switch", sim, kafka, None, {"kafka": {"fallback_after_ms": fallback_ms,
                                                             "recover_after_ms": recover_ms}})
        svc.wait_ready(timeout=30)
        c = WsClient(svc.ws_url, subscribe=CHANNELS, name="switch-client").start()
        try:
            c.wait_for(lambda cl: len(cl.data()) >= 10, timeout=20, what="data before the switch")
            t_base = time.time()
            time.sleep(5)

            def sources():
                return {w.get("source") for w in svc.workers(kind="fanout")}

            t_down = time.time()
            kafka.down()
            try:
                util.wait_until(lambda: sources() == {"relay"}, timeout=fallback_ms / 1000 + 20,
                                what="fanout source relay")
            except AssertionError:
                kafka.up()
                return "n/a (fanout workers did not switch to the relay within %ds of Kafka going down;" \
                       " sources %s)" % (fallback_ms / 1000 + 20, sorted(map(str, sources())))
            t_relay = time.time()
            time.sleep(5)
            t_up = time.time()
            kafka.up()
            try:
                util.wait_until(lambda: sources() == {"kafka"}, timeout=recover_ms / 1000 + 30,
                                what="fanout source kafka")
                t_kafka = time.time()
            except AssertionError:
                t_kafka = None
            time.sleep(5)
            t_end = time.time()
            frames = list(c.frames)
        finally:
            c.close()
        lost = ooo = 0
        last = {}
        for t, m in frames:
            if not (isinstance(m, dict) and "seq" in m and t >= t_base):
                continue
            key = (m["channel"], m.get("epoch"))
            if key in last:
                if m["seq"] <= last[key]:
                    ooo += 1
                elif m["seq"] > last[key] + 1:
                    lost += m["seq"] - last[key] - 1
            last[key] = max(m["seq"], last.get(key, -1))
        r = {"baseline_gap_s": _gaps(frames, t_base, t_down), "down_gap_s": _gaps(frames, t_down, t_up),
             "switch_s": t_relay - t_down, "up_gap_s": _gaps(frames, t_up, t_end),
             "back_s": (t_kafka - t_up) if t_kafka else None, "lost": lost, "ooo": ooo,
             "fallback_after_ms": fallback_ms}
        log("switch: %s" % r)
        if t_kafka is None:
            r["note"] = "did not switch back to Kafka within %ds" % (recover_ms / 1000 + 30)
        return r
    finally:
        if svc:
            svc.stop(timeout=15)
        sim.stop()
        kafka.stop()


def run(build, logs, quick, reps, only, log=print):
    out = {}
    for b in ("exchange-service", "exchange-fanout", "exchange-ingest"):
        if not os.access(os.path.join(build, b), os.X_OK):
            why = "n/a (build/%s not built)" % b
            return {"failover": why, "switch": why}
    if "5" in only:
        try:
            classpath()
            d = os.path.join(logs, "failover")
            os.makedirs(d, exist_ok=True)
            out["failover"] = failover(d, reps, log)
        except Exception as e:  # noqa: BLE001 - the table says why
            log("failover: %r" % e)
            out["failover"] = "n/a (%s)" % str(e).splitlines()[0][:160]
    if "6" in only:
        try:
            d = os.path.join(logs, "switch")
            os.makedirs(d, exist_ok=True)
            out["switch"] = switch(d, log)
        except Exception as e:  # noqa: BLE001
            log("switch: %r" % e)
            out["switch"] = "n/a (%s)" % str(e).splitlines()[0][:160]
    return out
