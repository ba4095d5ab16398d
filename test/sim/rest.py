"""REST recent-trades endpoints of each exchange (exchanges.md, "REST recent
trades"), served on the exchange's WebSocket port: a plain HTTP GET on a REST
path is answered before any WebSocket handshake. The trades come from each
market's history of trades made (``Market.history``, the last ``--rest-window``
trades); ``Market.made`` keeps every trade id made, the truth tests compare
with (``GET /trades`` on the control port)."""

import json
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit, parse_qsl

from simcore import dumps, jnum, fixed, trim

JSON = [("Content-Type", "application/json")]


def trade_id(exchange, mkt, t):
    """The exchange's id of trade t, as text (the normalized trade_id)."""
    if exchange in ("upbit", "bithumb"):
        return str(t.ts * 1000 + (t.id % 1000))
    return str(t.id)


def _resp(status, obj, headers=None):
    body = (obj if isinstance(obj, str) else dumps(obj)).encode("utf-8")
    return status, (headers or JSON) + [("Content-Length", str(len(body)))], body


class Rest:
    """REST state of one exchange server: counters and the 429 mode."""

    def __init__(self, ex):
        self.ex = ex
        self.limit_next = 0     # answer this many requests with 429
        self.requests = 0
        self.limited = 0

    def status(self):
        return {"rest_requests": self.requests, "rest_429": self.limited,
                "rest_429_pending": self.limit_next,
                "rest_window": self.ex.sim.args.rest_window}

    def handle(self, path):
        """(status, headers, body) for a REST path, None for anything else."""
        u = urlsplit(path)
        q = dict(parse_qsl(u.query))
        name = self.ex.name
        route = None
        if name in ("upbit", "bithumb") and u.path == "/v1/trades/ticks":
            route = self._ticks
        elif name == "binance" and u.path in ("/api/v3/trades", "/api/v3/historicalTrades"):
            route = self._binance
        elif name == "coinbase" and u.path.startswith("/api/v3/brokerage/market/products/") \
                and u.path.endswith("/ticker"):
            route = self._coinbase
        if route is None:
            return None
        self.requests += 1
        if self.limit_next > 0:
            self.limit_next -= 1
            self.limited += 1
            if name == "binance":
                return _resp(429, {"code": -1003, "msg": "Too many requests."},
                             JSON + [("Retry-After", "1")])
            return _resp(429, "Too many API requests.", [("Content-Type", "text/plain"), ("Retry-After", "1")])
        return route(u.path, q)

    @staticmethod
    def _int(q, key, default, lo, hi):
        try:
            v = int(q.get(key, default))
        except ValueError:
            return None
        return v if lo <= v <= hi else None

    # -- Upbit / Bithumb: newest first, cursor = a sequential_id (older than it)
    def _ticks(self, path, q):
        mkt = self.ex.markets.get(q.get("market", ""))
        if "market" not in q:
            return _resp(400, {"error": {"name": 400, "message": "Missing request parameter error. "
                                         "Check the required parameters!"}})
        if mkt is None:
            return _resp(404, {"error": {"name": 404, "message": "Code not found"}})
        count = self._int(q, "count", 1, 1, 500)
        if count is None:
            return _resp(400, {"error": {"name": 400, "message": "count must be 1..500"}})
        # one UTC day per request: today, or days_ago (Bithumb: daysAgo) 1..7
        days = q.get("days_ago", q.get("daysAgo", "0"))
        if not days.isdigit() or int(days) > 7:
            return _resp(400, {"error": {"name": 400, "message": "days_ago must be 1..7"}})
        day = (now_ms() // 86_400_000) - int(days)
        hist = [t for t in mkt.history if t.ts // 86_400_000 == day]
        if "cursor" in q:
            ids = [trade_id(self.ex.name, mkt, t) for t in hist]
            try:
                hist = hist[:ids.index(q["cursor"])]
            except ValueError:
                hist = []        # older than the window: nothing more
        page = list(reversed(hist))[:count]
        out = []
        for t in page:
            dt = datetime.fromtimestamp(t.ts / 1000, timezone.utc)
            sid = t.ts * 1000 + (t.id % 1000)
            out.append({"market": mkt.symbol, "trade_date_utc": dt.strftime("%Y-%m-%d"),
                        "trade_time_utc": dt.strftime("%H:%M:%S"), "timestamp": t.ts,
                        "trade_price": jnum(mkt.price(t.price)), "trade_volume": jnum(mkt.qty(t.qty)),
                        "prev_closing_price": jnum(mkt.price(mkt.prev_close)),
                        "change_price": jnum(mkt.price(t.price - mkt.prev_close)),
                        "ask_bid": "BID" if t.side == "buy" else "ASK", "sequential_id": sid})
        return _resp(200, out, JSON + [("Remaining-Req", "group=trade; min=599; sec=9")])

    # -- Binance: oldest first; historicalTrades from fromId (inclusive)
    def _binance(self, path, q):
        mkt = self.ex.markets.get(q.get("symbol", ""))
        if mkt is None:
            return _resp(400, {"code": -1121, "msg": "Invalid symbol."})
        limit = self._int(q, "limit", 500, 1, 1000)
        if limit is None:
            return _resp(400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
        hist = list(mkt.history)
        if path.endswith("historicalTrades") and "fromId" in q:
            try:
                from_id = int(q["fromId"])
            except ValueError:
                return _resp(400, {"code": -1100, "msg": "Illegal characters found in parameter 'fromId'."})
            page = [t for t in hist if t.id >= from_id][:limit]
        else:
            page = hist[-limit:]
        out = [{"id": t.id, "price": fixed(mkt.price(t.price), 8), "qty": fixed(mkt.qty(t.qty), 8),
                "quoteQty": fixed(mkt.price(t.price) * mkt.qty(t.qty), 8), "time": t.ts,
                "isBuyerMaker": t.side == "sell", "isBestMatch": True} for t in page]
        return _resp(200, out, JSON + [("X-MBX-USED-WEIGHT-1M", "25")])

    # -- Coinbase: newest first, end = UNIX seconds (inclusive)
    def _coinbase(self, path, q):
        pid = path[len("/api/v3/brokerage/market/products/"):-len("/ticker")]
        mkt = self.ex.markets.get(pid)
        if mkt is None:
            return _resp(404, {"error": "NOT_FOUND", "message": "product not found"})
        limit = self._int(q, "limit", 0, 1, 1000)
        if limit is None:
            return _resp(400, {"error": "INVALID_ARGUMENT", "message": "limit is required (1..1000)"})
        hist = list(mkt.history)
        if "end" in q:
            try:
                end_ms = (int(q["end"]) + 1) * 1000
            except ValueError:
                return _resp(400, {"error": "INVALID_ARGUMENT", "message": "bad end"})
            hist = [t for t in hist if t.ts < end_ms]
        if "start" in q:
            try:
                start_ms = int(q["start"]) * 1000
            except ValueError:
                return _resp(400, {"error": "INVALID_ARGUMENT", "message": "bad start"})
            hist = [t for t in hist if t.ts >= start_ms]
        page = list(reversed(hist))[:limit]
        bids, asks = mkt.top(1)
        out = {"trades": [self.ex._trade(mkt, t) | {"exchange": "coinbase"} for t in page],
               "best_bid": trim(mkt.price(bids[0][0])) if bids else "",
               "best_ask": trim(mkt.price(asks[0][0])) if asks else ""}
        return _resp(200, out)


def made(ex, market=None):
    """{market: [trade ids made, oldest first]}"""
    return {s: [trade_id(ex.name, m, t) for t in m.made]
            for s, m in ex.markets.items() if market in (None, s)}


def now_ms():
    return time.time_ns() // 1_000_000


__all__ = ["Rest", "trade_id", "made", "json", "now_ms"]
