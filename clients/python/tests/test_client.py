"""Unit tests of exchange_client against a small fake server (websockets):
    /usr/bin/python3 -m pytest -q clients/python/tests
No install needed: the package directory is put on sys.path."""
import asyncio
import json
import os
import sys
import time

import pytest
import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from exchange_client import PROTOCOL_VERSION, ExchangeClient, Gap, __version__, channel_matches  # noqa: E402

CH = "trade.x.A-B"
FAST = dict(backoff_min=0.01, backoff_max=0.05, gap_status=False)


class Fake:
    """A fake exchange-service endpoint remembering every request per connection."""

    def __init__(self):
        self.conns = []
        self.on_request = None

    async def start(self):
        self.server = await websockets.serve(self.handle, "127.0.0.1", 0)
        self.url = "ws://127.0.0.1:%d/ws/exchange" % self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, ws, path=None):
        conn = {"ws": ws, "path": path if path is not None else ws.path, "reqs": []}
        self.conns.append(conn)
        try:
            async for raw in ws:
                r = json.loads(raw)
                conn["reqs"].append(r)
                if self.on_request and await self.on_request(conn, r):
                    continue
                if r.get("op") == "subscribe":
                    rep = {"type": "subscribed", "channels": r["channels"], "id": r["id"]}
                    if r.get("since"):
                        rep["recovered"] = {k: True for k in r["since"]}
                    await ws.send(json.dumps(rep))
                elif r.get("op") == "list":
                    await ws.send(json.dumps({"type": "list", "channels": [CH], "id": r["id"]}))
        except websockets.ConnectionClosed:
            pass

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def until(what, fn, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < end, "timed out waiting for " + what
        await asyncio.sleep(0.01)


def trade(epoch, seq, tid=None, ch=CH):
    return json.dumps({"channel": ch, "type": "trade", "epoch": epoch, "seq": seq,
                       "trade_id": str(seq if tid is None else tid)})


def subscribed(fake, n=0, count=1):
    return lambda: len(fake.conns) > n and len([r for r in fake.conns[n]["reqs"] if r["op"] == "subscribe"]) >= count \
        and fake.conns[n]


def test_version():
    assert PROTOCOL_VERSION == 1 and int(__version__.split(".")[0]) == PROTOCOL_VERSION
    assert channel_matches("trade.*.X-Y", "trade.a.X-Y") and not channel_matches("trade.*", "trade.a.X-Y")


def with_fake(body, **kw):
    """Run body(fake, client): a started Fake and a client of it (FAST
    settings, kw over them); both are closed after it."""
    async def main():
        fake = await Fake().start()
        c = ExchangeClient(fake.url, **dict(FAST, **kw))
        try:
            await body(fake, c)
        finally:
            await c.close()
            await fake.stop()
    asyncio.run(main())


def test_order_duplicates_epochs_and_resume():
    async def body(fake, c):
        sub = c.subscribe([CH])
        got = []

        async def read():
            async for m in sub:
                got.append("%d:%d:%s" % (m["epoch"], m["seq"], m["trade_id"]))
        reader = asyncio.create_task(read())
        conn = await until("subscribe", subscribed(fake))
        assert "since" not in conn["reqs"][0]
        for f in (trade(5, 1), trade(5, 2), trade(5, 2), trade(4, 9, "x"), trade(5, 3), trade(6, 1, 3),
                  trade(6, 2, 4)):
            await conn["ws"].send(f)
        await until("4 trades", lambda: len(got) == 4)
        await conn["ws"].close(1001, "drain")
        conn2 = await until("resubscribe", subscribed(fake, 1))
        assert conn2["reqs"][0]["since"] == {CH: {"epoch": 6, "seq": 2}}
        await conn2["ws"].send(trade(6, 2, 4))
        await conn2["ws"].send(trade(6, 3, 5))
        await until("5 trades", lambda: len(got) == 5)
        assert got == ["5:1:1", "5:2:2", "5:3:3", "6:2:4", "6:3:5"]
        assert c.stats["duplicates"] + c.stats["stale"] == 4
        sub.close()
        await reader
    with_fake(body)


def test_gaps_and_hint_and_token():
    async def main():
        a, b = await Fake().start(), await Fake().start()
        asked = []

        def get_token(reason, url):
            asked.append(reason)
            return "t%d" % len(asked)
        c = ExchangeClient([a.url, b.url], get_token=get_token, **dict(FAST, gap_status=True))
        sub = c.subscribe([CH], gaps=True)
        items = []

        async def read():
            async for m in sub:
                items.append(m)
        reader = asyncio.create_task(read())
        conn = await until("subscribes", subscribed(a, 0, 2))
        assert sorted(r["channels"] for r in conn["reqs"]) == [["status.x"], [CH]]
        assert "token=t1" in conn["path"]
        await conn["ws"].send(trade(1, 1))
        await conn["ws"].send(trade(1, 4))
        await conn["ws"].send(json.dumps({"channel": "status.x", "type": "status", "epoch": 1, "seq": 1,
                                          "state": "gap", "gap": {"channel": CH, "from_ts": 1, "to_ts": 2}}))
        await until("2 gaps", lambda: len([i for i in items if isinstance(i, Gap)]) == 2)
        gaps = [i for i in items if isinstance(i, Gap)]
        assert gaps[0].as_dict() == {"type": "gap", "channel": CH, "reason": "seq", "after": {"epoch": 1, "seq": 1},
                                     "before": {"epoch": 1, "seq": 4}, "missing": 2}
        assert gaps[1].reason == "exchange" and gaps[1].exchange["to_ts"] == 2
        assert all(not isinstance(i, dict) or i["channel"] == CH for i in items)

        async def not_recovered(conn, r):
            if r.get("op") == "subscribe" and (r.get("since") or {}).get(CH):
                await conn["ws"].send(json.dumps({"type": "subscribed", "channels": r["channels"], "id": r["id"],
                                                  "recovered": {CH: False}}))
                await conn["ws"].send(trade(1, 9))
                return True
            return False
        b.on_request = not_recovered
        await conn["ws"].send(json.dumps({"type": "reconnect", "reason": "drain", "after_ms": 300}))
        t0 = time.monotonic()
        await conn["ws"].close(1001, "drain")
        await until("b", subscribed(b, 0))
        assert time.monotonic() - t0 >= 0.28
        await until("trade 9", lambda: any(isinstance(i, dict) and i["seq"] == 9 for i in items))
        gaps = [i for i in items if isinstance(i, Gap)]
        assert [g.reason for g in gaps] == ["seq", "exchange", "not_recovered"]
        assert gaps[2].after == (1, 4)
        await b.conns[0]["ws"].close(4001, "token expired")
        await until("back on a", lambda: len(a.conns) == 2)
        assert asked == ["connect", "connect", "auth"]
        sub.close()
        await reader
        await c.close()
        await a.stop()
        await b.stop()
    asyncio.run(main())


def test_silent_connection_is_dropped():
    async def body(fake, c):
        c.subscribe([CH])
        conn = await until("subscribe", subscribed(fake))
        conn["ws"].transport.pause_reading()  # reads nothing: no pong
        t0 = time.monotonic()
        await until("reconnected", lambda: len(fake.conns) == 2)
        assert time.monotonic() - t0 < 3
        conn["ws"].transport.abort()
    with_fake(body, heartbeat=0.1, heartbeat_timeout=0.2)


def test_request():
    async def body(fake, c):
        c.subscribe([CH], callback=lambda m: None)
        await until("open", lambda: c.state == "open")
        assert (await c.request({"op": "list"}))["channels"] == [CH]
    pytest.importorskip("websockets")
    with_fake(body)
