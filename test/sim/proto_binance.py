"""Binance Spot market streams: raw (/ws/NAME) and combined (/stream?streams=)."""

import asyncio
import collections
import json
import re
import time
from decimal import Decimal
from urllib.parse import urlsplit, parse_qs

from websockets.frames import OP_PONG

from simcore import Exchange, Raw, dumps, fixed, generic_malformed, pick_malformed, now_ms, log

STREAM_RE = re.compile(r"^([a-z0-9]+)@(trade|ticker|depth(5|10|20)(@(100|1000)ms)?)$")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
MAX_STREAMS = 1024


def parse_stream(name):
    m = STREAM_RE.match(name)
    if not m:
        return None
    sym, kind, depth = m.group(1), m.group(2), m.group(3)
    if kind.startswith("depth"):
        return sym.upper(), "depth", int(depth)
    return sym.upper(), kind, None


class BinanceError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
        self.msg = msg


class Binance(Exchange):
    name = "binance"
    binary_data = False
    default_conn_limit = 5   # really 300 per 5 minutes; 5/s keeps tests quick

    def _split_path(self, path):
        u = urlsplit(path)
        p = u.path.rstrip("/") or "/"
        if p == "/stream":
            q = parse_qs(u.query)
            raw = q.get("streams", [""])[0]
            names = [s for s in raw.split("/") if s]
            return True, names
        if p == "/ws" or p.startswith("/ws/"):
            names = [s for s in p[4:].split("/") if s]
            return False, names
        return None, None

    def check_path(self, path, headers):
        combined, names = self._split_path(path)
        if combined is None:
            return (404, [("Content-Type", "application/json")],
                    b'{"code":-1,"msg":"Not Found"}')
        bad = [n for n in names if parse_stream(n) is None]
        if bad or len(names) > MAX_STREAMS:
            body = json.dumps({"code": 2, "msg": f"Invalid request: invalid stream name {bad[0] if bad else ''}"})
            return (400, [("Content-Type", "application/json")], body.encode())
        return None

    # ------------------------------------------------------------ session
    async def handle(self, conn):
        combined, names = self._split_path(conn.ws.path)
        conn.combined = combined
        conn.subs = collections.OrderedDict((n, parse_stream(n)) for n in names)
        conn.pending_pings = collections.OrderedDict()   # payload -> sent time
        conn.in_times = collections.deque()
        conn.on_frame_hook = lambda f: self._on_frame(conn, f)
        conn.spawn(self._keepalive(conn))
        async for msg in conn.ws:
            try:
                self._control(conn, msg)
            except BinanceError as e:
                self._reply(conn, {"error": {"code": e.code, "msg": e.msg}, "id": e.args_id})

    def _reply(self, conn, obj):
        conn.enqueue("response", dumps(obj))

    def _on_frame(self, conn, frame):
        if frame.opcode == OP_PONG:
            data = bytes(frame.data)
            if data in conn.pending_pings:
                while conn.pending_pings:
                    k, _ = conn.pending_pings.popitem(last=False)
                    if k == data:
                        break
        limit = self.args.binance_max_msgs
        if not limit or frame.opcode == 0x8:
            return
        t = time.monotonic()
        conn.in_times.append(t)
        while conn.in_times and t - conn.in_times[0] >= 1.0:
            conn.in_times.popleft()
        if len(conn.in_times) > limit:
            log.info("binance conn %d: over %d msgs/s, disconnecting", conn.id, limit)
            self.stats["rate_limited"] += 1
            conn.close(1008, "Too many requests")

    async def _keepalive(self, conn):
        a = self.args
        interval, timeout = a.binance_ping_s, a.binance_pong_timeout_s
        start = time.monotonic()
        next_ping = start + interval
        n = 0
        while True:
            t = time.monotonic()
            if a.binance_max_conn_s and t - start >= a.binance_max_conn_s:
                conn.close(1000, "connection lifetime exceeded")
                return
            if conn.pending_pings:
                oldest = next(iter(conn.pending_pings.values()))
                if t - oldest > timeout:
                    log.info("binance conn %d: no pong in %ss, closing", conn.id, timeout)
                    self.stats["pong_timeouts"] += 1
                    conn.close(1008, "pong timeout")
                    return
            if t >= next_ping:
                next_ping = t + interval
                if not conn.silenced() and not conn.closing:
                    n += 1
                    payload = f"{now_ms()}-{n}".encode()
                    conn.pending_pings[payload] = t
                    try:
                        await conn.ws.ping(payload)
                    except Exception:
                        return
            wake = next_ping
            if conn.pending_pings:
                wake = min(wake, next(iter(conn.pending_pings.values())) + timeout + 0.01)
            await asyncio.sleep(max(0.01, min(wake - time.monotonic(), 1.0)))

    def _control(self, conn, msg):
        if isinstance(msg, bytes):
            try:
                msg = msg.decode()
            except UnicodeDecodeError:
                msg = ""
        try:
            req = json.loads(msg)
        except ValueError as e:
            err = BinanceError(3, f"Invalid JSON: {e.msg.lower()} at line {e.lineno} column {e.colno}")
            err.args_id = None
            raise err
        rid = req.get("id") if isinstance(req, dict) else None
        try:
            self._control_obj(conn, req, rid)
        except BinanceError as e:
            e.args_id = rid if _valid_id(rid) else None
            raise

    def _control_obj(self, conn, req, rid):
        if not isinstance(req, dict):
            raise BinanceError(2, "Invalid request: expected a JSON object")
        for k in req:
            if k not in ("method", "params", "id"):
                raise BinanceError(0, "Unknown property")
        if not _valid_id(rid):
            raise BinanceError(2, "Invalid request: request ID must be an unsigned integer")
        if "method" not in req:
            raise BinanceError(2, "Invalid request: missing field `method` at line 1 column 1")
        method = req["method"]
        if method not in METHODS:
            raise BinanceError(2, f"Invalid request: unknown variant `{method}`, expected one of "
                                  "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, "
                                  "`SET_PROPERTY`, `GET_PROPERTY`")
        params = req.get("params", [])
        if not isinstance(params, list):
            raise BinanceError(1, "Invalid value type: expected array")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not params:
                raise BinanceError(2, "Invalid request: missing params")
            parsed = []
            for p in params:
                if not isinstance(p, str):
                    raise BinanceError(2, "Invalid request: stream name must be a string")
                ps = parse_stream(p)
                if ps is None:
                    raise BinanceError(2, f"Invalid request: invalid stream name `{p}`")
                parsed.append((p, ps))
            if method == "SUBSCRIBE":
                new = {p for p, _ in parsed if p not in conn.subs}
                if len(conn.subs) + len(new) > MAX_STREAMS:
                    raise BinanceError(2, f"Invalid request: too many streams (max {MAX_STREAMS})")
                for p, ps in parsed:
                    conn.subs[p] = ps
            else:
                for p, _ in parsed:
                    conn.subs.pop(p, None)
            self._reply(conn, {"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(conn, {"result": list(conn.subs), "id": rid})
        elif method == "SET_PROPERTY":
            if len(params) != 2 or params[0] != "combined" or not isinstance(params[1], bool):
                raise BinanceError(2, "Invalid request: invalid SET_PROPERTY params")
            conn.combined = params[1]
            self._reply(conn, {"result": None, "id": rid})
        else:
            if params != ["combined"]:
                raise BinanceError(2, "Invalid request: invalid GET_PROPERTY params")
            self._reply(conn, {"result": bool(conn.combined), "id": rid})

    def describe_subs(self, conn):
        return list(conn.subs or {})

    # ------------------------------------------------------------ data
    def tick(self, mkt, step, ts):
        cache = {}
        for conn in list(self.conns):
            if not conn.subs:
                continue
            for name, (sym, kind, depth) in list(conn.subs.items()):
                if sym != mkt.symbol:
                    continue
                key = (kind, depth)
                if key not in cache:
                    cache[key] = dumps(getattr(self, "ev_" + kind)(mkt, depth, ts))
                data = cache[key]
                text = '{"stream":' + json.dumps(name) + ',"data":' + data + '}' if conn.combined else data
                conn.enqueue("data", text, meta={"type": kind, "market": mkt.symbol, "stream": name})

    def _p(self, mkt, ticks):
        return fixed(mkt.price(ticks), 8)

    def _q(self, mkt, lots):
        return fixed(mkt.qty(lots), 8)

    def ev_trade(self, mkt, depth, ts):
        t = mkt.last_trade
        return {"e": "trade", "E": ts, "s": mkt.symbol, "t": t.id,
                "p": self._p(mkt, t.price), "q": self._q(mkt, t.qty),
                "T": t.ts or ts, "m": t.side == "sell", "M": True}

    def ev_ticker(self, mkt, depth, ts):
        state, diff, rate = mkt.change()
        bids, asks = mkt.top(1)
        vol = mkt.qty(mkt.volume24)
        w = (mkt.quote_vol24 / vol) if vol else Decimal(0)
        return {"e": "24hrTicker", "E": ts, "s": mkt.symbol,
                "p": fixed(mkt.price(abs(diff)) * (-1 if diff < 0 else 1), 8),
                "P": fixed(rate * 100, 3),
                "w": fixed(w, 8),
                "x": self._p(mkt, mkt.prev_close),
                "c": self._p(mkt, mkt.last),
                "Q": self._q(mkt, mkt.last_trade.qty),
                "b": self._p(mkt, bids[0][0]), "B": self._q(mkt, bids[0][1]),
                "a": self._p(mkt, asks[0][0]), "A": self._q(mkt, asks[0][1]),
                "o": self._p(mkt, mkt.open), "h": self._p(mkt, mkt.high),
                "l": self._p(mkt, mkt.low),
                "v": fixed(vol, 8), "q": fixed(mkt.quote_vol24, 8),
                "O": ts - 86_400_000, "C": ts,
                "F": mkt.trade_id - 150_000, "L": mkt.trade_id, "n": 150_001}

    def ev_depth(self, mkt, depth, ts):
        bids, asks = mkt.top(depth)
        return {"lastUpdateId": mkt.update_id,
                "bids": [[self._p(mkt, p), self._q(mkt, q)] for p, q in bids],
                "asks": [[self._p(mkt, p), self._q(mkt, q)] for p, q in asks]}

    # ------------------------------------------------------------ faults
    def server_shutdown(self, close_after_ms=None):
        ev = dumps({"e": "serverShutdown", "E": now_ms()})
        n = 0
        for c in list(self.conns):
            c.enqueue("control", ev)
            n += 1
        if close_after_ms is not None:
            async def later(conns):
                await asyncio.sleep(close_after_ms / 1000)
                for c in conns:
                    c.close(1001, "server shutdown")
            asyncio.get_running_loop().create_task(later(list(self.conns)))
        return n

    def _stream_for(self, conn):
        for name, (sym, kind, _) in ((conn.subs if conn else None) or {}).items():
            return name, sym, kind
        sym = next(iter(self.markets))
        return f"{sym.lower()}@trade", sym, "trade"

    def malformed_frames(self, conn, count, kind=None):
        name, sym, _ = self._stream_for(conn)
        mkt = self.markets.get(sym) or next(iter(self.markets.values()))
        ev = self.ev_trade(mkt, None, now_ms())

        def wrap(data):
            d = data if isinstance(data, str) else dumps(data)
            return '{"stream":' + json.dumps(name) + ',"data":' + d + '}' if combined else d
        combined = conn.combined if conn else True
        specific = []

        def variant(label, **changes):
            m = dict(ev)
            for k, v in changes.items():
                if v is KeyError:
                    m.pop(k, None)
                else:
                    m[k] = v
            specific.append((label, wrap(m), False, False))
        variant("wrong_type_price", p=Raw("67000.01"), q=True)
        variant("wrong_type_object", p={"value": "1"}, q=["1"])
        variant("missing_fields", p=KeyError, q=KeyError, s=KeyError)
        variant("huge_number", p="1" + "0" * 400, q="9" * 400 + ".5", t=Raw("1" + "0" * 40))
        variant("non_numeric_string", p="abc", q="")
        variant("null_values", p=None, q=None, T=None)
        variant("unknown_symbol", s="NOPEUSDT")
        variant("unknown_event", e="kline")
        if combined:
            specific.append(("missing_data", '{"stream":' + json.dumps(name) + '}', False, False))
            specific.append(("unknown_stream", '{"stream":"nope@trade","data":' + dumps(ev) + '}', False, False))
        frames = specific + generic_malformed(wrap(ev), False)
        return pick_malformed(frames, count, kind)

    def oversize_parts(self, conn):
        name, _, _ = self._stream_for(conn)
        if conn.combined:
            return '{"stream":' + json.dumps(name) + ',"data":{"e":"trade","pad":"', '"}}'
        return '{"e":"trade","pad":"', '"}'


def _valid_id(rid):
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return 0 <= rid < 2**64
    if isinstance(rid, str):
        return 0 < len(rid) <= 36
    return False
