"""exchange-service instances for integration tests.

    svc = service_factory(overrides={"fanout": {"workers": 2}}, sim=None)
    svc.wait_ready(); svc.status(); svc.metrics(); svc.sighup(); svc.stop()

Each instance gets free loopback ports for the fanout, admin and relay
listeners, a private INI overlay on top of conf/exchange.ini + the chosen
profile, and is stopped (and its whole process tree checked) at teardown.
"""
import json
import os
import signal
import time

import pytest

from harness import build_dir as _build_dir
from harness import util

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EXCHANGES = ("upbit", "bithumb", "binance", "coinbase")

__all__ = ["Service", "service_factory", "REPO", "leaders"]


def ini_text(sections):
    out = []
    for sec, kv in sections.items():
        out.append("[%s]" % sec)
        for k, v in kv.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            out.append("%s = %s" % (k, v))
        out.append("")
    return "\n".join(out)


def merge(base, extra):
    for sec, kv in (extra or {}).items():
        base.setdefault(sec, {}).update(kv)
    return base


class Service:
    def __init__(self, log_dir, name="svc", overrides=None, profile="local", env=None,
                 sim_ports=None):
        self.log_dir = str(log_dir)
        self.name = name
        self.port = util.free_port()
        self.admin_port = util.free_port()
        self.relay_port = util.free_port()
        sections = {
            "service": {"cluster": "test", "instance": name},
            "fanout": {"listen": "127.0.0.1:%d" % self.port, "workers": 1, "drain_ms": 1000},
            "admin": {"listen": "127.0.0.1:%d" % self.admin_port},
            "relay": {"listen": "127.0.0.1:%d" % self.relay_port,
                      "advertise": "127.0.0.1:%d" % self.relay_port},
            "supervisor": {"restart_min_ms": 100, "stats_interval_ms": 200},
        }
        for ex in EXCHANGES:
            if sim_ports and ex in sim_ports:
                path = {"upbit": "/websocket/v1", "bithumb": "/websocket/v1",
                        "binance": "/stream", "coinbase": "/"}[ex]
                sections["exchange." + ex] = {"enabled": True,
                                              "url": "ws://127.0.0.1:%d%s" % (sim_ports[ex], path),
                                              "rest_url": "http://127.0.0.1:%d" % sim_ports[ex]}
            else:
                sections["exchange." + ex] = {"enabled": False}
        merge(sections, overrides)
        self.sections = sections
        self.ini_path = os.path.join(self.log_dir, "%s.ini" % name)
        self.write_ini()
        self.profile = profile
        self.env = {"EXCHANGE_PROFILE": profile}
        self.env.update(env or {})
        bd = _build_dir()
        self.proc = util.Proc([os.path.join(bd, "exchange-service"), "--conf-dir",
                               os.path.join(REPO, "conf"), "--profile", profile,
                               "--config", self.ini_path],
                              self.log_dir, name=name, env=self.env, cwd=REPO)

    # -- configuration --------------------------------------------------------
    def write_ini(self, sections=None, raw=None):
        with open(self.ini_path, "w") as f:
            f.write(raw if raw is not None else ini_text(sections or self.sections))

    # -- lifecycle ------------------------------------------------------------
    def start(self):
        self.proc.start()
        return self

    def stop(self, timeout=15.0):
        return self.proc.stop(timeout=timeout)

    def running(self):
        return self.proc.running()

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def sighup(self):
        self.signal(signal.SIGHUP)

    def logs(self, lines=60):
        return self.proc.logs(lines)

    def stderr(self):
        with open(self.proc.stderr_path, "r", errors="replace") as f:
            return f.read()

    # -- admin port -----------------------------------------------------------
    @property
    def admin(self):
        return "http://127.0.0.1:%d" % self.admin_port

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/ws/exchange" % self.port

    def get(self, path, timeout=5.0):
        return util.http_get(self.admin + path, timeout=timeout)

    def status(self):
        st, _, body = self.get("/status")
        assert st == 200, "status %s" % st
        return json.loads(body)

    def metrics(self):
        st, _, body = self.get("/metrics")
        assert st == 200
        return body.decode() if isinstance(body, bytes) else body

    def metric(self, name, labels=None):
        """Sum of a metric's samples whose labels include `labels`."""
        total, found = 0.0, False
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, val = line.rpartition(" ")
            mname = key.split("{", 1)[0]
            if mname != name:
                continue
            if labels and not all('%s="%s"' % kv in key for kv in labels.items()):
                continue
            total += float(val)
            found = True
        return total if found else None

    def workers(self, kind=None, state=None):
        return [w for w in self.status()["workers"]
                if (kind is None or w["kind"] == kind) and (state is None or w["state"] == state)]

    def wait_ready(self, timeout=20.0):
        def ready():
            if not self.running():
                raise AssertionError("service exited rc=%s\n%s" % (self.proc.returncode(), self.logs()))
            st, _, _ = self.get("/readyz", timeout=1.0)
            return st == 200
        util.wait_until(ready, timeout=timeout, what="%s ready" % self.name)
        return self

    def tree(self):
        return util.descendants(self.pid) if self.pid else []


def leaders(svcs):
    """The running instances whose /status says role leader (a dying one,
    whose admin port no longer answers, is skipped)."""
    out = []
    for s in svcs:
        if not s.running():
            continue
        try:
            if s.status().get("role") == "leader":
                out.append(s)
        except Exception:  # noqa: BLE001 - a dying instance
            continue
    return out


def cluster_nodes(service_factory, zk, sim, n=2, session_ms=2000, overrides=None, node0_leads=False):
    """n ready instances ("node0"...) of a new cluster over zk (anything
    with .connect), fed by sim (or None); overrides ({section: {key: value}})
    apply to each. With node0_leads, node0 is ready and leading before the
    others start, so it leads (registration order decides)."""
    name = "c%d" % int(time.monotonic() * 1000)
    svcs = []
    for i in range(n):
        ov = {"service": {"cluster": name},
              "zookeeper": {"connect": zk.connect, "session_timeout_ms": session_ms}}
        for sec, kv in (overrides or {}).items():
            ov.setdefault(sec, {}).update(kv)
        svcs.append(service_factory(name="node%d" % i, sim_ports=sim.ports if sim else None, overrides=ov))
        if node0_leads and i == 0:
            svcs[0].wait_ready(timeout=30)
            util.wait_until(lambda: svcs[0].status()["role"] == "leader", timeout=20, what="node0 leads")
    for s in svcs:
        s.wait_ready(timeout=30)
    return svcs


@pytest.fixture
def service_factory(tmp_path):
    made = []

    def make(name="svc", start=True, **kw):
        s = Service(tmp_path, name=name, **kw)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    problems = []
    for s in made:
        pids = s.tree() if s.running() else []
        # SIGTERM the supervisor alone: it must take its workers down itself.
        s.proc.stop(timeout=15.0, group=False)
        deadline = time.monotonic() + 10
        while [p for p in pids if util.pid_alive(p)] and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in pids if util.pid_alive(p)]
        if left:
            problems.append("%s left orphans %s" % (s.name, left))
        s.proc.stop(timeout=1.0)  # anything left in the session is killed
    assert not problems, problems
