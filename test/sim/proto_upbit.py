"""Upbit and Bithumb (Upbit-compatible) public WebSocket API v1."""

import asyncio
import json
import time
from datetime import datetime, timezone, timedelta
from decimal import Decimal

from simcore import Exchange, Raw, dumps, jnum, generic_malformed, pick_malformed, log

KST = timezone(timedelta(hours=9))

SIMPLE = {
    # common
    "type": "ty", "code": "cd", "timestamp": "tms", "stream_type": "st",
    # trade
    "trade_price": "tp", "trade_volume": "tv", "ask_bid": "ab",
    "prev_closing_price": "pcp", "change": "c", "change_price": "cp",
    "trade_date": "td", "trade_time": "ttm", "trade_timestamp": "ttms",
    "sequential_id": "sid", "best_ask_price": "bap", "best_ask_size": "bas",
    "best_bid_price": "bbp", "best_bid_size": "bbs",
    # ticker
    "opening_price": "op", "high_price": "hp", "low_price": "lp",
    "signed_change_price": "scp", "change_rate": "cr", "signed_change_rate": "scr",
    "acc_trade_volume": "atv", "acc_trade_volume_24h": "atv24h",
    "acc_trade_price": "atp", "acc_trade_price_24h": "atp24h",
    "acc_ask_volume": "aav", "acc_bid_volume": "abv",
    "highest_52_week_price": "h52wp", "highest_52_week_date": "h52wdt",
    "lowest_52_week_price": "l52wp", "lowest_52_week_date": "l52wdt",
    "market_state": "ms", "is_trading_suspended": "its", "delisting_date": "dd",
    "market_warning": "mw",
    # orderbook
    "total_ask_size": "tas", "total_bid_size": "tbs", "orderbook_units": "obu",
    "ask_price": "ap", "bid_price": "bp", "ask_size": "as", "bid_size": "bs",
    "level": "lv",
}
TICKER_SIMPLE_DATE = {"trade_date": "tdt"}  # ticker uses tdt, trade uses td

TYPES = ("ticker", "trade", "orderbook")
DEPTHS = (1, 5, 15, 30)
SNAP_FLAGS = ("is_only_snapshot", "isOnlySnapshot")
RT_FLAGS = ("is_only_realtime", "isOnlyRealtime")


def to_simple(msg, kind):
    out = {}
    for k, v in msg.items():
        key = TICKER_SIMPLE_DATE.get(k) if kind == "ticker" and k in TICKER_SIMPLE_DATE else SIMPLE.get(k, k)
        if k == "orderbook_units":
            v = [{SIMPLE.get(a, a): b for a, b in u.items()} for u in v]
        out[key] = v
    return out


class UpbitError(Exception):
    def __init__(self, name, message):
        super().__init__(message)
        self.name = name
        self.message = message


class Upbit(Exchange):
    name = "upbit"
    binary_data = True
    default_conn_limit = 5
    formats = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
    bad_format_error = "WRONG_FORMAT"
    extra_snap_flags = ()
    variants = False

    def check_path(self, path, headers):
        if path.split("?")[0].rstrip("/") != "/websocket/v1":
            return (404, [("Content-Type", "application/json")],
                    b'{"error":{"name":"NOT_FOUND","message":"Not Found"}}')
        return None

    # ------------------------------------------------------------ session
    async def handle(self, conn):
        conn.subs = {}      # (type, code) -> depth or None
        conn.fmt = "DEFAULT"
        conn.status_task = None
        conn.spawn(self._idle_watch(conn))
        async for msg in conn.ws:
            if isinstance(msg, str) and msg.strip() == "PING":
                self._send_ctl(conn, "status", {"status": "UP"})
                if conn.status_task is None:
                    conn.status_task = conn.spawn(self._status_loop(conn))
                continue
            try:
                self._request(conn, msg)
            except UpbitError as e:
                self._send_ctl(conn, "error", {"error": {"name": e.name, "message": e.message}})

    def _send_ctl(self, conn, kind, obj):
        conn.enqueue(kind, dumps(obj).encode(), binary=True)

    async def _status_loop(self, conn):
        while True:
            await asyncio.sleep(self.args.upbit_status_s)
            if not conn.silenced():
                self._send_ctl(conn, "status", {"status": "UP"})

    async def _idle_watch(self, conn):
        idle = self.args.idle_s
        while True:
            left = conn.last_activity + idle - time.monotonic()
            if left <= 0:
                log.info("%s conn %d idle for %ss: closing", self.name, conn.id, idle)
                conn.close(1000, "idle timeout")
                return
            await asyncio.sleep(min(left + 0.01, 1.0))

    def _request(self, conn, msg):
        if isinstance(msg, bytes):
            try:
                msg = msg.decode("utf-8")
            except UnicodeDecodeError:
                raise UpbitError("WRONG_FORMAT", "요청 형식이 올바르지 않습니다. (not UTF-8)")
        try:
            req = json.loads(msg)
        except ValueError:
            raise UpbitError("WRONG_FORMAT", "요청 형식이 올바르지 않습니다.")
        if not isinstance(req, list) or not all(isinstance(o, dict) for o in req) or not req:
            raise UpbitError("WRONG_FORMAT", "요청 형식이 올바르지 않습니다. (expected an array of objects)")
        ticket, fmt, types = None, "DEFAULT", []
        for o in req:
            if "ticket" in o:
                ticket = o["ticket"]
            if "format" in o:
                fmt = o["format"]
            if "type" in o:
                types.append(o)
        if not isinstance(ticket, str) or not ticket:
            raise UpbitError("NO_TICKET", "ticket 필드가 없습니다.")
        if not isinstance(fmt, str):
            raise UpbitError("WRONG_FORMAT", "format must be a string")
        if fmt not in self.formats:
            raise UpbitError(self.bad_format_error, f"지원하지 않는 format 입니다: {fmt}")
        if not types:
            raise UpbitError("NO_TYPE", "type 필드가 없습니다.")
        subs = []
        for o in types:
            ty = o.get("type")
            if ty not in TYPES:
                raise UpbitError("NO_TYPE", f"지원하지 않는 type 입니다: {ty}")
            codes = o.get("codes")
            if codes is None or codes == []:
                raise UpbitError("NO_CODES", "codes 필드가 없습니다.")
            if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
                raise UpbitError("WRONG_FORMAT", "codes must be an array of strings")
            only_snap = any(o.get(f) is True for f in SNAP_FLAGS + self.extra_snap_flags)
            only_rt = any(o.get(f) is True for f in RT_FLAGS)
            for c in codes:
                depth = None
                code = c
                if ty == "orderbook":
                    depth = 30
                    if "." in c:
                        code, _, d = c.partition(".")
                        if not d.isdigit() or int(d) not in DEPTHS:
                            raise UpbitError("INVALID_PARAM", f"지원하지 않는 호가 개수입니다: {c}")
                        depth = int(d)
                subs.append((ty, code, depth, only_snap, only_rt))
        # a new request replaces the previous one
        conn.fmt = fmt
        conn.subs = {}
        for ty, code, depth, only_snap, only_rt in subs:
            mkt = self.markets.get(code)
            resend = ty != "trade" or self.args.snapshot_resend
            if not only_rt and mkt is not None and resend:
                self._emit(conn, ty, mkt, depth, "SNAPSHOT", mkt.last_ts or int(time.time() * 1000))
            if not only_snap:
                conn.subs[(ty, code)] = depth

    def describe_subs(self, conn):
        return {"format": getattr(conn, "fmt", None),
                "subs": [f"{t}:{c}" + (f".{d}" if d else "") for (t, c), d in (conn.subs or {}).items()]}

    # ------------------------------------------------------------ data
    def tick(self, mkt, step, ts):
        for conn in list(self.conns):
            subs = conn.subs
            if not subs:
                continue
            for ty in TYPES:
                key = (ty, mkt.symbol)
                if key in subs:
                    self._emit(conn, ty, mkt, subs[key], "REALTIME", ts)

    def _emit(self, conn, ty, mkt, depth, st, ts):
        msg = getattr(self, "msg_" + ty)(mkt, depth, st, ts)
        fmt = conn.fmt
        if fmt in ("SIMPLE", "SIMPLE_LIST"):
            msg = to_simple(msg, ty)
        if fmt in ("JSON_LIST", "SIMPLE_LIST"):
            msg = [msg]
        conn.enqueue("data", dumps(msg).encode("utf-8"), binary=True,
                     meta={"type": ty, "market": mkt.symbol})

    def _num(self, mkt, ticks):
        return jnum(mkt.price(ticks))

    def _fix8(self, d):
        """Upbit writes some values with a fixed 8-decimal literal (31883000.00000000)."""
        return Raw(format(Decimal(d).quantize(Decimal("0.00000001")), "f"))

    def msg_trade(self, mkt, depth, st, ts):
        t = mkt.last_trade
        tts = t.ts or ts
        dt = datetime.fromtimestamp(tts / 1000, timezone.utc)
        state, diff, _ = mkt.change()
        bids, asks = mkt.top(1)
        sid = tts * 1000 + (t.id % 1000)
        return {
            "type": "trade", "code": mkt.symbol,
            "timestamp": ts,
            "trade_date": dt.strftime("%Y-%m-%d"),
            "trade_time": dt.strftime("%H:%M:%S"),
            "trade_timestamp": tts,
            "trade_price": self._num(mkt, t.price),
            "trade_volume": jnum(mkt.qty(t.qty)),
            "ask_bid": "BID" if t.side == "buy" else "ASK",
            "prev_closing_price": self._fix8(mkt.price(mkt.prev_close)),
            "change": state,
            "change_price": self._fix8(mkt.price(abs(diff))),
            "sequential_id": str(sid) if self.variants else sid,
            "best_ask_price": self._num(mkt, asks[0][0]) if asks else 0,
            "best_ask_size": jnum(mkt.qty(asks[0][1])) if asks else 0,
            "best_bid_price": self._num(mkt, bids[0][0]) if bids else 0,
            "best_bid_size": jnum(mkt.qty(bids[0][1])) if bids else 0,
            "stream_type": st,
        }

    def msg_ticker(self, mkt, depth, st, ts):
        t = mkt.last_trade
        tts = t.ts or ts
        dt = datetime.fromtimestamp(tts / 1000, timezone.utc)
        state, diff, rate = mkt.change()
        rate = rate.quantize(Decimal("0.0000000001"))
        sign = -1 if diff < 0 else 1
        m = {
            "type": "ticker", "code": mkt.symbol,
            "opening_price": self._num(mkt, mkt.open),
            "high_price": self._num(mkt, mkt.high),
            "low_price": self._num(mkt, mkt.low),
            "trade_price": self._num(mkt, mkt.last),
            "prev_closing_price": self._fix8(mkt.price(mkt.prev_close)),
            "change": state,
            "change_price": self._fix8(mkt.price(abs(diff))),
            "signed_change_price": self._fix8(mkt.price(abs(diff)) * sign),
            "change_rate": jnum(abs(rate)),
            "signed_change_rate": jnum(rate),
            "trade_volume": jnum(mkt.qty(t.qty)),
            "acc_trade_volume": jnum(mkt.qty(mkt.volume_today)),
            "acc_trade_volume_24h": jnum(mkt.qty(mkt.volume24)),
            "acc_trade_price": float(mkt.quote_vol_today),
            "acc_trade_price_24h": float(mkt.quote_vol24),
            "trade_date": dt.strftime("%Y%m%d"),
            "trade_time": dt.strftime("%H%M%S"),
            "trade_timestamp": tts,
            "ask_bid": "BID" if t.side == "buy" else "ASK",
            "acc_ask_volume": jnum(mkt.qty(mkt.acc_ask)),
            "acc_bid_volume": jnum(mkt.qty(mkt.acc_bid)),
            "highest_52_week_price": self._num(mkt, mkt.high52),
            "highest_52_week_date": "2024-03-14",
            "lowest_52_week_price": self._num(mkt, mkt.low52),
            "lowest_52_week_date": "2023-09-11",
            "market_state": "ACTIVE",
            "is_trading_suspended": False,
            "delisting_date": "" if self.variants else None,
            "market_warning": "NONE",
            "timestamp": ts,
            "stream_type": st,
        }
        return m

    def msg_orderbook(self, mkt, depth, st, ts):
        bids, asks = mkt.top(depth or 30)
        units = []
        for i in range(max(len(bids), len(asks))):
            a = asks[i] if i < len(asks) else (0, 0)
            b = bids[i] if i < len(bids) else (0, 0)
            units.append({"ask_price": self._num(mkt, a[0]), "bid_price": self._num(mkt, b[0]),
                          "ask_size": jnum(mkt.qty(a[1])), "bid_size": jnum(mkt.qty(b[1]))})
        all_bids, all_asks = mkt.top(30)
        tms = ts
        if self.variants:
            tms = str(ts * 1000 + mkt.rng.randint(0, 999))   # 16-digit microseconds
        return {
            "type": "orderbook", "code": mkt.symbol,
            "timestamp": tms,
            "total_ask_size": jnum(mkt.qty(sum(q for _, q in all_asks))),
            "total_bid_size": jnum(mkt.qty(sum(q for _, q in all_bids))),
            "orderbook_units": units,
            "stream_type": st,
            "level": 0,
        }

    # ------------------------------------------------------------ faults
    def malformed_frames(self, conn, count, kind=None):
        mkt = next(iter(self.markets.values()))
        ts = int(time.time() * 1000)
        base = self.msg_trade(mkt, None, "REALTIME", ts)
        sample = dumps(base)
        specific = []

        def variant(label, **changes):
            m = dict(base)
            for k, v in changes.items():
                if v is KeyError:
                    m.pop(k, None)
                else:
                    m[k] = v
            specific.append((label, dumps(m).encode(), True, False))
        variant("wrong_type_price", trade_price="not-a-number")
        variant("wrong_type_object", trade_price={"value": 1}, trade_volume=[1, 2])
        variant("missing_fields", trade_price=KeyError, code=KeyError, ask_bid=KeyError)
        variant("huge_number", trade_price=Raw("1" + "0" * 400), trade_volume=Raw("1e400"))
        variant("bad_enum", ask_bid="SIDEWAYS", type="trade")
        variant("null_values", trade_price=None, trade_volume=None, trade_timestamp=None)
        variant("unknown_code", code="KRW-NOPE")
        variant("unknown_type", type="candle.1s")
        frames = specific + generic_malformed(sample, True)
        return pick_malformed(frames, count, kind)

    def oversize_parts(self, conn):
        return '{"type":"trade","code":"KRW-BTC","pad":"', '"}'


class Bithumb(Upbit):
    name = "bithumb"
    default_conn_limit = 10
    formats = ("DEFAULT", "SIMPLE")
    bad_format_error = "INVALID_PARAM"
    extra_snap_flags = ("isOnlySanpshot",)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.variants = self.args.bithumb_variants

