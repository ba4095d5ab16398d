"""Security of the service end to end (issue 8 part B), with real processes:

- wss:// served natively from [tls] cert/key (TLS 1.2+, ECDHE AEAD suites),
  certificates made with the openssl CLI here, and rotation on SIGHUP (the
  new workers serve the renewed file: checked by serial and subject);
- [auth] HS256 JWTs: good (query and header), missing, expired, nbf in the
  future, bad signature, alg none -> close 4001; channels outside the
  token's patterns -> close 4003; each counted; the secret is masked in
  --check-config and never logged;
- abuse limits: connections per IP, new connections per second per IP
  (HTTP 429), bytes per second in (close 1008), each counted;
- the admin token on /status and /, with /healthz /readyz /metrics open;
- a hostile exchange (the simulator): an oversized frame, deep nesting,
  invalid UTF-8, and a TLS peer that accepts and never answers: each bounded,
  counted in /metrics and followed by a reconnect (or, for bad JSON, skipped
  while the feed goes on).
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
import websockets

from harness import REPO
from harness.util import http_get, wait_until

SECRET = "0123456789abcdef0123456789abcdef-test-secret"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# ---- helpers ------------------------------------------------------------------------

def make_cert(d, name, serial):
    """A self-signed EC certificate for 127.0.0.1 (openssl CLI)."""
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=%s" % name,
                    "-set_serial", str(serial), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def served_cert(port, cafile, max_version=None):
    """(serial as int, CN, cipher name, version) of the certificate served."""
    ctx = ssl.create_default_context(cafile=cafile)
    if max_version is not None:
        ctx.maximum_version = max_version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            pc = s.getpeercert()
            cn = dict(x[0] for x in pc["subject"])["commonName"]
            return int(pc["serialNumber"], 16), cn, s.cipher()[0], s.version()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    if alg == "none":
        return head + "." + body + "."
    sig = hmac.new(secret.encode(), (head + "." + body).encode(), hashlib.sha256).digest()
    return head + "." + body + "." + b64url(sig)


async def close_code(url, first=None, **kw):
    """Connect, optionally send one request, and return the close code the
    server ends the connection with (None if it stays open for 3 s)."""
    async with websockets.connect(url, open_timeout=5, **kw) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 3)
        except websockets.ConnectionClosed:
            return ws.close_code
        except asyncio.TimeoutError:
            return None


async def subscribed(url, channels, **kw):
    async with websockets.connect(url, open_timeout=5, **kw) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": channels, "id": 7}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if m.get("type") in ("subscribed", "error"):
                return m


def metric_at_least(svc, name, labels, n=1):
    return lambda: (svc.metric(name, labels) or 0) >= n


# ---- native TLS -----------------------------------------------------------------------

def test_wss_serving_and_rotation_on_sighup(service_factory, tmp_path):
    d = str(tmp_path)
    c1, k1 = make_cert(d, "fanout-one", 1001)
    c2, k2 = make_cert(d, "fanout-two", 2002)
    cert, key = os.path.join(d, "live.crt"), os.path.join(d, "live.key")
    shutil.copy(c1, cert)
    shutil.copy(k1, key)
    svc = service_factory(overrides={"tls": {"cert": cert, "key": key}}).wait_ready()
    url = "wss://127.0.0.1:%d/ws/exchange" % svc.port

    serial, cn, cipher, version = served_cert(svc.port, c1)
    assert (serial, cn) == (1001, "fanout-one")
    assert version in ("TLSv1.2", "TLSv1.3")
    # TLS 1.2 negotiates a forward-secret AEAD suite.
    _, _, cipher12, v12 = served_cert(svc.port, c1, ssl.TLSVersion.TLSv1_2)
    assert v12 == "TLSv1.2" and cipher12.startswith("ECDHE-") and ("GCM" in cipher12 or "CHACHA" in cipher12)

    assert run(ping_with(url, c1))["type"] == "pong"

    # Plain ws:// on the TLS port fails the handshake and is counted.
    async def plain():
        async with websockets.connect("ws://127.0.0.1:%d/ws/exchange" % svc.port, open_timeout=3):
            pass
    with pytest.raises(Exception):
        run(plain())
    wait_until(metric_at_least(svc, "exchange_fanout_connections_rejected_total", {"reason": "tls_handshake"}),
               timeout=5, what="tls_handshake rejection counted")

    # Rotation: replace the files, SIGHUP; new workers serve the new cert.
    shutil.copy(c2, cert)
    shutil.copy(k2, key)
    svc.sighup()
    wait_until(lambda: served_cert(svc.port, c2)[:2] == (2002, "fanout-two"), timeout=15,
               what="renewed certificate served after SIGHUP")
    assert run(ping_with(url, c2))["type"] == "pong"

    # [tls] ca: client certificates signed by that CA become mandatory.
    ca_crt, ca_key = make_cert(d, "client-ca", 3003)
    cli_key, cli_csr, cli_crt = (os.path.join(d, n) for n in ("client.key", "client.csr", "client.crt"))
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", cli_key, "-out", cli_csr, "-subj", "/CN=client"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", cli_csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-set_serial", "4004", "-days", "1", "-out", cli_crt], check=True, capture_output=True)
    svc.sections["tls"]["ca"] = ca_crt
    svc.write_ini()
    svc.sighup()

    def client_ctx(with_cert):
        ctx = ssl.create_default_context(cafile=c2)
        if with_cert:
            ctx.load_cert_chain(cli_crt, cli_key)
        return ctx

    async def mtls(with_cert):
        async with websockets.connect(url, ssl=client_ctx(with_cert), open_timeout=5) as ws:
            await ws.send(json.dumps({"op": "ping"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))["type"]

    def refused_without_cert():
        try:
            run(mtls(False))
        except Exception:  # noqa: BLE001 - alert or reset, depending on timing
            return True
        return False
    wait_until(refused_without_cert, timeout=15, what="client certificate required after SIGHUP")
    assert run(mtls(True)) == "pong"


async def ping_with(url, cafile):
    async with websockets.connect(url, ssl=ssl.create_default_context(cafile=cafile), open_timeout=5) as ws:
        await ws.send(json.dumps({"op": "ping"}))
        return json.loads(await asyncio.wait_for(ws.recv(), 5))


# ---- JWT auth and the admin token ------------------------------------------------------

def test_jwt_auth_and_admin_token(service_factory, build_dir):
    admin_token = "admin-token-for-tests"
    svc = service_factory(overrides={
        "auth": {"enabled": True, "secret": SECRET, "leeway_ms": 1000},
        "admin": {"token": admin_token},
    }).wait_ready()
    base = svc.ws_url
    now = int(time.time())
    good = jwt({"sub": "alice", "exp": now + 600, "channels": ["ticker.upbit.*", "trade.*.BTC-KRW"]})

    # Good tokens: query parameter and Authorization header.
    m = run(subscribed(base + "?token=" + good, ["ticker.upbit.BTC-KRW", "trade.binance.BTC-KRW"]))
    assert m["type"] == "subscribed", m
    m = run(subscribed(base, ["ticker.upbit.ETH-KRW"], extra_headers={"Authorization": "Bearer " + good}))
    assert m["type"] == "subscribed", m
    # A token without the claim grants every channel.
    m = run(subscribed(base + "?token=" + jwt({"exp": now + 600}), ["orderbook.coinbase.BTC-USD"]))
    assert m["type"] == "subscribed", m

    # 4001: missing, expired, not yet valid, bad signature, alg none, garbage.
    bad = {
        "missing": base,
        "expired": base + "?token=" + jwt({"exp": now - 3600}),
        "not_yet_valid": base + "?token=" + jwt({"nbf": now + 3600}),
        "bad_signature": base + "?token=" + jwt({"exp": now + 600}, secret="wrong-secret-wrong-secret-wrong-secret"),
        "bad_alg": base + "?token=" + jwt({"exp": now + 600}, alg="none"),
        "malformed": base + "?token=not.a.token",
    }
    for reason, url in bad.items():
        assert run(close_code(url)) == 4001, reason

    # 4003: a channel outside the patterns, by request, by URL, or by a
    # wildcard wider than the grant.
    tok = "?token=" + good
    assert run(close_code(base + tok, {"op": "subscribe", "channels": ["ticker.binance.BTC-USDT"]})) == 4003
    assert run(close_code(base + tok + "&channels=ticker.upbit.BTC-KRW,orderbook.upbit.BTC-KRW")) == 4003
    assert run(close_code(base + tok, {"op": "subscribe", "channels": ["ticker.*.BTC-KRW"]})) == 4003
    # ... while allowed requests keep the connection open.
    assert run(close_code(base + tok, {"op": "subscribe", "channels": ["ticker.upbit.*"]})) is None

    for reason in bad:
        wait_until(metric_at_least(svc, "exchange_fanout_auth_failures_total", {"reason": reason}),
                   timeout=5, what="auth failure %s counted" % reason)
    wait_until(metric_at_least(svc, "exchange_fanout_auth_failures_total", {"reason": "forbidden_channel"}, 3),
               timeout=5, what="forbidden channels counted")

    # Admin: /status and / need the token; probes and metrics stay open.
    for path in ("/status", "/"):
        st, hdrs, _ = http_get(svc.admin + path)
        assert st == 401 and "bearer" in hdrs.get("www-authenticate", "").lower(), path
        assert http_get(svc.admin + path + "?token=wrong")[0] == 401
        assert http_get(svc.admin + path + "?token=" + admin_token)[0] == 200
        assert http_get(svc.admin + path, headers={"Authorization": "Bearer " + admin_token})[0] == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http_get(svc.admin + path)[0] == 200, path

    # Secrets: masked in --check-config, absent from every log line.
    out = subprocess.run([os.path.join(build_dir, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                          "--profile", "local", "--config", svc.ini_path, "--check-config"],
                         capture_output=True, text=True, cwd=REPO, timeout=10)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert SECRET not in text and admin_token not in text
    assert "secret = ***" in text
    logs = svc.stderr()
    assert SECRET not in logs and good not in logs


# ---- abuse limits ------------------------------------------------------------------------

def test_abuse_limits_per_ip_and_input_rate(service_factory):
    svc = service_factory(overrides={"fanout": {"max_connections_per_ip": 3,
                                                "max_connections_per_sec_per_ip": 5,
                                                "max_message_bytes": 4096,
                                                "max_bytes_in_per_sec": 8192}}).wait_ready()
    url = svc.ws_url

    async def per_ip():
        held = [await websockets.connect(url, open_timeout=5) for _ in range(3)]
        try:
            with pytest.raises(websockets.InvalidStatusCode) as e:
                await websockets.connect(url, open_timeout=5)
            assert e.value.status_code == 429
        finally:
            for w in held:
                await w.close()
    run(per_ip())
    wait_until(metric_at_least(svc, "exchange_fanout_limit_hits_total", {"limit": "max_connections_per_ip"}),
               timeout=5, what="per-IP connection limit counted")

    async def rate():
        await asyncio.sleep(1.1)  # a fresh one-second window
        codes = []
        t0 = time.monotonic()
        for _ in range(8):
            try:
                w = await websockets.connect(url, open_timeout=5)
                await w.close()
                codes.append(101)
            except websockets.InvalidStatusCode as e:
                codes.append(e.status_code)
        return codes, time.monotonic() - t0
    # All 8 attempts inside one server window (they took < 1 s): exactly the
    # first 5 pass. A loaded machine can stretch them over two windows; that
    # run says nothing, so it is measured again (not loosened).
    for _ in range(3):
        codes, took = run(rate())
        if took < 1.0:
            break
    assert took < 1.0, "8 connects never fitted in one second (%.2f s)" % took
    assert codes == [101] * 5 + [429] * 3, codes
    wait_until(metric_at_least(svc, "exchange_fanout_limit_hits_total",
                               {"limit": "max_connections_per_sec_per_ip"}),
               timeout=5, what="per-IP rate limit counted")

    async def flood():
        await asyncio.sleep(1.1)
        async with websockets.connect(url, open_timeout=5) as ws:
            # Pings are not requests: only the byte rate can stop them.
            try:
                for _ in range(150):
                    await ws.ping(b"%120d" % _)
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed:
                pass
            await asyncio.wait_for(ws.wait_closed(), 10)
            return ws.close_code
    assert run(flood()) == 1008
    wait_until(metric_at_least(svc, "exchange_fanout_limit_hits_total", {"limit": "max_bytes_in_per_sec"}),
               timeout=5, what="input rate limit counted")
    wait_until(metric_at_least(svc, "exchange_fanout_disconnects_total", {"reason": "input_rate"}),
               timeout=5, what="input rate disconnect counted")


# ---- a hostile exchange ------------------------------------------------------------------

class StallServer:
    """Accepts TCP connections and never sends a byte (a TLS peer stalling
    in the handshake). Counts accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(c)

    def close(self):
        self.stop = True
        self.t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_hostile_exchange(service_factory, sim_factory):
    sim = sim_factory()
    stall = StallServer()
    try:
        svc = service_factory(sim_ports={"upbit": sim.ports["upbit"], "binance": sim.ports["binance"]},
                              overrides={
                                  "exchange.upbit": {"max_message_bytes": 65536, "reconnect_min_ms": 100},
                                  "exchange.binance": {"reconnect_min_ms": 100},
                                  "exchange.coinbase": {"enabled": True,
                                                        "url": "wss://127.0.0.1:%d/" % stall.port,
                                                        "insecure_skip_verify": True,
                                                        "connect_timeout_ms": 700,
                                                        "reconnect_min_ms": 100,
                                                        "reconnect_max_ms": 300},
                              }).wait_ready()

        def connected(ex):
            return lambda: svc.metric("exchange_ingest_connected", {"exchange": ex}) == 1
        wait_until(connected("upbit"), timeout=15, what="upbit connected")
        wait_until(connected("binance"), timeout=15, what="binance connected")

        def reconnects(conn, cause):
            return svc.metric("exchange_ws_reconnects_total", {"conn": conn, "cause": cause}) or 0

        # An oversized frame: refused at max_message_bytes (1009), reconnect.
        sim.control("POST", "/oversize?exchange=upbit&bytes=300000")
        wait_until(lambda: reconnects("upbit", "too_big") >= 1, timeout=10, what="oversize counted")
        wait_until(connected("upbit"), timeout=10, what="upbit reconnected")

        # Deep nesting: jansson's depth bound refuses it; counted, feed goes on.
        before = svc.metric("exchange_ingest_malformed_total", {"exchange": "binance"}) or 0
        sim.control("POST", "/malformed?exchange=binance&count=1&kind=deep_nesting")
        wait_until(lambda: (svc.metric("exchange_ingest_malformed_total", {"exchange": "binance"}) or 0) > before,
                   timeout=10, what="deep nesting counted as malformed")
        assert connected("binance")()

        # Invalid UTF-8 in a text frame: close 1007 (protocol error), reconnect.
        err_before = reconnects("binance", "error")
        sim.control("POST", "/malformed?exchange=binance&count=1&kind=non_utf8")
        wait_until(lambda: reconnects("binance", "error") > err_before, timeout=10, what="bad UTF-8 counted")
        wait_until(connected("binance"), timeout=10, what="binance reconnected")

        # A TLS peer that never answers: bounded by connect_timeout_ms, retried.
        wait_until(lambda: reconnects("coinbase", "tls") >= 2 and stall.accepted >= 2, timeout=15,
                   what="stalled TLS handshakes timed out and retried")
        assert "tls handshake timeout" in svc.stderr()
        assert svc.running()
    finally:
        stall.close()
