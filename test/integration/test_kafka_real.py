"""The service against a real Apache Kafka (KRaft) cluster: topic creation,
a partition leader killed under load on a 3-node cluster, a hung broker,
and the stream as kcat shows it. (All brokers down 20 s and back is
test_relay.py::test_kafka_outage_fallback_and_back, on the real broker.)

Each test prints what it measured."""
import calendar
import json
import re
import subprocess
import time

import pytest

from harness import util
from harness.service import leaders
from harness.kafka import start_kafka
from harness.wsclient import WsClient, seq_problems

SESSION_MS = 2000
TRADES = "trade.*.*"


def max_silence(client, t0, t1, channel):
    """Longest time without a message of `channel` between t0 and t1."""
    times = [t for t, m in list(client.frames)
             if t0 <= t <= t1 and isinstance(m, dict) and m.get("channel") == channel]
    pts = [t0] + times + [t1]
    return max(b - a for a, b in zip(pts, pts[1:]))


def first_log_time(svc, *needles, after=0.0):
    """Time (epoch s) of the first log line of svc containing every needle,
    logged at or after `after`; None if none yet."""
    for line in svc.stderr().splitlines():
        if not line.startswith("time=") or not all(n in line for n in needles):
            continue
        t = calendar.timegm(time.strptime(line[5:24], "%Y-%m-%dT%H:%M:%S")) + float(line[24:28])
        if t >= after:
            return t
    return None


def fanouts(svc):
    try:
        return [w for w in svc.status()["workers"] if w["kind"] == "fanout" and w["state"] == "running"]
    except Exception:  # noqa: BLE001 - a busy instance
        return []


def kafka_messages(svc):
    return svc.metric("exchange_fanout_source_messages_total", {"source": "kafka"}) or 0


def stderr_of(svcs):
    return "".join(s.stderr() for s in svcs)


def instances(service_factory, sim, kafka, topic, n, zk=None, kafka_keys=None):
    name = "kr%d" % int(time.monotonic() * 1000)
    svcs = []
    for i in range(n):
        ov = {"service": {"cluster": name},
              "kafka": dict({"brokers": kafka.bootstrap, "topic": topic}, **(kafka_keys or {})),
              "fanout": {"workers": 1}}
        if zk is not None:
            ov["zookeeper"] = {"connect": zk.connect, "session_timeout_ms": SESSION_MS}
        svcs.append(service_factory(name="node%d" % i, sim_ports=sim.ports, overrides=ov))
    for s in svcs:
        s.wait_ready(timeout=30)
    if zk is not None:
        util.wait_until(lambda: len(leaders(svcs)) == 1, timeout=20, what="one leader")
    return svcs


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory):
    """One 3-node cluster (each node broker+controller, min.insync.replicas 2)
    for this module's replication tests. A test that stops a node brings it
    back (ISR 3) before it ends; each uses its own topic."""
    # Kafka's own broker session timeout (9 s, as on MSK), not the harness'
    # shorter one: how long a dead or hung broker keeps its leaderships.
    k = start_kafka(tmp_path_factory.mktemp("kafka3"), nodes=3, topics=(), name="kafka3",
                    overrides={"min.insync.replicas": 2, "broker.session.timeout.ms": 9000,
                               "broker.heartbeat.interval.ms": 2000})
    print("3 nodes ready in %.2fs" % k.started_in)
    yield k
    k.stop()


@pytest.fixture
def kafka3_clean(kafka3):
    """kafka3, every node running and unpaused (also after a failed test)."""
    for n in kafka3.nodes:
        if n.paused:
            n.resume()
    kafka3.up()
    return kafka3


# ---- topic ---------------------------------------------------------------------------

def test_existing_topic_with_other_partition_count_is_used(kafka_broker, sim_factory, service_factory):
    """The topic exists with 3 partitions, the service is configured for 6: it
    logs what it found and works with it."""
    sim = sim_factory(args=["--exchanges", "upbit", "--rate", "10"])
    svc = instances(service_factory, sim, kafka_broker, kafka_broker.topic, 1,
                    kafka_keys={"partitions": 6, "replication": 1})[0]
    c = WsClient(svc.ws_url, subscribe=[TRADES], name="c").start()
    try:
        util.wait_until(lambda: "kafka topic exists" in svc.stderr(), timeout=20, what="topic found")
        line = next(ln for ln in svc.stderr().splitlines() if "kafka topic exists" in ln)
        print("ingest: %s" % line[line.index("msg="):])
        assert re.search(r"partitions=3 replication=1 configured_partitions=6", line), line
        assert "level=warn" in line
        c.wait_for(lambda c: len(c.data("trade.")) >= 20, timeout=20, what="trades through Kafka")
        # the admin port sums the workers' counters every stats interval
        util.wait_until(lambda: kafka_messages(svc) > 0, timeout=10, what="messages counted from Kafka")
        assert all(f["source"] == "kafka" for f in fanouts(svc))
        assert len(kafka_broker.topic_info()) == 3  # untouched
        assert seq_problems(c.data("trade.")) == []
    finally:
        c.close()


# ---- 3 nodes: a partition leader killed under load --------------------------------------

def test_kill9_partition_leader_no_gap_then_rejoins(kafka3_clean, zk_server, sim_factory, service_factory):
    """3 nodes: the service creates its topic (6 partitions, replication 3;
    min.insync.replicas 2 is the cluster's default). Trades flow to clients on
    two instances; kill -9 the broker leading the most partitions: no client
    sees a gap, a duplicate or a reordering; the broker restarts on its log dir
    and rejoins every ISR."""
    k = kafka3_clean
    topic = "market-data-kill9"
    assert topic not in k.admin().list_topics(timeout=5).topics
    sim = sim_factory()
    svcs = instances(service_factory, sim, k, topic, 2, zk=zk_server,
                     kafka_keys={"partitions": 6, "replication": 3})
    util.wait_until(lambda: "kafka topic created" in stderr_of(svcs), timeout=20, what="topic created")
    # (Every broker learns of the topic a moment after the controller.)
    info = util.wait_until(lambda: (lambda i: i if len(i) == 6 else None)(k.topic_info(topic)), timeout=10,
                           what="topic %s in the metadata" % topic)
    assert len(info) == 6 and all(sorted(p["replicas"]) == [1, 2, 3] for p in info.values()), info
    assert k.topic_config(topic)["min.insync.replicas"] == "2"
    print("service created %s: %d partitions, replication %d" % (topic, len(info), len(info[0]["replicas"])))

    clients = [WsClient(s.ws_url, subscribe=[TRADES], name="c-" + s.name).start() for s in svcs]
    try:
        for c in clients:
            c.wait_for(lambda c: len({m["channel"] for m in c.data("trade.")}) >= 8, timeout=30,
                       what="trades of all 8 markets via kafka")
        channels = sorted({m["channel"] for m in clients[0].data("trade.")})
        counts = k.leader_counts(topic)
        victim = k.node(max(counts, key=counts.get))
        before = [len(c.data("trade.")) for c in clients]
        t_kill = time.time()
        victim.kill()
        util.wait_until(lambda: victim.id not in {p["leader"] for p in k.topic_info(topic).values()},
                        timeout=20, what="leaders moved off node %d" % victim.id)
        t_moved = time.time()
        # Every channel moves on after the kill, on both instances.
        for c, n in zip(clients, before):
            c.wait_for(lambda c: {m["channel"] for m in c.data("trade.")[n:]} >= set(channels), timeout=30,
                       what="every channel after the kill")
        t_after = time.time()
        victim.restart()
        util.wait_until(lambda: all(len(p["isr"]) == 3 for p in k.topic_info(topic).values()), timeout=40,
                        what="ISR back to 3")
        t_isr = time.time()
        n = [len(c.data("trade.")) for c in clients]
        for c, m in zip(clients, n):
            c.wait_for(lambda c, m=m: len(c.data("trade.")) >= m + 20, timeout=20, what="trades after rejoin")
        print("kill -9 node %d (led %d of 6 partitions): leaders moved after %.2fs, ISR 3 again %.2fs after"
              " its restart" % (victim.id, counts[victim.id], t_moved - t_kill, t_isr - t_after))
        for c, s in zip(clients, svcs):
            worst = max(max_silence(c, t_kill, t_after, ch) for ch in channels)
            print("%s: %d trades, longest silence of a channel after the kill %.2fs, switches to the relay %d"
                  % (c.name, len(c.data("trade.")), worst,
                     s.metric("exchange_fanout_source_switches_total", {"to": "relay"}) or 0))
            assert seq_problems(c.data("trade.")) == [], c.name
            # The dead leader was noticed (README): the relay covered its
            # partitions until the cluster moved their leadership.
            assert first_log_time(s, "kafka broker not answering", 'broker="%s/%d"' % (victim.address, victim.id),
                                  after=t_kill) is not None, s.name
            assert (s.metric("exchange_fanout_source_switches_total", {"to": "relay"}) or 0) >= 1, s.name
    finally:
        for c in clients:
            c.close()


# ---- 3 nodes: one broker hung ----------------------------------------------------------

FALLBACK_MS = 1000


def hung_bound_s(fallback_ms=FALLBACK_MS, fetch_wait_ms=500):
    """README "Kafka outage fallback": checked every fallback_after_ms / 4
    (250 ms to 5 s), a broker serving some of a worker's partitions that
    answered nothing for twice that (at least 1 s) + fetch_wait_max_ms makes
    the source unhealthy."""
    refresh = min(5000, max(250, fallback_ms // 4))
    return (max(1000, 2 * refresh) + fetch_wait_ms + refresh) / 1000.0


def test_hung_broker_noticed_within_bound(kafka3_clean, zk_server, sim_factory, service_factory):
    """SIGSTOP (10 s) the broker leading the most partitions: its connections
    stay open, nothing answers. Every fanout notices within the bound, serves
    from the relay, and clients see no gap, duplicate or reordering."""
    k = kafka3_clean
    topic = k.create_topic("market-data-hung", 6, rf=3)
    sim = sim_factory()
    svcs = instances(service_factory, sim, k, topic, 2, zk=zk_server,
                     kafka_keys={"fallback_after_ms": FALLBACK_MS, "recover_after_ms": 1000})
    clients = [WsClient(s.ws_url, subscribe=[TRADES], name="c-" + s.name).start() for s in svcs]
    try:
        for c in clients:
            c.wait_for(lambda c: len(c.data("trade.")) >= 40, timeout=30, what="trades via kafka")
        util.wait_until(lambda: all(f["source"] == "kafka" and kafka_messages(s) > 0
                                    for s in svcs for f in fanouts(s)), timeout=20, what="fanouts on kafka")
        channels = sorted({m["channel"] for m in clients[0].data("trade.")})
        counts = k.leader_counts(topic)
        victim = k.node(max(counts, key=counts.get))
        t_stop = time.time()
        victim.pause()
        noticed = {}

        def all_noticed():
            for s in svcs:
                t = first_log_time(s, "kafka broker not answering", 'broker="%s/%d"' % (victim.address, victim.id),
                                   after=t_stop)
                if t is not None:
                    noticed[s.name] = t - t_stop
            return len(noticed) == len(svcs)
        util.wait_until(all_noticed, timeout=10, interval=0.1, what="every instance notices the hung broker")
        util.wait_until(lambda: all((s.metric("exchange_fanout_source_switches_total", {"to": "relay"}) or 0) >= 1
                                    for s in svcs), timeout=FALLBACK_MS / 1000 + 5, what="fanouts to the relay")
        t_relay = time.time() - t_stop
        time.sleep(max(0.0, t_stop + 10 - time.time()))  # hung 10 s in all
        t_cont = time.time()
        victim.resume()
        util.wait_until(lambda: all(f["source"] == "kafka" for s in svcs for f in fanouts(s)) and all(
            (s.metric("exchange_fanout_source_switches_total", {"to": "kafka"}) or 0) >= 1 for s in svcs),
            timeout=30, what="fanouts back on kafka")
        t_back = time.time() - t_cont
        n = [len(c.data("trade.")) for c in clients]
        for c, m in zip(clients, n):
            c.wait_for(lambda c, m=m: len(c.data("trade.")) >= m + 20, timeout=20, what="trades after")
        util.wait_until(lambda: all(len(p["isr"]) == 3 for p in k.topic_info(topic).values()), timeout=40,
                        what="ISR back to 3")
        print("SIGSTOP node %d (led %d of 6): noticed after %s (bound %.2fs), all fanouts on the relay after"
              " %.2fs; SIGCONT after 10 s, back on kafka %.2fs later"
              % (victim.id, counts[victim.id], ", ".join("%s %.2fs" % kv for kv in sorted(noticed.items())),
                 hung_bound_s(), t_relay, t_back))
        silences = []
        for c in clients:
            worst = max(max_silence(c, t_stop, t_cont, ch) for ch in channels)
            silences.append(worst)
            print("%s: longest silence of a channel while hung %.2fs" % (c.name, worst))
            assert seq_problems(c.data("trade.")) == [], c.name
        # The bound, plus what a loaded 2-core machine adds to a poll loop.
        assert max(noticed.values()) <= hung_bound_s() + 1.0, noticed
        # Noticed, on the relay fallback_after_ms later, then its resume
        # fills the channels (+ the relay connect and the gap between trades).
        assert max(silences) <= hung_bound_s() + FALLBACK_MS / 1000 + 2.0, silences
    finally:
        for c in clients:
            c.close()
        if k.nodes and any(n.paused for n in k.nodes):
            for n in k.nodes:
                n.resume()


# ---- kcat -------------------------------------------------------------------------------

def kcat_lines(bootstrap, topic):
    """The README's command: key, headers, payload of every record."""
    r = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e",
                        "-X", "isolation.level=read_committed", "-f", "%k %h %s\\n"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().splitlines()


def test_kcat_shows_channel_key_and_epoch_header(kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--exchanges", "upbit,binance", "--rate", "10"])
    svc = instances(service_factory, sim, kafka_broker, kafka_broker.topic, 1)[0]
    util.wait_until(lambda: (svc.metric("exchange_ingest_kafka_produced_total") or 0) >= 30, timeout=30,
                    what="30 messages produced")
    # kcat -e stops at the end of every partition; for a read-committed
    # reader that end is the last committed offset, which a producer that
    # keeps a transaction open every commit interval never lets it reach:
    # stop the service (its ingest commits what it has) and read it all.
    assert svc.stop() == 0
    lines = kcat_lines(kafka_broker.bootstrap, kafka_broker.topic)
    print("kcat: %d records, first: %s" % (len(lines), lines[0][:160]))
    assert len(lines) >= 30
    chans = set()
    for ln in lines:
        key, headers, payload = ln.split(" ", 2)
        m = json.loads(payload)
        hdr = dict(h.split("=", 1) for h in headers.split(","))
        assert key == m["channel"], ln
        assert hdr["epoch"] == str(m["epoch"]), ln
        chans.add(key)
    assert any(c.startswith("trade.upbit.") for c in chans) and any(c.startswith("trade.binance.") for c in chans)
