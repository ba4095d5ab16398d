"""Self-tests of the integration harness: the mock Kafka broker process, the
ZooKeeper fixture and the process helpers."""
import collections
import signal
import sys
import threading
import time
import http.server

import pytest

from harness import util
from harness.kafka import Consumer, produce, producer

TOPIC = "exchange"


def _produce_many(p, items, topic=TOPIC, headers=None):
    """Queue items [(key, value)], return the delivery result dict (filled later)."""
    res = {"ok": [], "err": []}

    def cb(err, msg):
        (res["err"] if err is not None else res["ok"]).append(err if err is not None else msg)

    for k, v in items:
        while True:
            try:
                p.produce(topic, key=k, value=v, headers=headers, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    return res


def _check_per_key_order(msgs, expected):
    """msgs: consumed dicts; expected: {key: [values in produce order]}."""
    got = collections.defaultdict(list)
    for m in msgs:
        got[m["key"]].append(m["value"])
    assert dict(got) == expected


# ---- Kafka -------------------------------------------------------------------------

def test_broker_roundtrip_idempotent(kafka_broker):
    assert len(kafka_broker.bootstrap.split(",")) == 3
    p = producer(kafka_broker.bootstrap, idempotent=True, acks="all")
    keys = [b"ticker.upbit.BTC-KRW", b"trade.binance.BTC-USDT", b"orderbook.bithumb.ETH-KRW"] + \
        [b"k%d" % i for i in range(17)]
    items, expected = [], collections.defaultdict(list)
    for i in range(1000):
        k = keys[i % len(keys)]
        v = b'{"seq":%d}' % i
        items.append((k, v))
        expected[k].append(v)
    res = _produce_many(p, items, headers=[("epoch", b"7")])
    assert p.flush(20) == 0
    assert res["err"] == [] and len(res["ok"]) == 1000
    assert {m.partition() for m in res["ok"]} == {0, 1, 2}

    with Consumer(kafka_broker.bootstrap, TOPIC) as c:
        assert c.partitions == [0, 1, 2]
        msgs = c.collect(1000, timeout=20)
        c.poll(0.3)
        assert len(c.messages) == 1000
    _check_per_key_order(msgs, dict(expected))
    assert all(m["headers"] == {"epoch": b"7"} for m in msgs)


def test_broker_down_up_nothing_lost(kafka_broker):
    bs = kafka_broker.bootstrap
    c = Consumer(bs, TOPIC)
    p = producer(bs, idempotent=True, acks="all")
    try:
        before = [(b"key%d" % (i % 5), b"a%d" % i) for i in range(100)]
        r1 = _produce_many(p, before)
        assert p.flush(10) == 0 and len(r1["ok"]) == 100

        assert kafka_broker.down() == "ok down all"
        st = kafka_broker.status()
        assert st["down"] == [1, 2, 3]
        during = [(b"key%d" % (i % 5), b"b%d" % i) for i in range(200)]
        r2 = _produce_many(p, during)
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            p.poll(0.1)
        assert r2["ok"] == [], "delivered while every broker was down"

        assert kafka_broker.up() == "ok up all"
        assert p.flush(25) == 0
        assert r2["err"] == [] and len(r2["ok"]) == 200

        expected = collections.defaultdict(list)
        for k, v in before + during:
            expected[k].append(v)
        msgs = c.collect(300, timeout=25)
        c.poll(0.5)
        assert len(c.messages) == 300, "duplicates after reconnect"
        _check_per_key_order(msgs, dict(expected))
    finally:
        c.close()


def test_broker_error_injection_and_commands(kafka_broker):
    b = kafka_broker
    assert b.command("bogus").startswith("error ")
    assert b.command("down 99").startswith("error ")
    assert b.command("rtt all 20") == "ok rtt all 20"
    assert b.status()["rtt_ms"] == {"1": 20, "2": 20, "3": 20}
    b.rtt(0)
    assert b.create_topic("other", 2).startswith("ok topic other 2")
    # Retriable Produce errors: the idempotent producer retries and succeeds.
    assert b.inject_error("Produce", "NOT_LEADER_FOR_PARTITION", 3).startswith("ok error 0")
    m = produce(b.bootstrap, "other", "k", "v1", headers={"epoch": "3"})
    assert m.topic() == "other" and m.offset() >= 0
    with Consumer(b.bootstrap, "other") as c:
        msgs = c.collect(1, timeout=10)
    assert msgs[0]["value"] == b"v1" and msgs[0]["headers"] == {"epoch": b"3"}
    # A non-retriable error reaches the application.
    b.inject_error("Produce", "INVALID_RECORD", 1)
    with pytest.raises(AssertionError, match="INVALID_RECORD"):
        produce(b.bootstrap, "other", "k", "v2", idempotent=False, retries=0)


def test_broker_exits_on_stdin_eof_and_sigterm(kafka_factory):
    b = kafka_factory()
    pid = b.proc.pid
    b.proc.popen.stdin.close()
    assert b.proc.wait(timeout=5) == 0
    assert not util.pid_alive(pid)

    b2 = kafka_factory(brokers=1, topics=("t:1",))
    assert len(b2.bootstrap.split(",")) == 1
    b2.proc.send_signal(signal.SIGTERM)
    assert b2.proc.wait(timeout=5) == 0


# ---- ZooKeeper ------------------------------------------------------------------

def _kazoo(connect, timeout=5.0):
    from kazoo.client import KazooClient
    k = KazooClient(hosts=connect, timeout=timeout, connection_retry={"max_tries": -1, "max_delay": 0.2})
    k.start(timeout=10)
    return k


def test_zk_server_ephemeral(zk_server):
    assert util.port_open(zk_server.port)
    k = _kazoo(zk_server.connect)
    try:
        k.ensure_path("/harness-test")
        path = k.create("/harness-test/e-", b"me", ephemeral=True, sequence=True)
        data, stat = k.get(path)
        assert data == b"me" and stat.ephemeralOwner == k.client_id[0]
    finally:
        k.stop()
        k.close()
    k2 = _kazoo(zk_server.connect)
    try:
        assert k2.get_children("/harness-test") == []
    finally:
        k2.stop()
        k2.close()


def test_zk_stop_start_keeps_port_and_data(zk_factory):
    zk = zk_factory()
    port = zk.port
    k = _kazoo(zk.connect, timeout=10.0)
    try:
        k.create("/persist", b"1")
        k.create("/eph", b"2", ephemeral=True)
        zk.stop()
        assert not util.port_open(port)
        util.wait_until(lambda: k.state != "CONNECTED", timeout=5, what="kazoo to notice")
        zk.start()
        assert zk.port == port
        util.wait_until(lambda: k.connected, timeout=10, what="kazoo to reconnect")
        assert k.get("/persist")[0] == b"1"
        # the session outlived a short outage, so its ephemeral node did too
        assert k.get("/eph")[0] == b"2"
    finally:
        k.stop()
        k.close()
    zk.kill()
    assert not zk.running()


def test_zk_short_session_timeout_allowed(zk_server):
    """minSessionTimeout is low so the service can use ~1 s sessions."""
    from harness.zk import four_letter
    k = _kazoo(zk_server.connect, timeout=1.2)
    try:
        sid = "sid=0x%x," % k.client_id[0]
        cons = [line for line in four_letter(zk_server.port, "cons").splitlines() if sid in line]
        assert len(cons) == 1 and "to=1200," in cons[0], cons
    finally:
        k.stop()
        k.close()


# ---- util -------------------------------------------------------------------------

def test_proc_group_teardown_kills_tree(tmp_path):
    p = util.Proc(["sh", "-c", "sleep 60 & sleep 60 & echo started; wait"], tmp_path, name="tree")
    p.start()
    util.wait_until(lambda: len(util.descendants(p.pid)) == 2, timeout=5, what="two children")
    kids = util.descendants(p.pid)
    assert util.wait_until(lambda: "started" in open(p.stdout_path).read(), timeout=5, what="output")
    p.stop(timeout=2)
    for pid in kids + [p.pid]:
        assert not util.pid_alive(pid)
    assert util.pids_in_session(p.pid) == []
    assert p.stragglers == []


def test_proc_stop_reports_and_kills_orphans(tmp_path):
    # The leader exits on SIGTERM but its child ignores it: an orphan.
    # "started" is printed by the child once it ignores SIGTERM (and the
    # leader set its trap before forking): printed by the leader right after
    # the fork, the SIGTERM could reach the child before its `trap ''` ran,
    # and the child died with the leader (stragglers 0).
    p = util.Proc(["sh", "-c", "trap 'exit 0' TERM; (trap '' TERM; echo started; exec sleep 60) & "
                   "while :; do sleep 0.05; done"], tmp_path, name="leaky")
    p.start()
    util.wait_until(lambda: "started" in open(p.stdout_path).read(), timeout=5, what="output")
    assert p.stop(timeout=1) == 0
    assert len(p.stragglers) == 1
    assert not util.pid_alive(p.stragglers[0])


def test_proc_sigkill_after_deadline(tmp_path):
    p = util.Proc([sys.executable, "-c",
                   "import signal,time,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)"], tmp_path, name="stubborn")
    p.start()
    util.wait_until(lambda: "ready" in open(p.stdout_path).read(), timeout=5, what="ready")
    t = time.monotonic()
    rc = p.stop(timeout=0.5)
    assert rc == -signal.SIGKILL and time.monotonic() - t < 5
    assert "ready" in p.logs()


def test_wait_until_and_http_get():
    with pytest.raises(AssertionError, match="the impossible"):
        util.wait_until(lambda: False, timeout=0.2, what="the impossible")
    assert util.wait_until(lambda: 42, timeout=1) == 42

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"path":"%s"}' % self.path.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    port = util.free_port()
    srv = http.server.HTTPServer(("127.0.0.1", port), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        st, hdrs, body = util.http_get("http://127.0.0.1:%d/status?x=1" % port, timeout=2)
        assert st == 200 and hdrs["content-type"] == "application/json"
        assert body == b'{"path":"/status?x=1"}'
    finally:
        srv.shutdown()
        srv.server_close()
