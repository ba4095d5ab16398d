"""Tests of the exchange simulator (test/sim/sim.py) with real WebSocket clients.

Run: /usr/bin/python3 -m pytest test/integration/test_sim.py
"""

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM = os.path.join(ROOT, "test", "sim", "sim.py")
FREE_PORTS = ["--control-port", "0", "--upbit-port", "0", "--bithumb-port", "0",
              "--binance-port", "0", "--coinbase-port", "0"]


# ------------------------------------------------------------------ harness

class SimProc:
    def __init__(self, *extra, record=None):
        args = [sys.executable, SIM] + FREE_PORTS + list(extra)
        if record:
            args += ["--record", record]
        self.record = record
        # stderr goes to a file: a pipe nobody reads could fill up and block the sim
        self.errlog = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errlog, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            self.errlog.seek(0)
            raise RuntimeError(f"simulator did not start: {self.errlog.read()}")
        self.info = json.loads(line)
        self.scheme = "wss" if self.info["tls"] else "ws"

    def url(self, exchange, path):
        return f"{self.scheme}://127.0.0.1:{self.info[exchange]}{path}"

    def ctl(self, path, method="POST", **params):
        q = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.info['control']}{path}" + (f"?{q}" if q else "")
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def status(self):
        return self.ctl("/status", method="GET")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.errlog.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    rec = str(tmp_path_factory.mktemp("sim") / "record.jsonl")
    s = SimProc("--rate", "20", record=rec)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fast_sim():
    """Short keep-alive figures for the timer tests; no data unless asked."""
    s = SimProc("--rate", "0", "--idle-s", "0.6", "--binance-ping-s", "0.3",
                "--binance-pong-timeout-s", "0.8", "--coinbase-subscribe-s", "0.6",
                "--coinbase-idle-s", "0.6", "--coinbase-heartbeat-s", "0.2")
    yield s
    s.stop()


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_until(cond, timeout=5.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


async def await_until(cond, timeout=5.0, interval=0.05, what="condition"):
    """Like wait_until but keeps this event loop (and its clients) running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await asyncio.to_thread(cond)
        if v:
            return v
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


async def recv_until(ws, pred, timeout=5.0):
    """Receive until pred(msg) is true; returns (matching msg, all received)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching message within {timeout}s; got {len(got)}: {got[-3:]}")
        msg = await asyncio.wait_for(ws.recv(), left)
        got.append(msg)
        if pred(msg):
            return msg, got


async def wait_closed(ws, timeout=5.0, exc=False):
    """Drain until the connection closes; returns the close code received
    (1006: no close frame) or, with exc=True, the ConnectionClosed."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open")
            await asyncio.wait_for(ws.recv(), left)
    except websockets.ConnectionClosed as e:
        return e if exc else e.code


def jl(msg):
    return json.loads(msg.decode() if isinstance(msg, bytes) else msg)


def connect(url, **kw):
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", None)
    return websockets.connect(url, **kw)


async def refused_status(url):
    """The HTTP status that refuses a WebSocket upgrade to url."""
    with pytest.raises(websockets.InvalidStatusCode) as ei:
        async with connect(url):
            pass
    return ei.value.status_code


UPBIT_REQ = [{"ticket": "test-1"},
             {"type": "ticker", "codes": ["KRW-BTC"]},
             {"type": "trade", "codes": ["KRW-BTC"]},
             {"type": "orderbook", "codes": ["KRW-BTC.5"]},
             {"format": "DEFAULT"}]

TRADE_KEYS = {"type", "code", "trade_price", "trade_volume", "ask_bid", "prev_closing_price",
              "change", "change_price", "trade_date", "trade_time", "trade_timestamp",
              "timestamp", "sequential_id", "best_ask_price", "best_ask_size",
              "best_bid_price", "best_bid_size", "stream_type"}
TICKER_KEYS = {"type", "code", "opening_price", "high_price", "low_price", "trade_price",
               "prev_closing_price", "change", "signed_change_rate", "acc_trade_volume_24h",
               "acc_trade_price_24h", "trade_timestamp", "timestamp", "stream_type",
               "acc_trade_volume", "acc_trade_price", "highest_52_week_price",
               "market_state", "market_warning"}
OB_KEYS = {"type", "code", "timestamp", "total_ask_size", "total_bid_size", "orderbook_units",
           "level", "stream_type"}


# ------------------------------------------------------------------ startup

def test_start_line_and_status(sim):
    for k in ("control", "upbit", "bithumb", "binance", "coinbase"):
        assert isinstance(sim.info[k], int) and sim.info[k] > 0
    assert sim.info["tls"] is False
    st = sim.status()
    assert set(st["connections"]) == {"upbit", "bithumb", "binance", "coinbase"}
    assert st["exchanges"]["upbit"]["markets"] == ["KRW-BTC", "KRW-ETH"]


# ------------------------------------------------------------------ Upbit / Bithumb

def test_upbit_default_format(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send(json.dumps(UPBIT_REQ))
            seen = {}
            deadline = time.monotonic() + 5
            while len(seen) < 6 and time.monotonic() < deadline:
                raw = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(raw, bytes), "Upbit data must be BINARY frames"
                m = jl(raw)
                seen.setdefault((m["type"], m["stream_type"]), m)
            assert len(seen) == 6, seen.keys()
            t = seen[("trade", "REALTIME")]
            assert TRADE_KEYS <= set(t)
            assert t["ask_bid"] in ("BID", "ASK")
            assert t["code"] == "KRW-BTC"
            assert isinstance(t["trade_price"], (int, float)) and t["trade_price"] > 1_000_000
            assert isinstance(t["trade_volume"], float)
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", t["trade_date"])
            tk = seen[("ticker", "REALTIME")]
            assert TICKER_KEYS <= set(tk)
            assert tk["change"] in ("RISE", "FALL", "EVEN")
            ob = seen[("orderbook", "SNAPSHOT")]
            assert OB_KEYS <= set(ob)
            assert len(ob["orderbook_units"]) == 5
            u = ob["orderbook_units"]
            assert set(u[0]) == {"ask_price", "bid_price", "ask_size", "bid_size"}
            assert u[0]["bid_price"] < u[0]["ask_price"]
            assert all(u[i]["ask_price"] < u[i + 1]["ask_price"] for i in range(4))
            assert all(u[i]["bid_price"] > u[i + 1]["bid_price"] for i in range(4))
            # snapshots come before realtime messages of the same type
            assert seen[("trade", "SNAPSHOT")]["trade_timestamp"] <= t["trade_timestamp"]
    run(go())


def test_upbit_numbers_are_json_numbers_as_sent(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send(json.dumps([{"ticket": "n"}, {"type": "ticker", "codes": ["KRW-BTC"]}]))
            raw = await ws.recv()
            text = raw.decode()
            # integer KRW prices as bare numbers, some values as 8-decimal literals
            assert re.search(r'"trade_price":\d+[,}]', text), text
            assert re.search(r'"prev_closing_price":\d+\.\d{8}[,}]', text), text
    run(go())


def test_upbit_simple_format_and_realtime_only(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send(json.dumps([{"format": "SIMPLE"}, {"ticket": "s"},
                                      {"type": "trade", "codes": ["KRW-ETH"], "is_only_realtime": True},
                                      {"type": "orderbook", "codes": ["KRW-ETH"], "isOnlyRealtime": True}]))
            kinds = set()
            for _ in range(8):
                raw = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(raw, bytes)
                m = jl(raw)
                assert m["st"] == "REALTIME"
                assert m["cd"] == "KRW-ETH"
                kinds.add(m["ty"])
                if m["ty"] == "trade":
                    assert {"ty", "cd", "tp", "tv", "ab", "ttms", "tms", "sid", "st"} <= set(m)
                    assert "trade_price" not in m
                else:
                    assert {"obu", "tas", "tbs", "tms"} <= set(m)
                    assert len(m["obu"]) == 30
                    assert set(m["obu"][0]) == {"ap", "bp", "as", "bs"}
            assert kinds == {"trade", "orderbook"}
    run(go())


def test_bithumb_variants_and_snapshot_only(sim):
    async def go():
        async with connect(sim.url("bithumb", "/websocket/v1")) as ws:
            await ws.send(json.dumps([{"ticket": "b"},
                                      {"type": "trade", "codes": ["KRW-BTC"], "isOnlySanpshot": True},
                                      {"type": "orderbook", "codes": ["KRW-BTC.1"], "isOnlySnapshot": True},
                                      {"type": "ticker", "codes": ["KRW-BTC"], "is_only_snapshot": True}]))
            got = {}
            for _ in range(3):
                m = jl(await asyncio.wait_for(ws.recv(), 5))
                assert m["stream_type"] == "SNAPSHOT"
                got[m["type"]] = m
            assert isinstance(got["trade"]["sequential_id"], str)
            assert re.fullmatch(r"\d{16}", got["orderbook"]["timestamp"])
            assert len(got["orderbook"]["orderbook_units"]) == 1
            assert got["ticker"]["delisting_date"] == ""
            # snapshot only: nothing more arrives (rate is 20/s)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.4)
    run(go())


def test_upbit_ping_status(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send("PING")
            assert jl(await asyncio.wait_for(ws.recv(), 5)) == {"status": "UP"}
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)
    run(go())


@pytest.mark.parametrize("exchange,req,name", [
    ("upbit", "not json", "WRONG_FORMAT"),
    ("upbit", json.dumps({"ticket": "x"}), "WRONG_FORMAT"),
    ("upbit", json.dumps([{"type": "trade", "codes": ["KRW-BTC"]}]), "NO_TICKET"),
    ("upbit", json.dumps([{"ticket": "x"}]), "NO_TYPE"),
    ("upbit", json.dumps([{"ticket": "x"}, {"type": "trade"}]), "NO_CODES"),
    ("upbit", json.dumps([{"ticket": "x"}, {"type": "trade", "codes": []}]), "NO_CODES"),
    ("upbit", json.dumps([{"ticket": "x"}, {"type": "orderbook", "codes": ["KRW-BTC.7"]}]), "INVALID_PARAM"),
    ("upbit", json.dumps([{"ticket": "x"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"format": "XML"}]), "WRONG_FORMAT"),
    ("bithumb", json.dumps([{"ticket": "x"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"format": "JSON_LIST"}]), "INVALID_PARAM"),
    ("bithumb", json.dumps([{"ticket": "x"}]), "NO_TYPE"),
])
def test_upbit_error_shapes(sim, exchange, req, name):
    async def go():
        async with connect(sim.url(exchange, "/websocket/v1")) as ws:
            await ws.send(req)
            m = jl(await asyncio.wait_for(ws.recv(), 5))
            assert set(m) == {"error"}
            assert m["error"]["name"] == name
            assert isinstance(m["error"]["message"], str)
            # the connection stays usable
            await ws.send("PING")
            assert jl(await asyncio.wait_for(ws.recv(), 5)) == {"status": "UP"}
    run(go())


def test_upbit_wrong_path_is_404(sim):
    assert run(refused_status(sim.url("upbit", "/nope"))) == 404


def test_upbit_idle_close(fast_sim):
    async def go():
        async with connect(fast_sim.url("upbit", "/websocket/v1")) as ws:
            t0 = time.monotonic()
            code = await wait_closed(ws, 5)
            assert code == 1000
            assert time.monotonic() - t0 >= 0.5
    run(go())


# ------------------------------------------------------------------ Binance

def test_binance_combined_stream(sim):
    async def go():
        url = sim.url("binance", "/stream?streams=btcusdt@trade/btcusdt@ticker/btcusdt@depth20@100ms")
        async with connect(url) as ws:
            seen = {}
            deadline = time.monotonic() + 5
            while len(seen) < 3 and time.monotonic() < deadline:
                raw = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(raw, str), "Binance data must be TEXT frames"
                m = jl(raw)
                assert set(m) == {"stream", "data"}
                seen[m["stream"]] = m["data"]
            tr = seen["btcusdt@trade"]
            assert tr["e"] == "trade" and tr["s"] == "BTCUSDT"
            assert isinstance(tr["p"], str) and isinstance(tr["q"], str)
            assert isinstance(tr["m"], bool) and isinstance(tr["t"], int)
            float(tr["p"])
            tk = seen["btcusdt@ticker"]
            assert tk["e"] == "24hrTicker"
            for k in ("p", "P", "c", "Q", "b", "B", "a", "A", "o", "h", "l", "v", "q"):
                assert isinstance(tk[k], str), k
            assert re.fullmatch(r"-?\d+\.\d+", tk["P"])
            dp = seen["btcusdt@depth20@100ms"]
            assert set(dp) == {"lastUpdateId", "bids", "asks"}
            assert len(dp["bids"]) == 20 and len(dp["asks"]) == 20
            assert float(dp["bids"][0][0]) < float(dp["asks"][0][0])

            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@depth5"], "id": 1}))
            await recv_until(ws, lambda r: jl(r) == {"result": None, "id": 1})
            m, _ = await recv_until(ws, lambda r: jl(r).get("stream") == "ethusdt@depth5")
            assert len(jl(m)["data"]["bids"]) == 5
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            m, _ = await recv_until(ws, lambda r: jl(r).get("id") == 2)
            assert sorted(jl(m)["result"]) == sorted(["btcusdt@trade", "btcusdt@ticker",
                                                      "btcusdt@depth20@100ms", "ethusdt@depth5"])
            await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@depth5"], "id": 3}))
            await recv_until(ws, lambda r: jl(r) == {"result": None, "id": 3})
    run(go())


def test_binance_trade_sides_both_present(sim):
    async def go():
        async with connect(sim.url("binance", "/ws/ethusdt@trade")) as ws:
            sides = set()
            deadline = time.monotonic() + 5
            while len(sides) < 2 and time.monotonic() < deadline:
                m = jl(await asyncio.wait_for(ws.recv(), 5))
                assert m["e"] == "trade"      # raw stream: no wrapper
                sides.add(m["m"])
            assert sides == {True, False}
    run(go())


def test_binance_errors(sim):
    async def go():
        async with connect(sim.url("binance", "/stream")) as ws:
            await ws.send(json.dumps({"method": "FROB", "params": [], "id": 7}))
            m = jl(await asyncio.wait_for(ws.recv(), 5))
            assert m["id"] == 7 and m["error"]["code"] == 2
            assert m["error"]["msg"].startswith("Invalid request")
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["BTCUSDT@trade"], "id": 8}))
            m = jl(await asyncio.wait_for(ws.recv(), 5))
            assert m["id"] == 8 and m["error"]["code"] == 2
            await ws.send("{not json")
            m = jl(await asyncio.wait_for(ws.recv(), 5))
            assert m["error"]["code"] == 3 and m["id"] is None
    run(go())


def test_binance_bad_stream_in_url(sim):
    assert run(refused_status(sim.url("binance", "/stream?streams=btcusdt@bogus"))) == 400


def test_binance_incoming_rate_limit(sim):
    async def go():
        async with connect(sim.url("binance", "/stream")) as ws:
            for i in range(8):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            code = await wait_closed(ws, 5)
            assert code == 1008
    run(go())


def test_binance_server_ping_and_pong_deadline(fast_sim):
    async def go():
        # an answering client stays connected across several ping periods
        async with connect(fast_sim.url("binance", "/stream")) as good:
            bad = await connect(fast_sim.url("binance", "/stream"))
            try:
                bad.transport.pause_reading()     # never sees the pings, never pongs
                await await_until(
                    lambda: fast_sim.status()["exchanges"]["binance"].get("pong_timeouts", 0) >= 1,
                    5, what="pong timeout")
                pong = await good.ping()   # still alive
                await asyncio.wait_for(pong, 2)
                assert good.open
            finally:
                bad.transport.abort()
    run(go())


# ------------------------------------------------------------------ Coinbase

TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def test_coinbase_subscribe_l2_and_sequence(sim):
    async def go():
        async with connect(sim.url("coinbase", "/")) as ws:
            for ch in ("level2", "market_trades", "ticker"):
                await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": ch}))
            msgs = []
            kinds = set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(msgs) < 40:
                raw = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(raw, str)
                m = jl(raw)
                msgs.append(m)
                if m["channel"] != "subscriptions":
                    kinds.add((m["channel"], m["events"][0]["type"]))
            for m in msgs:
                assert m["client_id"] == ""
                assert TS_RE.fullmatch(m["timestamp"]), m["timestamp"]
            seqs = [m["sequence_num"] for m in msgs]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert seqs[0] == 0
            assert msgs[0]["channel"] == "subscriptions"
            assert msgs[0]["events"][0]["subscriptions"] == {"level2": ["BTC-USD"]}
            l2 = [m for m in msgs if m["channel"] == "l2_data"]
            assert l2[0]["events"][0]["type"] == "snapshot"
            assert any(m["events"][0]["type"] == "update" for m in l2[1:])
            # apply updates to the snapshot: a consistent, uncrossed book
            book = {"bid": {}, "offer": {}}
            for m in l2:
                for ev in m["events"]:
                    assert ev["product_id"] == "BTC-USD"
                    for u in ev["updates"]:
                        assert u["side"] in ("bid", "offer")
                        if u["new_quantity"] == "0":
                            book[u["side"]].pop(u["price_level"], None)
                        else:
                            book[u["side"]][u["price_level"]] = u["new_quantity"]
            assert max(map(float, book["bid"])) < min(map(float, book["offer"]))
            assert ("ticker", "snapshot") in kinds and ("ticker", "update") in kinds
            assert ("market_trades", "update") in kinds
            tr = next(m for m in msgs if m["channel"] == "market_trades")["events"][0]["trades"][0]
            assert tr["side"] in ("BUY", "SELL") and isinstance(tr["price"], str)
            tk = next(m for m in msgs if m["channel"] == "ticker")["events"][0]["tickers"][0]
            assert {"type", "product_id", "price", "volume_24_h", "low_24_h", "high_24_h",
                    "price_percent_chg_24_h", "best_bid", "best_bid_quantity", "best_ask",
                    "best_ask_quantity"} <= set(tk)
    run(go())


def test_coinbase_errors(sim):
    async def go():
        async with connect(sim.url("coinbase", "/")) as ws:
            for bad in ("nope", json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "bogus"}),
                        json.dumps({"type": "subscribe", "channel": "level2"}),
                        json.dumps({"type": "subscribe", "product_ids": ["NOPE-USD"], "channel": "ticker"})):
                await ws.send(bad)
                m = jl(await asyncio.wait_for(ws.recv(), 5))
                assert m["type"] == "error" and isinstance(m["message"], str), m
    run(go())


def test_coinbase_subscribe_deadline(fast_sim):
    async def go():
        async with connect(fast_sim.url("coinbase", "/")) as ws:
            t0 = time.monotonic()
            await wait_closed(ws, 5)
            assert time.monotonic() - t0 >= 0.5
    run(go())


def test_coinbase_quiet_close_and_heartbeats(fast_sim):
    async def go():
        # fast_sim has --rate 0: ticker subscription stays quiet and is closed
        async with connect(fast_sim.url("coinbase", "/")) as quiet, \
                connect(fast_sim.url("coinbase", "/")) as hb:
            await quiet.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "ticker"}))
            await hb.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
            await wait_closed(quiet, 5)
            # the heartbeats subscriber kept receiving and is still open
            m, got = await recv_until(hb, lambda r: jl(r)["channel"] == "heartbeats" and
                                      jl(r)["events"][0]["heartbeat_counter"] >= 1)
            assert hb.open
            seqs = [jl(r)["sequence_num"] for r in got]
            assert seqs == list(range(len(seqs)))
    run(go())


# ------------------------------------------------------------------ control faults

def test_refuse_gives_429(sim):
    sim.ctl("/refuse", exchange="bithumb", count=2)

    async def go():
        for _ in range(2):
            assert await refused_status(sim.url("bithumb", "/websocket/v1")) == 429
        async with connect(sim.url("bithumb", "/websocket/v1")) as ws:
            await ws.send("PING")
            assert jl(await asyncio.wait_for(ws.recv(), 5)) == {"status": "UP"}
    run(go())


def test_silence(sim):
    async def go():
        async with connect(sim.url("binance", "/ws/btcusdt@trade")) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            sim.ctl("/silence", exchange="binance", ms=800)
            t0 = time.monotonic()
            # frames already in flight may still arrive right after the call
            first_after = None
            while True:
                await asyncio.wait_for(ws.recv(), 5)
                now = time.monotonic()
                if now - t0 > 0.15:
                    first_after = now
                    break
            assert first_after - t0 >= 0.7, f"data during silence at {first_after - t0:.2f}s"
            # a ping is not answered while silent
            sim.ctl("/silence", exchange="binance", ms=500)
            await asyncio.sleep(0.1)
            pong = await ws.ping()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pong), 0.2)
            # a ping after the silence is answered (and acknowledges the lost one)
            await asyncio.sleep(0.5)
            pong2 = await ws.ping()
            await asyncio.wait_for(pong2, 3)
            assert pong.done()
    run(go())


def test_drop_abort_and_close(sim):
    async def go():
        async with connect(sim.url("coinbase", "/")) as a, \
                connect(sim.url("upbit", "/websocket/v1")) as b:
            await a.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
            await asyncio.wait_for(a.recv(), 5)
            await b.send("PING")
            await asyncio.wait_for(b.recv(), 5)
            r = sim.ctl("/drop", exchange="coinbase")
            assert r["dropped"]["coinbase"] >= 1
            assert await wait_closed(a, 5) == 1006   # no close frame
            r = sim.ctl("/drop", exchange="upbit", mode="close")
            assert await wait_closed(b, 5) == 1001
    run(go())


def test_oversize_frame(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send("PING")
            await asyncio.wait_for(ws.recv(), 5)
            wait_until(lambda: any(c["exchange"] == "upbit" for c in sim.status()["conns"]))
            sim.ctl("/oversize", exchange="upbit", bytes=300000)
            m, _ = await recv_until(ws, lambda r: len(r) > 1000)
            assert isinstance(m, bytes) and len(m) == 300000
            assert jl(m)["type"] == "trade"
    run(go())


def valid_binance_trade(raw):
    try:
        m = json.loads(raw)
        d = m["data"]
        ok = (m["stream"] == "btcusdt@trade" and d["e"] == "trade" and d["s"] == "BTCUSDT"
              and isinstance(d["t"], int) and isinstance(d["m"], bool))
        for k in ("p", "q"):
            ok = ok and isinstance(d[k], str) and re.fullmatch(r"\d{1,12}\.\d{8}", d[k]) is not None
        return ok
    except (ValueError, KeyError, TypeError):
        return False


def test_malformed_messages(sim):
    async def go():
        async with connect(sim.url("binance", "/stream?streams=btcusdt@trade")) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            sim.ctl("/pause")
            try:
                r = sim.ctl("/malformed", exchange="binance", count=12)
                assert r["connections"]["binance"] >= 1
                # Trades sent before the pause may still be on their way:
                # they come first, then the 12 malformed ones in a row.
                raw = await asyncio.wait_for(ws.recv(), 5)
                while valid_binance_trade(raw):
                    raw = await asyncio.wait_for(ws.recv(), 5)
                bad = 1
                for _ in range(11):
                    raw = await asyncio.wait_for(ws.recv(), 5)
                    if not valid_binance_trade(raw):
                        bad += 1
                assert bad == 12
                # invalid UTF-8 in a TEXT frame: a conforming client fails with 1007
                sim.ctl("/malformed", exchange="binance", count=1, kind="non_utf8")
                e = await wait_closed(ws, 5, exc=True)
                assert e.sent is not None and e.sent.code == 1007
            finally:
                sim.ctl("/resume")
    run(go())


def test_malformed_unknown_kind_is_400(sim):
    with pytest.raises(urllib.error.HTTPError) as ei:
        sim.ctl("/malformed", exchange="binance", count=1, kind="no-such-kind")
    assert ei.value.code == 400


def test_coinbase_gap(sim):
    async def go():
        async with connect(sim.url("coinbase", "/")) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "ticker"}))
            m, _ = await recv_until(ws, lambda r: jl(r)["channel"] == "ticker")
            sim.ctl("/gap")
            last = jl(m)["sequence_num"]
            jumps = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not jumps:
                s = jl(await asyncio.wait_for(ws.recv(), 5))["sequence_num"]
                if last is not None and s != last + 1:
                    jumps.append(s - last)
                last = s
            assert jumps == [2]
    run(go())


def test_server_shutdown_notice(sim):
    async def go():
        async with connect(sim.url("binance", "/stream?streams=ethusdt@ticker")) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            r = sim.ctl("/shutdown-notice")
            assert r["connections"] >= 1
            m, _ = await recv_until(ws, lambda r: jl(r).get("e") == "serverShutdown")
            assert isinstance(jl(m)["E"], int)
    run(go())


def test_pause_resume_rate_and_record(sim):
    async def go():
        async with connect(sim.url("binance", "/ws/btcusdt@depth5")) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            sim.ctl("/pause")
            try:
                t0 = time.monotonic()
                # drain what was in flight, then nothing
                with pytest.raises(asyncio.TimeoutError):
                    while True:
                        await asyncio.wait_for(ws.recv(), 0.4)
                assert time.monotonic() - t0 < 3
                sim.ctl("/reset-record")
                assert sim.ctl("/record", method="GET")["total"] == 0
            finally:
                sim.ctl("/resume")
            sim.ctl("/rate", exchange="binance", value=50)
            try:
                received = []
                t0 = time.monotonic()
                while time.monotonic() - t0 < 0.5:
                    received.append(await asyncio.wait_for(ws.recv(), 5))
                assert len(received) >= 12   # 50/s, well above the 20/s default of this sim
            finally:
                sim.ctl("/rate", exchange="binance", value=20)
            # the record holds exactly the frames this client got, in order
            my_id = next(c["id"] for c in sim.status()["conns"] if c["path"] == "/ws/btcusdt@depth5")
            recs = []
            with open(sim.record) as f:
                for line in f:
                    r = json.loads(line)
                    if r["conn"] == my_id and r["exchange"] == "binance":
                        recs.append(r)
            frames = [r["frame"] for r in recs]
            assert frames[:len(received)] == received
            assert all(r["kind"] == "data" and r["type"] == "depth" for r in recs)
    run(go())


def test_status_counts(sim):
    async def go():
        async with connect(sim.url("upbit", "/websocket/v1")) as ws:
            await ws.send(json.dumps([{"ticket": "c"}, {"type": "trade", "codes": ["KRW-BTC"]}]))
            await asyncio.wait_for(ws.recv(), 5)
            st = wait_until(lambda: (lambda s: s if s["connections"]["upbit"] >= 1 else None)(sim.status()))
            assert st["sent"]["upbit"] >= 1
            mine = [c for c in st["conns"] if c["exchange"] == "upbit"]
            assert any("trade:KRW-BTC" in c["subscriptions"]["subs"] for c in mine)
    run(go())


# ------------------------------------------------------------------ TLS

def test_tls_generated_cert():
    s = SimProc("--tls", "--rate", "20")
    try:
        assert s.info["tls"] is True and os.path.exists(s.info["cert"])
        ctx = ssl.create_default_context(cafile=s.info["cert"])

        async def go():
            async with connect(s.url("upbit", "/websocket/v1"), ssl=ctx) as ws:
                await ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}]))
                assert jl(await asyncio.wait_for(ws.recv(), 5))["type"] == "trade"
            async with connect(s.url("binance", "/ws/btcusdt@trade"), ssl=ctx) as ws:
                assert jl(await asyncio.wait_for(ws.recv(), 5))["e"] == "trade"
            async with connect(s.url("coinbase", "/"), ssl=ctx) as ws:
                await ws.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
                assert jl(await asyncio.wait_for(ws.recv(), 5))["channel"] == "subscriptions"
            # without the CA the handshake fails verification
            with pytest.raises(ssl.SSLCertVerificationError):
                async with connect(s.url("bithumb", "/websocket/v1"), ssl=ssl.create_default_context()):
                    pass
        run(go())
    finally:
        s.stop()


def test_tls_wrong_hostname_cert():
    d = tempfile.mkdtemp(prefix="simtest-")
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=wrong.example", "-addext",
                    "subjectAltName=DNS:wrong.example"], check=True, capture_output=True)
    s = SimProc("--cert", cert, "--key", key, "--exchanges", "upbit")
    try:
        assert s.info["cert"] == os.path.abspath(cert)
        ctx = ssl.create_default_context(cafile=cert)

        async def go():
            with pytest.raises(ssl.SSLCertVerificationError) as ei:
                async with connect(s.url("upbit", "/websocket/v1"), ssl=ctx,
                                   server_hostname="localhost"):
                    pass
            assert "hostname" in str(ei.value).lower() or "match" in str(ei.value).lower()
        run(go())
    finally:
        s.stop()
        for f in (cert, key):
            os.unlink(f)
        os.rmdir(d)


# ------------------------------------------------------------------ REST recent trades

def rest_get(s, exchange, path):
    """(status, headers, parsed body) of a plain HTTP GET on an exchange port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.info[exchange]}{path}", timeout=5) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode()
        return e.code, dict(e.headers), body


@pytest.fixture(scope="module")
def rest_sim():
    s = SimProc("--rate", "40", "--rest-window", "30")
    yield s
    s.stop()


def made_ids(s, exchange, market):
    return s.ctl("/trades", method="GET", exchange=exchange, market=market)["trades"][exchange][market]


def test_rest_upbit_bithumb_ticks_newest_first_with_cursor(rest_sim):
    s = rest_sim
    wait_until(lambda: len(made_ids(s, "upbit", "KRW-BTC")) > 40, what="trades made")
    s.ctl("/pause")  # the cursor must stay within the window between the two requests
    try:
        _ticks_and_cursor(s)
    finally:
        s.ctl("/resume")


def _ticks_and_cursor(s):
    for ex in ("upbit", "bithumb"):
        st, hdr, page = rest_get(s, ex, "/v1/trades/ticks?market=KRW-BTC&count=10")
        assert st == 200 and len(page) == 10, (st, page)
        assert {"market", "trade_date_utc", "trade_time_utc", "timestamp", "trade_price", "trade_volume",
                "prev_closing_price", "change_price", "ask_bid", "sequential_id"} <= set(page[0])
        ts = [t["timestamp"] for t in page]
        assert ts == sorted(ts, reverse=True)
        made = made_ids(s, ex, "KRW-BTC")
        assert all(str(t["sequential_id"]) in made for t in page)
        # cursor: the trades older than it, the next page joins the first
        st, _, older = rest_get(s, ex, "/v1/trades/ticks?market=KRW-BTC&count=5&cursor=%d"
                                % page[-1]["sequential_id"])
        assert st == 200 and len(older) == 5
        i = made.index(str(page[-1]["sequential_id"]))
        assert [str(t["sequential_id"]) for t in older] == made[i - 5:i][::-1]
    # one UTC day per request: the simulator's trades are all today's
    if time.time() % 86400 > 120:  # the simulator started today (UTC), not just before midnight
        st, _, page = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-BTC&count=5&days_ago=1")
        assert st == 200 and page == []
        st, _, page = rest_get(s, "bithumb", "/v1/trades/ticks?market=KRW-BTC&count=5&daysAgo=1")
        assert st == 200 and page == []
    st, _, body = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-BTC&days_ago=8")
    assert st == 400
    # errors in Upbit's shape
    st, _, body = rest_get(s, "upbit", "/v1/trades/ticks")
    assert st == 400 and body["error"]["name"] == 400
    st, _, body = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-NOPE")
    assert st == 404 and body["error"]["message"] == "Code not found"


def test_rest_window_bounds_what_is_served(rest_sim):
    s = rest_sim
    wait_until(lambda: len(made_ids(s, "upbit", "KRW-ETH")) > 60, what="more trades made than the window")
    st, _, page = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-ETH&count=500")
    assert st == 200 and len(page) == 30, len(page)
    # a cursor older than the window: nothing (the client sees it cannot reach back)
    made = made_ids(s, "upbit", "KRW-ETH")
    st, _, page = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-ETH&count=5&cursor=%s" % made[0])
    assert st == 200 and page == []
    st, _, page = rest_get(s, "binance", "/api/v3/historicalTrades?symbol=ETHUSDT&limit=1000&fromId=%s"
                           % made_ids(s, "binance", "ETHUSDT")[0])
    assert st == 200 and 0 < len(page) <= 30
    assert page[0]["id"] > int(made_ids(s, "binance", "ETHUSDT")[0])  # the gap is visible


def test_rest_binance_trades_and_historical(rest_sim):
    s = rest_sim
    s.ctl("/pause")  # ids[1] must stay within the window between the two requests
    try:
        _binance_pages(s)
    finally:
        s.ctl("/resume")


def _binance_pages(s):
    st, hdr, page = rest_get(s, "binance", "/api/v3/trades?symbol=BTCUSDT&limit=5")
    assert st == 200 and len(page) == 5 and "X-MBX-USED-WEIGHT-1M" in hdr
    ids = [t["id"] for t in page]
    assert ids == list(range(ids[0], ids[0] + 5)), ids  # oldest first, consecutive
    assert set(page[0]) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}
    st, _, hist = rest_get(s, "binance", "/api/v3/historicalTrades?symbol=BTCUSDT&limit=3&fromId=%d" % ids[1])
    assert [t["id"] for t in hist] == ids[1:4]
    st, _, body = rest_get(s, "binance", "/api/v3/trades?symbol=NOPE")
    assert st == 400 and body == {"code": -1121, "msg": "Invalid symbol."}


def test_rest_coinbase_ticker_trades(rest_sim):
    s = rest_sim
    st, _, body = rest_get(s, "coinbase", "/api/v3/brokerage/market/products/BTC-USD/ticker?limit=4")
    assert st == 200 and len(body["trades"]) == 4 and body["best_bid"] and body["best_ask"]
    t = body["trades"][0]
    assert set(t) == {"trade_id", "product_id", "price", "size", "time", "side", "exchange"}
    assert t["side"] in ("BUY", "SELL") and t["product_id"] == "BTC-USD"
    times = [x["time"] for x in body["trades"]]
    assert times == sorted(times, reverse=True)
    # end (UNIX seconds, inclusive): nothing later than it
    end = int(time.time()) - 3600
    st, _, old = rest_get(s, "coinbase", f"/api/v3/brokerage/market/products/BTC-USD/ticker?limit=4&end={end}")
    assert st == 200 and old["trades"] == []
    st, _, _ = rest_get(s, "coinbase", "/api/v3/brokerage/market/products/NOPE-USD/ticker?limit=1")
    assert st == 404


def test_rest_429_mode(rest_sim):
    s = rest_sim
    s.ctl("/rest", exchange="upbit", limit429=2)
    for _ in range(2):
        st, hdr, body = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-BTC")
        assert st == 429 and body == "Too many API requests." and hdr.get("Retry-After") == "1"
    st, _, _ = rest_get(s, "upbit", "/v1/trades/ticks?market=KRW-BTC")
    assert st == 200
    info = s.status()["exchanges"]["upbit"]
    assert info["rest_429"] >= 2 and info["rest_429_pending"] == 0
    # WebSocket upgrades are not affected by the REST mode
    s.ctl("/rest", exchange="binance", limit429=1)
    st, _, body = rest_get(s, "binance", "/api/v3/trades?symbol=BTCUSDT")
    assert st == 429 and body["code"] == -1003


def test_snapshot_resend_on_subscribe(rest_sim):
    """Each subscribe re-sends the last trade as SNAPSHOT (the same trade id
    as the REALTIME message before it); --no-snapshot-resend turns it off."""
    async def first_trades(s, n_subs):
        out = []
        for _ in range(n_subs):  # a new connection, a new subscribe
            async with connect(s.url("upbit", "/websocket/v1")) as ws:
                await ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}]))
                m, _ = await recv_until(ws, lambda m: True)
                out.append(jl(m))
        return out

    def first(s):
        return run(first_trades(s, 1))[0]

    m = first(rest_sim)
    assert m["stream_type"] == "SNAPSHOT"
    assert str(m["sequential_id"]) in made_ids(rest_sim, "upbit", "KRW-BTC")
    off = SimProc("--rate", "20", "--no-snapshot-resend")
    try:
        m = first(off)
        assert m["stream_type"] == "REALTIME"

        async def cb():
            async with connect(off.url("coinbase", "/")) as ws:
                await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                          "channel": "market_trades"}))
                m, _ = await recv_until(ws, lambda m: jl(m).get("channel") == "market_trades")
                return jl(m)
        snap = run(cb())
        assert snap["events"][0]["type"] == "snapshot" and snap["events"][0]["trades"] == []
    finally:
        off.stop()
