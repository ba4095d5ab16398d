"""permessage-deflate (RFC 7692) on the client port and [fanout] write_delay_ms:
python3-websockets (which offers the extension by default) and a raw-socket
client both get, on one channel at the same time, the same messages as a
client that does not offer it; offers we cannot honour are answered without
the extension; compressed client messages are inflated within
max_message_bytes. Chromium's side is in test_pages.py."""
import asyncio
import base64
import json
import os
import socket
import time
import zlib

import websockets

from test_fanout import (RawWS, connect, data_until, feed, fanout_factory, msg, request,  # noqa: F401
                         run)

BOOK = "orderbook.upbit.BTC-KRW"


def book(seq):
    levels = [[str(100000 + i * 5 + seq), "%.4f" % (0.5 + i / 7)] for i in range(15)]
    return msg(BOOK, seq, bids=levels, asks=levels[::-1])


def handshake(port, extensions=None):
    """Raw upgrade; (status, headers dict lowercased, socket, bytes after the head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /ws/exchange HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % key)
    if extensions is not None:
        req += "Sec-WebSocket-Extensions: %s\r\n" % extensions
    s.sendall((req + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "connection closed during the handshake"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ")[1]), hdrs, s, rest


def negotiated(port, offer):
    status, hdrs, s, _ = handshake(port, offer)
    s.close()
    assert status == 101
    return hdrs.get("sec-websocket-extensions")


def raw_deflate_client(port, query=""):
    """RawWS that offers permessage-deflate (as Chromium does)."""
    return RawWS(port, path="/ws/exchange" + query,
                 headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})


def read_message(raw):
    """One data frame: (rsv1, payload inflated when RSV1 is set)."""
    raw._need(2)
    rsv1 = bool(raw.buf[0] & 0x40)
    op, data = raw.read_frame()
    assert op in (1, 2), op
    if rsv1:
        d = zlib.decompressobj(-15)
        data = d.decompress(data + b"\x00\x00\xff\xff")
    return rsv1, data


def test_negotiation_answers(fanout_factory):
    f = fanout_factory()
    full = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert negotiated(f.port, "permessage-deflate") == full
    assert negotiated(f.port, "permessage-deflate; client_max_window_bits") == full
    assert negotiated(f.port, "permessage-deflate; client_max_window_bits=10; client_no_context_takeover") == full
    assert negotiated(f.port, "permessage-deflate; server_max_window_bits=15") == \
        full + "; server_max_window_bits=15"
    # cannot honour: a narrower server window, unknown or repeated parameters, bad values
    for offer in ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; foo",
                  "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                  "permessage-deflate; client_max_window_bits=16", "permessage-deflate; server_max_window_bits",
                  "x-webkit-deflate-frame", "permessage-deflate; client_no_context_takeover=1"):
        assert negotiated(f.port, offer) is None, offer
    # the first offer we can honour wins
    assert negotiated(f.port, "permessage-deflate; server_max_window_bits=9, permessage-deflate") == full
    assert negotiated(f.port, None) is None


def test_compressed_and_plain_clients_get_identical_messages(fanout_factory, feed):
    f = fanout_factory()

    async def go():
        zc = await connect(f.port)  # websockets offers permessage-deflate by default
        assert [e.name for e in zc.extensions] == ["permessage-deflate"]
        plain = await connect(f.port, compression=None)
        assert plain.extensions == []
        # zc's request is sent compressed: the server inflates it
        for ws in (zc, plain):
            r = await request(ws, {"op": "subscribe", "channels": [BOOK, "trade.upbit.BTC-KRW"],
                                   "id": 1, "pad": "p" * 300})
            assert r["type"] == "subscribed"
        raw = raw_deflate_client(f.port, "?channels=" + BOOK)
        assert raw.status == 101
        n = 40
        msgs = []
        for i in range(1, n + 1):
            msgs.append(book(i))
            msgs.append(msg("trade.upbit.BTC-KRW", i, price="1", qty="2", side="buy", trade_id=str(i)))
        feed(*msgs)

        async def texts(ws):
            out = []
            while len(out) < 2 * n:
                m = await asyncio.wait_for(ws.recv(), 15)
                if '"channel"' in m:
                    out.append(m)
            return out

        got_z, got_plain = await texts(zc), await texts(plain)
        assert got_z == got_plain
        assert [json.loads(m)["seq"] for m in got_z if BOOK in m] == list(range(1, n + 1))
        # the raw client: books compressed (RSV1), identical once inflated
        books = [m for m in got_plain if '"%s"' % BOOK in m]
        rsv, raw_books = [], []
        while len(raw_books) < n:
            r1, data = await asyncio.get_running_loop().run_in_executor(None, read_message, raw)
            if b'"channel"' in data:
                rsv.append(r1)
                raw_books.append(data.decode())
        assert raw_books == books
        assert all(rsv), "orderbook frames are sent compressed"
        raw.close()

    run(go())


def test_compression_off_negotiates_nothing(fanout_factory, feed):
    f = fanout_factory(compression="false")
    assert negotiated(f.port, "permessage-deflate; client_max_window_bits") is None

    async def go():
        ws = await connect(f.port, "?channels=" + BOOK)
        assert ws.extensions == []
        feed(book(1))
        got = await data_until(ws, lambda m: m["seq"] == 1)
        assert got[-1]["bids"][0][0] == "100001"

    run(go())


def test_compressed_client_messages_bounded(fanout_factory):
    f = fanout_factory(max_message_bytes=1024)

    def compressed_frame(payload):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        z = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        assert z.endswith(b"\x00\x00\xff\xff")
        return 0x41, z[:-4]  # RSV1 | text

    ok = raw_deflate_client(f.port)
    ok.send_frame(*compressed_frame(json.dumps({"op": "ping", "id": 7, "pad": "x" * 900}).encode()))
    _, data = read_message(ok)
    assert json.loads(data)["id"] == 7
    ok.close()
    # ~1 KB on the wire, 1 MB inflated
    assert raw_deflate_client(f.port).close_code_after(compressed_frame(b"{" + b" " * 1000000 + b"}")) == 1009
    assert raw_deflate_client(f.port).close_code_after(compressed_frame(b'{"op":"ping","x":"\xff\xfe"}')) == 1007
    # RSV1 on a control frame or a continuation frame is a protocol error (RFC 7692 6)
    assert raw_deflate_client(f.port).close_code_after((0x49, b"hi")) == 1002
    assert raw_deflate_client(f.port).close_code_after((0x41, b"", False), (0x40, b"\x00")) == 1002
    # RSV1 without the extension negotiated is a protocol error
    assert RawWS(f.port).close_code_after((0x41, b"\x00")) == 1002


def test_write_delay_keeps_every_message_in_order(fanout_factory, feed):
    f = fanout_factory(write_delay_ms=5)

    async def go():
        ws = await connect(f.port, "?channels=trade.upbit.BTC-KRW," + BOOK)
        plain = await connect(f.port, "?channels=trade.upbit.BTC-KRW", compression=None)
        n = 300
        feed(*[msg("trade.upbit.BTC-KRW", i, price="1", qty="2", side="buy", trade_id=str(i))
               for i in range(1, n + 1)])
        for c in (ws, plain):
            got = await data_until(c, lambda m: m["seq"] == n)
            assert [m["seq"] for m in got] == list(range(1, n + 1))

    run(go())


def test_websockets_interoperates_over_many_sizes(fanout_factory, feed):
    """Messages around the threshold and the 126/65536 length boundaries."""
    f = fanout_factory()

    async def go():
        zc = await connect(f.port, "?channels=" + BOOK, max_size=None)
        plain = await connect(f.port, "?channels=" + BOOK, compression=None, max_size=None)
        sizes = [1, 60, 100, 127, 128, 129, 200, 5000, 70000, 200000]
        feed(*[msg(BOOK, i + 1, pad=os.urandom(s // 2).hex() if i % 2 else "a" * s)
               for i, s in enumerate(sizes)])
        a = await data_until(zc, lambda m: m["seq"] == len(sizes))
        b = await data_until(plain, lambda m: m["seq"] == len(sizes))
        assert a == b and len(a) == len(sizes)

    run(go())


def test_chromium_interoperates(fanout_factory, feed):
    """Chromium negotiates the extension, sends a compressed request and gets
    the same texts as a client without it, at the same time."""
    import shutil
    import subprocess
    from harness import REPO
    node = shutil.which("node")
    browser_dir = os.path.join(REPO, "test", "browser")
    assert node and os.access("/usr/bin/chromium", os.X_OK) and \
        os.path.isdir(os.path.join(browser_dir, "node_modules", "playwright-core")), \
        "chromium, node or playwright-core missing: run `make deps`"
    f = fanout_factory()
    n = 30
    p = subprocess.Popen([node, os.path.join(browser_dir, "deflate.mjs"), "--fanout",
                          "http://127.0.0.1:%d" % f.port, "--channel", BOOK, "--count", str(n)],
                         cwd=browser_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(p.stdout.readline() or "{}")
        assert ready.get("ready"), "chromium did not subscribe: %s" % p.stderr.read()[-3000:]
        assert ready["extensions"].startswith("permessage-deflate"), ready

        async def go():
            plain = await connect(f.port, "?channels=" + BOOK, compression=None)
            feed(*[book(i) for i in range(1, n + 1)])
            out = []
            while len(out) < n:
                m = await asyncio.wait_for(plain.recv(), 15)
                if '"channel"' in m:
                    out.append(m)
            await plain.close()
            return out

        plain = run(go())
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-3000:]
        res = json.loads(out.strip().splitlines()[-1])
        assert res["messages"] == plain
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_write_delay_holds_writes_for_the_window(fanout_factory):
    """A reply waits for the tick: its round trip is at least the window
    (a lower bound, so a slow machine cannot make it fail)."""
    f = fanout_factory(write_delay_ms=300)

    async def go():
        ws = await connect(f.port)
        for i in range(3):
            t0 = time.monotonic()
            r = await request(ws, {"op": "ping", "id": i})
            assert r["id"] == i
            assert time.monotonic() - t0 >= 0.25

    run(go())
