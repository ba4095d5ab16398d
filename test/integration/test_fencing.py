"""Kafka producer fencing against a real Apache Kafka broker (issue 14 item 4):
a leader frozen past its ZooKeeper session is replaced, and once thawed
nothing it produces is appended (visible to a read_committed consumer) after
the new leader's first message. A read_uncommitted view shows what a consumer
unaware of transactions sees.

The broker is the session's real single-node Kafka (KRaft), with a topic of
3 partitions private to the test."""
import json
import os
import signal

import confluent_kafka

from harness import util
from test_election import SESSION_MS, cluster, ingest_pids, leaders


def topic_ends(bootstrap, topic):
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "fencing-check"})
    try:
        return {p: c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in range(3)}
    finally:
        c.close()


def read_topic(bootstrap, topic, isolation, ends, timeout=60.0, values=False):
    """Every record of `topic` before `ends` ({partition: offset}), per
    partition in offset order: {p: [(offset, epoch)]} (+ value with values)."""
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "fencing-check",
                                  "enable.auto.commit": False, "isolation.level": isolation})
    parts = [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in ends]
    c.assign(parts)
    out = {p: [] for p in ends}

    def caught_up():
        m = c.poll(0.2)
        if m is not None and not m.error() and m.offset() < ends[m.partition()]:
            rec = (m.offset(), json.loads(m.value()).get("epoch"))
            out[m.partition()].append(rec + (m.value(),) if values else rec)
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


def test_frozen_leader_cannot_append_after_new_leader(zk_server, kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--upbit-markets", "KRW-BTC", "--rate", "100"])
    svcs = cluster(service_factory, zk_server, kafka_broker, sim, n=2)
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
        # Its epoch is allocated (through ZooKeeper) just after it leads.
        util.wait_until(lambda: b.status()["epoch"] > epoch_a, timeout=10, what="B's epoch above A's")
        epoch_b = b.status()["epoch"]
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

    k, topic = kafka_broker.bootstrap, kafka_broker.topic
    ends = topic_ends(k, topic)
    committed = read_topic(k, topic, "read_committed", ends)
    uncommitted = read_topic(k, topic, "read_uncommitted", ends)
    assert any(r[1] == epoch_a for recs in committed.values() for r in recs), "A's data before the freeze"
    assert any(r[1] == epoch_b for recs in committed.values() for r in recs), "B's data"
    late_committed = after_first_of(committed, epoch_b)
    late_uncommitted = after_first_of(uncommitted, epoch_b)
    aborted = sum(len(v) for v in uncommitted.values()) - sum(len(v) for v in committed.values())
    print("fencing: read_committed records of A after B's first: %d; read_uncommitted: %d; "
          "records only read_uncommitted sees (aborted): %d"
          % (len(late_committed), len(late_uncommitted), aborted))
    assert late_committed == []


def test_aborted_transaction_is_produced_again_in_order(kafka_factory, sim_factory, service_factory):
    # The broker freezes longer than the transaction timeout: the open
    # transaction's messages time out, the transaction is aborted, and its
    # messages are produced again, first and in order: every seq once.
    k = kafka_factory(nodes=1)
    sim = sim_factory(args=["--upbit-markets", "KRW-BTC", "--rate", "20"])
    svc = service_factory(sim_ports=sim.ports,
                          overrides={"kafka": {"brokers": k.bootstrap, "topic": "exchange",
                                               "fallback_after_ms": 60000},
                                     "exchange.upbit": {"markets": "KRW-BTC"}}).wait_ready(timeout=60)

    def txns(result):
        return svc.metric("exchange_ingest_kafka_transactions_total", {"result": result}) or 0
    util.wait_until(lambda: txns("committed") >= 5, timeout=30, what="transactions committed")
    k.node(1).pause()
    try:
        util.wait_until(lambda: (svc.metric("exchange_ingest_kafka_failed_total", {"error": "_MSG_TIMED_OUT"})
                                 or 0) >= 1, timeout=30, what="messages of the open transaction time out")
    finally:
        k.node(1).resume()
    util.wait_until(lambda: txns("aborted") >= 1, timeout=30, what="the transaction aborted")
    done = txns("committed") + 5
    util.wait_until(lambda: txns("committed") >= done, timeout=60, what="commits after the broker is back")
    assert not svc.metric("exchange_ingest_kafka_dropped_total")
    epoch = svc.status()["epoch"]
    seqs = {}
    recs = read_topic(k.bootstrap, "exchange", "read_committed", topic_ends(k.bootstrap, "exchange"),
                      values=True)
    for p in recs.values():
        for _, e, v in p:
            m = json.loads(v)
            if e == epoch:
                seqs.setdefault(m["channel"], []).append(m["seq"])
    assert seqs
    for ch, s in seqs.items():
        assert s == list(range(s[0], s[0] + len(s))), "%s: %s" % (ch, s[:50])
