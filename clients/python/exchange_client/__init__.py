"""asyncio client for the exchange-service WebSocket protocol (protocol 1).

    client = ExchangeClient(["ws://a:8080/ws/exchange", "ws://b:8080/ws/exchange"])
    async for msg in client.subscribe(["trade.upbit.BTC-KRW"]):
        ...

Per exact channel it hands the application every message once and in order
(epoch never goes down, seq strictly increases within an epoch, a trade
re-sent under another seq or epoch, same trade_id, is dropped), reconnects
with backoff and full jitter over the endpoints (or after the server's
{"type":"reconnect","after_ms"} hint), resumes with `since`
{"CH": {"epoch": E, "seq": S}}, and reports what the server could not
replay as Gap events: recovered:false, a jump in a trade channel's seq, a
status.EXCHANGE message with state "gap". Same semantics as clients/js.
Requires the `websockets` package (Debian's python3-websockets, 10.x or later).
"""
import asyncio
import collections
import inspect
import json
import logging
import random
import urllib.parse

import websockets

__all__ = ["ExchangeClient", "Subscription", "Gap", "Position", "PROTOCOL_VERSION", "__version__",
           "channel_matches"]

PROTOCOL_VERSION = 1
__version__ = "1.0.0"  # major = PROTOCOL_VERSION

log = logging.getLogger("exchange_client")

Position = collections.namedtuple("Position", "epoch seq")


class Gap:
    """A span the client could not be given, on one exact channel.

    reason: "not_recovered" (the server could not replay from `after`),
    "seq" (a trade channel's seq jumped from `after` to `before`, `missing`
    messages), "exchange" (the ingest announced a span of exchange time it
    could not backfill; `exchange` holds the status message's gap object).
    """
    type = "gap"

    def __init__(self, channel, reason, after=None, before=None, missing=None, exchange=None):
        self.channel, self.reason = channel, reason
        self.after, self.before, self.missing, self.exchange = after, before, missing, exchange

    def as_dict(self):
        d = {"type": "gap", "channel": self.channel, "reason": self.reason}
        for k in ("after", "before"):
            v = getattr(self, k)
            if v is not None:
                d[k] = {"epoch": v.epoch, "seq": v.seq}
        if self.missing is not None:
            d["missing"] = self.missing
        if self.exchange is not None:
            d["exchange"] = self.exchange
        return d

    def __repr__(self):
        return "Gap(%r)" % (self.as_dict(),)


def channel_matches(pattern, channel):
    """A pattern with `*` for one whole segment matches a channel."""
    if pattern == channel:
        return True
    p, c = pattern.split("."), channel.split(".")
    return len(p) == len(c) and all(a == "*" or a == b for a, b in zip(p, c))


class Subscription:
    """An async iterator over the messages of some channels (and Gap objects
    when created with gaps=True). close() or leaving `async for` with break
    unsubscribes."""

    def __init__(self, client, channels, gaps, callback=None, internal=False):
        self._client = client
        self.channels = list(channels)
        self.gaps = gaps
        self.callback = callback
        self.internal = internal
        self.server = set()  # channels the server holds for it on this connection
        self._queue = asyncio.Queue()
        self._closed = False

    def covers(self, channel):
        return any(channel_matches(p, channel) for p in self.channels)

    def _put(self, item):
        if self._closed:
            return
        if self.callback is not None:
            try:
                self.callback(item)
            except Exception as e:  # noqa: BLE001 - the application's bug must not stop the client
                self._client._error("handler", "callback raised %r" % (e,), e)
            return
        self._queue.put_nowait(item)

    def _end(self):
        self._closed = True
        self._queue.put_nowait(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    async def aclose(self):
        self.close()

    def close(self):
        if not self._closed:
            self._client._remove(self)
            self._end()

    @property
    def active(self):
        return not self._closed


class ExchangeClient:
    def __init__(self, urls, token=None, get_token=None, token_param="token",
                 backoff_min=0.25, backoff_max=10.0, max_hint=30.0,
                 heartbeat=15.0, heartbeat_timeout=10.0, connect_timeout=10.0,
                 dedup_window=2048, gap_status=True, positions=None,
                 on_gap=None, on_state=None, on_reconnect=None, on_error=None, on_subscribed=None, on_resumed=None,
                 rand=random.random):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no endpoint URL")
        self.token, self.get_token, self.token_param = token, get_token, token_param
        self.backoff_min, self.backoff_max, self.max_hint = backoff_min, backoff_max, max_hint
        self.heartbeat, self.heartbeat_timeout = heartbeat, heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.dedup_window, self.gap_status, self.rand = dedup_window, gap_status, rand
        self.callbacks = {"gap": [], "state": [], "reconnect": [], "error": [], "subscribed": [], "resumed": []}
        for name, cb in (("gap", on_gap), ("state", on_state), ("reconnect", on_reconnect),
                         ("error", on_error), ("subscribed", on_subscribed), ("resumed", on_resumed)):
            if cb is not None:
                self.callbacks[name].append(cb)
        self.stats = {"messages": 0, "duplicates": 0, "stale": 0, "gaps": 0, "reconnects": 0, "hints": 0}
        self.state = "idle"
        self._subs = []
        self._status = {}  # "status.EX" -> internal Subscription
        self._pos = {ch: Position(p["epoch"], p["seq"]) if isinstance(p, dict) else Position(*p)
                     for ch, p in (positions or {}).items()}
        self._trades = {}  # channel -> (set, deque)
        self._resync = set()
        self._pending = {}  # id -> (kind, sub, since, future)
        self._ws = None
        self._task = None
        self._stopped = False
        self._next_id = 1
        self._url_index = 0
        self._attempt = 0
        self._hint = None
        self._auth_failed = False
        self._resuming = None  # [replies left, merged event] after a (re)connect

    # ---- public ---------------------------------------------------------------
    def on(self, event, callback):
        """Add a callback for "gap", "state", "reconnect", "error", "subscribed",
        "resumed" (every subscription sent on a new connection has its reply:
        since and recovered merged over them)."""
        self.callbacks[event].append(callback)
        return callback

    def positions(self):
        """Last delivered {channel: {"epoch", "seq"}}: persist it and pass it
        back as positions= to resume after a restart."""
        return {ch: {"epoch": p.epoch, "seq": p.seq} for ch, p in self._pos.items()}

    def subscribe(self, channels, callback=None, gaps=False):
        """Subscribe to channels (patterns may hold `*`). Returns a
        Subscription to iterate with `async for`, or, with a callback, calls
        it for every message (and Gap when gaps=True). Must be called from
        the event loop; connects on first use."""
        if isinstance(channels, str):
            channels = [channels]
        sub = Subscription(self, channels, gaps, callback)
        self._subs.append(sub)
        self._sync_status()
        if self._open():
            self._send_subscribe(sub, self._held_elsewhere(sub))
        self._start()
        return sub

    async def request(self, req, timeout=10.0):
        """Send a request ({"op": "list"} ...) and return its reply."""
        if not self._open():
            raise ConnectionError("not connected")
        fut = asyncio.get_running_loop().create_future()
        rid = self._take_id()
        self._pending[rid] = ("request", None, None, fut)
        await self._ws.send(json.dumps(dict(req, id=rid)))
        return await asyncio.wait_for(fut, timeout)

    async def close(self):
        """Close for good: a clean close of the connection (bounded), no
        reconnect, every subscription's iteration ends."""
        self._stopped = True
        for s in list(self._subs) + list(self._status.values()):
            s._end()
        ws, task = self._ws, self._task
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(1000, "client closed"), 2.0)
            except (asyncio.TimeoutError, websockets.ConnectionClosed, OSError):
                pass
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
            if not task.done() and ws is not None and ws.transport is not None:
                ws.transport.abort()  # a peer that does not answer: no handshake to wait for
                await asyncio.wait({task}, timeout=2.0)
        self._set_state("closed")

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # ---- connection -------------------------------------------------------------
    def _start(self):
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _open(self):
        return self._ws is not None and self.state == "open"

    def _take_id(self):
        self._next_id += 1
        return self._next_id - 1

    async def _token(self, url):
        reason = "auth" if self._auth_failed else "connect"
        self._auth_failed = False
        if self.get_token is not None:
            t = self.get_token(reason, url)
            return (await t) if inspect.isawaitable(t) else t
        return self.token

    async def _run(self):
        while not self._stopped:
            url = self.urls[self._url_index % len(self.urls)]
            self._set_state("reconnecting" if self.stats["reconnects"] or self._attempt else "connecting")
            code, reason = 1006, "connect failed"
            try:
                token = await self._token(url)
                full = url
                if token:
                    full += ("&" if "?" in url else "?") + self.token_param + "=" + urllib.parse.quote(token, safe="")
                ws = await asyncio.wait_for(
                    websockets.connect(full, ping_interval=self.heartbeat, ping_timeout=self.heartbeat_timeout,
                                       close_timeout=1, max_size=None, max_queue=None),
                    self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to connect is retried
                self._error("connect", "cannot connect to %s: %r" % (url, e), e)
                if getattr(e, "status_code", None) in (401, 403):
                    self._auth_failed = True
            else:
                code, reason = await self._serve(ws, url)
            if self._stopped:
                break
            await self._dropped(code, reason)
        self._set_state("closed")

    async def _serve(self, ws, url):
        self._ws = ws
        self._set_state("open")
        try:
            sent = set()
            subs = list(self._subs) + list(self._status.values())
            self._resuming = [len(subs), {"channels": [], "since": None, "recovered": None}]
            for s in subs:
                self._send_subscribe(s, sent, resume=True)
            if not subs:
                self._resumed(None)
            async for frame in ws:
                self._on_frame(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._ws = None
        code = ws.close_code if ws.close_code is not None else 1006
        return code, ws.close_reason or ""

    async def _dropped(self, code, reason):
        self._resuming = None
        for _, _, _, fut in self._pending.values():
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection closed (%s)" % code))
        self._pending.clear()
        for s in list(self._subs) + list(self._status.values()):
            s.server.clear()
        if code in (4001, 4003):
            self._auth_failed = True
        hint, self._hint = self._hint, None
        if hint is not None:
            delay = max(0.0, min(hint["after_ms"] / 1000.0, self.max_hint))
            self._attempt = 0
        else:
            cap = min(self.backoff_max, self.backoff_min * (2 ** self._attempt))
            delay = self.rand() * cap
            self._attempt += 1
        self._url_index = (self._url_index + 1) % len(self.urls)
        self.stats["reconnects"] += 1
        self._set_state("reconnecting")
        self._emit("reconnect", {"attempt": self._attempt, "delay": delay, "url": self.urls[self._url_index],
                                 "code": code, "reason": reason, "hint": hint})
        await asyncio.sleep(delay)

    def _send(self, obj):
        if self._ws is not None:
            asyncio.get_running_loop().create_task(self._send_now(self._ws, json.dumps(obj)))

    @staticmethod
    async def _send_now(ws, text):
        try:
            await ws.send(text)
        except websockets.ConnectionClosed:
            pass  # the reader sees the close and reconnects

    # ---- subscriptions ------------------------------------------------------------
    def _held_elsewhere(self, sub):
        """Channels the server already holds for other subscriptions on this
        connection: no since for those (nothing was missed)."""
        held = set()
        for s in list(self._subs) + list(self._status.values()):
            if s is not sub:
                held |= s.server
        patterns = list(held)
        held.update(ch for ch in self._pos if any(channel_matches(p, ch) for p in patterns))
        return held

    def _resumed(self, ev):
        r = self._resuming
        if r is None:
            return
        if ev is not None:
            r[1]["channels"] += ev["channels"]
            for k in ("since", "recovered"):
                if ev[k]:
                    r[1][k] = dict(r[1][k] or {}, **ev[k])
        r[0] -= 1
        if r[0] <= 0:
            self._resuming = None
            self._attempt = 0
            self._emit("resumed", r[1])

    def _send_subscribe(self, sub, sent, resume=False):
        since = {}
        for ch, p in self._pos.items():
            if ch not in sent and sub.covers(ch):
                sent.add(ch)
                since[ch] = {"epoch": p.epoch, "seq": p.seq}
        rid = self._take_id()
        req = {"op": "subscribe", "channels": sub.channels, "id": rid}
        if since:
            req["since"] = since
        sub.server.update(sub.channels)
        sub.server.update(since)
        self._pending[rid] = ("resume" if resume else "subscribe", sub, since or None, None)
        self._send(req)

    def _remove(self, sub):
        if sub in self._subs:
            self._subs.remove(sub)
            self._sync_status()
        elif sub.internal:
            for k, v in list(self._status.items()):
                if v is sub:
                    del self._status[k]
        else:
            return
        others = list(self._subs) + list(self._status.values())
        still = set().union(*[o.server for o in others]) if others else set()
        drop = sorted(sub.server - still)
        sub.server.clear()
        if drop and self._open():
            self._send({"op": "unsubscribe", "channels": drop, "id": self._take_id()})
        for ch in list(self._pos):
            if not any(o.covers(ch) for o in others):
                self._pos.pop(ch, None)
                self._trades.pop(ch, None)
                self._resync.discard(ch)

    def _sync_status(self):
        want = set()
        if self.gap_status:
            for s in self._subs:
                for p in s.channels:
                    seg = p.split(".")
                    if len(seg) == 3 and seg[0] in ("trade", "*"):
                        want.add("status." + seg[1])
        want = {w for w in want if not any(s.covers(w) for s in self._subs)}
        for name, s in list(self._status.items()):
            if name not in want:
                s.close()
        for name in want:
            if name not in self._status:
                s = Subscription(self, [name], False, internal=True)
                self._status[name] = s
                if self._open():
                    self._send_subscribe(s, set())

    # ---- incoming -------------------------------------------------------------------
    def _on_frame(self, text):
        try:
            m = json.loads(text)
        except ValueError:
            self._error("bad_json", "server sent a frame that is not JSON")
            return
        if not isinstance(m, dict):
            return
        if isinstance(m.get("channel"), str) and isinstance(m.get("seq"), int):
            self._on_data(m)
            return
        p = self._pending.pop(m.get("id"), None) if isinstance(m.get("id"), int) else None
        t = m.get("type")
        if t == "subscribed":
            self._on_subscribed(m, p)
        elif t == "reconnect":
            self._hint = {"reason": m.get("reason"), "after_ms": m.get("after_ms") or 0}
            self.stats["hints"] += 1
        elif t == "ping":
            self._send({"op": "pong", "id": m.get("id")})
        elif t == "error":
            chans = p[1].channels if p and p[1] is not None else None
            if p and p[3] is not None and not p[3].done():
                p[3].set_exception(RuntimeError("%s: %s" % (m.get("code"), m.get("message"))))
            self._error(str(m.get("code")), str(m.get("message", "")), channels=chans)
            if p and p[0] == "resume":
                self._resumed(None)
        elif p and p[3] is not None and not p[3].done():
            p[3].set_result(m)

    def _on_subscribed(self, m, p):
        since = p[2] if p else None
        rec = m.get("recovered") if isinstance(m.get("recovered"), dict) else None
        self._attempt = 0
        for ch, ok in (rec or {}).items():
            if ok is False:
                self._resync.add(ch)
                after = since.get(ch) if since else None
                after = Position(after["epoch"], after["seq"]) if after else self._pos.get(ch)
                self._gap(Gap(ch, "not_recovered", after=after))
        ev = {"channels": m.get("channels") or [], "since": since, "recovered": rec}
        self._emit("subscribed", ev)
        if p and p[0] == "resume":
            self._resumed(ev)

    def _seen_trade(self, ch, tid):
        ids, order = self._trades.setdefault(ch, (set(), collections.deque()))
        if tid in ids:
            return True
        ids.add(tid)
        order.append(tid)
        if len(order) > self.dedup_window:
            ids.discard(order.popleft())
        return False

    def _on_data(self, m):
        ch = m["channel"]
        app = [s for s in self._subs if s.covers(ch)]
        if not app and not any(s.covers(ch) for s in self._status.values()):
            return  # in flight when unsubscribed
        epoch = m.get("epoch") if isinstance(m.get("epoch"), int) else 0
        seq = m["seq"]
        last = self._pos.get(ch)
        if last is not None and epoch < last.epoch:
            self.stats["stale"] += 1
            return
        if last is not None and epoch == last.epoch and seq <= last.seq:
            self.stats["duplicates"] += 1
            return
        resync = ch in self._resync
        self._resync.discard(ch)
        self._pos[ch] = Position(epoch, seq)
        if m.get("type") == "trade" and m.get("trade_id") is not None and self._seen_trade(ch, str(m["trade_id"])):
            self.stats["duplicates"] += 1
            return
        if (last is not None and not resync and m.get("type") == "trade" and epoch == last.epoch
                and seq > last.seq + 1):
            self._gap(Gap(ch, "seq", after=last, before=Position(epoch, seq), missing=seq - last.seq - 1))
        if app:
            self.stats["messages"] += 1
        g = m.get("gap")
        if m.get("type") == "status" and m.get("state") == "gap" and isinstance(g, dict) \
                and isinstance(g.get("channel"), str):
            self._gap(Gap(g["channel"], "exchange", exchange=g))
        for s in app:
            s._put(m)

    def _gap(self, gap):
        mine = [s for s in self._subs if s.covers(gap.channel)]
        if not mine:
            return
        self.stats["gaps"] += gap.missing or 1
        self._emit("gap", gap)
        for s in mine:
            if s.gaps:
                s._put(gap)

    def _set_state(self, st):
        if st != self.state:
            self.state = st
            self._emit("state", st)

    def _error(self, code, message, cause=None, channels=None):
        log.debug("exchange client error %s: %s", code, message)
        self._emit("error", {"code": code, "message": message, "cause": cause, "channels": channels})

    def _emit(self, event, value):
        for cb in list(self.callbacks[event]):
            try:
                cb(value)
            except Exception:  # noqa: BLE001 - a listener's bug must not break the client
                log.exception("exchange client %s callback", event)
