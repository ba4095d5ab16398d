"""Coinbase Advanced Trade market data WebSocket."""

import asyncio
import json
import time
from datetime import datetime, timezone
from decimal import Decimal

from simcore import Exchange, Raw, dumps, trim, generic_malformed, pick_malformed, log

CHANNELS = ("ticker", "market_trades", "level2", "heartbeats")
KNOWN_UNSUPPORTED = ("status", "ticker_batch", "candles", "user", "futures_balance_summary")
NEEDS_PRODUCTS = ("ticker", "market_trades", "level2")


def rfc3339(ns=None, digits=9):
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 0:
        return base + "Z"
    return base + "." + f"{frac:09d}"[:digits] + "Z"


class Coinbase(Exchange):
    name = "coinbase"
    binary_data = False
    default_conn_limit = 8

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hb_counter = 0

    # ------------------------------------------------------------ session
    async def handle(self, conn):
        conn.subs = {}          # channel -> [product ids]
        conn.seq = 0
        conn.ever_subscribed = False
        conn.hb_task = None
        conn.spawn(self._subscribe_deadline(conn))
        conn.spawn(self._idle_watch(conn))
        async for msg in conn.ws:
            err = self._request(conn, msg)
            if err:
                conn.enqueue("error", dumps({"type": "error", "message": err}))

    def next_seq(self, conn):
        s = conn.seq
        conn.seq += 1
        return s

    def send(self, conn, kind, channel, events_text, meta=None):
        def build():
            return ('{"channel":' + json.dumps(channel) + ',"client_id":"","timestamp":"'
                    + rfc3339() + '","sequence_num":' + str(self.next_seq(conn))
                    + ',"events":' + events_text + '}')
        conn.enqueue(kind, build, meta=meta)

    async def _subscribe_deadline(self, conn):
        await asyncio.sleep(self.args.coinbase_subscribe_s)
        if not conn.ever_subscribed:
            log.info("coinbase conn %d: no subscribe within %ss, closing", conn.id,
                     self.args.coinbase_subscribe_s)
            self.stats["subscribe_timeouts"] += 1
            conn.close(1000, "subscribe timeout")

    async def _idle_watch(self, conn):
        idle = self.args.coinbase_idle_s
        while True:
            if "heartbeats" in conn.subs:
                await asyncio.sleep(min(1.0, idle))
                continue
            left = conn.last_sent + idle - time.monotonic()
            if left <= 0:
                log.info("coinbase conn %d: quiet for %ss without heartbeats, closing", conn.id, idle)
                self.stats["idle_closes"] += 1
                conn.close(1000, "idle timeout")
                return
            await asyncio.sleep(min(left + 0.01, 1.0))

    async def _heartbeats(self, conn):
        while True:
            await asyncio.sleep(self.args.coinbase_heartbeat_s)
            if "heartbeats" not in conn.subs:
                conn.hb_task = None
                return
            self.hb_counter += 1
            ns = time.time_ns()
            cur = datetime.fromtimestamp(ns // 10**9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            cur += f".{ns % 10**9:09d} +0000 UTC m=+{time.monotonic():.9f}"
            self.send(conn, "heartbeat", "heartbeats",
                      dumps([{"current_time": cur, "heartbeat_counter": self.hb_counter}]))

    def _request(self, conn, msg):
        if isinstance(msg, bytes):
            try:
                msg = msg.decode()
            except UnicodeDecodeError:
                return "failure to parse message: invalid UTF-8"
        try:
            req = json.loads(msg)
        except ValueError:
            return "failure to parse message: invalid JSON"
        if not isinstance(req, dict):
            return "failure to parse message: expected an object"
        ty = req.get("type")
        if ty not in ("subscribe", "unsubscribe"):
            return f"unknown message type: {ty!r}"
        ch = req.get("channel")
        if ch is None:
            if "channels" in req:
                return "channels is not supported, send one message per channel with \"channel\""
            return "channel is required"
        if not isinstance(ch, str):
            return "channel must be a string"
        if ch in KNOWN_UNSUPPORTED:
            return f"Failure to subscribe: channel {ch} is not served by the simulator"
        if ch not in CHANNELS:
            return f"Failure to subscribe: unknown channel {ch}"
        pids = req.get("product_ids", [])
        if not isinstance(pids, list) or not all(isinstance(p, str) for p in pids):
            return "product_ids must be an array of strings"
        if ch in NEEDS_PRODUCTS and not pids:
            return f"Failure to subscribe: product_ids is required for channel {ch}"
        for p in pids:
            if p not in self.markets:
                return f"Failure to subscribe: unknown product id {p}"
        if ty == "subscribe":
            cur = conn.subs.setdefault(ch, [])
            new = [p for p in pids if p not in cur]
            cur.extend(new)
            if ch == "heartbeats" and not cur:
                cur.append("heartbeats")
            conn.ever_subscribed = True
            self._ack(conn)
            for p in new:
                self._snapshot(conn, ch, self.markets[p])
            if ch == "heartbeats" and conn.hb_task is None:
                conn.hb_task = conn.spawn(self._heartbeats(conn))
        else:
            cur = conn.subs.get(ch, [])
            if ch == "heartbeats" or not pids:
                conn.subs.pop(ch, None)
            else:
                conn.subs[ch] = [p for p in cur if p not in pids]
                if not conn.subs[ch]:
                    del conn.subs[ch]
            self._ack(conn)
        return None

    def _ack(self, conn):
        self.send(conn, "ack", "subscriptions",
                  dumps([{"subscriptions": {k: list(v) for k, v in conn.subs.items()}}]))

    def describe_subs(self, conn):
        return {k: list(v) for k, v in (conn.subs or {}).items()}

    # ------------------------------------------------------------ messages
    def _ticker(self, mkt):
        bids, asks = mkt.top(1)
        _, diff, rate = mkt.change()
        return {"type": "ticker", "product_id": mkt.symbol,
                "price": trim(mkt.price(mkt.last)),
                "volume_24_h": trim(mkt.qty(mkt.volume24)),
                "low_24_h": trim(mkt.price(mkt.low)), "high_24_h": trim(mkt.price(mkt.high)),
                "low_52_w": trim(mkt.price(mkt.low52)), "high_52_w": trim(mkt.price(mkt.high52)),
                "price_percent_chg_24_h": trim((rate * 100).quantize(Decimal("0.00000000000001"))),
                "best_bid": trim(mkt.price(bids[0][0])), "best_bid_quantity": trim(mkt.qty(bids[0][1])),
                "best_ask": trim(mkt.price(asks[0][0])), "best_ask_quantity": trim(mkt.qty(asks[0][1]))}

    def _trade(self, mkt, t):
        return {"trade_id": str(t.id), "product_id": mkt.symbol,
                "price": trim(mkt.price(t.price)), "size": trim(mkt.qty(t.qty)),
                "side": "BUY" if t.side == "buy" else "SELL",
                "time": rfc3339((t.ts or int(time.time() * 1000)) * 1_000_000, 6)}

    def _level(self, side, mkt, ticks, lots, when):
        return {"side": side, "event_time": when, "price_level": trim(mkt.price(ticks)),
                "new_quantity": trim(mkt.qty(lots))}

    def _snapshot(self, conn, ch, mkt):
        meta = {"type": ch, "market": mkt.symbol, "snapshot": True}
        if ch == "ticker":
            self.send(conn, "data", "ticker",
                      dumps([{"type": "snapshot", "tickers": [self._ticker(mkt)]}]), meta)
        elif ch == "market_trades":
            trades = [self._trade(mkt, t) for t in reversed(mkt.trades)] if self.args.snapshot_resend else []
            self.send(conn, "data", "market_trades",
                      dumps([{"type": "snapshot", "trades": trades}]), meta)
        elif ch == "level2":
            when = rfc3339()
            bids, asks = mkt.top(len(mkt.bids) + len(mkt.asks))
            ups = [self._level("bid", mkt, p, q, when) for p, q in bids]
            ups += [self._level("offer", mkt, p, q, when) for p, q in asks]
            self.send(conn, "data", "l2_data",
                      dumps([{"type": "snapshot", "product_id": mkt.symbol, "updates": ups}]), meta)

    def tick(self, mkt, step, ts):
        sym = mkt.symbol
        cache = {}
        for conn in list(self.conns):
            subs = conn.subs
            if not subs:
                continue
            if sym in subs.get("ticker", ()):
                if "ticker" not in cache:
                    cache["ticker"] = dumps([{"type": "update", "tickers": [self._ticker(mkt)]}])
                self.send(conn, "data", "ticker", cache["ticker"], {"type": "ticker", "market": sym})
            if sym in subs.get("market_trades", ()):
                if "trades" not in cache:
                    cache["trades"] = dumps([{"type": "update", "trades": [self._trade(mkt, step["trade"])]}])
                self.send(conn, "data", "market_trades", cache["trades"], {"type": "market_trades", "market": sym})
            if sym in subs.get("level2", ()) and step["deltas"]:
                if "l2" not in cache:
                    when = rfc3339()
                    ups = [self._level("bid" if s == "bid" else "offer", mkt, p, q, when)
                           for s, p, q in step["deltas"]]
                    cache["l2"] = dumps([{"type": "update", "product_id": sym, "updates": ups}])
                self.send(conn, "data", "l2_data", cache["l2"], {"type": "level2", "market": sym})

    # ------------------------------------------------------------ faults
    def gap(self, count=1):
        n = 0
        for c in list(self.conns):
            c.seq += count
            n += 1
        return n

    def malformed_frames(self, conn, count, kind=None):
        mkt = next(iter(self.markets.values()))
        tick = self._ticker(mkt)
        sample = ('{"channel":"ticker","client_id":"","timestamp":"' + rfc3339()
                  + '","sequence_num":0,"events":' + dumps([{"type": "update", "tickers": [tick]}]) + '}')
        specific = []

        def variant(label, channel="ticker", events=None, **changes):
            t = dict(tick)
            for k, v in changes.items():
                if v is KeyError:
                    t.pop(k, None)
                else:
                    t[k] = v
            ev = events if events is not None else dumps([{"type": "update", "tickers": [t]}])
            specific.append((label, lambda ev=ev, channel=channel: (
                '{"channel":' + json.dumps(channel) + ',"client_id":"","timestamp":"' + rfc3339()
                + '","sequence_num":' + str(self.next_seq(conn)) + ',"events":' + ev + '}'), False, False))
        variant("wrong_type_price", price=Raw("67000.01"), volume_24_h=True)
        variant("wrong_type_object", price={"value": "1"}, best_bid=["1"])
        variant("missing_fields", price=KeyError, product_id=KeyError)
        variant("huge_number", price="1" + "0" * 400, best_bid_quantity="9" * 400 + ".5")
        variant("non_numeric_string", price="abc", best_ask="")
        variant("null_values", price=None, best_bid=None)
        variant("unknown_product", product_id="NOPE-USD")
        variant("events_not_array", events='{"type":"update"}')
        variant("unknown_channel", channel="mystery")
        variant("bad_l2_side", channel="l2_data", events=dumps([{"type": "update", "product_id": mkt.symbol,
                "updates": [{"side": "middle", "event_time": rfc3339(), "price_level": "1", "new_quantity": "-5"}]}]))
        frames = specific + generic_malformed(sample, False)
        return pick_malformed(frames, count, kind)

    def oversize_parts(self, conn):
        return ('{"channel":"ticker","client_id":"","timestamp":"' + rfc3339()
                + '","sequence_num":0,"events":[],"pad":"', '"}')
