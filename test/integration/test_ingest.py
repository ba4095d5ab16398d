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
    def __init__(self, log_dir, record, exchanges=("upbit", "binance"), rate=20, args=()):
        argv = [sys.executable if sys.executable.startswith("/usr/bin/") else "/usr/bin/python3", SIM,
                "--control-port", "0", "--record", record, "--rate", str(rate),
                "--exchanges", ",".join(exchanges)] + list(args)
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
                      "rest_url = http://127.0.0.1:%d" % sim.ports[ex],
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


def check_exact(sent, chans):
    """Each published trade that a frame carried has the frame's exact
    price/qty text (backfilled ones came from REST and may not be in a frame)."""
    for ch, expected in sent.items():
        want = {tid: (price, qty) for _, tid, price, qty in expected}
        for v in chans.get(ch, []):
            if v["trade_id"] in want:
                assert (v["price"], v["qty"]) == want[v["trade_id"]], (ch, v)
def wait_delivered(bootstrap, topic, sim, skip_conns=(), timeout=30):
    """After /pause: wait until every trade the simulator sent (except on
    skip_conns, whose tail may be lost) is in the topic, so stopping the
    worker now cuts nothing in flight (a sleep raced the worker on a loaded
    machine)."""
    want = {(ch, t[1]) for ch, v in sent_trades(sim.records(), ("upbit", "binance")).items()
            for t in v if t[0] not in skip_conns}
    missing = [want]

    def delivered():
        msgs = consume_all(bootstrap, topic, len(want), timeout=2)
        got = {(v["channel"], v.get("trade_id")) for v in map(lambda m: json.loads(m["value"]), msgs)}
        missing[0] = want - got
        return not missing[0]
    try:
        util.wait_until(delivered, timeout=timeout, what="the %d sent trades in Kafka" % len(want))
    except AssertionError as e:
        raise AssertionError("%s; missing %s" % (e, sorted(missing[0])[:5])) from None


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
        # CreateTopics answered; the metadata of a fresh broker may lag it
        util.wait_until(lambda: len(kafka_broker.topic_info(topic)) == 4, timeout=10,
                        what="the new topic's 4 partitions in the metadata")
        wait_trades(sim, 40)
        sim.control("/malformed", exchange="upbit", count=5)
        sim.control("/malformed", exchange="binance", count=5)
        wait_trades(sim, 80)
        sim.control("/pause")
        wait_delivered(kafka_broker.bootstrap, topic, sim)
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
        wait_delivered(kafka_broker.bootstrap, kafka_broker.topic, sim, skip_conns={c["id"] for c in first.values()})
    finally:
        rc = stop_ingest(ing, timeout=20)
    assert rc == 0, log_text(ing)[-3000:]

    records = sim.records()
    sent = sent_trades(records, ("upbit", "binance"))
    dropped = {c["id"] for c in first.values()}
    made = made_trades(sim)
    msgs = consume_until(kafka_broker.bootstrap, kafka_broker.topic, _published_all(made))
    chans = check_stream(msgs, EPOCH)
    # Nothing lost to the dropped connections (what they missed was
    # backfilled from REST), nothing twice (the SNAPSHOT re-sent on the new
    # connection was recognised), exact texts where a frame carried them.
    check_once(made, chans)
    check_exact(sent, chans)
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
        assert seen["kafka"] == {"enabled": False, "queue": 0, "transaction": "off"}, seen
        assert isinstance(seen["exchanges"]["upbit"]["last_message_age_ms"], int), seen
        assert "exchange_ingest_messages_total" in json.dumps(m["metrics"]), m["metrics"]
        _ipc_send(parent, {"t": "drain", "ms": 1000})
        assert p.wait(timeout=10) == 0, p.logs()
    finally:
        parent.close()
        p.stop(timeout=3)


# ---- each trade once, across reconnects and ingest restarts (issue 14) ---------------

ALL4 = ("upbit", "bithumb", "binance", "coinbase")


def made_trades(sim):
    """{channel: [trade id made, oldest first]}: the simulator's truth."""
    out = {}
    for ex, mk in sim.control("/trades", method="GET")["trades"].items():
        for market, ids in mk.items():
            out["trade.%s.%s" % (ex, norm_symbol(ex, market))] = ids
    return out


def trades_by_channel(msgs):
    """{channel: [decoded trade]} in (epoch, seq) order, read per partition."""
    chans = collections.defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m["partition"], m["offset"])):
        v = json.loads(m["value"])
        if v["type"] == "trade":
            chans[v["channel"]].append(v)
    for ch, vs in chans.items():
        keys = [(v["epoch"], v["seq"]) for v in vs]
        assert keys == sorted(keys), "%s: (epoch, seq) not increasing: %s" % (ch, keys[:40])
    return chans


def check_once(made, chans):
    """Every trade made from the first one published on to the last made
    arrives exactly once, in the exchange's order. Returns the number of
    trades marked backfill."""
    backfilled = 0
    for ch, ids in made.items():
        got = [v["trade_id"] for v in chans.get(ch, [])]
        assert got, "%s: no trade published" % ch
        dup = [t for t, n in collections.Counter(got).items() if n > 1]
        assert not dup, "%s: trade ids published twice: %s" % (ch, dup[:10])
        first = ids.index(got[0])
        want = ids[first:]
        missing = sorted(set(want) - set(got), key=want.index)
        if missing:
            i = want.index(missing[0])
            near = [(v["trade_id"], v["epoch"], v["seq"], v.get("backfill", False)) for v in chans[ch]
                    if v["trade_id"] in want[max(0, i - 3):i + 4]]
            near.append(want[max(0, i - 3):i + 4])
        assert not missing, "%s: %d trades made but not published, first %s (got %d of %d); around it: %s" % (
            ch, len(missing), missing[:5], len(got), len(want), near)
        assert got == want[:len(got)] and len(got) == len(want), "%s: order differs" % ch
        backfilled += sum(1 for v in chans[ch] if v.get("backfill") is True)
    return backfilled


def total_made(sim):
    return sum(len(v) for v in made_trades(sim).values())


def wait_more_made(sim, n, timeout=20):
    base = total_made(sim)
    util.wait_until(lambda: total_made(sim) >= base + n, timeout=timeout,
                    what="%d more trades made by the simulator" % n)


def consume_until(bootstrap, topic, pred, timeout=40):
    with Consumer(bootstrap, topic=topic) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c.poll(0.5)
            if pred(c.messages):
                break
        return list(c.messages)


def _published_all(made):
    def pred(msgs):
        seen = collections.defaultdict(set)
        for m in msgs:
            if m["key"].startswith(b"trade."):
                seen[m["key"].decode()].add(json.loads(m["value"])["trade_id"])
        return all(ids and ids[-1] in seen.get(ch, ()) for ch, ids in made.items())
    return pred


@pytest.fixture
def sim4(tmp_path):
    s = Sim(tmp_path / "logs", str(tmp_path / "sim4-record.jsonl"), exchanges=ALL4, rate=20).start()
    yield s
    s.stop()


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_every_trade_once_across_reconnect_and_restart(tmp_path, build_dir, sim4, kafka_broker, stop):
    """The exchanges re-send their last trade on every subscribe (SNAPSHOT,
    Coinbase's snapshot event) and make trades while no ingest listens: after
    a dropped connection (reconnect refused a while) and after an ingest
    restart (a new epoch, the previous one's trades learnt from the topic's
    tail) every trade made reaches Kafka exactly once, in order, the missed
    ones marked "backfill":true. The first ingest drains (SIGTERM) or dies
    (kill -9: what it had not delivered is backfilled by the next)."""
    sim = sim4
    conf = str(tmp_path / "ingest.ini")
    write_conf(conf, sim, kafka_broker.bootstrap, kafka_broker.topic, ALL4)
    ing = start_ingest(build_dir, tmp_path / "logs", conf, epoch=7)
    try:
        util.wait_until(lambda: log_text(ing).count('state=subscribed') >= 4, timeout=20,
                        what="four feeds subscribed")
        wait_more_made(sim, 40)
        # Exchange reconnect: drop every connection, refuse the next upgrades
        # so trades are made while the feeds are away.
        sim.control("/refuse", exchange="all", count=2)
        sim.control("/drop", exchange="all", mode="abort")
        util.wait_until(lambda: log_text(ing).count("backfill done") >= 8, timeout=30,
                        what="each trade channel backfilled after the reconnect")
        wait_more_made(sim, 40)
    finally:
        if stop == "kill9":
            ing.send_signal(signal.SIGKILL)
            rc = ing.wait(timeout=10)
        else:
            rc = stop_ingest(ing)
    assert rc == (-signal.SIGKILL if stop == "kill9" else 0), log_text(ing)[-3000:]
    # Trades made while no ingest runs, then a new ingest (epoch 8).
    wait_more_made(sim, 40)
    ing2 = start_ingest(build_dir, tmp_path / "logs2", conf, epoch=8)
    try:
        util.wait_until(lambda: "topic tail read" in log_text(ing2), timeout=20, what="the topic's tail read")
        util.wait_until(lambda: log_text(ing2).count("backfill done") >= 8, timeout=30,
                        what="each trade channel backfilled after the restart")
        wait_more_made(sim, 40)
        sim.control("/pause")
        # every trade made reaches the topic before the worker stops
        made = made_trades(sim)
        msgs = consume_until(kafka_broker.bootstrap, kafka_broker.topic, _published_all(made))
    finally:
        rc = stop_ingest(ing2)
    assert rc == 0, log_text(ing2)[-3000:]
    logs2 = log_text(ing2)
    m = re.search(r'msg="topic tail read" partitions=(\d+) records=(\d+) trades=(\d+) max_epoch=(\d+)', logs2)
    assert m and int(m.group(3)) > 0 and int(m.group(4)) == 7, logs2[-3000:]

    chans = trades_by_channel(msgs)
    backfilled = check_once(made, chans)
    assert backfilled > 0, "no trade was backfilled"
    assert "trade gap announced" not in log_text(ing) + logs2


def test_gap_beyond_rest_window_is_announced(tmp_path, build_dir, kafka_broker):
    """REST keeps only the last 5 trades: an ingest away for longer cannot
    backfill; it publishes what REST still has and announces the span it
    could not cover on status.EXCHANGE (state gap) instead of hiding it."""
    sim = Sim(tmp_path / "logs", str(tmp_path / "rec.jsonl"), exchanges=("upbit", "binance"), rate=20,
              args=("--rest-window", "5")).start()
    try:
        conf = str(tmp_path / "ingest.ini")
        write_conf(conf, sim, kafka_broker.bootstrap, kafka_broker.topic, ("upbit", "binance"))
        ing = start_ingest(build_dir, tmp_path / "logs", conf, epoch=3)
        util.wait_until(lambda: log_text(ing).count('state=subscribed') >= 2, timeout=20,
                        what="feeds subscribed")
        wait_more_made(sim, 20)
        assert stop_ingest(ing) == 0
        wait_more_made(sim, 100)  # 25 per market, far more than REST keeps
        ing2 = start_ingest(build_dir, tmp_path / "logs2", conf, epoch=4)
        try:
            util.wait_until(lambda: log_text(ing2).count("trade gap announced") >= 4, timeout=30,
                            what="a gap announced per trade channel")
            sim.control("/pause")
        finally:
            assert stop_ingest(ing2) == 0
        made = made_trades(sim)
        msgs = consume_until(kafka_broker.bootstrap, kafka_broker.topic, _published_all(made))
        gaps = [json.loads(m["value"]) for m in msgs if m["key"].startswith(b"status.")]
        gaps = [g for g in gaps if g["state"] == "gap"]
        assert {g["gap"]["channel"] for g in gaps} == set(made), gaps
        chans = trades_by_channel(msgs)
        for g in gaps:
            ch, span = g["gap"]["channel"], g["gap"]
            assert g["epoch"] == 4 and span["from_ts"] <= span["to_ts"], g
            ids = made[ch]
            got = [v["trade_id"] for v in chans[ch]]
            # The last trade of epoch 3 is the gap's start; what followed it
            # up to the REST window is missing, everything after is there once.
            assert span["last_trade_id"] in got, (span, got[-5:])
            assert len(got) == len(set(got)), ch
            after = ids[ids.index(span["last_trade_id"]) + 1:]
            lost = [t for t in after if t not in got]
            assert lost and lost == after[:len(lost)], (ch, lost[:5])
            assert len(lost) >= 25 - 5, (ch, len(lost))  # made while away, less the 5 REST keeps
    finally:
        sim.stop()
