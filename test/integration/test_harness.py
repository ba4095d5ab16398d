"""Self-tests of the integration harness: the real Kafka (KRaft) fixtures,
the ZooKeeper fixture and the process helpers."""
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
    topic = kafka_broker.topic
    p = producer(kafka_broker.bootstrap, idempotent=True, acks="all")
    keys = [b"ticker.upbit.BTC-KRW", b"trade.binance.BTC-USDT", b"orderbook.bithumb.ETH-KRW"] + \
        [b"k%d" % i for i in range(17)]
    items, expected = [], collections.defaultdict(list)
    for i in range(1000):
        k = keys[i % len(keys)]
        v = b'{"seq":%d}' % i
        items.append((k, v))
        expected[k].append(v)
    res = _produce_many(p, items, topic=topic, headers=[("epoch", b"7")])
    assert p.flush(20) == 0
    assert res["err"] == [] and len(res["ok"]) == 1000
    assert {m.partition() for m in res["ok"]} == {0, 1, 2}

    with Consumer(kafka_broker.bootstrap, topic) as c:
        assert c.partitions == [0, 1, 2]
        msgs = c.collect(1000, timeout=20)
        c.poll(0.3)
        assert len(c.messages) == 1000
    _check_per_key_order(msgs, dict(expected))
    assert all(m["headers"] == {"epoch": b"7"} for m in msgs)


def test_broker_down_up_nothing_lost(kafka_factory):
    k = kafka_factory(nodes=1, topics=("exchange:3",))
    print("single node ready in %.2fs" % k.started_in)
    bs = k.bootstrap
    c = Consumer(bs, TOPIC)
    p = producer(bs, idempotent=True, acks="all")
    try:
        before = [(b"key%d" % (i % 5), b"a%d" % i) for i in range(100)]
        r1 = _produce_many(p, before)
        assert p.flush(10) == 0 and len(r1["ok"]) == 100

        k.down()
        assert not any(n.running() for n in k.nodes)
        during = [(b"key%d" % (i % 5), b"b%d" % i) for i in range(200)]
        r2 = _produce_many(p, during)
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            p.poll(0.1)
        assert r2["ok"] == [], "delivered while every broker was down"

        t0 = time.monotonic()
        k.up()
        print("up again (same log dir) in %.2fs" % (time.monotonic() - t0))
        assert p.flush(25) == 0
        assert r2["err"] == [] and len(r2["ok"]) == 200

        expected = collections.defaultdict(list)
        for key, v in before + during:
            expected[key].append(v)
        msgs = c.collect(300, timeout=25)
        c.poll(0.5)
        assert len(c.messages) == 300, "duplicates after reconnect"
        _check_per_key_order(msgs, dict(expected))
    finally:
        c.close()


def _transaction(bs, topic, tid, values, commit=True):
    p = producer(bs, **{"transactional.id": tid})
    p.init_transactions(20)
    p.begin_transaction()
    for v in values:
        p.produce(topic, key=b"k", value=v)
    (p.commit_transaction if commit else p.abort_transaction)(20)


def test_three_nodes_kill9_pause_restart_and_transactions(kafka_factory):
    k = kafka_factory(nodes=3, topics=())
    print("3 nodes ready in %.2fs" % k.started_in)
    assert len(k.bootstrap.split(",")) == 3
    k.create_topic("r3", 6, rf=3, configs={"min.insync.replicas": 2})
    info = k.topic_info("r3")
    assert all(sorted(p["replicas"]) == [1, 2, 3] and sorted(p["isr"]) == [1, 2, 3] for p in info.values())
    assert k.topic_config("r3")["min.insync.replicas"] == "2"
    # Transactions (internal topic with RF 3, min ISR 2): read_committed sees
    # the committed batch only.
    _transaction(k.bootstrap, "r3", "harness-tx", [b"aborted"], commit=False)
    _transaction(k.bootstrap, "r3", "harness-tx", [b"c%d" % i for i in range(10)])

    counts = k.leader_counts("r3")
    victim = k.node(max(counts, key=counts.get))
    t0 = time.monotonic()
    victim.kill()
    util.wait_until(lambda: victim.id not in {p["leader"] for p in k.topic_info("r3").values()}, timeout=15,
                    what="leadership moves off the killed node")
    print("kill -9 node %d (led %d of 6): leaders moved in %.2fs" % (victim.id, counts[victim.id],
                                                                      time.monotonic() - t0))
    produce(k.bootstrap, "r3", "k", "while-one-down")  # acks=all, 2 in ISR >= min.insync.replicas
    t0 = time.monotonic()
    victim.restart()
    util.wait_until(lambda: all(len(p["isr"]) == 3 for p in k.topic_info("r3").values()), timeout=30,
                    what="ISR back to 3")
    print("restart on its log dir, ISR 3 again in %.2fs" % (time.monotonic() - t0))

    other = k.nodes[0] if victim is not k.nodes[0] else k.nodes[1]
    other.pause()
    assert util.pid_alive(other.proc.pid) and util.port_open(other.port)  # hung, socket still there
    other.resume()
    with Consumer(k.bootstrap, "r3") as c:
        msgs = c.collect(11, timeout=20)
        c.poll(0.5)
    assert sorted(m["value"] for m in c.messages) == sorted([b"c%d" % i for i in range(10)] + [b"while-one-down"])
    for n in k.nodes:
        assert "-Xmx256m" in open("/proc/%d/cmdline" % n.proc.pid).read().split("\0")
        assert "Kafka Server started" in open(n.log_path).read()
        assert n.name in n.logs()


def test_node_sigterm_and_restart_keep_data(kafka_factory):
    k = kafka_factory(nodes=1, topics=("t:1",))
    _transaction(k.bootstrap, "t", "harness-tx1", [b"v1"])
    n = k.nodes[0]
    pid = n.proc.pid
    assert n.stop() in (0, 143)  # the JVM exits 128+SIGTERM after its shutdown hook
    assert not util.pid_alive(pid)
    assert "Terminating process due to signal SIGTERM" in open(n.log_path).read()
    n.restart()
    with Consumer(k.bootstrap, "t") as c:
        msgs = c.collect(1, timeout=10)
    assert msgs[0]["value"] == b"v1"


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
    p = util.Proc(["sh", "-c", "(trap '' TERM; exec sleep 60) & echo started; trap 'exit 0' TERM; "
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
