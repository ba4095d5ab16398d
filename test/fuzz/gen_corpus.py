#!/usr/bin/env python3
"""Regenerate the seed corpora in test/fuzz/corpus/ (committed; run this only
when the fixtures change). Sources: the connector unit-test fixtures
(test/unit/test_connectors.c), the client protocol and upgrade requests of
DESIGN.md, conf/*.ini, and IPC frames as the supervisor sends them.
Seeds are named by content hash, so regenerating is idempotent; crash
regressions added by hand (regress-*) are kept."""
import hashlib
import json
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def c_literals(path):
    """Adjacent C string literals joined and unescaped, in file order."""
    src = open(path, encoding="utf-8", errors="surrogateescape").read()
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    lit = r'"(?:[^"\\\n]|\\.)*"'
    out = []
    for m in re.finditer(r"(?:%s\s*)+" % lit, src):
        parts = re.findall(lit, m.group(0))
        raw = "".join(p[1:-1] for p in parts)
        b = bytearray()
        i = 0
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                n = raw[i + 1]
                if n == "x":
                    h = re.match(r"[0-9a-fA-F]{1,2}", raw[i + 2:]).group(0)
                    b.append(int(h, 16))
                    i += 2 + len(h)
                    continue
                b.extend({"n": b"\n", "t": b"\t", "r": b"\r", "0": b"\0"}.get(n, n.encode()))
                i += 2
                continue
            b.extend(ch.encode("utf-8", "surrogateescape"))
            i += 1
        out.append(bytes(b))
    return out


# ---- connectors --------------------------------------------------------------
EX_UPBIT, EX_BITHUMB, EX_BINANCE, EX_COINBASE = range(4)


def conn_flags(ex, binary, simple=False, depth=0, ticks=False):
    return bytes([ex | (binary << 2) | (simple << 3) | (depth << 4) | (ticks << 6)])


def connectors():
    frames = {EX_UPBIT: [], EX_BINANCE: [], EX_COINBASE: []}
    for b in c_literals(os.path.join(ROOT, "test/unit/test_connectors.c")):
        if not b.startswith(b"{") or b"recv_ts" in b or len(b) < 8:
            continue
        if re.search(rb'"(stream|result|method)"|"e":', b):
            frames[EX_BINANCE].append(b)
        elif re.search(rb'"(events|client_id|product_ids|sequence_num)"', b):
            frames[EX_COINBASE].append(b)
        elif re.search(rb'"(code|cd|ticket|status|ty|type|error)"', b):
            frames[EX_UPBIT].append(b)
    # Coinbase: a level2 snapshot then updates, in order, for the book.
    ts = "2023-02-09T20:32:50.714964855Z"
    def cb(channel, seq, events):
        return json.dumps({"channel": channel, "client_id": "", "timestamp": ts,
                           "sequence_num": seq, "events": events}, separators=(",", ":")).encode()
    snap = cb("l2_data", 0, [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": ts, "price_level": "21921.73", "new_quantity": "0.06317902"},
        {"side": "bid", "event_time": ts, "price_level": "21921.3", "new_quantity": "0.02"},
        {"side": "offer", "event_time": ts, "price_level": "21921.74", "new_quantity": "0.5"},
        {"side": "offer", "event_time": ts, "price_level": "21922.5", "new_quantity": "1.25"}]}])
    upd = cb("l2_data", 1, [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": ts, "price_level": "21921.73", "new_quantity": "0"},
        {"side": "offer", "event_time": ts, "price_level": "21921.9", "new_quantity": "0.1"}]}])
    gap = cb("l2_data", 5, [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": ts, "price_level": "21920", "new_quantity": "3"}]}])
    trades = cb("market_trades", 2, [{"type": "update", "trades": [
        {"trade_id": "474578", "product_id": "BTC-USD", "price": "21921.73", "size": "0.0001",
         "side": "BUY", "time": ts}]}])
    ticker = cb("ticker", 3, [{"type": "update", "tickers": [
        {"type": "ticker", "product_id": "BTC-USD", "price": "21932.98", "volume_24_h": "16038.28770938",
         "low_24_h": "21835.29", "high_24_h": "23011.18", "price_percent_chg_24_h": "-4.26778385",
         "best_bid": "21931.98", "best_bid_quantity": "0.01", "best_ask": "21933.98",
         "best_ask_quantity": "0.2"}]}])
    hb = cb("heartbeats", 4, [{"current_time": "2023-02-09 20:32:50.123 +0000 UTC", "heartbeat_counter": 3}])
    frames[EX_COINBASE] += [snap, upd, gap, trades, ticker, hb]
    for ex, fl in frames.items():
        for b in fl:
            binary = 1 if ex == EX_UPBIT else 0
            simple = ex == EX_UPBIT and b'"ty"' in b
            put("fuzz_connectors", conn_flags(ex, binary, simple) + b)
            if ex == EX_UPBIT:   # Bithumb speaks the same protocol
                put("fuzz_connectors", conn_flags(EX_BITHUMB, 1, simple) + b)
        # every frame of an exchange through one connector, with ticks
        put("fuzz_connectors", conn_flags(ex, 1 if ex == EX_UPBIT else 0, False, 2, True) + b"\xff".join(fl))
    put("fuzz_connectors", conn_flags(EX_COINBASE, 0, False, 1, True) + b"\xff".join([snap, upd, trades, ticker, gap, snap]))


# ---- client commands ---------------------------------------------------------
def normalized(ch, seq, epoch=5, extra=None):
    t, ex, sym = ch.split(".")
    m = {"channel": ch, "type": t, "exchange": ex, "symbol": sym, "seq": seq, "epoch": epoch,
         "ts": 1700000000000 + seq, "recv_ts": 1700000000010 + seq}
    m.update(extra or {"price": "31373000", "qty": "0.00016039", "side": "buy", "trade_id": str(seq)})
    return json.dumps(m, separators=(",", ":")).encode()


def client_cmd():
    reqs = [
        {"op": "subscribe", "channels": ["ticker.upbit.BTC-KRW"], "id": 1},
        {"op": "subscribe", "channels": ["ticker.*.BTC-KRW", "trade.binance.BTC-USDT"], "id": 2},
        {"op": "subscribe", "channel": "orderbook.upbit.BTC-KRW"},
        {"op": "subscribe", "channels": ["ticker.upbit.BTC-KRW"], "since": {"ticker.upbit.BTC-KRW": 1}, "id": 3},
        {"op": "subscribe", "since": {"trade.upbit.BTC-KRW": {"seq": 0}}},
        {"op": "unsubscribe", "channels": ["ticker.*.BTC-KRW"], "id": 4},
        {"op": "unsubscribe", "channel": "ticker.upbit.BTC-KRW"},
        {"op": "list"}, {"op": "ping", "id": "x"},
        {"op": "subscribe", "channels": ["bad name"], "id": 5},
        {"op": "subscribe", "channels": "ticker.upbit.BTC-KRW"},
        {"op": "nope"}, {"id": 9},
    ]
    enc = [json.dumps(r, separators=(",", ":")).encode() for r in reqs]
    for e in enc:
        put("fuzz_client_cmd", e)
    put("fuzz_client_cmd", b"[1,2]")
    put("fuzz_client_cmd", b'{"op":"subscribe","op":"list"}')
    pubs = [b"\x00" + normalized("ticker.upbit.BTC-KRW", 3), b"\x00" + normalized("ticker.upbit.BTC-KRW", 4),
            b"\x00" + normalized("trade.binance.BTC-USDT", 1, 6), b"\x00" + normalized("ticker.upbit.BTC-KRW", 1, 4),
            b"\x00" + normalized("status.upbit.X", 1)]
    put("fuzz_client_cmd", b"\xff".join([enc[1], pubs[0], pubs[2], b"\x02" + enc[0], pubs[1], enc[7],
                                        b"\x03", enc[3], pubs[3], b"\x04", pubs[0], b"\x04", enc[5], enc[7]]))
    put("fuzz_client_cmd", b"\xff".join([b"\x01" + e for e in enc] + [b"\x02" + e for e in enc]))
    put("fuzz_client_cmd", b"\xff".join([enc[8]] * 50))  # flood: rate limit then close


# ---- HTTP --------------------------------------------------------------------
UPGRADE = ("GET /ws/exchange?channels=ticker.upbit.BTC-KRW,trade.*.BTC-USDT HTTP/1.1\r\n"
           "Host: localhost:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "Origin: http://localhost:8080\r\nUser-Agent: Python/3.11 websockets/10.4\r\n\r\n")


def http():
    reqs = [
        UPGRADE,
        UPGRADE + "\x81\x85\x00\x00\x00\x00hello",
        "GET http://example.com:8080/ws/exchange?channels=a%2Cb&x=%zz+y HTTP/1.1\r\nhost: x\r\n"
        "upgrade: WebSocket\r\nconnection: upgrade\r\nsec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        "sec-websocket-version: 13\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: localhost:8090\r\nAccept: */*\r\n\r\n"
        "GET /status HTTP/1.1\r\nHost: localhost:8090\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: 1\r\nX-A: 2\r\nX-Long: " + "v" * 300 + "\r\n\r\n",
        "GET /readyz HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "PUT /ws/exchange HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: short\r\n\r\n",
    ]
    for i, r in enumerate(reqs):
        put("fuzz_http", bytes([i & 3, 0, i]) + r.encode())
        put("fuzz_http", bytes([0, 0x55, 0xAA - i]) + r.encode())


# ---- WebSocket frames --------------------------------------------------------
def frame(payload, opcode=1, fin=True, mask=b"\0\0\0\0", rsv=0):
    if isinstance(payload, str):
        payload = payload.encode()
    h = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        h += bytes([0x80 | n])
    elif n <= 0xFFFF:
        h += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        h += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return h + mask + masked


def ws_frames():
    sub = '{"op":"subscribe","channels":["ticker.upbit.BTC-KRW"],"id":1}'
    seqs = [
        [frame(sub)],
        [frame(sub, mask=b"\x12\x34\x56\x78"), frame("", opcode=9), frame("", opcode=10)],
        [frame('{"op":', fin=False), frame('"ping"}', opcode=0)],
        [frame("x" * 300), frame(b"\x00\x01binary", opcode=2)],
        [frame(struct.pack(">H", 1000) + b"bye", opcode=8)],
        [frame("cAd"), frame("after close")],
        [frame("a")],
        [frame("f"), frame("f")],
        [frame(b"\xc3\x28 bad utf8")],
        [frame("y" * 2000)],                       # over the small bound
        [frame("ping?", opcode=9), frame("x", rsv=0x40)],
        [b"\x81\x05hello"],  # unmasked: protocol error
        [frame(struct.pack(">H", 1005), opcode=8)],
    ]
    for i, s in enumerate(seqs):
        data = b"".join(s)
        put("fuzz_ws_frames", bytes([0b010, 0, i]) + data)
        put("fuzz_ws_frames", bytes([0b100, 1, i]) + data)
        put("fuzz_ws_frames", bytes([0b001, 0, i]) + UPGRADE.encode() + data)
    put("fuzz_ws_frames", bytes([1, 0, 0]) + UPGRADE.replace("/ws/exchange", "/refuse").encode())
    put("fuzz_ws_frames", bytes([1, 0, 1]) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    put("fuzz_ws_frames", bytes([1, 0, 2]) + UPGRADE.encode()[:60])


# ---- config ------------------------------------------------------------------
def config():
    for name in sorted(os.listdir(os.path.join(ROOT, "conf"))):
        if name.endswith(".ini"):
            put("fuzz_config", open(os.path.join(ROOT, "conf", name), "rb").read())
    put("fuzz_config", "[fanout]\nworkers = 2\nlisten = 127.0.0.1:0\n[kafka]\nbrokers = a:9092,b:9092\n"
                       "[exchange.upbit]\nenabled = true\nmarkets = KRW-BTC, KRW-ETH\nchannels = ticker,trade\n")
    put("fuzz_config", "[log]\nlevel = debug\nformat = json\n[zookeeper]\nconnect = zk1:2181,zk2:2181\n"
                       "session_timeout_ms = 6000\n[relay]\ntoken = s3cr3t ; comment\n")
    put("fuzz_config", "[fanout]\nworkers = 0\n[nosuch]\nkey = 1\n[exchange.binance]\ndepth = -1\n")


# ---- IPC ---------------------------------------------------------------------
def ipc_frame(obj):
    b = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(b)) + b


def ipc():
    msgs = [{"t": "config", "text": "[fanout]\nworkers = 2\n"}, {"t": "drain", "ms": 5000},
            {"t": "leader", "epoch": 7, "relay": "10.0.0.1:8091", "instance": "a"},
            {"t": "loglevel", "level": "debug"}, {"t": "ready", "port": 8080},
            {"t": "stats", "metrics": "exchange_clients 3\n"}]
    for i, m in enumerate(msgs):
        put("fuzz_ipc", bytes([i, 7, 0]) + ipc_frame(m))
    put("fuzz_ipc", bytes([1, 2, 0]) + b"".join(ipc_frame(m) for m in msgs))
    put("fuzz_ipc", bytes([3, 4, 2]) + b"".join(ipc_frame(m) for m in msgs))
    put("fuzz_ipc", bytes([0, 1, 0]) + ipc_frame(b"") + ipc_frame(b"[1]") + ipc_frame(b"{bad"))
    put("fuzz_ipc", bytes([0, 1, 0]) + struct.pack(">I", (16 << 20) + 1) + b"{}")
    put("fuzz_ipc", bytes([9, 9, 0]) + ipc_frame(msgs[0])[:7])


def main():
    connectors()
    client_cmd()
    http()
    ws_frames()
    config()
    ipc()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(CORPUS) for f in fs)
    print("corpus: %d bytes" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
