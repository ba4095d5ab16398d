#!/usr/bin/python3
"""`make cluster`: compose/docker-compose.yml's development environment on one
machine without Docker. Real ZooKeeper (Debian's zookeeper package), a real
Kafka KRaft broker (the jars `make deps` put in .deps/kafka/libs), the
exchange simulator (test/sim) and two exchange-service backends:

    backend1  clients ws://127.0.0.1:8080/ws/exchange  admin :8090  relay :8091
    backend2  clients ws://127.0.0.1:8081/ws/exchange  admin :8092  relay :8093
    zookeeper :2181   kafka :9092 (controller :9093)   simulator :9100-9104

It prints what runs where, which backend leads and commands to try, then
reports leader changes, fanout source switches (kafka/relay) and exits as
they happen. SIGUSR1 stops Kafka (the fanouts switch to the leader's relay)
or, when stopped, starts it again; SIGUSR2 restarts backends that exited.
Ctrl-C or SIGTERM stops everything it started (each component runs in its own
session, stopped as a whole) and exits 0.

    test/cluster/cluster.py [--dir DIR] [--free-ports] [--info FILE]

--free-ports takes free loopback ports instead of the fixed ones (tests);
--info writes the ports and pids as JSON once the cluster is ready.
Configuration: test/cluster/cluster.ini over the local profile, per-backend
EXCHANGE_* variables. Logs: DIR (default build/cluster/).
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "test", "integration"))

from harness import build_dir, util  # noqa: E402
from harness import kafka as hkafka  # noqa: E402
from harness.sim import Sim  # noqa: E402
from harness.zk import ZooKeeperServer  # noqa: E402

FIXED = {"zookeeper": 2181, "kafka": 9092, "kafka_controller": 9093, "sim_control": 9100,
         "upbit": 9101, "bithumb": 9102, "binance": 9103, "coinbase": 9104,
         "backend1": (8080, 8090, 8091), "backend2": (8081, 8092, 8093)}
SIM_PATHS = {"upbit": "/websocket/v1", "bithumb": "/websocket/v1", "binance": "/stream", "coinbase": "/"}
TOPIC = "market-data"


class Stop(BaseException):
    """A signal or a component that died: unwinds to the cleanup (not caught
    by util.wait_until, which takes exceptions for "not yet")."""


def log(msg):
    print("[cluster %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def make_kafka(d, port, controller_port):
    """The test fixture's single combined broker+controller node, on our ports."""
    k = hkafka.KafkaCluster(d, nodes=1, name="kafka")
    if port:  # else the fixture's free ports
        k.nodes[0].port, k.nodes[0].controller_port = port, controller_port
    return k


class Backend:
    def __init__(self, name, ports, run_dir, zk, kafka_bootstrap, sim_ports):
        self.name = name
        self.port, self.admin_port, self.relay_port = ports
        env = {
            "EXCHANGE_PROFILE": "local",
            "EXCHANGE_SERVICE_INSTANCE": name,
            "EXCHANGE_FANOUT_LISTEN": "127.0.0.1:%d" % self.port,
            "EXCHANGE_ADMIN_LISTEN": "127.0.0.1:%d" % self.admin_port,
            "EXCHANGE_RELAY_LISTEN": "127.0.0.1:%d" % self.relay_port,
            "EXCHANGE_RELAY_ADVERTISE": "127.0.0.1:%d" % self.relay_port,
            "EXCHANGE_ZOOKEEPER_CONNECT": zk,
            "EXCHANGE_KAFKA_BROKERS": kafka_bootstrap,
        }
        for ex, path in SIM_PATHS.items():
            env["EXCHANGE_EXCHANGE_%s_URL" % ex.upper()] = "ws://127.0.0.1:%d%s" % (sim_ports[ex], path)
        argv = [os.path.join(build_dir(), "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                "--profile", "local", "--config", os.path.join(HERE, "cluster.ini")]
        self.proc = util.Proc(argv, run_dir, name=name, env=env, cwd=REPO)
        self.reported_exit = False

    def status(self):
        st, _, body = util.http_get("http://127.0.0.1:%d/status" % self.admin_port, timeout=2)
        return json.loads(body) if st == 200 else None

    def ready(self):
        try:
            return util.http_get("http://127.0.0.1:%d/readyz" % self.admin_port, timeout=2)[0] == 200
        except OSError:
            return False

    def view(self):
        """(role, leader, fanout sources) or None when it does not answer."""
        try:
            s = self.status()
        except (OSError, ValueError):
            return None
        if not s:
            return None
        srcs = sorted(w.get("source") or "?" for w in s.get("workers", []) if w.get("kind") == "fanout")
        return s.get("role"), s.get("leader"), ",".join(srcs)


class Cluster:
    def __init__(self, run_dir, ports):
        self.dir = run_dir
        self.ports = ports
        self.zk = self.kafka = self.kafka_proc = self.sim = None
        self.backends = []
        self.views = {}
        self.kafka_stopped = False
        self.restart_backends = False

    def start(self):
        t0 = time.monotonic()
        p = self.ports
        self.zk = ZooKeeperServer(os.path.join(self.dir, "zookeeper"), port=p["zookeeper"])
        self.zk.start()
        log("zookeeper  %s  (pid %d)" % (self.zk.connect, self.zk.proc.pid))
        self.kafka = make_kafka(os.path.join(self.dir, "kafka"), p["kafka"], p["kafka_controller"])
        self.kafka_proc = self.kafka.nodes[0].proc
        self.kafka.start(timeout=90)
        log("kafka      %s  (KRaft broker+controller, pid %d, log %s)"
            % (self.kafka.bootstrap, self.kafka_proc.pid, self.kafka_proc.stdout_path))
        sim_args = []  # port 0 for every listener (Sim's default) with --free-ports
        if p["sim_control"]:
            sim_args = ["--control-port", str(p["sim_control"])]
            for ex in SIM_PATHS:
                sim_args += ["--%s-port" % ex, str(p[ex])]
        self.sim = Sim(self.dir, args=sim_args).start()
        log("simulator  control :%d, %s  (pid %d)" % (self.sim.ports["control"], ", ".join(
            "%s :%d" % (ex, self.sim.ports[ex]) for ex in SIM_PATHS), self.sim.proc.pid))
        for name in ("backend1", "backend2"):
            b = Backend(name, p[name] or [util.free_port() for _ in range(3)], self.dir, self.zk.connect, self.kafka.bootstrap, self.sim.ports)
            self.backends.append(b)
            b.proc.start()
            # the first one started leads: wait for it before starting the next
            util.wait_until(lambda: self.check_alive() or b.ready(), timeout=60, interval=0.2,
                            what="%s ready" % name)
            log("%s   clients ws://127.0.0.1:%d/ws/exchange  admin http://127.0.0.1:%d/  relay :%d  (pid %d)"
                % (name, b.port, b.admin_port, b.relay_port, b.proc.pid))
        leader = util.wait_until(self.leader, timeout=30, interval=0.2, what="a leader")
        log("ready in %.1f s; leader: %s" % (time.monotonic() - t0, leader.name))
        return leader

    def check_alive(self):
        for name, p in (("zookeeper", self.zk.proc), ("kafka", self.kafka_proc), ("simulator", self.sim.proc)):
            if not p.running() and not (name == "kafka" and self.kafka_stopped):
                raise Stop("%s exited rc=%s\n%s" % (name, p.returncode(), p.logs()))
        for b in self.backends:
            if not b.proc.running() and not b.reported_exit:
                b.reported_exit = True
                log("%s exited rc=%s (kill -USR2 %d restarts it; log %s)"
                    % (b.name, b.proc.returncode(), os.getpid(), b.proc.stderr_path))
        return False

    def leader(self):
        views = [(b, b.view()) for b in self.backends if b.proc.running()]
        leads = [b for b, v in views if v and v[0] == "leader"]
        return leads[0] if len(leads) == 1 else None

    def watch(self):
        """Report changes of role, leader and fanout source per backend."""
        self.check_alive()
        for b in self.backends:
            v = b.view() if b.proc.running() else None
            if v != self.views.get(b.name) and v is not None:
                log("%s: %s, leader %s, fanout source %s" % (b.name, v[0], v[1], v[2]))
            self.views[b.name] = v

    def toggle_kafka(self):
        if self.kafka_proc.running():
            self.kafka_stopped = True
            log("stopping kafka (fanouts switch to the leader's relay after [kafka] fallback_after_ms)")
            self.kafka.down()
            log("kafka stopped; kill -USR1 %d starts it again" % os.getpid())
        else:
            log("starting kafka again")
            self.kafka.up(timeout=90)
            self.kafka_stopped = False
            log("kafka up (pid %d); fanouts go back to kafka after [kafka] recover_after_ms" % self.kafka_proc.pid)

    def restart_exited(self):
        for b in self.backends:
            if not b.proc.running():
                b.proc.stop(timeout=1)  # reap what is left of its session
                b.proc.start()
                b.reported_exit = False
                log("%s restarted (pid %d)" % (b.name, b.proc.pid))

    def info(self):
        return {"dir": self.dir, "pid": os.getpid(), "topic": TOPIC,
                "zookeeper": self.zk.connect, "kafka": self.kafka.bootstrap, "sim": self.sim.ports,
                "backends": [{"name": b.name, "port": b.port, "admin_port": b.admin_port,
                              "relay_port": b.relay_port, "pid": b.proc.pid} for b in self.backends],
                "pids": [p.pid for p in self.procs() if p.pid]}

    def procs(self):
        """Everything started, in stopping order."""
        others = (self.sim and self.sim.proc, self.kafka_proc, self.zk and self.zk.proc)
        return [b.proc for b in self.backends] + [p for p in others if p]

    def stop(self):
        # backends first (the leader hands over, fanouts drain), then the rest
        for p in self.procs():
            if p.popen is not None:
                rc = p.stop(timeout=20)
                left = p.stragglers
                log("stopped %-9s rc=%s%s" % (p.name, rc, " (killed leftovers %s)" % left if left else ""))


def usage(c, leader):
    other = next(b for b in c.backends if b is not leader)
    me = os.getpid()
    ws = ("/usr/bin/python3 -c 'import asyncio, websockets\n"
          "async def main():\n"
          "    async with websockets.connect(\"ws://127.0.0.1:%d/ws/exchange\") as ws:\n"
          "        await ws.send(\"{\\\"op\\\":\\\"subscribe\\\",\\\"channels\\\":[\\\"trade.*.BTC-USDT\\\"],"
          "\\\"id\\\":1}\")\n"
          "        while True: print(await ws.recv())\n"
          "asyncio.run(main())'" % other.port)
    print("""
Try (logs in %(dir)s):
  curl -s http://127.0.0.1:%(la)d/status | python3 -m json.tool | head -30   # the leader's status
  %(ws)s
  kill -9 -- -%(lpid)d    # kill the leader (%(lname)s, whole process group): %(oname)s takes over
                          # after the ZooKeeper session (4 s); kill %(lpid)d hands over at once
  kill -USR2 %(me)d       # restart backends that exited (the restarted one follows)
  kill -USR1 %(me)d       # stop Kafka: fanouts switch to the leader's relay; again: start it
  kcat -b %(kafka)s -C -t %(topic)s -o -5 -e -f '%%k %%h %%s\\n'   # the stream: key, epoch header
Ctrl-C (or kill %(me)d) stops everything.
""" % {"dir": c.dir, "la": leader.admin_port, "ws": ws, "lpid": leader.proc.pid, "lname": leader.name,
       "oname": other.name, "me": me, "kafka": c.kafka.bootstrap, "topic": TOPIC}, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(build_dir(), "cluster"), help="logs and data")
    ap.add_argument("--free-ports", action="store_true", help="free loopback ports instead of the fixed ones")
    ap.add_argument("--info", help="write ports and pids as JSON here once ready")
    a = ap.parse_args()

    # --free-ports: each component takes its ports when it starts (the
    # simulator binds port 0), not all up front: the JVMs' own connections
    # could take an early pick in the meantime.
    ports = {k: None for k in FIXED} if a.free_ports else dict(FIXED)
    busy = [v for v in ports.values() if v for v in (v if isinstance(v, tuple) else (v,)) if util.port_open(v)]
    if busy:
        sys.exit("cluster: ports in use: %s (another `make cluster` or `make run`?)" % busy)
    exe = os.path.join(build_dir(), "exchange-service")
    if not os.access(exe, os.X_OK):
        sys.exit("cluster: %s not built (make all)" % exe)
    os.makedirs(a.dir, exist_ok=True)
    for f in os.listdir(a.dir):  # a fresh cluster each time (ZooKeeper, Kafka data)
        f = os.path.join(a.dir, f)
        shutil.rmtree(f) if os.path.isdir(f) and not os.path.islink(f) else os.unlink(f)

    c = Cluster(os.path.abspath(a.dir), ports)
    flags = {"stop": None, "usr1": False, "usr2": False}

    def on_stop(sig, _frame):
        flags["stop"] = sig
        raise Stop(signal.Signals(sig).name)

    def on_usr(sig, _frame):
        flags["usr1" if sig == signal.SIGUSR1 else "usr2"] = True
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, on_usr)
    signal.signal(signal.SIGUSR2, on_usr)
    rc = 0
    try:
        log("starting in %s (pid %d)" % (c.dir, os.getpid()))
        leader = c.start()
        if a.info:
            with open(a.info + ".tmp", "w") as f:
                json.dump(c.info(), f)
            os.rename(a.info + ".tmp", a.info)
        usage(c, leader)
        while True:
            if flags["usr1"]:
                flags["usr1"] = False
                c.toggle_kafka()
            if flags["usr2"]:
                flags["usr2"] = False
                c.restart_exited()
            c.watch()
            time.sleep(1)
    except Stop as e:
        if flags["stop"] is None:
            log("failed: %s" % e)
            rc = 1
    except Exception as e:  # noqa: BLE001 - report, then stop what was started
        log("failed: %r" % e)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopping")
        c.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
