"""exchange-ingest end to end, standalone (no supervisor, no ZooKeeper):

    test/sim/sim.py  --ws-->  exchange-ingest  --produce-->  Kafka (real, KRaft)
                                                              --> confluent_kafka consumer

The simulator records every frame it sends (--record JSONL); the tests compare
that record with what reached Kafka: every trade exactly once, in order per
channel, with the exchange's exact price/qty text, seq +1 per channel from 1,
the epoch in the JSON and in the "epoch" record header; malformed frames
skipped and counted; a dropped exchange connection reconnects; a Kafka outage
loses nothing that was accepted.

Upbit (BINARY frames, JSON numbers) and Binance (TEXT frames, decimal
strings) are checked trade by trade; the others are covered by their
connector tests.
"""
import collections
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

import pytest

from harness import REPO, util
from harness.kafka import Consumer

SIM = os.path.join(REPO, "test", "sim", "sim.py")
BINANCE_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "KRW")
PATHS = {"upbit": "/websocket/v1", "bithumb": "/websocket/v1", "binance": "/stream", "coinbase": "/"}
EPOCH = 7


# ---- simulator ---------------------------------------------------------------

class Sim:
    def __init__(self, log_dir, record, exchanges=("upbit", "binance"), rate=20):
        argv = [sys.executable if sys.executable.startswith("/usr/bin/") else "/usr/bin/python3", SIM,
                "--control-port", "0", "--record", record, "--rate", str(rate),
                "--exchanges", ",".join(exchanges)]
        for ex in exchanges:
            argv += ["--%s-port" % ex, "0"]
        self.record_path = record
        self.proc = util.Proc(argv, log_dir, name="sim", stdout_pipe=True)
        self.ports = None

    def start(self, timeout=15):
        self.proc.start()
        fd = self.proc.popen.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.proc.running():
                raise AssertionError("simulator did not start\n" + self.proc.logs())
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError("simulator exited\n" + self.proc.logs())
                buf += chunk
        self.ports = json.loads(buf.split(b"\n", 1)[0])
        return self

    def control(self, path, method="POST", **params):
        q = "&".join("%s=%s" % kv for kv in params.items())
        url = "http://127.0.0.1:%d%s%s" % (self.ports["control"], path, "?" + q if q else "")
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def records(self):
        out = []
        with open(self.record_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written right now
        return out

    def stop(self):
        return self.proc.stop(timeout=5)

    def logs(self, lines=40):
        return self.proc.logs(lines)


# ---- ingest ------------------------------------------------------------------

def write_conf(path, sim, bootstrap, topic, exchanges, partitions=3, extra=""):
    lines = ["[kafka]", "brokers = %s" % bootstrap, "topic = %s" % topic,
             "partitions = %d" % partitions, "replication = 1", "linger_ms = 5", ""]
    for ex in ("upbit", "bithumb", "binance", "coinbase"):
        lines.append("[exchange.%s]" % ex)
        if ex in exchanges:
            lines += ["enabled = true", "url = ws://127.0.0.1:%d%s" % (sim.ports[ex], PATHS[ex]),
                      "reconnect_min_ms = 100", "reconnect_max_ms = 1000"]
        else:
            lines.append("enabled = false")
        lines.append("")
    lines += ["[relay]", "listen = 127.0.0.1:%d" % util.free_port(), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + extra)


def start_ingest(build_dir, log_dir, conf, epoch=EPOCH):
    env = {"EXCHANGE_EPOCH": str(epoch), "LOG_LEVEL": "info", "EXCHANGE_BUILD": build_dir}
    p = util.Proc([os.path.join(build_dir, "exchange-ingest"), "--conf-dir", os.path.join(REPO, "conf"),
                   "--profile", "local", "--config", conf], log_dir, name="ingest", env=env, cwd=REPO)
    return p.start()


def stop_ingest(p, timeout=15):
    """SIGTERM = drain: close feeds, flush Kafka (bounded), exit 0."""
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=timeout)
    except Exception:  # noqa: BLE001
        rc = p.stop(timeout=1)
    return rc


def log_text(p):
    with open(p.stderr_path, encoding="utf-8", errors="replace") as f:
        return f.read()


# ---- expected trades from the simulator record ---------------------------------

def shortest(num_text):
    """The normalized text of a JSON number: shortest round-trip decimal."""
    r = repr(float(num_text))
    if "e" in r or "E" in r:
        r = format(Decimal(r), "f")
    if r.endswith(".0"):
        r = r[:-2]
    return r


def norm_symbol(exchange, market):
    if exchange in ("upbit", "bithumb"):
        quote, _, base = market.partition("-")
        return "%s-%s" % (base, quote)
    if exchange == "coinbase":
        return market
    for q in BINANCE_QUOTES:
        if market.endswith(q) and len(market) > len(q):
            return "%s-%s" % (market[: -len(q)], q)
    raise ValueError(market)


def _raw_numbers(frame, keys):
    """Number literals exactly as written in the frame text."""
    out = {}
    for k in keys:
        m = re.search(r'"%s":(-?[0-9][0-9.eE+-]*)' % re.escape(k), frame)
        if m:
            out[k] = m.group(1)
    return out


def sent_trades(records, exchanges):
    """{channel: [(conn, trade_id, price, qty)]} in send order, data frames only."""
    out = collections.defaultdict(list)
    for r in records:
        if r.get("kind") != "data" or r.get("type") != "trade" or r["exchange"] not in exchanges:
            continue
        ex, frame = r["exchange"], r.get("frame")
        if frame is None:
            continue
        obj = json.loads(frame)
        if ex in ("upbit", "bithumb"):
            for m in obj if isinstance(obj, list) else [obj]:
                raw = _raw_numbers(frame, ("trade_price", "trade_volume"))
                price = m["trade_price"] if isinstance(m["trade_price"], str) else shortest(raw["trade_price"])
                qty = m["trade_volume"] if isinstance(m["trade_volume"], str) else shortest(raw["trade_volume"])
                ch = "trade.%s.%s" % (ex, norm_symbol(ex, m["code"]))
                out[ch].append((r["conn"], str(m["sequential_id"]), price, qty))
        elif ex == "binance":
            d = obj["data"]
            ch = "trade.binance.%s" % norm_symbol(ex, d["s"])
            out[ch].append((r["conn"], str(d["t"]), d["p"], d["q"]))
    return out


def malformed_sent(records):
    return collections.Counter(r["exchange"] for r in records if r.get("kind") == "malformed")


# ---- checks ----------------------------------------------------------------------

def consume_all(bootstrap, topic, want_trades, timeout=30):
    """Read the topic until want_trades trade messages arrived (or timeout,
    then returns what is there: the caller's asserts say what is missing)."""
    with Consumer(bootstrap, topic=topic) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c.poll(0.5)
            n = sum(1 for m in c.messages if m["key"].startswith(b"trade."))
            if n >= want_trades:
                c.poll(1.0)  # anything after (status messages)
                break
        return list(c.messages)


def check_stream(msgs, epoch):
    """seq +1 from 1 per channel (in partition order), key = channel, epoch
    in the JSON and the header. Returns {channel: [decoded message]}."""
    by_part = collections.defaultdict(list)
    for m in msgs:
        by_part[m["partition"]].append(m)
    chans = collections.defaultdict(list)
    for part in by_part.values():
        part.sort(key=lambda m: m["offset"])
        for m in part:
            v = json.loads(m["value"])
            assert m["key"].decode() == v["channel"], m
            assert m["headers"].get("epoch") == str(epoch).encode(), m
            assert v["epoch"] == epoch, v
            chans[v["channel"]].append(v)
    for ch, vs in chans.items():
        seqs = [v["seq"] for v in vs]
        assert seqs == list(range(1, len(seqs) + 1)), "%s: seqs %s" % (ch, seqs[:50])
        for v in vs:
            for k in ("type", "exchange", "ts", "recv_ts"):
                assert k in v, v
    return chans


def check_trades(sent, chans, allow_tail_loss_conns=()):
    """Every sent trade arrives once, in order, with exact price/qty. Frames
    sent on a connection we killed may be lost, but only as a suffix of that
    connection (they were in the dead socket's buffers)."""
    for ch, expected in sent.items():
        got = [(v["trade_id"], v["price"], v["qty"]) for v in chans.get(ch, [])]
        i = 0
        lost_from = {}
        for conn, tid, price, qty in expected:
            if i < len(got) and got[i] == (tid, price, qty):
                assert conn not in lost_from, (
                    "%s: trade %s from conn %s arrived after trade %s of the same conn was lost"
                    % (ch, tid, conn, lost_from[conn]))
                i += 1
                continue
            assert conn in allow_tail_loss_conns, (
                "%s: sent trade %s price=%s qty=%s (conn %s) missing or different; got next %r"
                % (ch, tid, price, qty, conn, got[i:i + 3]))
            lost_from.setdefault(conn, tid)
        assert i == len(got), "%s: unexpected extra trades %r" % (ch, got[i:i + 5])
    extra = set(c for c in chans if c.startswith("trade.")) - set(sent)
    assert not extra, "trades on channels the simulator never sent: %s" % extra


def wait_trades(sim, n, timeout=20):
    util.wait_until(lambda: sum(len(v) for v in sent_trades(sim.records(), ("upbit", "binance")).values()) >= n,
                    timeout=timeout, what="%d trades sent by the simulator" % n)


# ---- fixtures ---------------------------------------------------------------------

@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path / "logs", str(tmp_path / "sim-record.jsonl")).start()
    yield s
    s.stop()


# ---- tests --------------------------------------------------------------------------

def test_trades_exactly_once_in_order(tmp_path, build_dir, sim, kafka_broker):
    conf = str(tmp_path / "ingest.ini")
    # A topic the broker does not have yet: the ingest worker creates it
    # through the Admin API (the broker does not auto-create topics).
    topic = kafka_broker.topic + "-new"
    write_conf(conf, sim, kafka_broker.bootstrap, topic, ("upbit", "binance"), partitions=4)
    ing = start_ingest(build_dir, tmp_path / "logs", conf)
    try:
        util.wait_until(lambda: "kafka topic created" in log_text(ing), timeout=20, what="the topic to be created")
        assert len(kafka_broker.topic_info(topic)) == 4
        wait_trades(sim, 40)
        sim.control("/malformed", exchange="upbit", count=5)
        sim.control("/malformed", exchange="binance", count=5)
        wait_trades(sim, 80)
        sim.control("/pause")
        time.sleep(0.5)  # let the last frames reach the worker
    finally:
        rc = stop_ingest(ing)
    assert rc == 0, log_text(ing)[-3000:]
    logs = log_text(ing)

    records = sim.records()
    sent = sent_trades(records, ("upbit", "binance"))
    total = sum(len(v) for v in sent.values())
    msgs = consume_all(kafka_broker.bootstrap, topic, total)
    chans = check_stream(msgs, EPOCH)
    check_trades(sent, chans)

    # Malformed frames: none reached Kafka (check_trades found no unknown
    # trade) and each was counted.
    bad = malformed_sent(records)
    assert bad["upbit"] == 5 and bad["binance"] == 5, bad
    counted = {}
    for m in re.finditer(r'msg="malformed message skipped" exchange=(\w+) reason=\S+ total=(\d+)', logs):
        counted[m.group(1)] = int(m.group(2))
    assert counted.get("upbit") == 5 and counted.get("binance") == 5, (counted, bad)

    # status.EXCHANGE: connected, subscribed ... disconnected (shutdown).
    for ex in ("upbit", "binance"):
        states = [(v["state"], v["detail"]) for v in chans["status." + ex]]
        assert states[0] == ("connected", ""), states
        assert ("subscribed", "") in states, states
        assert states[-1] == ("disconnected", "shutdown"), states
        assert "symbol" not in chans["status." + ex][0]


def test_reconnect_and_kafka_outage(tmp_path, build_dir, sim, kafka_factory):
    kafka_broker = kafka_factory()
    conf = str(tmp_path / "ingest.ini")
    write_conf(conf, sim, kafka_broker.bootstrap, kafka_broker.topic, ("upbit", "binance"))
    ing = start_ingest(build_dir, tmp_path / "logs", conf)
    try:
        wait_trades(sim, 30)
        # Kill the exchange connections (TCP reset): the feeds reconnect.
        first = {c["exchange"]: c for c in sim.control("/status", method="GET")["conns"]}
        sim.control("/drop", exchange="all", mode="abort")

        def reconnected():
            conns = sim.control("/status", method="GET")["conns"]
            return len({c["exchange"] for c in conns}) == 2 and all(
                c.get("id") != first[c["exchange"]].get("id") for c in conns)
        util.wait_until(reconnected, timeout=15, what="both feeds reconnected")
        n = sum(len(v) for v in sent_trades(sim.records(), ("upbit", "binance")).values())
        wait_trades(sim, n + 30)

        # Kafka down for a while: the producer keeps the messages queued.
        kafka_broker.down()
        n = sum(len(v) for v in sent_trades(sim.records(), ("upbit", "binance")).values())
        wait_trades(sim, n + 40)
        time.sleep(2)
        kafka_broker.up()
        # The queued messages go out once the brokers are back ("delivering
        # again" is logged when the producer queue is empty).
        util.wait_until(lambda: "kafka: delivering again" in log_text(ing), timeout=30,
                        what="the producer queue to drain after the outage")
        n = sum(len(v) for v in sent_trades(sim.records(), ("upbit", "binance")).values())
        wait_trades(sim, n + 30)
        sim.control("/pause")
        time.sleep(0.5)
    finally:
        rc = stop_ingest(ing, timeout=20)
    assert rc == 0, log_text(ing)[-3000:]

    records = sim.records()
    sent = sent_trades(records, ("upbit", "binance"))
    dropped = {c["id"] for c in first.values()}
    total = sum(len(v) for v in sent.values())
    msgs = consume_all(kafka_broker.bootstrap, kafka_broker.topic, total - 20, timeout=40)
    chans = check_stream(msgs, EPOCH)
    check_trades(sent, chans, allow_tail_loss_conns=dropped)
    # Everything sent after the reconnect (including the outage) is there.
    later = [t for v in sent.values() for t in v if t[0] not in dropped]
    assert len(later) >= 100, len(later)
    for ex in ("upbit", "binance"):
        states = [v["state"] for v in chans["status." + ex]]
        i = states.index("disconnected")
        assert "connected" in states[i:], states
    assert "kafka messages not delivered" not in log_text(ing)


def _ipc_send(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(len(data).to_bytes(4, "big") + data)


def _ipc_recv(sock, buf, timeout):
    """One frame (dict) or None on timeout; buf is a bytearray carried between calls."""
    deadline = time.monotonic() + timeout
    while True:
        if len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) >= 4 + n:
                frame = bytes(buf[4:4 + n])
                del buf[:4 + n]
                return json.loads(frame)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([sock], [], [], left)
        if r:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("ingest closed the ipc channel")
            buf += chunk


def test_supervised_epoch_status_and_drain(tmp_path, build_dir, sim):
    """Under a supervisor (IPC): config first, the leader message's epoch is
    stamped, stats carry the exchanges' state, drain exits 0."""
    conf = str(tmp_path / "ingest.ini")
    write_conf(conf, sim, "", "unused", ("upbit",), extra="\n[supervisor]\nstats_interval_ms = 200\n")
    parent, child = socket.socketpair()
    p = util.Proc([os.path.join(build_dir, "exchange-ingest"), "--ipc-fd", str(child.fileno())],
                  tmp_path / "logs", name="ingest-ipc", cwd=REPO)
    # util.Proc closes inherited fds: start it by hand with pass_fds, then
    # register it so the suite's cleanup covers it too.
    err = open(p.stderr_path, "wb")
    p.popen = subprocess.Popen(p.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=dict(os.environ),
                               cwd=REPO, start_new_session=True, pass_fds=(child.fileno(),))
    err.close()
    util._LIVE.append(p)
    child.close()
    buf = bytearray()
    try:
        with open(conf) as f:
            _ipc_send(parent, {"t": "config", "ini": f.read(), "name": conf})
        _ipc_send(parent, {"t": "leader", "epoch": 42, "leader": "me", "relay": "", "is_self": True})
        seen = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m = _ipc_recv(parent, buf, 1.0)
            if not m or m.get("t") != "stats":
                continue
            st = m["status"]
            up = st.get("exchanges", {}).get("upbit", {})
            if st.get("epoch") == 42 and up.get("state") == "subscribed" and up.get("messages", 0) > 0:
                seen = st
                break
        assert seen, "no stats with epoch 42 and a subscribed upbit feed\n" + p.logs()
        assert seen["kafka"] == {"enabled": False, "queue": 0}, seen
        assert isinstance(seen["exchanges"]["upbit"]["last_message_age_ms"], int), seen
        assert "exchange_ingest_messages_total" in json.dumps(m["metrics"]), m["metrics"]
        _ipc_send(parent, {"t": "drain", "ms": 1000})
        assert p.wait(timeout=10) == 0, p.logs()
    finally:
        parent.close()
        p.stop(timeout=3)
