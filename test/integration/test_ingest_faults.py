"""Exchange faults end to end (issue 4): simulator -> ingest (under the
supervisor) -> Kafka -> fanout -> a real client watching status.EXCHANGE and
data channels. Each fault must be survived, reported and counted."""
import time

import pytest

from harness import util
from harness.wsclient import WsClient


def statuses(client, exchange):
    return [(m["state"], m.get("detail", "")) for m in client.data("status.%s" % exchange)]


def service(service_factory, sim, kafka, **ex):
    over = {"kafka": {"brokers": kafka.bootstrap, "topic": kafka.topic}}
    for name, kv in ex.items():
        over["exchange." + name] = kv
    return service_factory(sim_ports=sim.ports, overrides=over).wait_ready()


def reconnects(svc, conn, cause):
    return svc.metric("exchange_ws_reconnects_total", {"conn": conn, "cause": cause}) or 0


def test_silence_is_stale_then_reconnect(kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--rate", "10"])
    svc = service(service_factory, sim, kafka_broker, upbit={"stale_after_ms": 1000})
    c = WsClient(svc.ws_url, subscribe=["status.upbit", "trade.upbit.*"], name="c").start()
    c.wait_for(lambda cl: ("subscribed", "") in statuses(cl, "upbit") and cl.data("trade.upbit"),
               timeout=15, what="upbit subscribed and trading")
    sim.control("POST", "/silence?exchange=upbit&ms=3000")
    c.wait_for(lambda cl: any(s == "stale" for s, _ in statuses(cl, "upbit")), timeout=10,
               what="stale status")
    util.wait_until(lambda: reconnects(svc, "upbit", "stale") >= 1, timeout=10, what="stale counted")
    n = len(c.data("trade.upbit"))
    # After the silence the feed reconnects and trades flow again, seq unbroken.
    c.wait_for(lambda cl: len(cl.data("trade.upbit")) > n + 5, timeout=20, what="trades after stale")
    for ch in {m["channel"] for m in c.data("trade.upbit")}:
        seqs = [m["seq"] for m in c.data(ch)]
        assert seqs == sorted(set(seqs)), "duplicates or reordering on %s" % ch
    c.close()


def test_refused_upgrade_backs_off(kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--rate", "5"])
    svc = service(service_factory, sim, kafka_broker,
                  bithumb={"reconnect_min_ms": 300, "reconnect_max_ms": 2000})
    util.wait_until(lambda: sim.control("GET", "/status")["connections"].get("bithumb", 0) >= 1,
                    timeout=15, what="bithumb connected")
    sim.control("POST", "/refuse?exchange=bithumb&count=4")
    t0 = time.monotonic()
    sim.control("POST", "/drop?exchange=bithumb")
    util.wait_until(lambda: reconnects(svc, "bithumb", "http_status") >= 4, timeout=20,
                    what="four refused attempts")
    took = time.monotonic() - t0
    # Four refusals, each attempt at least reconnect_min_ms after the previous.
    assert took >= 4 * 0.3 - 0.05, took
    util.wait_until(lambda: sim.control("GET", "/status")["connections"].get("bithumb", 0) >= 1,
                    timeout=15, what="bithumb back after the refusals")


def test_binance_shutdown_notice_and_coinbase_gap(kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--rate", "10"])
    svc = service(service_factory, sim, kafka_broker, coinbase={"book_interval_ms": 100})
    c = WsClient(svc.ws_url, subscribe=["status.binance", "status.coinbase", "orderbook.coinbase.*"],
                 name="c").start()
    c.wait_for(lambda cl: ("subscribed", "") in statuses(cl, "binance")
               and ("subscribed", "") in statuses(cl, "coinbase") and cl.data("orderbook.coinbase"),
               timeout=15, what="binance and coinbase subscribed")
    before = sim.control("GET", "/status")["accepted"]["binance"]
    sim.control("POST", "/shutdown-notice")
    util.wait_until(lambda: sim.control("GET", "/status")["accepted"]["binance"] > before, timeout=15,
                    what="binance reconnected after serverShutdown")
    assert any("server_shutdown" in d for _, d in statuses(c, "binance"))
    sim.control("POST", "/gap")
    c.wait_for(lambda cl: any(s == "error" and "gap" in d for s, d in statuses(cl, "coinbase")),
               timeout=10, what="sequence gap reported")
    n = len(c.data("orderbook.coinbase"))
    c.wait_for(lambda cl: len(cl.data("orderbook.coinbase")) > n + 3, timeout=15,
               what="books published again after the resubscribe")
    c.close()


def test_wrong_certificate_refused_unless_configured(kafka_broker, sim_factory, service_factory):
    sim = sim_factory(args=["--tls", "--rate", "5"])
    url = "wss://localhost:%d/websocket/v1" % sim.ports["upbit"]
    strict = service(service_factory, sim, kafka_broker, upbit={"url": url})
    util.wait_until(lambda: reconnects(strict, "upbit", "tls") >= 1, timeout=15,
                    what="self-signed certificate refused")
    assert sim.control("GET", "/status")["connections"].get("upbit", 0) == 0
    trusting = service_factory(name="trusting", sim_ports=sim.ports, overrides={
        "kafka": {"brokers": kafka_broker.bootstrap, "topic": kafka_broker.topic},
        "exchange.upbit": {"url": url, "ca_file": sim.info["cert"]}}).wait_ready()
    c = WsClient(trusting.ws_url, subscribe=["status.upbit"], name="c").start()
    c.wait_for(lambda cl: ("subscribed", "") in statuses(cl, "upbit"), timeout=15,
               what="subscribed over wss with the CA configured")
    c.close()
