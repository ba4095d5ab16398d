"""Kafka outage fallback (issue 6): the ingest worker's relay endpoint, the
fanout workers' switch to the leader's relay when Kafka fails and back when
it recovers, with per-channel seq strictly increasing and no gap the relay or
Kafka could have filled; leader changes followed in relay mode; the token;
and the standalone path without Kafka (what `make run` does)."""
import base64
import json
import os
import socket
import time

import pytest

from harness import util
from harness.service import cluster_nodes, leaders
from harness.kafka import Consumer
from harness.wsclient import WsClient, seq_problems

SESSION_MS = 2000
TOKEN = "test-relay-token"
FALLBACK_MS = 1000
RECOVER_MS = 1000
TRADE = "trade.upbit.BTC-KRW"
TICKER = "ticker.upbit.BTC-KRW"


def sim_upbit(sim_factory, rate=20):
    return sim_factory(args=["--exchanges", "upbit", "--upbit-markets", "KRW-BTC", "--rate", str(rate)])


def fanouts(svc):
    return [w for w in svc.status()["workers"] if w["kind"] == "fanout" and w["state"] == "running"]


def sources(svc):
    try:
        return [w.get("source") for w in fanouts(svc)]
    except Exception:  # noqa: BLE001 - a dying instance
        return []


def all_source(svcs, name):
    return all(sources(s) and all(x == name for x in sources(s)) for s in svcs)


def cluster(service_factory, zk, sim, n=2, kafka=None, extra=None):
    ov = {"kafka": {"brokers": kafka.bootstrap if kafka else "",
                    "topic": kafka.topic if kafka else "exchange",
                    "fallback_after_ms": FALLBACK_MS, "recover_after_ms": RECOVER_MS},
          "relay": {"token": TOKEN},
          "exchange.upbit": {"markets": "KRW-BTC"},
          "fanout": {"workers": 1}}
    for sec, kv in (extra or {}).items():
        ov.setdefault(sec, {}).update(kv)
    svcs = cluster_nodes(service_factory, zk, sim, n=n, session_ms=SESSION_MS, overrides=ov)
    util.wait_until(lambda: len(leaders(svcs)) == 1, timeout=20, what="one leader")
    return svcs


def max_silence(client, t0, t1, prefix):
    times = [t for t, m in list(client.frames)
             if t0 <= t <= t1 and isinstance(m, dict) and m.get("channel", "").startswith(prefix)]
    if not times:
        return t1 - t0
    pts = [t0] + times + [t1]
    return max(b - a for a, b in zip(pts, pts[1:]))


def raw_upgrade(port, path, headers=()):
    """Send a WebSocket upgrade by hand, return the HTTP status."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
    lines += list(headers)
    return util.raw_http_status(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


# ---- tests -------------------------------------------------------------------------

def test_standalone_relay_end_to_end(sim_factory, service_factory):
    """No Kafka (the local profile): simulator -> ingest -> relay -> fanout -> client."""
    sim = sim_upbit(sim_factory)
    svc = service_factory(name="solo", sim_ports=sim.ports, overrides={"exchange.upbit": {"markets": "KRW-BTC"}})
    svc.wait_ready(timeout=30)
    c = WsClient(svc.ws_url, subscribe=[TRADE, TICKER], name="solo-client").start()
    try:
        c.wait_for(lambda c: len(c.data("trade.")) >= 20, timeout=15, what="20 trades through the relay")
        assert seq_problems(c.data("trade."), check_gaps=True) == []
        assert seq_problems(c.data(), check_gaps=False) == []
        util.wait_until(lambda: sources(svc) == ["relay"], timeout=5, what="fanout source relay")
        assert svc.metric("exchange_relay_clients") >= 1
        assert svc.metric("exchange_relay_messages_total") > 0
        assert svc.metric("exchange_fanout_source_active", {"source": "relay"}) >= 1
    finally:
        c.close()


def test_relay_token_required(sim_factory, service_factory):
    sim = sim_upbit(sim_factory, rate=5)
    svc = service_factory(name="tok", sim_ports=sim.ports,
                          overrides={"exchange.upbit": {"markets": "KRW-BTC"}, "relay": {"token": TOKEN}})
    svc.wait_ready(timeout=30)
    port = svc.relay_port
    util.wait_until(lambda: util.port_open(port), timeout=10, what="relay listening")
    assert raw_upgrade(port, "/relay") == 401
    assert raw_upgrade(port, "/relay", ["Authorization: Bearer wrong"]) == 401
    assert raw_upgrade(port, "/relay?token=wrong") == 401
    assert raw_upgrade(port, "/relay", ["Authorization: Bearer " + TOKEN]) == 101
    assert raw_upgrade(port, "/relay?token=" + TOKEN) == 101
    assert raw_upgrade(port, "/elsewhere", ["Authorization: Bearer " + TOKEN]) == 404
    util.wait_until(lambda: (svc.metric("exchange_relay_rejected_total", {"reason": "token"}) or 0) >= 3,
                    timeout=5, what="rejections counted")
    # The fanout itself presents the token and is served.
    c = WsClient(svc.ws_url, subscribe=[TRADE], name="tok-client").start()
    try:
        c.wait_for(lambda c: len(c.data()) >= 3, timeout=15, what="data with the token")
    finally:
        c.close()


def test_kafka_outage_fallback_and_back(kafka_factory, zk_server, sim_factory, service_factory):
    """All brokers (a real single-node KRaft cluster) down 20 s, then up."""
    # (Fixture order: services are torn down before the broker, so they can flush.)
    kafka_broker = kafka_factory()
    sim = sim_upbit(sim_factory, rate=20)
    svcs = cluster(service_factory, zk_server, sim, n=2, kafka=kafka_broker)
    clients = [WsClient(s.ws_url, subscribe=[TRADE, TICKER], name="c-" + s.name).start() for s in svcs]
    try:
        def via_kafka(n):
            return all(all(w.get("source") == "kafka" and w.get("kafka_healthy") for w in fanouts(s))
                       and (s.metric("exchange_fanout_source_messages_total", {"source": "kafka"}) or 0) >= n
                       for s in svcs)
        util.wait_until(lambda: via_kafka(10), timeout=20, what="fanouts consuming kafka")
        for c in clients:
            c.wait_for(lambda c: len(c.data("trade.")) >= 10, timeout=15, what="trades via kafka")

        kafka_broker.down()
        t0 = time.time()
        util.wait_until(lambda: all_source(svcs, "relay"), timeout=FALLBACK_MS / 1000 + 8,
                        what="fanouts switched to the relay")
        time.sleep(max(0.0, t0 + 20 - time.time()))  # the brokers stay down 20 s
        t_up = time.time()
        for c in clients:
            # Receiving again within fallback_after_ms + 1 s, then never silent that long.
            silent = max_silence(c, t0, t_up, "trade.")
            assert silent < FALLBACK_MS / 1000 + 1, "%s silent %.1fs during the outage" % (c.name, silent)
        print("longest silence during the outage: %s" % ", ".join(
            "%s %.2fs" % (c.name, max_silence(c, t0, t_up, "trade.")) for c in clients))
        kafka_broker.up()  # returns when the broker answers metadata again
        t_ready = time.time()
        util.wait_until(lambda: all_source(svcs, "kafka"), timeout=20, what="fanouts back on kafka")
        t_back = time.time()
        print("broker up again %.2fs after the restart began, every fanout on kafka %.2fs later"
              % (t_ready - t_up, t_back - t_ready))
        from_kafka = [s.metric("exchange_fanout_source_messages_total", {"source": "kafka"}) for s in svcs]
        n_back = [len(c.data("trade.")) for c in clients]
        for c, n in zip(clients, n_back):
            c.wait_for(lambda c, n=n: len(c.data("trade.")) >= n + 20, timeout=15, what="trades via kafka again")
        for c in clients:
            silent = max_silence(c, t_up, time.time(), "trade.")
            assert silent < 3.0, "%s silent %.1fs around the switch back" % (c.name, silent)
            assert seq_problems(c.data("trade."), check_gaps=True) == [], c.name
            assert seq_problems(c.data(), check_gaps=False) == [], c.name
        for s, n in zip(svcs, from_kafka):
            assert s.metric("exchange_fanout_source_messages_total", {"source": "kafka"}) > n + 10
            assert s.metric("exchange_fanout_source_switches_total", {"to": "relay"}) >= 1
            assert s.metric("exchange_fanout_source_switches_total", {"to": "kafka"}) >= 1
        # The ingest worker kept what it could not produce (well within
        # buffer_messages) and produced it when the brokers came back: Kafka
        # holds every trade of the epoch, none twice.
        epoch = epoch_of(clients[0])
        last_seq = max(m["seq"] for m in clients[0].data(TRADE) if m["epoch"] == epoch)
        with Consumer(kafka_broker.bootstrap, kafka_broker.topic) as k:
            recs = []

            def have_all():
                new = [json.loads(m["value"]) for m in k.poll(0.2) if m["key"] == TRADE.encode()]
                recs.extend(new)
                return recs and recs[-1]["epoch"] == epoch and recs[-1]["seq"] >= last_seq
            util.wait_until(have_all, timeout=15, what="kafka holds the trades up to the client's last")
        recs = [r for r in recs if r["epoch"] == epoch]
        assert seq_problems(recs, check_gaps=True) == []
        assert recs[0]["seq"] == 1 and recs[-1]["seq"] >= last_seq
    finally:
        for c in clients:
            c.close()


def epoch_of(client):
    return max(m["epoch"] for m in client.data())


@pytest.mark.parametrize("kafka", ["no_brokers", "brokers_down"])
def test_leader_change_followed_in_relay_mode(kafka_factory, zk_server, sim_factory, service_factory, kafka):
    """In relay mode (no brokers configured, or all of them down) the fanouts
    move to the new leader's relay when the leader goes."""
    sim = sim_upbit(sim_factory, rate=20)
    broker = kafka_factory() if kafka == "brokers_down" else None
    svcs = cluster(service_factory, zk_server, sim, n=2, kafka=broker)
    lead = leaders(svcs)[0]
    other = [s for s in svcs if s is not lead][0]
    c = WsClient(other.ws_url, subscribe=[TRADE], name="follower-client").start()
    try:
        if broker is not None:
            util.wait_until(lambda: (other.metric("exchange_fanout_source_messages_total",
                                                  {"source": "kafka"}) or 0) > 0,
                            timeout=20, what="follower consuming kafka")
            broker.down()
            util.wait_until(lambda: all_source(svcs, "relay"), timeout=10, what="fanouts on the relay")
        c.wait_for(lambda c: len(c.data()) >= 10, timeout=15, what="trades via the leader's relay")
        assert fanouts(other)[0]["relay"]["addr"] == "127.0.0.1:%d" % lead.relay_port
        old_epoch = max(m["epoch"] for m in c.data())
        lead.stop()
        util.wait_until(lambda: other.status()["role"] == "leader", timeout=15, what="follower takes over")

        def moved():
            f = fanouts(other)
            return f and f[0]["relay"]["addr"] == "127.0.0.1:%d" % other.relay_port and f[0]["relay"]["connected"]
        util.wait_until(moved, timeout=10, what="fanout follows the new leader's relay")
        c.wait_for(lambda c: any(m["epoch"] > old_epoch for m in c.data()), timeout=15,
                   what="data of the new epoch")
        n = len(c.data())
        c.wait_for(lambda c: len(c.data()) >= n + 10, timeout=10, what="more data of the new epoch")
        assert seq_problems(c.data(), check_gaps=False) == []
        new = [m for m in c.data() if m["epoch"] > old_epoch]
        assert seq_problems(new, check_gaps=True) == []
    finally:
        c.close()
        if broker is not None:
            broker.up()  # so the ingest worker's final flush does not wait at teardown


def ws_text_frame(text):
    """A masked client text frame."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(data)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def slow_reader(s):
    """Little room in the kernel, so that the relay's queue bound is what
    fills: a small receive buffer, and a small MSS, since the sender's send
    buffer starts at 20 segments (on loopback's 64 KB MSS, 2.6 MB: seconds
    of data, and the server's 5 s idle ping + 10 s pong timeout closed the
    client first when the simulator was slowed)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)


def relay_upgrade(s, port):
    """Connect s to the relay endpoint and upgrade it, with the token."""
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /relay HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
               % (key, TOKEN)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, "relay closed during the upgrade: %r" % head
        head += b
    assert head.startswith(b"HTTP/1.1 101"), head


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            return None
        out += b
    return out


def server_frames(s):
    """The relay's frames (unmasked, unfragmented) as (opcode, payload),
    until the connection ends."""
    while True:
        head = recv_exact(s, 2)
        if head is None:
            return
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(recv_exact(s, 2), "big")
        elif n == 127:
            n = int.from_bytes(recv_exact(s, 8), "big")
        data = recv_exact(s, n)
        if data is None:
            return
        yield head[0] & 0x0F, data


def test_slow_relay_client_is_cut_off_alone(sim_factory, service_factory):
    """A relay client that stops reading is disconnected at [relay]
    client_queue_bytes; the instance's own fanout keeps its stream whole."""
    sim = sim_upbit(sim_factory, rate=300)
    svc = service_factory(name="slow", sim_ports=sim.ports,
                          overrides={"exchange.upbit": {"markets": "KRW-BTC"},
                                     "relay": {"token": TOKEN, "client_queue_bytes": 65536}})
    svc.wait_ready(timeout=30)
    c = WsClient(svc.ws_url, subscribe=[TRADE], name="steady-client").start()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        c.wait_for(lambda c: len(c.data()) >= 10, timeout=15, what="trades")
        slow_reader(s)
        relay_upgrade(s, svc.relay_port)
        s.sendall(ws_text_frame('{"op":"resume","epoch":0,"since":{},"tail":1}'))
        t0 = time.time()
        # ... and never read again. It is this client that is cut (the
        # instance's own fanout is a relay client too).
        cut = 'msg="relay client too slow, disconnected" peer=127.0.0.1:%d ' % s.getsockname()[1]
        util.wait_until(lambda: cut in svc.stderr(), timeout=30, what="slow relay client disconnected")
        print("slow relay client cut after %.2f s" % (time.time() - t0))
        util.wait_until(lambda: (svc.metric("exchange_relay_disconnects_total", {"reason": "slow"}) or 0) >= 1,
                        timeout=10, what="the cut counted")
        n = len(c.data())
        c.wait_for(lambda c: len(c.data()) >= n + 20, timeout=10, what="steady client still served")
        # (Loose bound for a loaded machine. The instance's fanout has the
        # loopback's megabytes of socket buffer before this small queue bound
        # could cut it; were it cut, its resume could replay only half the
        # bound of the queue it lost, and the gap would fail the next line.)
        assert max_silence(c, t0, time.time(), "trade.") < 5.0
        assert seq_problems(c.data(), check_gaps=True) == []
    finally:
        s.close()
        c.close()


def test_cut_relay_client_resumes_without_a_gap(sim_factory, service_factory):
    """A relay client cut for being slow missed more than half its queue
    bound (the queue it lost and what was published while it reconnected).
    Resuming where it stopped, it gets every message after its position on
    every channel, none twice: the catch-up from the rings is paced by what
    the client reads, not cut to what fits in one turn."""
    sim = sim_upbit(sim_factory, rate=300)
    svc = service_factory(name="cutresume", sim_ports=sim.ports,
                          overrides={"exchange.upbit": {"markets": "KRW-BTC"},
                                     "relay": {"token": TOKEN, "client_queue_bytes": 65536}})
    svc.wait_ready(timeout=30)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        slow_reader(s)
        relay_upgrade(s, svc.relay_port)
        s.sendall(ws_text_frame('{"op":"resume","epoch":0,"since":{},"tail":1}'))
        cut = 'msg="relay client too slow, disconnected" peer=127.0.0.1:%d ' % s.getsockname()[1]
        util.wait_until(lambda: cut in svc.stderr(), timeout=30, what="slow relay client disconnected")
        # What reached the client before the cut: its position.
        last, epoch, n_before = {}, None, 0
        for op, data in server_frames(s):
            if op == 8:
                break
            m = json.loads(data)
            last[m["channel"]], epoch = m["seq"], m["epoch"]
            n_before += 1
        s.close()
        trade = "trade.upbit.BTC-KRW"
        assert trade in last and n_before > 0, last
        gaps0 = svc.metric("exchange_relay_replay_gaps_total") or 0
        relay_upgrade(s2, svc.relay_port)
        s2.sendall(ws_text_frame(json.dumps({"op": "resume", "epoch": epoch, "since": last})))
        # Read until the trade channel is 1000 messages past the position (it
        # missed ~64 KB, ~200 trades, at the cut): the catch-up and then the
        # live stream.
        seen, sizes = {}, []
        for op, data in server_frames(s2):
            assert op == 1, (op, data[:200])
            sizes.append(len(data))
            m = json.loads(data)
            assert m["epoch"] == epoch, m
            seen.setdefault(m["channel"], []).append(m["seq"])
            if len(seen.get(trade, ())) >= 1000:
                break
        assert len(seen.get(trade, ())) >= 1000, "the relay ended the stream: %s" % {k: len(v) for k, v in seen.items()}
        for ch, pos in last.items():
            got = seen.get(ch, [])
            want = list(range(pos + 1, pos + 1 + len(got)))
            assert got == want, "%s after %d: %s ... (%d messages)" % (ch, pos, got[:5], len(got))
        resumed = 'msg="relay client resumed" peer=127.0.0.1:%d mode=since' % s2.getsockname()[1]
        line = next(l for l in svc.stderr().splitlines() if resumed in l)
        print(line)
        assert " gaps=0" in line, line
        # More than one step: more than half the queue bound came from the rings.
        replayed = int(line.split(" replayed=")[1].split()[0])
        assert sum(sizes[:replayed]) > 65536 // 2, (replayed, sum(sizes[:replayed]))
        assert (svc.metric("exchange_relay_replay_gaps_total") or 0) == gaps0
    finally:
        s.close()
        s2.close()


def test_gap_beyond_relay_history_is_reported(kafka_factory, sim_factory, service_factory):
    """An outage longer than the relay's ring ([relay] history) cannot be
    filled: clients see the jump in seq (never a duplicate or a reorder) and
    the relay counts it."""
    kafka_broker = kafka_factory()
    sim = sim_upbit(sim_factory, rate=20)
    svc = service_factory(name="gap", sim_ports=sim.ports, overrides={
        "exchange.upbit": {"markets": "KRW-BTC"},
        "kafka": {"brokers": kafka_broker.bootstrap, "topic": kafka_broker.topic,
                  "fallback_after_ms": FALLBACK_MS, "recover_after_ms": RECOVER_MS},
        "relay": {"history": 3}})
    svc.wait_ready(timeout=30)
    c = WsClient(svc.ws_url, subscribe=[TRADE], name="gap-client").start()
    try:
        util.wait_until(lambda: (svc.metric("exchange_fanout_source_messages_total", {"source": "kafka"}) or 0) > 10,
                        timeout=20, what="consuming kafka")
        kafka_broker.down()
        util.wait_until(lambda: sources(svc) == ["relay"], timeout=10, what="fanout on the relay")
        n = len(c.data())
        c.wait_for(lambda c: len(c.data()) >= n + 10, timeout=10, what="trades via the relay")
        assert svc.metric("exchange_relay_replay_gaps_total") >= 1
        problems = seq_problems(c.data(), check_gaps=True)
        assert problems and all(p.startswith("gap ") for p in problems), problems
    finally:
        c.close()
        kafka_broker.up()  # so the ingest worker's final flush does not wait at teardown
