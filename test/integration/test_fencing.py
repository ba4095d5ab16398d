"""Kafka producer fencing against a real Apache Kafka broker (issue 14 item 4):
a leader frozen past its ZooKeeper session is replaced, and once thawed
nothing it produces is appended (visible to a read_committed consumer) after
the new leader's first message. A read_uncommitted view shows what a consumer
unaware of transactions sees.

The broker is one KRaft node (broker+controller) run from the jars of
`make deps` (.deps/kafka/libs, or $KAFKA_LIBS); until the shared real-Kafka
fixture of the h-kafka branch lands, this module starts its own."""
import base64
import json
import os
import signal
import time
import uuid

import pytest

from harness import util
from harness.service import REPO
from test_election import SESSION_MS, cluster, ingest_pids, leaders

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka_admin = pytest.importorskip("confluent_kafka.admin")

TOPIC = "exchange"
LIBS = os.environ.get("KAFKA_LIBS", os.path.join(REPO, ".deps", "kafka", "libs"))
JAVA = os.environ.get("JAVA", "/usr/bin/java")


def _java(main, *args):
    return [JAVA, "-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            "-Dlog4j2.configurationFile=" + os.path.join(REPO, "test", "kafka", "log4j2.properties"),
            "-cp", os.path.join(LIBS, "*"), main] + list(args)


class RealKafka:
    """One KRaft node; transactions work on it (replication factors 1)."""

    def __init__(self, base):
        self.dir = str(base)
        self.port, self.cport = util.free_port(), util.free_port()
        self.bootstrap = "127.0.0.1:%d" % self.port
        self.props = os.path.join(self.dir, "server.properties")
        self.proc = util.Proc(_java("kafka.Kafka", self.props), self.dir, name="kafka-real")

    def start(self, timeout=120.0):
        os.makedirs(self.dir, exist_ok=True)
        conf = {
            "process.roles": "broker,controller", "node.id": 1,
            "controller.quorum.voters": "1@127.0.0.1:%d" % self.cport,
            "listeners": "PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (self.port, self.cport),
            "advertised.listeners": "PLAINTEXT://127.0.0.1:%d" % self.port,
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": os.path.join(self.dir, "data"),
            "offsets.topic.replication.factor": 1, "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1, "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1, "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
        }
        with open(self.props, "w") as f:
            f.writelines("%s=%s\n" % kv for kv in conf.items())
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = util.Proc(_java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", self.props),
                        self.dir, name="kafka-format").start()
        assert fmt.wait(timeout=timeout) == 0, fmt.logs()
        self.proc.start()
        admin = kafka_admin.AdminClient({"bootstrap.servers": self.bootstrap})
        fs = None

        def topic_ready():
            nonlocal fs
            if not self.proc.running():
                raise AssertionError("kafka exited\n%s" % self.proc.logs())
            try:
                if fs is None:
                    fs = admin.create_topics([kafka_admin.NewTopic(TOPIC, 3, 1)],
                                             request_timeout=5)[TOPIC]
                fs.result(timeout=5)
            except Exception:  # noqa: BLE001 - broker still starting
                fs = None
                return False
            md = admin.list_topics(TOPIC, timeout=5).topics[TOPIC]
            return len(md.partitions) == 3 and all(p.leader >= 0 for p in md.partitions.values())
        util.wait_until(topic_ready, timeout=timeout, interval=0.5, what="kafka up with topic %s" % TOPIC)
        return self

    def stop(self):
        self.proc.stop(timeout=15)


@pytest.fixture
def real_kafka(tmp_path):
    if not os.path.isdir(LIBS):
        pytest.skip("Kafka jars missing: run make deps")
    k = RealKafka(tmp_path / "kafka").start()
    yield k
    k.stop()


def topic_ends(bootstrap):
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "fencing-check"})
    try:
        return {p: c.get_watermark_offsets(confluent_kafka.TopicPartition(TOPIC, p), timeout=10)[1]
                for p in range(3)}
    finally:
        c.close()


def read_topic(bootstrap, isolation, ends, timeout=60.0):
    """Every record of TOPIC before `ends` ({partition: offset}), per
    partition in offset order: {p: [(offset, epoch)]}."""
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "fencing-check",
                                  "enable.auto.commit": False, "isolation.level": isolation})
    parts = [confluent_kafka.TopicPartition(TOPIC, p, confluent_kafka.OFFSET_BEGINNING) for p in ends]
    c.assign(parts)
    out = {p: [] for p in ends}

    def caught_up():
        m = c.poll(0.2)
        if m is not None and not m.error() and m.offset() < ends[m.partition()]:
            out[m.partition()].append((m.offset(), json.loads(m.value()).get("epoch")))
        pos = {tp.partition: tp.offset for tp in c.position(parts)}
        return all(pos[p] >= ends[p] for p in ends)
    try:
        util.wait_until(caught_up, timeout=timeout, interval=0, what="%s read to the end" % isolation)
    finally:
        c.close()
    return out


def after_first_of(records, epoch):
    """Per partition: the records of an epoch below `epoch` that follow that
    partition's first record of `epoch` or later."""
    late = []
    for p, recs in records.items():
        first = next((i for i, r in enumerate(recs) if r[1] >= epoch), None)
        if first is not None:
            late += [(p,) + r for r in recs[first:] if r[1] < epoch]
    return late


def test_frozen_leader_cannot_append_after_new_leader(zk_server, real_kafka, sim_factory, service_factory):
    sim = sim_factory(args=["--upbit-markets", "KRW-BTC", "--rate", "100"])
    svcs = cluster(service_factory, zk_server, real_kafka, sim, n=2)
    a = leaders(svcs)[0]
    b = [s for s in svcs if s is not a][0]
    epoch_a = a.status()["epoch"]
    util.wait_until(lambda: (a.metric("exchange_ingest_kafka_transactions_total", {"result": "committed"})
                             or 0) >= 5, timeout=30, what="leader A commits transactions")
    frozen = [a.pid] + a.tree()
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    try:
        util.wait_until(lambda: leaders([b]) == [b], timeout=SESSION_MS / 1000 + 10, what="B leads")
        epoch_b = b.status()["epoch"]
        assert epoch_b > epoch_a
        util.wait_until(lambda: (b.metric("exchange_ingest_kafka_transactions_total", {"result": "committed"})
                                 or 0) >= 3, timeout=30, what="B commits transactions")
    finally:
        for p in frozen:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    # A wakes up with a backlog: its ingest stops (fenced by B's producer, or
    # its lease lapsed) and the instance steps down.
    util.wait_until(lambda: a.status()["role"] == "follower", timeout=15, what="A steps down")
    util.wait_until(lambda: len(ingest_pids(svcs)) == 1 and ingest_pids(svcs)[0] not in frozen,
                    timeout=15, what="only B's ingest runs")
    assert "lease expired" in a.stderr() or "fenced" in a.stderr()
    # B keeps producing after A's backlog would have landed.
    done = (b.metric("exchange_ingest_kafka_transactions_total", {"result": "committed"}) or 0) + 5
    util.wait_until(lambda: (b.metric("exchange_ingest_kafka_transactions_total",
                                      {"result": "committed"}) or 0) >= done, timeout=30,
                    what="B commits after A woke up")

    ends = topic_ends(real_kafka.bootstrap)
    committed = read_topic(real_kafka.bootstrap, "read_committed", ends)
    uncommitted = read_topic(real_kafka.bootstrap, "read_uncommitted", ends)
    assert any(r[1] == epoch_a for recs in committed.values() for r in recs), "A's data before the freeze"
    assert any(r[1] == epoch_b for recs in committed.values() for r in recs), "B's data"
    late_committed = after_first_of(committed, epoch_b)
    late_uncommitted = after_first_of(uncommitted, epoch_b)
    aborted = sum(len(v) for v in uncommitted.values()) - sum(len(v) for v in committed.values())
    print("fencing: read_committed records of A after B's first: %d; read_uncommitted: %d; "
          "records only read_uncommitted sees (aborted): %d"
          % (len(late_committed), len(late_uncommitted), aborted))
    assert late_committed == []
