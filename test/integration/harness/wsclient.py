"""A real WebSocket client (python3-websockets) running in a background
thread, for tests that need to watch a stream while doing other things.

    c = WsClient(svc.ws_url, subscribe=["trade.*.*"]).start()
    c.wait_for(lambda msgs: len(c.data()) > 10, timeout=10, what="trades")
    c.close()
"""
import asyncio
import json
import threading
import time

import websockets

from harness import util

__all__ = ["WsClient", "seq_problems", "messages_until"]


async def messages_until(ws, stop, poll_s=0.2):
    """The raw messages of ws until stop (a threading.Event) is set, which is
    checked at least every poll_s."""
    while not stop.is_set():
        try:
            yield await asyncio.wait_for(ws.recv(), timeout=poll_s)
        except asyncio.TimeoutError:
            continue


def seq_problems(msgs, check_gaps=True):
    """Per (channel, epoch) of data messages: duplicates, reorders and
    (optionally) gaps in seq, as a list of readable lines."""
    last, problems = {}, []
    for m in msgs:
        key = (m["channel"], m["epoch"])
        prev = last.get(key)
        if prev is not None:
            if m["seq"] == prev:
                problems.append("duplicate %s seq %d" % (key, m["seq"]))
            elif m["seq"] < prev:
                problems.append("reordered %s seq %d after %d" % (key, m["seq"], prev))
            elif check_gaps and m["seq"] != prev + 1:
                problems.append("gap %s %d -> %d" % (key, prev, m["seq"]))
        if prev is None or m["seq"] > prev:
            last[key] = m["seq"]
    return problems


class WsClient:
    def __init__(self, url, subscribe=None, since=None, reconnect=False, name="client"):
        self.url = url
        self.subscribe = list(subscribe or [])
        self.since = since
        self.reconnect = reconnect
        self.name = name
        self.frames = []          # (recv_time, parsed json or raw text)
        self.closes = []          # (code, reason)
        self.connects = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._loop = None
        self._ws = None
        self._thread = None
        self.last_seq = {}        # channel -> {"epoch", "seq"} last seen (the resume position)

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        util.wait_until(lambda: self.connects > 0 or self.closes, timeout=10,
                        what="%s connected to %s" % (self.name, self.url))
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self):
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, max_size=None, open_timeout=5,
                                              ping_interval=None) as ws:
                    self._ws = ws
                    self.connects += 1
                    if self.subscribe:
                        req = {"op": "subscribe", "channels": self.subscribe, "id": self.connects}
                        since = dict(self.since or {})
                        if self.reconnect and self.last_seq:
                            since.update(self.last_seq)
                        if since:
                            req["since"] = since
                        await ws.send(json.dumps(req))
                    async for raw in messages_until(ws, self._stop):
                        try:
                            msg = json.loads(raw)
                        except (ValueError, TypeError):
                            msg = raw
                        with self.lock:
                            self.frames.append((time.time(), msg))
                            if isinstance(msg, dict) and "seq" in msg and "channel" in msg:
                                self.last_seq[msg["channel"]] = {"epoch": msg.get("epoch", 0),
                                                                 "seq": msg["seq"]}
            except websockets.ConnectionClosed as e:
                self.closes.append((e.code, e.reason))
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                self.closes.append((None, repr(e)))
            finally:
                self._ws = None
            if not self.reconnect:
                return
            await asyncio.sleep(0.1)

    def send(self, obj):
        ws = self._ws
        assert ws is not None, "not connected"
        fut = asyncio.run_coroutine_threadsafe(ws.send(json.dumps(obj) if not isinstance(obj, str) else obj),
                                               self._loop)
        fut.result(timeout=5)

    def all(self):
        with self.lock:
            return [m for _, m in self.frames]

    def data(self, channel_prefix=""):
        """Data messages (those with a seq), optionally filtered by channel prefix."""
        return [m for m in self.all() if isinstance(m, dict) and "seq" in m and "channel" in m
                and m["channel"].startswith(channel_prefix)]

    def of_type(self, t):
        return [m for m in self.all() if isinstance(m, dict) and m.get("type") == t]

    def wait_for(self, pred, timeout=10.0, what="messages"):
        return util.wait_until(lambda: pred(self), timeout=timeout, what="%s: %s" % (self.name, what))

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
