#!/usr/bin/python3
"""The latency cost of producer fencing (README "Leadership"): the ingest
worker produces ~RATE msgs/s into a real single-node Kafka broker; a
read_committed consumer measures now - record timestamp (set by librdkafka
when the ingest produces) for each record; the ingest's own histogram gives
send -> acknowledged (non-transactional) or send -> committed ("ack"), which
a loaded host's consumer lag does not blur. Runs the non-transactional
producer and transactions committed every 0/5/20/100 ms.

    make deps all && /usr/bin/python3 test/bench/txn_latency.py [--seconds 20] [--rate 1000]
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import confluent_kafka  # noqa: E402

from harness.kafka import start_kafka  # noqa: E402
from harness.service import Service  # noqa: E402
from harness.sim import Sim  # noqa: E402

TOPIC = "exchange"


# In the ingest: send -> acknowledged (non-transactional) or -> committed.
HIST = "exchange_ingest_kafka_delivery_seconds"


def measure(bootstrap, seconds):
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "latency",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
    c.assign([confluent_kafka.TopicPartition(TOPIC, p, confluent_kafka.OFFSET_END) for p in range(3)])
    lat, t_end = [], time.monotonic() + seconds
    while time.monotonic() < t_end:
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        kind, ts = m.timestamp()
        if kind == confluent_kafka.TIMESTAMP_CREATE_TIME:
            lat.append(time.time() * 1000 - ts)
    c.close()
    lat.sort()
    if not lat:
        return 0, float("nan"), float("nan")
    return len(lat) / seconds, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def histogram(svc, name):
    """Cumulative bucket counts {le: count} of a histogram in /metrics."""
    out = {}
    for line in svc.metrics().splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before, after, q):
    """q-quantile (ms) of the observations between two snapshots, linear
    within a bucket."""
    les = sorted(after)
    cum = [after[le] - before.get(le, 0) for le in les]
    if not cum or cum[-1] == 0:
        return float("nan")
    want, prev_le, prev_c = q * cum[-1], 0.0, 0.0
    for le, c in zip(les, cum):
        if c >= want:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (want - prev_c) / max(c - prev_c, 1)) * 1000
        prev_le, prev_c = le, c
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=1000, help="messages per second (upbit, 1 market)")
    ap.add_argument("--commit-ms", default="off,0,5,20,100")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="txn-latency-")
    kafka = start_kafka(os.path.join(tmp, "kafka"), nodes=1, topics=(TOPIC + ":3",))
    sim = Sim(os.path.join(tmp, "sim"), args=["--exchanges", "upbit", "--upbit-markets", "KRW-BTC",
                                              "--rate", str(args.rate / 3)]).start()
    print("%-10s %8s %8s %8s %10s %10s" % ("commit_ms", "msgs/s", "p50 ms", "p99 ms", "ack p50", "ack p99"))
    try:
        for i, mode in enumerate(args.commit_ms.split(",")):
            name = "svc%d-%s" % (i, mode)
            kafka_cfg = {"brokers": kafka.bootstrap, "topic": TOPIC, "fallback_after_ms": 60000}
            if mode == "off":
                kafka_cfg["transactions"] = False
            else:
                kafka_cfg["transaction_commit_ms"] = int(mode)
            os.makedirs(os.path.join(tmp, name))
            svc = Service(os.path.join(tmp, name), name=name, sim_ports=sim.ports,
                          overrides={"kafka": kafka_cfg, "exchange.upbit": {"markets": "KRW-BTC"}})
            svc.start()
            try:
                svc.wait_ready(timeout=60)
                time.sleep(3)  # warm-up: transactions initialised, feeds connected
                h0 = histogram(svc, HIST)
                rate, p50, p99 = measure(kafka.bootstrap, args.seconds)
                h1 = histogram(svc, HIST)
            finally:
                svc.stop()
            print("%-10s %8.0f %8.1f %8.1f %10.1f %10.1f" % (mode, rate, p50, p99, quantile(h0, h1, 0.5),
                                                               quantile(h0, h1, 0.99)), flush=True)
    finally:
        sim.stop()
        kafka.stop()


if __name__ == "__main__":
    main()
