"""Operations (issue 15): the open-files limit, counters that never go
backwards, the systemd unit, build info, profile alias, ZooKeeper auth."""
import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from harness import util
from harness.service import REPO

# ---- raw WebSocket clients (hundreds of sockets, no threads) -------------------


class RawWs:
    """One client socket: sends the upgrade at once, reads the 101 later."""

    def __init__(self, port, path="/ws/exchange"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.buf = b""
        self.upgraded = False
        self.closed = False
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key))
        self.sock.sendall(req.encode())

    def fileno(self):
        return self.sock.fileno()

    def pump(self):
        """Reads what is there; returns False once the server closed."""
        while not self.closed:
            try:
                d = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not d:
                self.closed = True
                break
            self.buf += d
        if not self.upgraded and b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head[:200]
            self.upgraded = True
        return not self.closed

    def send_text(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.setblocking(True)
        self.sock.sendall(hdr + mask + body)
        self.sock.setblocking(False)

    def texts(self):
        """Complete unmasked server text frames read so far."""
        out, b = [], self.buf
        while len(b) >= 2:
            n, off = b[1] & 0x7F, 2
            if n == 126:
                if len(b) < 4:
                    break
                n, off = struct.unpack("!H", b[2:4])[0], 4
            elif n == 127:
                if len(b) < 10:
                    break
                n, off = struct.unpack("!Q", b[2:10])[0], 10
            if len(b) < off + n:
                break
            if b[0] & 0x0F == 1:
                out.append(b[off:off + n].decode())
            b = b[off + n:]
        return out

    def close(self):
        self.sock.close()
        self.closed = True


def pump_all(clients, timeout=0.2):
    live = [c for c in clients if not c.closed]
    if live:
        r, _, _ = select.select(live, [], [], timeout)
        for c in r:
            c.pump()


def stderr_has(svc, pattern):
    return re.search(pattern, svc.stderr()) is not None


# ---- 1: the open-files limit ---------------------------------------------------

LOW_NOFILE = 96


def test_soft_open_files_limit_raised_to_hard(service_factory):
    svc = service_factory(start=False)
    svc.proc.argv = ["prlimit", "--nofile=200:4096", "--"] + svc.proc.argv
    svc.start().wait_ready()
    util.wait_until(lambda: stderr_has(svc, r"open-files limit.*soft=4096 hard=4096 soft_before=200"),
                    timeout=5, what="raise logged")
    assert svc.status()["nofile"]["soft"] == 4096
    # The workers inherit it.
    for w in svc.workers():
        with open("/proc/%d/limits" % w["pid"]) as f:
            line = [ln for ln in f if ln.startswith("Max open files")][0]
        assert line.split()[3:5] == ["4096", "4096"], line


def test_low_open_files_limit(service_factory):
    """Soft and hard limit both low (so raising the soft one cannot help):
    more clients than descriptors. The worker logs and counts the failed
    accept, pauses instead of spinning, keeps serving its clients, and takes
    the waiting ones once descriptors free up."""
    svc = service_factory(start=False, overrides={"fanout": {"workers": 1, "max_clients": 1000}})
    svc.proc.argv = ["prlimit", "--nofile=%d:%d" % (LOW_NOFILE, LOW_NOFILE), "--"] + svc.proc.argv
    svc.start().wait_ready()
    util.wait_until(lambda: stderr_has(svc, r"open-files limit.*soft=%d hard=%d" % (LOW_NOFILE, LOW_NOFILE)),
                    timeout=5, what="open-files limit logged")
    assert stderr_has(svc, r"open-files limit below what a fanout worker may need")
    st = svc.status()
    assert st["nofile"]["soft"] == LOW_NOFILE and st["nofile"]["hard"] == LOW_NOFILE
    [w] = svc.workers("fanout", "running")
    base = w["open_fds"]
    assert isinstance(base, int) and 5 <= base < LOW_NOFILE - 20, w
    assert svc.metric("exchange_open_files_limit") == LOW_NOFILE

    # More clients than the worker has descriptors left.
    n = LOW_NOFILE - base + 30
    clients = []
    for _ in range(n):
        clients.append(RawWs(svc.port))
    first = []

    def settled():
        pump_all(clients)
        first[:] = [c for c in clients if c.upgraded and not c.closed]
        errs = svc.metric("exchange_fanout_accept_errors_total", {"reason": "emfile"}) or 0
        return errs >= 1 and len(first) >= LOW_NOFILE - base - 10
    util.wait_until(settled, timeout=20, what="worker at its limit, accept errors counted")
    assert stderr_has(svc, r'accept failed, pausing accepts.*nofile_soft=%d.* err="too many open files"' % LOW_NOFILE)
    waiting = [c for c in clients if not c.upgraded]
    assert waiting, "every client got in: the limit was not reached"
    assert not [c for c in clients if c.closed], "a waiting client was dropped"
    [w] = svc.workers("fanout", "running")
    assert w["open_fds"] >= LOW_NOFILE - 3, w
    util.wait_until(lambda: svc.workers("fanout", "running")[0]["clients"] == len(first), timeout=5,
                    what="status counts the connected clients")

    # Paused, not spinning: at most one retry per pause (250 ms) over a window.
    e0, t0 = svc.metric("exchange_fanout_accept_errors_total", {"reason": "emfile"}), time.monotonic()
    # The connected clients are still served meanwhile.
    probe = first[:5]
    for i, c in enumerate(probe):
        c.send_text(json.dumps({"op": "subscribe", "channels": ["trade.upbit.BTC-KRW"], "id": i}))

    def answered():
        pump_all(probe)
        return all(any('"subscribed"' in t for t in c.texts()) for c in probe)
    util.wait_until(answered, timeout=10, what="connected clients answered while at the limit")
    util.wait_until(lambda: time.monotonic() - t0 >= 2.0, timeout=5, what="2 s window")
    e1, t1 = svc.metric("exchange_fanout_accept_errors_total", {"reason": "emfile"}), time.monotonic()
    # +2 for the snapshot lag (stats every 200 ms) at both ends.
    assert e1 - e0 <= (t1 - t0) / 0.25 + 2, (e0, e1, t1 - t0)

    # Descriptors free up: the waiting clients are accepted.
    for c in first:
        c.close()

    def all_in():
        pump_all(waiting)
        return all(c.upgraded for c in waiting)
    util.wait_until(all_in, timeout=20, what="waiting clients accepted once fds freed")
    assert not [c for c in waiting if c.closed]
    util.wait_until(lambda: stderr_has(svc, r"accepting again.*pauses="), timeout=5, what="resume logged")
    util.wait_until(lambda: svc.workers("fanout", "running")[0]["clients"] == len(waiting), timeout=10,
                    what="status counts the accepted clients")
    for c in waiting:
        c.close()


# ---- 4: counters never go backwards --------------------------------------------


def monotonic_series(text):
    """{series: value} of every counter, histogram bucket and count."""
    types, out = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, t = line.split()
            types[name] = t
            continue
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if types.get(name) == "counter":
            out[key] = float(val)
            continue
        for suffix in ("_bucket", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                out[key] = float(val)
    return out


def test_counters_monotonic_across_reload_and_crash(service_factory, sim_factory):
    sim = sim_factory()
    svc = service_factory(sim_ports=sim.ports, overrides={"fanout": {"workers": 2}}).wait_ready()
    client = RawWs(svc.port, "/ws/exchange?channels=trade.*.*")
    seen, problems = {}, []

    def scrape():
        cur = monotonic_series(svc.metrics())
        for k, v in seen.items():
            if k not in cur:
                # A family's unlabelled 0 gives way to its first labelled
                # series: nothing counted was lost.
                if v == 0 and "{" not in k:
                    continue
                problems.append("%s vanished (was %g)" % (k, v))
            elif cur[k] < v:
                problems.append("%s went back %g -> %g" % (k, v, cur[k]))
        seen.update(cur)
        client.pump()
        return cur

    def received():
        return sum(v for k, v in scrape().items() if k.startswith("exchange_fanout_messages_received_total"))

    util.wait_until(lambda: received() > 0, timeout=30, what="messages flowing to the fanouts")
    gen1 = sorted(w["pid"] for w in svc.workers("fanout"))
    r0 = received()
    svc.sighup()

    def reloaded():
        scrape()
        pids = sorted(w["pid"] for w in svc.workers("fanout", "running"))
        return len(pids) == 2 and not set(pids) & set(gen1) and not [p for p in gen1 if util.pid_alive(p)]
    util.wait_until(reloaded, timeout=30, what="generation 2 serving, generation 1 gone")
    util.wait_until(lambda: received() > r0, timeout=20, what="messages after the reload")
    victim = svc.workers("fanout", "running")[0]["pid"]
    r1 = received()
    os.kill(victim, signal.SIGKILL)

    def replaced():
        scrape()
        pids = [w["pid"] for w in svc.workers("fanout", "running")]
        return len(pids) == 2 and victim not in pids
    util.wait_until(replaced, timeout=20, what="killed fanout replaced")
    util.wait_until(lambda: received() > r1, timeout=20, what="messages after the crash")
    for _ in range(5):
        scrape()
    assert not problems, problems[:20]
    assert svc.metric("exchange_worker_exits_total", {"kind": "fanout"}) >= 3
    client.close()


# ---- 9: the systemd unit ---------------------------------------------------------

UNIT = os.path.join(REPO, "conf", "exchange-service.service")


def installed_unit(tmp_path, build_dir):
    """The unit as `make install` writes it, with PREFIX pointing at the build."""
    (tmp_path / "bin").mkdir()
    os.symlink(os.path.join(build_dir, "exchange-service"), str(tmp_path / "bin" / "exchange-service"))
    text = open(UNIT).read().replace("@PREFIX@", str(tmp_path))
    path = tmp_path / "exchange-service.service"
    path.write_text(text)
    return str(path), text


def test_systemd_unit_security_and_settings(tmp_path, build_dir):
    path, text = installed_unit(tmp_path, build_dir)
    for line in ("RestartPreventExitStatus=2", "EnvironmentFile=-/etc/exchange-service/env",
                 "LoadCredential=relay-token:", "Environment=EXCHANGE_RELAY_TOKEN=file:relay-token",
                 "WatchdogSec=", "Type=notify"):
        assert line in text, line
    v = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", path],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    score = float(m.group(1))
    print("systemd-analyze security exposure: %s %s" % (score, m.group(2)))
    assert score < 3.0, r.stdout


def test_config_error_exits_2(tmp_path, build_dir):
    """RestartPreventExitStatus=2 relies on it."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[fanout]\nworkers = 0\n")
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                        "--profile", "local", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "workers" in r.stderr


def test_watchdog_and_ready_notifications(service_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(0.2)
    svc = service_factory(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}).wait_ready()
    got = []

    def pings():
        try:
            got.append(s.recv(256).decode())
        except socket.timeout:
            pass
        return "READY=1" in got and got.count("WATCHDOG=1") >= 3
    util.wait_until(pings, timeout=10, what="READY=1 and WATCHDOG=1 pings")
    assert "systemd watchdog on" in svc.stderr()
    s.close()


def test_secret_from_credentials_directory(service_factory, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin-token").write_text("s3cret-admin-token\n")
    svc = service_factory(env={"CREDENTIALS_DIRECTORY": str(creds),
                               "EXCHANGE_ADMIN_TOKEN": "file:admin-token"}).wait_ready()
    assert svc.get("/status")[0] == 401
    st, _, _ = util.http_get(svc.admin + "/status", headers={"Authorization": "Bearer s3cret-admin-token"})
    assert st == 200
    # A missing file is a configuration error naming the file.
    r = subprocess.run([svc.proc.argv[0], "--conf-dir", os.path.join(REPO, "conf"), "--profile", "local",
                        "--check-config"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, CREDENTIALS_DIRECTORY=str(creds), EXCHANGE_RELAY_TOKEN="file:nope"))
    assert r.returncode == 2 and "%s/nope" % creds in r.stderr, r.stderr


# ---- 10: SPRING_PROFILES_ACTIVE ---------------------------------------------------


def test_spring_profiles_active_selects_the_profile(service_factory, build_dir):
    env = {k: v for k, v in os.environ.items() if k != "EXCHANGE_PROFILE"}
    env["SPRING_PROFILES_ACTIVE"] = "docker,kafka"
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                        "--check-config"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert "; profile: docker" in r.stdout
    env["EXCHANGE_PROFILE"] = "local"
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                        "--check-config"], capture_output=True, text=True, timeout=30, env=env)
    assert "; profile: local" in r.stdout          # EXCHANGE_PROFILE wins
    svc = service_factory(start=False)
    svc.proc.argv = [a for a in svc.proc.argv if a not in ("--profile", "local")]
    svc.env = svc.proc.env = {"SPRING_PROFILES_ACTIVE": "local", "EXCHANGE_PROFILE": ""}
    svc.start().wait_ready()
    assert svc.status()["config"]["profile"] == "local"
    assert svc.stderr().count("an alias of EXCHANGE_PROFILE") == 1
    svc.sighup()
    util.wait_until(lambda: "reload applied" in svc.stderr(), timeout=10, what="reload")
    assert svc.stderr().count("an alias of EXCHANGE_PROFILE") == 1


# ---- 11: version, build info, the image's healthcheck ----------------------------


def test_version_build_info_and_healthcheck(service_factory, build_dir):
    exe = os.path.join(build_dir, "exchange-service")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.match(r"exchange-service (\S+) \(commit (\S+)\)$", out.strip())
    assert m, out
    version, commit = m.groups()
    head = shutil.which("git") and subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                  capture_output=True, text=True).stdout.strip()
    if head:                       # a checkout and git installed: the Makefile asked git
        assert commit != "unknown" and version != "unknown"
    svc = service_factory().wait_ready()
    assert svc.metric("exchange_build_info", {"version": version, "commit": commit}) == 1
    hc = [exe, "--healthcheck", "--conf-dir", os.path.join(REPO, "conf"), "--profile", "local",
          "--config", svc.ini_path]
    r = subprocess.run(hc, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "healthy" in r.stdout, (r.returncode, r.stdout, r.stderr)
    svc.stop()
    r = subprocess.run(hc, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "unhealthy" in r.stderr


# ---- 6: ZooKeeper digest auth and a creator-only ACL ------------------------------


def test_zookeeper_auth_creator_only_acl(service_factory, zk_server, tmp_path):
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoAuthError
    from kazoo.security import make_digest_acl_credential
    secret_file = tmp_path / "zk-auth"
    secret_file.write_text("exchange:zk-s3cret\n")
    root = "/ops-acl-%d" % os.getpid()
    svc = service_factory(overrides={
        "service": {"cluster": "acl"},
        "zookeeper": {"connect": zk_server.connect, "session_timeout_ms": 4000, "root": root,
                      "auth": str(secret_file)}}).wait_ready()
    util.wait_until(lambda: svc.status()["role"] == "leader", timeout=20, what="leader")
    assert "auth=digest acl=creator_all" in svc.stderr()
    assert "zk-s3cret" not in svc.stderr()
    election = root + "/acl/election"

    owner = KazooClient(hosts=zk_server.connect, auth_data=[("digest", "exchange:zk-s3cret")])
    stranger = KazooClient(hosts=zk_server.connect)
    wrong = KazooClient(hosts=zk_server.connect, auth_data=[("digest", "exchange:guess")])
    for c in (owner, stranger, wrong):
        c.start(timeout=15)
    try:
        [node] = owner.get_children(election)
        ident = make_digest_acl_credential("exchange", "zk-s3cret")
        for path in (root, root + "/acl", election, election + "/" + node):
            acls, _ = owner.get_acls(path)
            assert [(a.id.scheme, a.id.id, a.perms) for a in acls] == [("digest", ident, 31)], (path, acls)
        for c in (stranger, wrong):
            with pytest.raises(NoAuthError):
                c.delete(election + "/" + node)
            with pytest.raises(NoAuthError):
                c.create(election + "/n_intruder_0000000000", b'{"id":"intruder"}', ephemeral=True,
                         sequence=False)
            with pytest.raises(NoAuthError):
                c.get_children(election)
            with pytest.raises(NoAuthError):
                c.delete(election, recursive=False)
        # Still the one leader, still the same node.
        assert owner.get_children(election) == [node]
        assert svc.status()["role"] == "leader"
    finally:
        for c in (owner, stranger, wrong):
            c.stop()
            c.close()


def test_zookeeper_auth_must_be_user_password(build_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env["EXCHANGE_ZOOKEEPER_AUTH"] = "no-colon"
    r = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                        "--profile", "local", "--check-config"], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 2 and "[zookeeper] auth: must be user:password" in r.stderr, r.stderr
    assert "no-colon" not in r.stderr
