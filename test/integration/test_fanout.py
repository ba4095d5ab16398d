"""exchange-fanout standalone, fed through a real Kafka broker by a
confluent_kafka producer, with python3-websockets clients (and a raw socket
client for what websockets refuses to send).

Each test gets its own topic on the session's broker (kafka_broker fixture)
and its own worker(s) on a free port; every process is stopped at teardown."""
import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time

import pytest
import websockets

from harness import REPO
from harness.kafka import producer
from harness.util import free_port, port_open, raw_http_status, wait_until

# ---- fixtures -----------------------------------------------------------------------

class Fanout:
    def __init__(self, procs, tmp_path, build_dir, bootstrap, port, extra, name, topic, relay=None):
        self.port = port
        ini = tmp_path / ("%s.ini" % name)
        text = "[kafka]\nbrokers = %s\ntopic = %s\nfallback_after_ms = 2000\n" % (bootstrap, topic)
        if relay:  # the leader's relay this worker falls back to (the only source without brokers)
            text += "[relay]\nadvertise = %s\n" % relay
        text += "[fanout]\nlisten = 127.0.0.1:%d\n" % port
        for k, v in extra.items():
            text += "%s = %s\n" % (k, v)
        text += "[log]\nlevel = info\n"
        ini.write_text(text)
        argv = [os.path.join(build_dir, "exchange-fanout"), "--conf-dir", os.path.join(REPO, "conf"),
                "--profile", "local", "--config", str(ini)]
        self.proc = procs.start(argv, name=name)
        wait_until(lambda: port_open(port), timeout=10, what="%s listening on %d" % (name, port))

    def logs(self, lines=40):
        return self.proc.logs(lines)


@pytest.fixture
def fanout_factory(procs, tmp_path, build_dir, kafka_broker):
    made = []

    def make(port=None, topic=None, brokers=None, relay=None, **fanout_keys):
        port = port or free_port()
        f = Fanout(procs, tmp_path, build_dir, kafka_broker.bootstrap if brokers is None else brokers, port,
                   fanout_keys, "fanout%d" % len(made), topic=topic or kafka_broker.topic, relay=relay)
        made.append(f)
        return f

    return make


@pytest.fixture
def feed(kafka_broker):
    p = producer(kafka_broker.bootstrap)

    def send(*msgs, topic=None, partition_of=None):
        for m in msgs:
            kw = {"partition": partition_of(m["channel"])} if partition_of else {}
            p.produce(topic or kafka_broker.topic, key=m["channel"].encode(), value=json.dumps(m).encode(), **kw)
        left = p.flush(15)
        assert left == 0, "messages not delivered to the broker"

    yield send
    p.flush(5)


def msg(channel, seq, epoch=1, **fields):
    t, ex, sym = channel.split(".")
    now = int(time.time() * 1000)
    m = {"channel": channel, "type": t, "exchange": ex, "symbol": sym, "seq": seq, "epoch": epoch,
         "ts": now, "recv_ts": now}
    m.update(fields)
    return m


# ---- client helpers -------------------------------------------------------------------

_opened = []   # every client connect() made in the running run()


def run(coro, timeout=60):
    """Run a test's coroutine; the clients it connected are closed after it."""
    async def main():
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            while _opened:
                await _opened.pop().close()

    return asyncio.run(main())


async def connect(port, query="", **kw):
    url = "ws://127.0.0.1:%d/ws/exchange%s" % (port, query)
    deadline = time.monotonic() + 10
    while True:
        try:
            ws = await websockets.connect(url, open_timeout=5, **kw)
            _opened.append(ws)
            return ws
        except (OSError, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def recv(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def request(ws, req, timeout=10):
    """Send a request and return the first non-data reply."""
    await ws.send(json.dumps(req))
    deadline = time.monotonic() + timeout
    while True:
        m = await recv(ws, max(0.01, deadline - time.monotonic()))
        if "channel" not in m:
            return m


async def data_until(ws, pred, timeout=15):
    """Data messages received until pred(last) holds (the last included)."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        m = await recv(ws, max(0.01, deadline - time.monotonic()))
        if "channel" in m:
            out.append(m)
            if pred(m):
                return out


async def data_through(ws, *last):
    """Data messages until each of last, (channel, epoch, seq), has come."""
    left = set(last)
    return await data_until(ws, lambda m: left.discard((m["channel"], m["epoch"], m["seq"])) or not left)


async def fed_witness(port, query, feed, msgs):
    """A client of query, subscribed before msgs are fed, that has them all
    (up to the last of each channel): the fanout holds them."""
    ws = await connect(port, query)
    await recv(ws)
    feed(*msgs)
    await data_through(ws, *{m["channel"]: (m["channel"], m["epoch"], m["seq"]) for m in msgs}.values())
    return ws


async def nothing_for(ws, seconds):
    try:
        m = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return None
    return json.loads(m)


def seqs(msgs):
    return [(m["channel"], m["epoch"], m["seq"]) for m in msgs]


class RawWS:
    """A bare-socket WebSocket client: sends any bytes, reads frames."""

    def __init__(self, port, path="/ws/exchange", headers=None, key=None, version="13"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = key or base64.b64encode(os.urandom(16)).decode()
        req = "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" % path
        req += "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n" % (key, version)
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        self.s.sendall((req + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1]) if head else 0

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        h = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            h += bytes([0x80 | n])
        elif n < 65536:
            h += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            h += bytes([0x80 | 127]) + struct.pack(">Q", n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(h + mask + body)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read_frame(self):
        self._need(2)
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        off = 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(off + n)
        data, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return op, data

    def close_code(self):
        """Read until the close frame; its status code."""
        while True:
            op, data = self.read_frame()
            if op == 8:
                return struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None

    def close(self):
        self.s.close()

    def close_code_after(self, *frames):
        """Send frames, each (opcode, payload[, fin]); the status code of the
        server's close frame, the socket closed after it."""
        try:
            for f in frames:
                self.send_frame(*f)
            return self.close_code()
        finally:
            self.close()


# ---- tests -----------------------------------------------------------------------------

def test_subscribe_wildcard_url_unsubscribe_list(fanout_factory, feed):
    f = fanout_factory()

    async def go():
        url = await connect(f.port, "?channels=trade.upbit.BTC-KRW,ticker.upbit.BTC-KRW")
        assert await recv(url) == {"type": "subscribed",
                                   "channels": ["trade.upbit.BTC-KRW", "ticker.upbit.BTC-KRW"]}
        wild = await connect(f.port)
        r = await request(wild, {"op": "subscribe", "channels": ["ticker.*.BTC-KRW"], "id": 1})
        assert r == {"type": "subscribed", "channels": ["ticker.*.BTC-KRW"], "id": 1}
        feed(msg("trade.upbit.BTC-KRW", 1), msg("trade.upbit.BTC-KRW", 2), msg("trade.upbit.BTC-KRW", 3),
             msg("ticker.upbit.BTC-KRW", 1), msg("ticker.binance.BTC-KRW", 1),
             msg("ticker.upbit.ETH-KRW", 1))
        got = await data_until(url, lambda m: m["channel"] == "trade.upbit.BTC-KRW" and m["seq"] == 3)
        trades = [m["seq"] for m in got if m["channel"] == "trade.upbit.BTC-KRW"]
        assert trades == [1, 2, 3]
        seen = set()
        w = await data_until(wild, lambda m: seen.add(m["channel"]) or len(seen) == 2)
        assert {m["channel"] for m in w} == {"ticker.upbit.BTC-KRW", "ticker.binance.BTC-KRW"}
        want = {"trade.upbit.BTC-KRW", "ticker.upbit.BTC-KRW", "ticker.binance.BTC-KRW",
                "ticker.upbit.ETH-KRW"}
        deadline = time.monotonic() + 10
        while True:  # the ETH-KRW message may still be on its way (another partition)
            lst = await request(wild, {"op": "list", "id": 2})
            assert lst["type"] == "list" and lst["id"] == 2
            assert lst["subscriptions"] == ["ticker.*.BTC-KRW"]
            if want <= set(lst["channels"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert want <= set(lst["channels"])
        r = await request(wild, {"op": "unsubscribe", "channels": ["ticker.*.BTC-KRW"], "id": 3})
        assert r == {"type": "unsubscribed", "channels": ["ticker.*.BTC-KRW"], "id": 3}
        # the URL client witnesses the next ticker; the unsubscribed one must not get it
        feed(msg("ticker.upbit.BTC-KRW", 2))
        await data_until(url, lambda m: m["channel"] == "ticker.upbit.BTC-KRW" and m["seq"] == 2)
        assert await nothing_for(wild, 0.5) is None
        # a channel that appears after a pattern subscription is covered
        r = await request(wild, {"op": "subscribe", "channels": ["orderbook.*.XRP-KRW"], "id": 4})
        feed(msg("orderbook.bithumb.XRP-KRW", 1))
        got = await data_until(wild, lambda m: True)
        assert got[0]["channel"] == "orderbook.bithumb.XRP-KRW"

    run(go())


def test_snapshot_first_then_live(fanout_factory, feed):
    f = fanout_factory()

    async def go():
        witness = await connect(f.port, "?channels=orderbook.upbit.BTC-KRW")
        await recv(witness)
        feed(*[msg("orderbook.upbit.BTC-KRW", i, bids=[["1", str(i)]]) for i in range(1, 6)])
        await data_until(witness, lambda m: m["seq"] == 5)
        late = await connect(f.port)
        r = await request(late, {"op": "subscribe", "channels": ["orderbook.upbit.BTC-KRW"], "id": 9})
        assert r["type"] == "subscribed"
        first = await recv(late)
        assert first["seq"] == 5 and first["bids"] == [["1", "5"]]
        feed(msg("orderbook.upbit.BTC-KRW", 6))
        nxt = await recv(late)
        assert nxt["seq"] == 6

    run(go())


def test_since_recovery(fanout_factory, feed):
    f = fanout_factory(history=5)
    ch, tk = "trade.binance.BTC-USDT", "ticker.binance.BTC-USDT"

    async def go():
        await fed_witness(f.port, "?channels=%s,%s" % (ch, tk), feed,
                          [msg(ch, i) for i in range(1, 11)] + [msg(tk, i) for i in range(1, 11)])
        ok = await connect(f.port)
        r = await request(ok, {"op": "subscribe", "channels": [ch], "since": {ch: 7}, "id": 1})
        assert r["recovered"] == {ch: True} and r["channels"] == [ch]
        got = [await recv(ok) for _ in range(3)]
        assert [m["seq"] for m in got] == [8, 9, 10]
        gap = await connect(f.port)
        r = await request(gap, {"op": "subscribe", "channels": [tk], "since": {tk: 2}, "id": 2})
        assert r["recovered"] == {tk: False}
        snap = await recv(gap)
        assert snap["channel"] == tk and snap["seq"] == 10
        assert await nothing_for(gap, 0.3) is None
        feed(msg(ch, 11))
        assert (await recv(ok))["seq"] == 11

    run(go())


def at(epoch, seq):
    return {"epoch": epoch, "seq": seq}


def test_resume_across_an_epoch_change(fanout_factory, feed):
    f = fanout_factory(history=5)
    ch, tk = "trade.upbit.BTC-KRW", "ticker.upbit.BTC-KRW"

    async def go():
        # the leader changes after 1:3; the new one restarts the channel at 1
        witness = await fed_witness(f.port, "?channels=%s,%s" % (ch, tk), feed,
                          [msg(ch, i, epoch=1) for i in (1, 2, 3)] + [msg(ch, i, epoch=2) for i in (1, 2)] +
                          [msg(tk, i) for i in range(1, 11)])
        # a client that saw 1:2 elsewhere gets 1:3, 2:1, 2:2: everything it missed
        ws = await connect(f.port)
        r = await request(ws, {"op": "subscribe", "channels": [ch], "since": {ch: at(1, 2)}, "id": 1})
        assert r["recovered"] == {ch: True}
        got = [await recv(ws) for _ in range(3)]
        assert seqs(got) == [(ch, 1, 3), (ch, 2, 1), (ch, 2, 2)]
        # legacy numeric since: a seq in the channel's current epoch (2)
        old = await connect(f.port)
        r = await request(old, {"op": "subscribe", "channels": [ch], "since": {ch: 1}, "id": 2})
        assert r["recovered"] == {ch: True}
        assert seqs([await recv(old)]) == [(ch, 2, 2)]
        # beyond the ring (5 tickers kept of 10): false, then the snapshot
        gap = await connect(f.port)
        r = await request(gap, {"op": "subscribe", "channels": [tk], "since": {tk: at(1, 3)}, "id": 3})
        assert r["recovered"] == {tk: False}
        assert seqs([await recv(gap)]) == [(tk, 1, 10)]
        # a position in an epoch this instance has no end of: not vouched for
        r = await request(gap, {"op": "subscribe", "channels": [ch], "since": {ch: at(1, 9)}, "id": 4})
        assert r["recovered"] == {ch: False}
        feed(msg(ch, 3, epoch=2))
        for w in (witness, ws, old, gap):
            assert seqs(await data_until(w, lambda m: m["channel"] == ch))[-1] == (ch, 2, 3)
        assert await nothing_for(ws, 0.3) is None  # nothing twice

    run(go())


def test_resume_on_a_lagging_instance_never_goes_back(fanout_factory, feed, kafka_broker):
    # Two instances on two topics: "ahead" already has epoch 2, "behind" does not.
    ta = kafka_broker.create_topic(kafka_broker.topic + "-ahead", 1)
    tb = kafka_broker.create_topic(kafka_broker.topic + "-behind", 1)
    ahead = fanout_factory(topic=ta)
    behind = fanout_factory(topic=tb)
    ch, tk = "trade.bithumb.ETH-KRW", "ticker.bithumb.ETH-KRW"
    old_epoch = [msg(ch, i, epoch=1) for i in range(1, 6)] + [msg(tk, i, epoch=1) for i in range(1, 6)]

    async def go():
        wa = await connect(ahead.port, "?channels=%s,%s" % (ch, tk))
        wb = await connect(behind.port, "?channels=%s,%s" % (ch, tk))
        await recv(wa)
        await recv(wb)
        feed(*old_epoch + [msg(ch, i, epoch=2) for i in (1, 2, 3)] + [msg(tk, 1, epoch=2)], topic=ta)
        feed(*old_epoch, topic=tb)
        await data_until(wa, lambda m: (m["channel"], m["epoch"], m["seq"]) == (ch, 2, 3))
        await data_until(wb, lambda m: (m["channel"], m["epoch"], m["seq"]) == (ch, 1, 5))
        # the client saw 2:3 (trade) and 2:1 (ticker) on "ahead", resumes on "behind"
        ws = await connect(behind.port)
        r = await request(ws, {"op": "subscribe", "channels": ["trade.*.ETH-KRW", tk],
                               "since": {ch: at(2, 3), tk: at(2, 1)}, "id": 1})
        assert r["recovered"] == {ch: True, tk: True}
        assert await nothing_for(ws, 0.5) is None  # no history, no older snapshot
        # "behind" catches up: the rest of epoch 1, then epoch 2 from 1
        feed(*[msg(ch, i, epoch=1) for i in (6, 7)] + [msg(tk, 6, epoch=1)] +
             [msg(ch, i, epoch=2) for i in (1, 2, 3, 4)] + [msg(tk, i, epoch=2) for i in (1, 2)],
             topic=tb)
        await data_until(wb, lambda m: (m["channel"], m["epoch"], m["seq"]) == (ch, 2, 4))
        got = await data_through(ws, (ch, 2, 4), (tk, 2, 2))
        assert sorted(seqs(got)) == [(tk, 2, 2), (ch, 2, 4)]
        assert await nothing_for(ws, 0.3) is None

    run(go())


def test_resume_pattern_listed_before_exact(fanout_factory, feed):
    f = fanout_factory(history=50)
    a, b = "trade.upbit.XRP-KRW", "trade.bithumb.XRP-KRW"

    async def go():
        await fed_witness(f.port, "?channels=trade.*.XRP-KRW", feed,
                          [msg(a, i) for i in range(1, 6)] + [msg(b, i) for i in range(1, 6)])
        ws = await connect(f.port)
        r = await request(ws, {"op": "subscribe", "channels": ["trade.*.XRP-KRW", a],
                               "since": {a: at(1, 2), b: 4}, "id": 1})
        assert r["recovered"] == {a: True, b: True}
        got = await data_through(ws, (a, 1, 5), (b, 1, 5))
        assert [s for s in seqs(got) if s[0] == a] == [(a, 1, 3), (a, 1, 4), (a, 1, 5)]
        assert [s for s in seqs(got) if s[0] == b] == [(b, 1, 5)]
        feed(msg(a, 6))
        assert seqs(await data_until(ws, lambda m: True)) == [(a, 1, 6)]  # once, though covered twice
        assert await nothing_for(ws, 0.3) is None

    run(go())


def test_epoch_order_is_per_channel(fanout_factory, feed):
    f = fanout_factory()
    new, old = "trade.coinbase.ETH-USD", "trade.coinbase.SOL-USD"

    async def go():
        ws = await connect(f.port, "?channels=trade.coinbase.*")
        await recv(ws)
        # one channel reaches epoch 2 first ...
        feed(msg(new, 1, epoch=2))
        await data_until(ws, lambda m: m["channel"] == new)
        # ... while another still delivers epoch 1 (queued on another partition)
        feed(*[msg(old, i, epoch=1) for i in (1, 2, 3)] + [msg(old, 1, epoch=2), msg(old, 4, epoch=1)])
        got = await data_until(ws, lambda m: (m["channel"], m["epoch"]) == (old, 2))
        assert seqs(got) == [(old, 1, 1), (old, 1, 2), (old, 1, 3), (old, 2, 1)]
        feed(msg(new, 2, epoch=2))  # 1:4 on SOL above was fenced, ETH carries on
        assert seqs(await data_until(ws, lambda m: m["channel"] == new)) == [(new, 2, 2)]

    run(go())


def test_relay_taking_over_at_a_new_epoch_breaks_the_history(fanout_factory):
    """Relay only: the first relay ends after 1:3, the next one serves epoch 2
    from 1. Whether epoch 1 went on after 1:3 this worker cannot know (another
    instance may have had more of it), so no resume vouches across the change."""
    ch = "trade.upbit.SOL-KRW"
    rport = free_port()
    resumes = []
    epochs = [[msg(ch, i, epoch=1) for i in (1, 2, 3)], [msg(ch, i, epoch=2) for i in (1, 2)]]

    ready = []

    async def relay(ws, path=None):
        resumes.append(json.loads(await ws.recv()))
        await ready[0].wait()  # the witness is subscribed
        batch = epochs[min(len(resumes), len(epochs)) - 1]
        for m in batch:  # the ingest's compact form, channel first (the switch reads its prefix)
            await ws.send(json.dumps(m, separators=(",", ":")))
        if len(resumes) == 1:
            await ws.close()  # this leader goes away
        else:
            await ws.wait_closed()

    f = fanout_factory(brokers="", relay="127.0.0.1:%d" % rport, history=50)

    async def go():
        ready.append(asyncio.Event())
        async with websockets.serve(relay, "127.0.0.1", rport):
            witness = await connect(f.port, "?channels=" + ch)
            await recv(witness)
            ready[0].set()
            got = await data_until(witness, lambda m: m["epoch"] == 2 and m["seq"] == 2, timeout=30)
            assert seqs(got) == [(ch, 1, 1), (ch, 1, 2), (ch, 1, 3), (ch, 2, 1), (ch, 2, 2)]
            # the reconnect resumed from this worker's position
            assert len(resumes) == 2, resumes
            assert resumes[1]["op"] == "resume" and resumes[1]["epoch"] == 1, resumes
            assert resumes[1]["since"] == {ch: 3}
            ws = await connect(f.port)
            r = await request(ws, {"op": "subscribe", "channels": [ch],
                                   "since": {ch: at(1, 2)}, "id": 1})
            assert r["recovered"] == {ch: False}
            r2 = await connect(f.port)
            r = await request(r2, {"op": "subscribe", "channels": [ch], "since": {ch: at(2, 1)}, "id": 2})
            assert r["recovered"] == {ch: True}
            assert seqs([await recv(r2)]) == [(ch, 2, 2)]

    run(go())


def test_bad_requests_get_errors_and_connection_survives(fanout_factory):
    f = fanout_factory(max_subscriptions=2)
    cases = [
        ("{not json", "bad_json"),
        ('["an", "array"]', "bad_json"),
        (json.dumps({"op": "fly", "id": 1}), "unknown_op"),
        (json.dumps({"id": 2}), "bad_request"),
        (json.dumps({"op": "subscribe", "channels": ["no-dots"], "id": 3}), "bad_channel"),
        (json.dumps({"op": "subscribe", "channels": ["ticker.upbit"], "id": 4}), "bad_channel"),
        (json.dumps({"op": "subscribe", "channels": "ticker.upbit.BTC-KRW", "id": 5}), "bad_request"),
        (json.dumps({"op": "subscribe", "channels": ["a.b.C", "a.b.D", "a.b.E"], "id": 6}),
         "too_many_subscriptions"),
        (json.dumps({"op": "subscribe", "channels": ["a.b.C"], "since": {"a.b.C": -1}, "id": 7}),
         "bad_request"),
    ]

    async def go():
        ws = await connect(f.port)
        for text, code in cases:
            await ws.send(text)
            r = await recv(ws)
            assert r["type"] == "error" and r["code"] == code, (text, r)
            assert r["message"]
            req = json.loads(text) if text.startswith("{\"") else None
            if isinstance(req, dict) and "id" in req:
                assert r["id"] == req["id"]
        await ws.send(b"\x01\x02")  # binary frame
        r = await recv(ws)
        assert r["code"] == "bad_request"
        pong = await request(ws, {"op": "ping", "id": 42})
        assert pong["type"] == "pong" and pong["id"] == 42 and isinstance(pong["ts"], int)

    run(go())


def test_rate_limit_errors_then_1008(fanout_factory):
    f = fanout_factory(max_requests_per_sec=5)

    async def go():
        ws = await connect(f.port)
        for _ in range(8):
            await ws.send(json.dumps({"op": "ping"}))
        codes = []
        for _ in range(8):
            r = await recv(ws)
            codes.append(r.get("code") or r["type"])
        assert codes[:5] == ["pong"] * 5 and "rate_limited" in codes[5:]
        with pytest.raises(websockets.ConnectionClosed) as e:
            for _ in range(20):
                await ws.send(json.dumps({"op": "ping"}))
            while True:
                await recv(ws)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1008

    run(go())


def test_oversized_frame_1009_and_bad_utf8_1007(fanout_factory):
    f = fanout_factory(max_message_bytes=1024)
    big = RawWS(f.port)
    assert big.status == 101
    assert big.close_code_after((0x1, b"x" * 4000)) == 1009
    assert RawWS(f.port).close_code_after((0x1, b'{"op":"ping","x":"\xff\xfe"}')) == 1007
    # fragments count toward the message size too
    assert RawWS(f.port).close_code_after((0x1, b"y" * 800, False), (0x0, b"y" * 800, True)) == 1009


def test_http_upgrade_checks(fanout_factory):
    f = fanout_factory(allowed_origins="https://ok.example", max_clients=2, max_header_bytes=2048)
    assert RawWS(f.port, path="/other").status == 404
    assert raw_http_status(f.port, b"GET /ws/exchange HTTP/1.1\r\nHost: x\r\n\r\n") in (400, 426)
    assert RawWS(f.port, key="short").status == 400
    assert RawWS(f.port, version="8").status == 400
    assert RawWS(f.port, headers={"Origin": "https://evil.example"}).status == 403
    assert RawWS(f.port, headers={"X-Big": "a" * 4000}).status == 431
    assert RawWS(f.port, path="/ws/exchange?channels=bad").status == 400
    a = RawWS(f.port, headers={"Origin": "https://ok.example"})
    b = RawWS(f.port)
    assert (a.status, b.status) == (101, 101)
    # max_clients: upgraded, told to reconnect elsewhere ("shed"), closed 1001.
    shed = RawWS(f.port)
    assert shed.status == 101
    op, data = shed.read_frame()
    hint = json.loads(data)
    assert op == 1 and hint["type"] == "reconnect" and hint["reason"] == "shed", hint
    assert 0 <= hint["after_ms"] < 1000
    assert shed.close_code() == 1001
    shed.close()
    a.close()
    b.close()
    wait_until(lambda: RawWS(f.port).status == 101, timeout=10, what="a slot after closes")


def _slow_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s


def test_slow_client_cut_or_conflated_fast_client_unaffected(fanout_factory, feed, kafka_broker):
    # Enough data to exceed the bound plus every socket buffer on the way
    # (the kernel grows the server's send buffer to megabytes), spread over
    # six partitions.
    slow = kafka_broker.create_topic(kafka_broker.topic + "-slow", 6)
    # plain frames: the padding would compress far under the bound
    f = fanout_factory(client_queue_bytes=1 << 20, topic=slow, compression="false")
    trades = ["trade.upbit.%s-KRW" % s for s in ("BTC", "ETH", "XRP")]
    ticks = ["ticker.upbit.%s-KRW" % s for s in ("BTC", "ETH", "XRP")]
    part = {ch: i for i, ch in enumerate(trades + ticks)}
    n = 1500
    pad = "p" * 1400

    def produce_all():
        for i in range(0, n, 100):
            batch = [msg(ch, j, pad=pad) for j in range(i + 1, i + 101) for ch in trades + ticks]
            feed(*batch, topic=slow, partition_of=part.get)

    async def go():
        fast = await connect(f.port, "?channels=trade.upbit.*,ticker.upbit.*", max_queue=None)
        await recv(fast)
        s1, s2 = _slow_socket(), _slow_socket()
        s1.connect(("127.0.0.1", f.port))
        s2.connect(("127.0.0.1", f.port))
        slow_trade = await connect(f.port, "?channels=trade.upbit.*", sock=s1, max_queue=1,
                                   read_limit=4096)
        slow_tick = await connect(f.port, "?channels=ticker.upbit.*", sock=s2, max_queue=1,
                                  read_limit=4096)
        await recv(slow_trade)
        await recv(slow_tick)
        # neither slow client reads while the stream flows; the fast one does
        producing = asyncio.get_running_loop().run_in_executor(None, produce_all)
        got = {ch: [] for ch in trades + ticks}
        while any(not got[ch] or got[ch][-1] != n for ch in got):
            m = await recv(fast, 30)
            got[m["channel"]].append(m["seq"])
        await producing
        for ch in trades:
            assert got[ch] == list(range(1, n + 1)), ch  # every trade, in order
        for ch in ticks:
            # tickers may be conflated whenever this reader falls a little
            # behind, but never reordered or repeated
            assert got[ch] == sorted(set(got[ch])) and got[ch][-1] == n, ch
        # the trade reader fell behind by more than the bound: closed with 1013
        with pytest.raises(websockets.ConnectionClosed) as e:
            while True:
                await asyncio.wait_for(slow_trade.recv(), 10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1013
        # the ticker reader was conflated: still open, in order, ends at the newest
        tk = {ch: [] for ch in ticks}
        while any(not tk[ch] or tk[ch][-1] != n for ch in tk):
            m = await recv(slow_tick, 10)
            tk[m["channel"]].append(m["seq"])
        for ch in ticks:
            assert tk[ch] == sorted(set(tk[ch])), ch
        assert sum(len(v) for v in tk.values()) < 3 * n
        pong = await request(slow_tick, {"op": "ping", "id": 1})
        assert pong["type"] == "pong"

    run(go(), timeout=120)


def test_fenced_and_duplicate_not_delivered(fanout_factory, feed):
    f = fanout_factory()
    ch = "trade.coinbase.BTC-USD"

    async def go():
        ws = await connect(f.port, "?channels=" + ch)
        await recv(ws)
        feed(msg(ch, 1, epoch=2), msg(ch, 2, epoch=2), msg(ch, 2, epoch=2),  # duplicate
             msg(ch, 1, epoch=2),                                          # older: duplicate
             msg(ch, 3, epoch=1),                                          # zombie leader: fenced
             msg(ch, 1, epoch=3),                                          # new leader: seq resets
             msg(ch, 4, epoch=2),                                          # fenced now
             msg(ch, 2, epoch=3))
        got = await data_until(ws, lambda m: m["epoch"] == 3 and m["seq"] == 2)
        assert [(m["epoch"], m["seq"]) for m in got] == [(2, 1), (2, 2), (3, 1), (3, 2)]

    run(go())


def test_drain_sends_reconnect_then_1001(fanout_factory):
    f = fanout_factory(drain_ms=1000)

    async def go():
        clients = [await connect(f.port) for _ in range(5)]
        for c in clients:
            assert (await request(c, {"op": "ping"}))["type"] == "pong"
        f.proc.send_signal(signal.SIGTERM)
        for c in clients:
            m = await recv(c, 5)
            assert m["type"] == "reconnect" and m["reason"] == "drain" and m["after_ms"] >= 0
            with pytest.raises(websockets.ConnectionClosed) as e:
                await recv(c, 5)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1001

    run(go())
    assert f.proc.wait(timeout=10) == 0
    assert not port_open(f.port)


def test_two_workers_share_the_port(fanout_factory, feed):
    port = free_port()
    a = fanout_factory(port=port)
    b = fanout_factory(port=port)
    ch = "ticker.bithumb.ETH-KRW"

    async def go():
        conns, pids = [], set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            ws = await connect(port, "?channels=" + ch)
            conns.append(ws)
            pids.add(ws.response_headers["X-Exchange-Worker"])
        assert pids == {str(a.proc.pid), str(b.proc.pid)}
        for ws in conns:
            await recv(ws)
        feed(msg(ch, 1))
        for ws in conns:
            assert (await recv(ws))["seq"] == 1

    run(go())


def test_idle_ping_and_dead_peer_closed(fanout_factory):
    f = fanout_factory(idle_timeout_ms=1000, pong_timeout_ms=1000)
    dead = RawWS(f.port)
    assert dead.status == 101
    dead.s.settimeout(5)
    op, _ = dead.read_frame()
    assert op == 9  # the server pings a silent client
    t0 = time.monotonic()
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:  # no pong: the server drops the connection
            dead.read_frame()
    assert time.monotonic() - t0 < 4
    dead.close()

    async def go():
        alive = await connect(f.port)  # websockets answers pings by itself
        await asyncio.sleep(3.5)
        pong = await request(alive, {"op": "ping"})
        assert pong["type"] == "pong"

    run(go())


def test_resume_bigger_than_the_client_queue(fanout_factory, feed):
    """A client resuming with more history than its queue bound
    (client_queue_bytes) gets all of it, in order, once: the replay is
    paced by what it reads, not queued at once and cut."""
    f = fanout_factory(history=1000, client_queue_bytes=65536, compression="false")
    ch = "trade.upbit.BTC-KRW"
    pad = "p" * 1000
    n = 300  # ~330 KB: five times the bound

    async def go():
        # The live reader takes it in steps that fit the bound.
        witness = await fed_witness(f.port, "?channels=%s" % ch, feed, [msg(ch, i, pad=pad) for i in range(1, 21)])
        for i in range(21, n + 1, 20):
            feed(*[msg(ch, j, pad=pad) for j in range(i, i + 20)])
            await data_through(witness, (ch, 1, i + 19))
        c = await connect(f.port, max_queue=None)
        r = await request(c, {"op": "subscribe", "channels": [ch], "since": {ch: at(1, 1)}, "id": 1})
        assert r["recovered"] == {ch: True}, r
        got = [(await recv(c, 20))["seq"] for _ in range(n - 1)]
        assert got == list(range(2, n + 1))
        feed(msg(ch, n + 1))
        assert (await recv(c))["seq"] == n + 1

    run(go(), timeout=60)
