"""Shared machinery of the exchange simulator.

- ``dumps``: compact JSON writer that can emit numbers exactly as given
  (``Raw``/``Decimal``), so the simulator controls the wire text.
- ``Recorder``: JSONL log of every frame sent.
- ``Conn``: one accepted WebSocket connection with its outgoing queue and
  writer task, fault hooks (silence, abort) and counters.
- ``Exchange``: base class of the four protocol servers (data feed loop,
  connection registry, upgrade refusal, fault fan-out).
"""

import asyncio
import collections
import http
import json
import logging
import math
import socket
import struct
import time
from decimal import Decimal

import websockets
from websockets.frames import OP_PING, OP_PONG, OP_TEXT, OP_BINARY
from websockets.legacy.server import WebSocketServerProtocol

log = logging.getLogger("sim")


def now_ms():
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- JSON ----

class Raw(str):
    """Text written verbatim into JSON (a number literal such as 31883000.00000000)."""


def _num_float(f):
    if math.isfinite(f) and f == int(f) and abs(f) < 1e16:
        r = repr(f)
        return r[:-2] if r.endswith(".0") else r
    r = repr(f)
    if "e" in r or "E" in r:
        return format(Decimal(r), "f")
    return r


def dumps(o):
    """Compact JSON. Decimal is written in plain notation as stored."""
    if isinstance(o, Raw):
        return str(o)
    if isinstance(o, str):
        return json.dumps(o, ensure_ascii=False)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, int):
        return str(o)
    if isinstance(o, float):
        return _num_float(o)
    if isinstance(o, Decimal):
        return format(o, "f")
    if isinstance(o, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dumps(v) for k, v in o.items()) + "}"
    if isinstance(o, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in o) + "]"
    raise TypeError(f"cannot encode {type(o)}")


def jnum(d):
    """A Decimal as the shortest plain JSON number (6747000, 0.06499468)."""
    d = Decimal(d)
    if d == 0:
        return Raw("0")
    s = format(d.normalize(), "f")
    return Raw(s)


def fixed(d, places):
    """A Decimal as text with exactly `places` decimals ("67000.01000000")."""
    q = Decimal(1).scaleb(-places)
    return format(Decimal(d).quantize(q), "f")


def trim(d):
    """A Decimal as text without trailing zeros ("0.0012", "67000")."""
    d = Decimal(d)
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


# ------------------------------------------------------------ recorder ----

class Recorder:
    """Appends one JSON line per frame sent; keeps counts since the last reset."""

    MAX_FRAME = 1 << 20  # frames larger than this are logged by length only

    def __init__(self, path):
        self.path = path
        self.fh = open(path, "w", encoding="utf-8") if path else None
        self.counts = collections.Counter()
        self.by_kind = collections.Counter()

    def write(self, exchange, conn_id, kind, payload, binary, meta):
        self.counts[exchange] += 1
        self.by_kind[kind] += 1
        if not self.fh:
            return
        rec = {"exchange": exchange, "conn": conn_id, "kind": kind, "t": now_ms(),
               "binary": binary,
               "len": len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)}
        if meta:
            rec.update(meta)
        if len(payload) <= self.MAX_FRAME:
            if isinstance(payload, bytes):
                try:
                    rec["frame"] = payload.decode("utf-8")
                except UnicodeDecodeError:
                    rec["frame_hex"] = payload.hex()
            else:
                rec["frame"] = payload
        self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.fh.flush()

    def reset(self):
        self.counts.clear()
        self.by_kind.clear()
        if self.fh:
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.flush()

    def summary(self):
        return {"path": self.path, "total": sum(self.counts.values()),
                "by_exchange": dict(self.counts), "by_kind": dict(self.by_kind)}

    def close(self):
        if self.fh:
            self.fh.close()
            self.fh = None


# ---------------------------------------------------------- protocol ----

class SimProtocol(WebSocketServerProtocol):
    """Server protocol with a hook on every frame read: silence gating,
    activity tracking and incoming-message rate accounting."""

    sim_conn = None

    async def read_frame(self, max_size):
        while True:
            frame = await super().read_frame(max_size)
            conn = self.sim_conn
            if conn is not None and conn.silenced():
                if frame.opcode in (OP_PING, OP_PONG):
                    continue  # a silent server answers nothing
                await conn.wait_unsilenced()
            if conn is not None:
                conn.on_frame(frame)
            return frame


# ---------------------------------------------------------------- conn ----

_conn_ids = iter(range(1, 1 << 62))


class Conn:
    QUEUE_MAX = 20000

    def __init__(self, exchange, ws):
        self.id = next(_conn_ids)
        self.ex = exchange
        self.ws = ws
        self.queue = collections.deque()
        self.wake = asyncio.Event()
        self.sent = 0          # data messages
        self.frames = 0        # all frames
        self.received = 0
        self.started = time.monotonic()
        self.last_activity = time.monotonic()
        self.last_sent = time.monotonic()
        self.silence_until = 0.0
        self.tasks = []
        self.subs = None       # protocol specific
        self.closing = False
        self.on_frame_hook = None
        peer = ws.remote_address
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.writer = asyncio.get_running_loop().create_task(self._writer())

    # -- silence
    def silenced(self):
        return time.monotonic() < self.silence_until

    async def wait_unsilenced(self):
        while self.silenced():
            await asyncio.sleep(self.silence_until - time.monotonic())

    def silence(self, ms):
        self.silence_until = max(self.silence_until, time.monotonic() + ms / 1000.0)
        self.wake.set()

    # -- incoming
    def on_frame(self, frame):
        self.last_activity = time.monotonic()
        if frame.opcode in (OP_TEXT, OP_BINARY):
            self.received += 1
            self.ex.stats["received"] += 1
        if self.on_frame_hook:
            self.on_frame_hook(frame)

    # -- outgoing
    def enqueue(self, kind, payload, binary=False, meta=None, raw_text=False):
        """payload: str / bytes, or a callable returning one at send time.
        binary: send as BINARY frame; raw_text: bytes sent as a TEXT frame
        without UTF-8 validation (for malformed tests)."""
        if self.closing:
            return
        if self.silenced() and kind == "data":
            return
        if len(self.queue) >= self.QUEUE_MAX:
            log.warning("%s conn %d: slow consumer, closing", self.ex.name, self.id)
            self.close(1008, "slow consumer")
            return
        self.queue.append((kind, payload, binary, meta, raw_text))
        self.wake.set()

    async def _writer(self):
        ws = self.ws
        try:
            while True:
                while not self.queue or self.silenced():
                    self.wake.clear()
                    if self.silenced():
                        # drop data generated while silent
                        self.queue = collections.deque(q for q in self.queue if q[0] != "data")
                        await self.wait_unsilenced()
                        continue
                    await self.wake.wait()
                kind, payload, binary, meta, raw_text = self.queue.popleft()
                if callable(payload):
                    payload = payload()
                if raw_text:
                    await ws.write_frame(True, OP_TEXT, payload)
                elif binary:
                    if isinstance(payload, str):
                        payload = payload.encode("utf-8")
                    await ws.send(payload)
                else:
                    if isinstance(payload, bytes):
                        await ws.write_frame(True, OP_TEXT, payload)
                    else:
                        await ws.send(payload)
                t = time.monotonic()
                self.last_activity = t
                self.last_sent = t
                self.frames += 1
                self.ex.stats["frames"] += 1
                if kind == "data":
                    self.sent += 1
                    self.ex.stats["sent"] += 1
                self.ex.sim.recorder.write(self.ex.name, self.id, kind, payload,
                                           bool(binary), meta)
        except (websockets.ConnectionClosed, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writer of %s conn %d", self.ex.name, self.id)
            self.abort()

    def spawn(self, coro):
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(t)
        return t

    def close(self, code=1000, reason=""):
        """Normal close with a close frame (runs in the background)."""
        if self.closing:
            return
        self.closing = True
        self.queue.clear()

        async def _close():
            try:
                await self.ws.close(code, reason)
            except Exception:
                pass
        asyncio.get_running_loop().create_task(_close())

    def abort(self):
        """Drop the TCP connection without a close frame (RST)."""
        self.closing = True
        self.queue.clear()
        tr = self.ws.transport
        if tr is None:
            return
        sock = tr.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        tr.abort()

    def cleanup(self):
        self.writer.cancel()
        for t in self.tasks:
            t.cancel()

    def describe(self):
        return {"id": self.id, "exchange": self.ex.name, "peer": self.peer,
                "path": self.ws.path, "sent": self.sent, "frames": self.frames,
                "received": self.received,
                "age_ms": int((time.monotonic() - self.started) * 1000),
                "silenced": self.silenced(),
                "subscriptions": self.ex.describe_subs(self)}


# ------------------------------------------------------------ exchange ----

class Exchange:
    """Base of a protocol server. Subclasses implement handle(), tick(),
    malformed_frames(), oversize_frame(), describe_subs()."""

    name = "?"
    binary_data = False
    default_conn_limit = 0   # connections per second with --enforce-conn-limits

    def __init__(self, sim, markets, rate):
        self.sim = sim
        self.args = sim.args
        self.markets = markets            # symbol -> Market
        self.rate = float(rate)
        self.conns = set()
        self.stats = collections.Counter()
        self.refuse = 0
        self.silence_until = 0.0
        self.server = None
        self.port = None
        self.conn_times = collections.deque()
        self.conn_limit = self.default_conn_limit if self.args.enforce_conn_limits else 0
        self.rest = None  # rest.Rest: the REST recent-trades endpoints (set by sim.py)

    # -- server
    async def start(self, host, port, ssl_ctx):
        self.server = await websockets.serve(
            self._handler, host, port,
            create_protocol=SimProtocol,
            process_request=self._process_request,
            ssl=ssl_ctx,
            ping_interval=None, ping_timeout=None,
            close_timeout=2,
            compression=None,
            max_size=1 << 20,
            max_queue=256,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.feed_task = asyncio.get_running_loop().create_task(self._feed())
        return self.port

    async def _process_request(self, path, headers):
        r = self._early_response(path, headers)
        if r is None:
            return None
        status, hdrs, body = r
        return http.HTTPStatus(status), hdrs, body

    def _early_response(self, path, headers):
        if self.rest is not None and "upgrade" not in headers.get("Connection", "").lower():
            r = self.rest.handle(path)
            if r is not None:
                return r
        self.stats["upgrades"] += 1
        if self.refuse > 0:
            self.refuse -= 1
            self.stats["refused"] += 1
            return (429, [("Content-Type", "text/plain"), ("Retry-After", "1")],
                    b"Too Many Requests\n")
        if self.conn_limit:
            t = time.monotonic()
            while self.conn_times and t - self.conn_times[0] > 1.0:
                self.conn_times.popleft()
            if len(self.conn_times) >= self.conn_limit:
                self.stats["refused"] += 1
                return (429, [("Content-Type", "text/plain")], b"Too Many Requests\n")
            self.conn_times.append(t)
        return self.check_path(path, headers)

    def check_path(self, path, headers):
        return None

    async def _handler(self, ws, path=None):
        conn = Conn(self, ws)
        ws.sim_conn = conn
        if time.monotonic() < self.silence_until:
            conn.silence_until = self.silence_until
        self.conns.add(conn)
        self.stats["accepted"] += 1
        log.info("%s: conn %d from %s path %s", self.name, conn.id, conn.peer, ws.path)
        try:
            await self.handle(conn)
        except (websockets.ConnectionClosed, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s handler", self.name)
        finally:
            self.conns.discard(conn)
            conn.cleanup()
            log.info("%s: conn %d closed (%s)", self.name, conn.id, ws.close_code)
            if not ws.closed:
                try:
                    await ws.close(1011, "internal error")
                except Exception:
                    pass

    async def close(self):
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    # -- data feed
    async def _feed(self):
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            rate = self.rate
            if rate <= 0:
                await asyncio.sleep(0.1)
                next_t = loop.time()
                continue
            next_t += 1.0 / rate
            delay = next_t - loop.time()
            if delay < -1.0:        # fell behind (rate change, stall): resync
                next_t = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))
            if self.sim.paused:
                continue
            ms = now_ms()
            try:
                for mkt in self.markets.values():
                    step = mkt.step(ms)
                    self.tick(mkt, step, ms)
            except Exception:
                log.exception("%s feed", self.name)

    # -- faults
    def silence(self, ms):
        self.silence_until = max(self.silence_until, time.monotonic() + ms / 1000.0)
        for c in list(self.conns):
            c.silence(ms)
        return len(self.conns)

    def drop(self, mode):
        n = 0
        for c in list(self.conns):
            n += 1
            if mode == "close":
                c.close(1001, "going away")
            else:
                c.abort()
        return n

    def send_malformed(self, count, kind=None):
        self.malformed_frames(None, 1, kind)     # validates kind (ValueError)
        n = 0
        for c in list(self.conns):
            frames = self.malformed_frames(c, count, kind)
            for label, payload, binary, raw_text in frames:
                c.enqueue("malformed", payload, binary=binary, raw_text=raw_text,
                          meta={"malformed": label})
            n += 1
        return n

    def send_oversize(self, nbytes):
        n = 0
        for c in list(self.conns):
            prefix, suffix = self.oversize_parts(c)
            payload = pad_json_frame(prefix, suffix, nbytes)
            c.enqueue("oversize", payload if not self.binary_data else payload.encode(),
                      binary=self.binary_data)
            n += 1
        return n

    def oversize_parts(self, conn):
        return '{"pad":"', '"}'

    def describe_subs(self, conn):
        return None

    def status(self):
        return {"port": self.port, "connections": len(self.conns),
                "rate": self.rate, "markets": list(self.markets),
                "silenced_ms": max(0, int((self.silence_until - time.monotonic()) * 1000)),
                "refuse_pending": self.refuse, **(self.rest.status() if self.rest else {}),
                **{k: v for k, v in self.stats.items()}}


def pad_json_frame(prefix, suffix, nbytes):
    """A text of exactly nbytes: prefix + 'x'*k + suffix when it fits, else x's."""
    body = nbytes - len(prefix.encode()) - len(suffix)
    if body < 0:
        return "x" * nbytes
    return prefix + "x" * body + suffix


def generic_malformed(sample_text, binary):
    """Varied malformed frames built from a sample valid message.
    Returns list of (label, payload, binary, raw_text)."""
    out = []
    half = sample_text[: max(1, len(sample_text) // 2)]

    def add(label, text):
        if binary:
            out.append((label, text.encode("utf-8"), True, False))
        else:
            out.append((label, text, False, False))
    add("truncated", half)
    add("not_object", '["unexpected",1,2,3]')
    add("empty", "")
    add("garbage", "}{not json at all")
    add("nan", sample_text.replace(":", ":NaN,\"x\":", 1) if ":" in sample_text else "NaN")
    add("deep_nesting", "[" * 5000 + "]" * 5000)
    add("trailing_garbage", sample_text + "}}]")
    # non-UTF-8 last: a strict client fails the connection (1007) on it
    bad = b'{"bad":"\xff\xfe\xc0\xaf"}'
    if binary:
        out.append(("non_utf8", bad, True, False))
    else:
        out.append(("non_utf8", bad, False, True))
    return out


def pick_malformed(frames, count, kind):
    """count frames cycling through the variants (or only variant `kind`)."""
    if kind:
        frames = [f for f in frames if f[0] == kind]
        if not frames:
            raise ValueError(f"unknown malformed kind {kind!r}")
    return [frames[i % len(frames)] for i in range(count)]
