"""Supervisor process model (issue 2): start/stop, worker restarts, reload,
drain, admin endpoints, metrics format, no orphans."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from harness import util
from harness.service import REPO
from harness.wsclient import WsClient


def fanout_pids(svc, state="running"):
    return sorted(w["pid"] for w in svc.workers("fanout", state))


def test_start_status_and_clean_stop(service_factory):
    svc = service_factory(overrides={"fanout": {"workers": 2}}).wait_ready()
    st = svc.status()
    assert st["instance"] == "svc"
    assert st["role"] == "leader"          # standalone: always leader
    assert st["session"] == "standalone"
    util.wait_until(lambda: len(fanout_pids(svc)) == 2, timeout=10, what="2 running fanouts")
    kinds = sorted(w["kind"] for w in svc.status()["workers"])
    assert kinds.count("fanout") == 2 and kinds.count("ingest") == 1
    for w in svc.status()["workers"]:
        assert {"kind", "pid", "state", "restarts", "uptime_s"} <= set(w)
    assert svc.get("/healthz")[0] == 200
    children = svc.tree()
    assert len(children) >= 3
    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    rc = svc.proc.wait(timeout=15)
    assert rc == 0
    assert time.monotonic() - t0 < 1.0 + 6.0 + 2.0     # drain_ms + flush margin
    util.wait_until(lambda: not [p for p in children if util.pid_alive(p)], timeout=5,
                    what="no orphans after SIGTERM")


def test_killed_fanout_is_replaced(service_factory):
    svc = service_factory(overrides={"fanout": {"workers": 2}}).wait_ready()
    util.wait_until(lambda: len(fanout_pids(svc)) == 2, timeout=10, what="2 fanouts")
    before = fanout_pids(svc)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    def replaced():
        pids = fanout_pids(svc)      # one snapshot, not two racing ones
        return len(pids) == 2 and victim not in pids
    util.wait_until(replaced, timeout=10, what="killed fanout replaced")
    ws = svc.workers("fanout")
    restarted = [w for w in ws if w["restarts"] >= 1]
    assert len(restarted) == 1, (victim, before, [(w["pid"], w["state"], w["restarts"]) for w in ws])
    assert svc.metric("exchange_worker_restarts_total", {"kind": "fanout"}) >= 1
    # Serving again: the listener accepts connections.
    util.wait_until(lambda: util.port_open(svc.port), timeout=5, what="fanout port open")
    assert not util.pid_alive(victim)


def test_sighup_with_broken_file_keeps_old_config(service_factory):
    svc = service_factory().wait_ready()
    pids = fanout_pids(svc)
    good = open(svc.ini_path).read()
    svc.write_ini(raw=good + "\n[fanout]\nworkers = 0\nlistn = 1\n")
    svc.sighup()
    util.wait_until(lambda: "reload failed" in svc.stderr(), timeout=10, what="reload error logged")
    err = svc.stderr()
    assert "%s:" % svc.ini_path in err and "workers" in err
    assert "listn" in err and "listen" in err            # the suggestion
    assert svc.metric("exchange_reloads_total", {"result": "failed"}) == 1
    # Still serving with the old workers.
    assert fanout_pids(svc) == pids
    assert svc.get("/readyz")[0] == 200
    assert util.port_open(svc.port)


def test_sighup_with_valid_change_replaces_workers(service_factory):
    svc = service_factory(overrides={"fanout": {"workers": 1}}).wait_ready()
    old = fanout_pids(svc)
    assert len(old) == 1
    svc.sections["fanout"]["workers"] = 2
    svc.write_ini()
    svc.sighup()
    def swapped():
        pids = fanout_pids(svc)
        return len(pids) == 2 and not set(old) & set(pids)
    util.wait_until(swapped, timeout=15, what="new generation of 2 workers, old gone")
    util.wait_until(lambda: not util.pid_alive(old[0]), timeout=10, what="old worker exited")
    assert svc.metric("exchange_reloads_total", {"result": "ok"}) == 1
    assert svc.get("/readyz")[0] == 200


def test_second_sigterm_exits_at_once(service_factory):
    svc = service_factory(overrides={"fanout": {"drain_ms": 30000}}).wait_ready()
    # A connected client keeps the drain going (reconnect hints are spread
    # over drain_ms), so only the second signal can end it early.
    clients = [WsClient(svc.ws_url, name="c%d" % i).start() for i in range(3)]
    children = svc.tree()
    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    util.wait_until(lambda: svc.get("/readyz", timeout=0.5)[0] == 503, timeout=5, interval=0.02,
                    what="readiness false while draining")
    assert svc.running()
    svc.signal(signal.SIGTERM)
    svc.proc.wait(timeout=5)
    assert time.monotonic() - t0 < 10        # far less than the 30 s drain
    util.wait_until(lambda: not [p for p in children if util.pid_alive(p)], timeout=5,
                    what="no orphans after a second SIGTERM")
    for c in clients:
        c.close()


def test_supervisor_killed_workers_exit(service_factory):
    svc = service_factory(overrides={"fanout": {"workers": 2}}).wait_ready()
    children = svc.tree()
    assert children
    os.kill(svc.pid, signal.SIGKILL)      # only the supervisor, not its group
    svc.proc.wait(timeout=5)
    util.wait_until(lambda: not [p for p in children if util.pid_alive(p)], timeout=10,
                    what="workers exit when the supervisor disappears")


def test_admin_endpoints(service_factory):
    svc = service_factory().wait_ready()
    assert svc.get("/nope")[0] == 404
    st, hdr, body = svc.get("/")
    assert st == 200 and b"exchange-service" in body and hdr["content-type"].startswith("text/html")
    # A malformed request line gets 400.
    with socket.create_connection(("127.0.0.1", svc.admin_port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # Oversized headers are rejected.
    with socket.create_connection(("127.0.0.1", svc.admin_port), timeout=5) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")


def test_metrics_pass_promtool(service_factory):
    svc = service_factory(overrides={"fanout": {"workers": 2}}).wait_ready()
    # Wait for at least one stats round from every worker.
    util.wait_until(lambda: svc.metric("exchange_worker_up") == 3, timeout=10, what="worker_up 3")
    text = svc.metrics()
    assert "exchange_worker_spawns_total" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (make deps installs prometheus)"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_bad_config_at_start_exits_2(tmp_path, build_dir):
    bad = tmp_path / "bad.ini"
    bad.write_text("[fanout]\nworkers = 999\n")
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir",
                        os.path.join(REPO, "conf"), "--config", str(bad)],
                       capture_output=True, timeout=10)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "%s:2" % bad in err and "workers" in err and "999" in err


def test_check_config_shows_sources(tmp_path, build_dir):
    extra = tmp_path / "x.ini"
    extra.write_text("[fanout]\nhistory = 77\n")
    env = dict(os.environ, EXCHANGE_KAFKA_TOPIC="from-env", LOG_LEVEL="debug")
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir",
                        os.path.join(REPO, "conf"), "--profile", "prod", "--config", str(extra),
                        "--check-config"], capture_output=True, timeout=10, env=env)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "history = 77" in out and "%s:2" % extra in out
    assert "from-env" in out and "env EXCHANGE_KAFKA_TOPIC" in out
    assert "env LOG_LEVEL" in out
    assert "prod.ini" in out


def test_crash_loop_is_reported_not_tight(service_factory, tmp_path, build_dir):
    # A fanout binary that dies at once: the slot must back off, be reported
    # as a crash loop, and never spin.
    libexec = tmp_path / "libexec"
    libexec.mkdir()
    for b in ("exchange-ingest",):
        os.symlink(os.path.join(build_dir, b), libexec / b)
    crash = libexec / "exchange-fanout"
    crash.write_text("#!/bin/sh\nexit 3\n")
    crash.chmod(0o755)
    svc = service_factory(env={"EXCHANGE_LIBEXEC_DIR": str(libexec)},
                          overrides={"supervisor": {"restart_min_ms": 50, "restart_max_ms": 1000,
                                                    "crash_window_ms": 10000, "crash_limit": 3}})
    util.wait_until(lambda: svc.metric("exchange_worker_crashloops_total", {"kind": "fanout"}) == 1,
                    timeout=15, what="crash loop reported")
    assert "worker crash loop" in svc.stderr()
    n1 = svc.metric("exchange_worker_spawns_total", {"kind": "fanout"})
    t0 = time.monotonic()
    util.wait_until(lambda: svc.metric("exchange_worker_spawns_total", {"kind": "fanout"}) > n1,
                    timeout=5, what="retry at max backoff")
    # Retries at the cap (1 s), not in a tight loop.
    assert time.monotonic() - t0 >= 0.5
    assert svc.get("/readyz")[0] == 503
    assert any(w.get("crashloop") for w in svc.workers("fanout"))


def ingest_pid(svc):
    pids = [w["pid"] for w in svc.workers("ingest") if w["state"] in ("starting", "running")]
    return pids[0] if pids else None


def running_ingest(svc):
    util.wait_until(lambda: ingest_pid(svc) is not None, timeout=10, what="ingest running")
    return ingest_pid(svc)


def seconds_until_gone(pid, t0, bound_s, what):
    util.wait_until(lambda: not util.pid_alive(pid), timeout=bound_s + 3, interval=0.02, what=what)
    return time.monotonic() - t0


def test_role_is_draining_once_resigned(service_factory):
    # Clients keep the drain going (their closes are spread over drain_ms; the
    # first may go at once), so /status can be read during it.
    svc = service_factory(overrides={"fanout": {"drain_ms": 30000}}).wait_ready()
    assert svc.status()["role"] == "leader"
    assert svc.metric("exchange_leader") == 1
    clients = [WsClient(svc.ws_url, name="c%d" % i).start() for i in range(3)]
    util.wait_until(lambda: svc.status()["clients"] >= 3, timeout=10, what="the clients connected")
    svc.signal(signal.SIGTERM)
    # The first answer after the signal already says draining: never two
    # leaders for drain_ms.
    util.wait_until(lambda: svc.get("/readyz", timeout=0.5)[0] == 503, timeout=5, interval=0.02,
                    what="drain begun")
    st = svc.status()
    assert st["role"] == "draining" and st["draining"]
    assert svc.metric("exchange_leader") == 0
    assert svc.running()
    for c in clients:
        c.close()
    svc.proc.wait(timeout=15)         # no client left: the drain ends


def test_ingest_stops_when_its_lease_is_not_renewed(service_factory):
    # Only the supervisor is frozen: the ingest worker must stop producing on
    # its own within the lease, and say why.
    lease_ms = 1000
    svc = service_factory(overrides={"zookeeper": {"lease_ms": lease_ms},
                                     "supervisor": {"restart_min_ms": 200}}).wait_ready()
    victim = running_ingest(svc)
    os.kill(svc.pid, signal.SIGSTOP)
    try:
        took = seconds_until_gone(victim, time.monotonic(), lease_ms / 1000, "ingest exits without its lease")
    finally:
        os.kill(svc.pid, signal.SIGCONT)
    assert took < lease_ms / 1000 + 0.5, took     # within the lease (+ scheduling on a loaded host)
    assert "lease expired" in svc.stderr()
    util.wait_until(lambda: svc.metric("exchange_ingest_fenced_exits_total",
                                       {"reason": "lease_expired"}) == 1,
                    timeout=5, what="lease expiry counted")
    # Renewed again once the supervisor runs: a new ingest, a higher epoch.
    util.wait_until(lambda: ingest_pid(svc) not in (None, victim), timeout=10, what="ingest restarted")


def test_worker_that_does_not_stop_is_killed_by_the_deadline(service_factory):
    deadline_ms = 1000
    svc = service_factory(overrides={"supervisor": {"stop_deadline_ms": deadline_ms},
                                     "fanout": {"drain_ms": 0}}).wait_ready()
    victim = running_ingest(svc)
    os.kill(victim, signal.SIGSTOP)      # it cannot obey the stop
    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    took = seconds_until_gone(victim, t0, deadline_ms / 1000, "stopped ingest killed")
    assert deadline_ms / 1000 - 0.1 <= took < deadline_ms / 1000 + 1.5, took
    assert "did not stop by the deadline" in svc.stderr()
    assert svc.proc.wait(timeout=10) == 0
