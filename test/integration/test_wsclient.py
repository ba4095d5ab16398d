"""common/wsclient against real WebSocket servers (python websockets 10.4),
driven through build/tools/wsc_probe: framing, pings, backoff on 429, stale
feeds, the message size limit and wss:// certificate checks."""
import asyncio
import datetime
import http
import os
import re
import socket
import subprocess
import threading
import time

import pytest
import websockets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("EXCHANGE_BUILD", os.path.join(REPO, "build"))
PROBE = os.path.join(BUILD, "tools", "wsc_probe")


# ---------------------------------------------------------------- helpers

def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Server:
    """A websockets server on 127.0.0.1 in its own asyncio thread.
    `events` records (monotonic time, kind, detail) from handlers."""

    def __init__(self, handler, ssl_ctx=None, process_request=None):
        self.events = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        self._handler = handler
        self._ssl = ssl_ctx
        self._process_request = process_request
        self._stop = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5), "server did not start"

    def record(self, kind, detail=None):
        with self.lock:
            self.events.append((time.monotonic(), kind, detail))

    def kinds(self, kind):
        with self.lock:
            return [e for e in self.events if e[1] == kind]

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self):
        self._stop = asyncio.Event()

        async def handler(ws, path):
            self.record("connect", path)
            try:
                await self._handler(self, ws)
            except websockets.ConnectionClosed:
                pass
            finally:
                await ws.wait_closed()
                self.record("closed", ws.close_code)

        async def process_request(path, headers):
            self.record("request", {k.lower(): v for k, v in headers.raw_items()})
            if self._process_request:
                return self._process_request(self, path, headers)
            return None

        async with websockets.serve(handler, "127.0.0.1", 0, ssl=self._ssl,
                                    process_request=process_request,
                                    ping_interval=None, max_size=None) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self.ready.set()
            await self._stop.wait()

    def close(self):
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)


class Probe:
    def __init__(self, url, *args):
        assert os.access(PROBE, os.X_OK), "build %s first (make all)" % PROBE
        self.lines = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([PROBE, *args, url], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, LOG_LEVEL="debug"))
        self.err = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, f, into):
        for line in f:
            with self.lock:
                into.append((time.monotonic(), line.rstrip("\n")))

    def out(self):
        with self.lock:
            return [l for _, l in self.lines]

    def attempt_times(self):
        """Wall-clock seconds at which the client started each connection
        attempt (the time= of its "ws connecting" debug log line)."""
        with self.lock:
            lines = [l for _, l in self.err if 'msg="ws connecting"' in l]
        return [datetime.datetime.strptime(re.search(r"time=(\S+)Z", l).group(1),
                                           "%Y-%m-%dT%H:%M:%S.%f").timestamp() for l in lines]

    def matching(self, prefix):
        return [l for l in self.out() if l.startswith(prefix)]

    def wait_line(self, prefix, timeout=5.0, n=1):
        try:
            return wait_for(lambda: len(self.matching(prefix)) >= n and self.matching(prefix),
                            timeout, "%d line(s) '%s'" % (n, prefix))
        except AssertionError as e:
            raise AssertionError("%s\nstdout:\n%s\nstderr:\n%s" % (
                e, "\n".join(self.out()), "\n".join(l for _, l in self.err[-30:])))

    def wait_exit(self, timeout=5.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("probe still running\nstdout:\n%s" % "\n".join(self.out()))
        for t in self.readers:  # everything it printed is in self.lines
            t.join(2)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def servers():
    started = []

    def start(handler, **kw):
        s = Server(handler, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.close()


@pytest.fixture
def probes():
    started = []

    def start(url, *args):
        p = Probe(url, *args)
        started.append(p)
        return p
    yield start
    for p in started:
        p.kill()


async def idle(srv, ws):
    await ws.wait_closed()


# ---------------------------------------------------------------- tests

def test_messages_arrive_intact_and_stop_closes_cleanly(servers, probes):
    big = "x" * 100000

    async def handler(srv, ws):
        await ws.send("hello \u00fc")
        await ws.send(bytes(range(256)))
        await ws.send(["frag-a ", "frag-b ", "frag-c"])  # one message, three frames
        await ws.send(big)
        msg = await ws.recv()
        srv.record("got", msg)
        await ws.send("echo:" + msg)
        await ws.wait_closed()

    srv = servers(handler)
    p = probes("ws://127.0.0.1:%d/feed?x=1" % srv.port, "--send", "hi there", "--count", "5",
               "--timeout-ms", "8000", "--header", "Authorization: Bearer t0k")
    assert p.wait_exit(8) == 0, p.out()
    out = p.out()
    assert out[0] == "open"
    msgs = [l for l in out if l.startswith(("text ", "binary "))]
    assert msgs[0] == "text %d hello \u00fc" % len("hello \u00fc".encode())
    assert msgs[1] == "binary 256 " + bytes(range(256)).hex()
    assert msgs[2] == "text 20 frag-a frag-b frag-c"
    assert msgs[3] == "text 100000 " + big
    assert msgs[4] == "text 13 echo:hi there"
    req = srv.kinds("request")[0][2]
    assert req["authorization"] == "Bearer t0k"
    assert req["sec-websocket-version"] == "13"
    assert srv.kinds("connect")[0][2] == "/feed?x=1"
    closed = wait_for(lambda: srv.kinds("closed"), 3, "server close")
    assert closed[0][2] == 1000  # wsc_stop sends a close frame


def test_server_ping_is_answered(servers, probes):
    async def handler(srv, ws):
        pong = await ws.ping(b"are-you-there")
        await asyncio.wait_for(pong, 2)
        await ws.send("pong-ok")
        await ws.wait_closed()

    srv = servers(handler)
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--count", "1", "--timeout-ms", "5000")
    assert p.wait_exit(6) == 0
    assert "text 7 pong-ok" in p.out()


def test_client_sends_pings(servers, probes):
    async def handler(srv, ws):
        orig = ws.pong

        async def pong(data=b""):  # the legacy protocol answers each ping through pong()
            srv.record("ping")
            await orig(data)
        ws.pong = pong
        await ws.wait_closed()

    srv = servers(handler)
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--ping-ms", "100", "--timeout-ms", "5000")
    p.wait_line("open")
    wait_for(lambda: len(srv.kinds("ping")) >= 3, 3, "three client pings")
    assert not p.matching("close")


def test_http_429_is_retried_with_spacing(servers, probes):
    def refuse(srv, path, headers):
        return (http.HTTPStatus.TOO_MANY_REQUESTS, [("Retry-After", "1")], b"slow down\n")

    srv = servers(idle, process_request=refuse)
    min_ms = 300
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--min-ms", str(min_ms), "--max-ms", "600",
               "--closes", "4", "--timeout-ms", "10000", "--metrics")
    assert p.wait_exit(10) == 3, p.out()
    assert len(p.matching("http_status 429")) == 4
    assert 'metric exchange_ws_reconnects_total{conn="probe",cause="http_status"} 4' in p.out()
    assert 'metric exchange_ws_http_status_total{conn="probe",status="429"} 4' in p.out()
    assert len(p.matching("close http_status")) == 4
    assert len(srv.kinds("request")) == 4
    # The spacing is the client's: it starts an attempt no sooner than
    # reconnect_min_ms after the previous start. Measured where it is made
    # (the probe's "ws connecting" log time), not on the server: the server
    # sees each request after a getaddrinfo hop, a TCP handshake and its own
    # asyncio thread, and that latency varies by tens of ms on a loaded machine
    # (the first attempt is the slowest), which shortened the server-side gap.
    times = p.attempt_times()
    assert len(times) == 4, p.err
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 2 ms: the loop clock and the log timestamp each truncate to the millisecond
    assert min(gaps) >= (min_ms - 2) / 1000.0, gaps


def test_silent_server_is_reconnected_as_stale(servers, probes):
    srv = servers(idle)
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--stale-ms", "400", "--min-ms", "100",
               "--closes", "2", "--timeout-ms", "8000")
    assert p.wait_exit(8) == 3, p.out()
    assert len(p.matching("close stale")) == 2
    assert len(p.matching("open")) == 2
    assert len(srv.kinds("connect")) >= 2


def sends(fmt, n, every_s):
    """A server handler that sends fmt % i for i < n, every_s apart, then
    waits for the client to close."""
    async def handler(srv, ws):
        for i in range(n):
            await ws.send(fmt % i)
            await asyncio.sleep(every_s)
        await ws.wait_closed()
    return handler


def test_data_keeps_feed_fresh(servers, probes):
    srv = servers(sends("tick %d", 8, 0.1))
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--stale-ms", "400", "--count", "8",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 0, p.out()
    assert not p.matching("close")


def test_oversized_message_closes_1009_and_reconnects(servers, probes):
    async def handler(srv, ws):
        await ws.send("y" * 5000)
        await ws.wait_closed()

    srv = servers(handler)
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--max-message", "1000", "--min-ms", "100",
               "--closes", "2", "--timeout-ms", "8000")
    assert p.wait_exit(8) == 3, p.out()
    assert len(p.matching("close too_big")) == 2
    assert not p.matching("text ")
    closed = wait_for(lambda: len(srv.kinds("closed")) >= 2 and srv.kinds("closed"), 3,
                      "server-side close")
    assert closed[0][2] == 1009, closed


def test_user_reconnect_and_metrics(servers, probes):
    srv = servers(sends("m%d", 100, 0.02))
    p = probes("ws://127.0.0.1:%d/" % srv.port, "--reconnect-after", "2", "--count", "5",
               "--min-ms", "100", "--timeout-ms", "6000", "--metrics")
    assert p.wait_exit(7) == 0, p.out()
    assert len(p.matching("close user")) == 2
    assert len(p.matching("open")) == 3
    assert p.matching("text ") == ["text 2 m0", "text 2 m1"] * 2 + ["text 2 m0"]
    out = p.out()
    assert 'metric exchange_ws_reconnects_total{conn="probe",cause="user"} 2' in out
    assert 'metric exchange_ws_messages_total{conn="probe"} 5' in out
    assert 'metric exchange_ws_bytes_total{conn="probe"} 10' in out
    assert 'metric exchange_ws_connected{conn="probe"} 0' in out
    closed = wait_for(lambda: len(srv.kinds("closed")) >= 3 and srv.kinds("closed"), 3,
                      "server-side closes")
    assert [c[2] for c in closed] == [1000, 1000, 1000], closed


def test_unresolvable_host_is_dns_cause(probes):
    p = probes("ws://no-such-host.invalid:1/", "--connect-timeout-ms", "1500", "--closes", "1",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 3
    assert p.matching("close dns"), p.out()


def test_refused_connection_backs_off(probes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    p = probes("ws://127.0.0.1:%d/" % port, "--min-ms", "100", "--closes", "2",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 3
    assert len(p.matching("close error")) == 2


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    crt, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    return crt, key


@pytest.fixture
def wss_server(servers, cert):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)

    async def handler(srv, ws):
        await ws.send("secure hello")
        await ws.wait_closed()
    return servers(handler, ssl_ctx=ctx)


def test_wss_self_signed_refused_by_default(wss_server, probes):
    p = probes("wss://localhost:%d/" % wss_server.port, "--closes", "1", "--timeout-ms", "5000")
    assert p.wait_exit(6) == 3
    line = p.matching("close ")[0]
    assert line.startswith("close tls") and "certificate verify failed" in line, line
    assert not p.matching("open")


def test_wss_accepted_with_ca_file(wss_server, probes, cert):
    p = probes("wss://localhost:%d/" % wss_server.port, "--ca-file", cert[0], "--count", "1",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 0, p.out()
    assert "text 12 secure hello" in p.out()


def test_wss_accepted_with_insecure(wss_server, probes):
    p = probes("wss://127.0.0.1:%d/" % wss_server.port, "--insecure", "--count", "1",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 0, p.out()
    assert "text 12 secure hello" in p.out()


def test_wss_hostname_mismatch_refused(wss_server, probes, cert):
    # The certificate names localhost only; 127.0.0.1 is not in it.
    p = probes("wss://127.0.0.1:%d/" % wss_server.port, "--ca-file", cert[0], "--closes", "1",
               "--timeout-ms", "5000")
    assert p.wait_exit(6) == 3
    line = p.matching("close ")[0]
    assert line.startswith("close tls") and "mismatch" in line, line


def test_tls_handshake_stall_is_cut(probes):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    held = []
    stop = threading.Event()

    def accept():  # accept and never answer the ClientHello
        lst.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = lst.accept()
                held.append(c)
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        p = probes("wss://127.0.0.1:%d/" % lst.getsockname()[1], "--insecure",
                   "--connect-timeout-ms", "400", "--closes", "1", "--timeout-ms", "5000")
        assert p.wait_exit(6) == 3
        line = p.matching("close ")[0]
        assert line.startswith("close tls") and "timeout" in line, line
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        lst.close()
