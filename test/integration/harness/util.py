"""Generic helpers: ports, polling, child processes, /proc, HTTP."""
import contextlib
import errno
import http.client
import os
import random
import signal as _signal
import socket
import subprocess
import time
import urllib.parse

# Every Proc started in this pytest process, so conftest can show logs on
# failure and kill anything a test forgot.
_LIVE = []


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_GIVEN = set()
_RNG = random.Random(os.getpid() ^ time.monotonic_ns())


def free_port(host="127.0.0.1"):
    """A TCP port that is free now and that the kernel never gives to an
    outgoing connection: it lies below the ephemeral range. (A port from
    bind(0) is an ephemeral one, so any client connection made before the
    server binds it, a Kafka or ZooKeeper client of the same test, can take
    it: CI saw an ingest worker in a restart loop on "relay cannot listen:
    address already in use".) Never the same port twice in this process;
    random, so that concurrent test processes rarely meet."""
    lo, _ = _ephemeral_range()
    first = 20000 if lo > 21000 else 1024
    if lo - first < 1000:  # no room below the range: fall back to bind(0)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = _RNG.randrange(first, lo)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free TCP port in %d-%d" % (first, lo - 1))


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value, which is returned.
    Exceptions from predicate count as "not yet". Raises AssertionError
    naming `what` (and the last exception) on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1fs waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise AssertionError(msg)
        time.sleep(interval)


def port_open(port, host="127.0.0.1", timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path, lines=40):
    """The last `lines` lines of a file ('' if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@contextlib.contextmanager
def frozen(pids):
    """SIGSTOP every pid for the block; SIGCONT those still there after it
    (also when the block fails). Yields the list of pids."""
    pids = list(pids)
    for p in pids:
        os.kill(p, _signal.SIGSTOP)
    try:
        yield pids
    finally:
        for p in pids:
            try:
                os.kill(p, _signal.SIGCONT)
            except ProcessLookupError:
                pass


def _stat_fields(pid):
    """/proc/PID/stat after the command name (state, ppid, pgrp, session,
    ...), or None when the process is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def _live_procs():
    """(pid, stat fields) of every live (non-zombie) process."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            rest = _stat_fields(d)
            if rest is not None and rest[0] not in ("Z", "X"):
                yield int(d), rest


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    rest = _stat_fields(pid)
    return rest is not None and rest[0] not in ("Z", "X")


def _children_map():
    kids = {}
    for pid, rest in _live_procs():
        kids.setdefault(int(rest[1]), []).append(pid)
    return kids


def descendants(pid):
    """All live (non-zombie) descendant pids of pid, from /proc."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def pids_in_session(sid):
    """Live pids whose session id is sid (finds orphans re-parented to init)."""
    return [pid for pid, rest in _live_procs() if int(rest[3]) == sid]


def raw_http_status(port, raw, timeout=10.0):
    """Send raw bytes to 127.0.0.1:port; the status code of the HTTP
    response's first line (0 when the connection closes without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ")[1]) if data else 0


def http_get(url, timeout=5.0, headers=None):
    """GET url; returns (status, headers as a lower-cased dict, body bytes)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


class Proc:
    """A child process in its own session (so its whole tree can be signalled),
    stdout/stderr captured to files in log_dir.

    stdin: None (-> /dev/null) or subprocess.PIPE (keep a pipe; tools like
    tools that exit when it closes)."""

    def __init__(self, argv, log_dir, name=None, env=None, cwd=None, stdin=None,
                 stdout_pipe=False):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        self.log_dir = str(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.stdout_pipe = stdout_pipe
        self.popen = None
        self.starts = 0
        self.stragglers = []

    @property
    def stdout_path(self):
        return os.path.join(self.log_dir, "%s.stdout" % self.name)

    @property
    def stderr_path(self):
        return os.path.join(self.log_dir, "%s.stderr" % self.name)

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def start(self):
        assert not self.running(), "%s already running" % self.name
        env = dict(os.environ)
        if self.env:
            env.update({k: str(v) for k, v in self.env.items()})
        self.starts += 1
        mode = "ab" if self.starts > 1 else "wb"
        err = open(self.stderr_path, mode)
        out = subprocess.PIPE if self.stdout_pipe else open(self.stdout_path, mode)
        try:
            if self.starts > 1:
                err.write(b"\n----- restart #%d -----\n" % self.starts)
                err.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=self.stdin if self.stdin is not None else subprocess.DEVNULL,
                stdout=out, stderr=err, env=env, cwd=self.cwd, start_new_session=True)
        finally:
            err.close()
            if not self.stdout_pipe:
                out.close()
        if self not in _LIVE:
            _LIVE.append(self)
        return self

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def returncode(self):
        return None if self.popen is None else self.popen.poll()

    def send_signal(self, sig, group=False):
        if not self.running():
            return
        try:
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout=10.0, sig=_signal.SIGTERM, group=True):
        """Send `sig` (SIGTERM) to the process group (or only the process with
        group=False), SIGKILL the group after `timeout`, then SIGKILL anything
        still left in the session. Pids found alive in the session after the
        leader exited are kept in self.stragglers (orphan checks). Returns
        the exit code."""
        if self.popen is None:
            return None
        pgid = self.popen.pid
        rc = self.popen.poll()
        if rc is None:
            try:
                if group:
                    os.killpg(pgid, sig)
                else:
                    self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                rc = self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pgid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
                rc = self.popen.wait(timeout=10)
        # Children that got the signal too may need a moment to exit.
        grace = time.monotonic() + min(timeout, 2.0)
        while pids_in_session(pgid) and time.monotonic() < grace:
            time.sleep(0.02)
        self.stragglers = pids_in_session(pgid)
        self._reap_group(pgid)
        for f in (self.popen.stdin, self.popen.stdout):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        return rc

    def kill(self):
        return self.stop(timeout=0.0, sig=_signal.SIGKILL)

    @staticmethod
    def _reap_group(pgid):
        """Kill stragglers left in the group/session (the leader is gone)."""
        deadline = time.monotonic() + 5
        while True:
            left = pids_in_session(pgid)
            if not left:
                return
            for p in left:
                try:
                    os.kill(p, _signal.SIGKILL)
                except OSError as e:
                    if e.errno != errno.ESRCH:
                        raise
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def logs(self, lines=40):
        parts = []
        for label, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            if label == "stdout" and self.stdout_pipe:
                continue
            t = tail(path, lines)
            if t:
                parts.append("--- %s %s (%s), last %d lines ---\n%s" % (self.name, label, path, lines, t))
        return "\n".join(parts)

    def __repr__(self):
        return "<Proc %s pid=%s rc=%s>" % (self.name, self.pid, self.returncode())


class ProcessGroup:
    """Several Procs stopped together (reverse start order)."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)
        self.procs = []

    def start(self, argv, name=None, **kw):
        p = Proc(argv, self.log_dir, name=name, **kw)
        self.procs.append(p)
        return p.start()

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout=10.0):
        for p in reversed(self.procs):
            p.stop(timeout=timeout)

    def logs(self, lines=40):
        return "\n".join(filter(None, (p.logs(lines) for p in self.procs)))


def live_procs():
    return list(_LIVE)


def forget(proc):
    if proc in _LIVE:
        _LIVE.remove(proc)
