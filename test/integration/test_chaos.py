"""Chaos: every exchange trade reaches every client exactly once, in order,
through the faults a production cluster sees.

Three instances (real ZooKeeper, the real Kafka broker), the simulator's
Upbit protocol broadcasting trades to every connection, re-sending its last
trade as SNAPSHOT on subscribe and serving its REST recent-trades endpoint.
One client per instance that does what a demanding user does: it keeps the
last (epoch, seq) per channel, reconnects (to its own instance, else the
next one) and resubscribes with `since`. Faults in turn:

  kill -9 of the leader, SIGTERM of the leader (a rolling update), SIGSTOP
  of the leader past the session timeout then SIGCONT (a zombie), Kafka down,
  kill -9 of the ingest worker, the exchange dropping the connection.

Per client: no trade id twice, no lower epoch after a higher one on the
channel, seq strictly increasing within an epoch, and every trade the
simulator made (its record is the truth) delivered, except those inside a
span announced on status.upbit as a `gap`. A loss table per fault is printed.
"""
import asyncio
import json
import os
import signal
import threading
import time

import websockets

from harness import util
from harness.service import leaders
from harness.wsclient import messages_until

SESSION_MS = 4000
RATE = 50                      # trades per second made by the simulator
CHANNEL = "trade.upbit.BTC-KRW"
STATUS = "status.upbit"
QUIET_TRADES = 150             # trades every client receives between faults
KAFKA_DOWN_S = 20.0            # Kafka outage: 2 x PRODUCER_TXN_TIMEOUT_MS (workers/ingest/producer.h)


class ChaosClient:
    """A reconnecting client with epoch-aware resume. It records everything
    it receives and filters nothing: the test judges the server."""

    def __init__(self, urls, name):
        self.urls = list(urls)
        self.name = name
        self.pos = {}             # channel -> {"epoch","seq"} last received
        self.trades = []          # (recv_ms, msg) on CHANNEL
        self.gaps = []            # "gap" objects announced on STATUS
        self.replies = []         # subscribed replies
        self.connects = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self):
        # Each (re)connect tries its own instance first, then the others in
        # turn. Pings detect a server that stopped answering (a frozen node
        # keeps accepting TCP connections into its backlog).
        while not self._stop.is_set():
            after = 0.05
            for url in self.urls:
                if self._stop.is_set():
                    return
                try:
                    async with websockets.connect(url, max_size=None, open_timeout=2,
                                                  ping_interval=1, ping_timeout=2,
                                                  close_timeout=1) as ws:
                        self.connects += 1
                        req = {"op": "subscribe", "channels": [CHANNEL, STATUS], "id": self.connects}
                        with self.lock:
                            if self.pos:
                                req["since"] = {c: dict(p) for c, p in self.pos.items()}
                        await ws.send(json.dumps(req))
                        async for raw in messages_until(ws, self._stop):
                            m = json.loads(raw)
                            self._on(m)
                            if m.get("type") == "reconnect":
                                after = m.get("after_ms", 50) / 1000.0
                        return
                except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError,
                        websockets.InvalidHandshake, websockets.InvalidMessage):
                    pass
                break_early = after > 0.05
                await asyncio.sleep(min(after, 1.0))
                if break_early:
                    break           # a drain hint: start over from its own instance

    def _on(self, m):
        now = int(time.time() * 1000)
        with self.lock:
            t = m.get("type")
            if t == "subscribed":
                self.replies.append(m)
                return
            ch = m.get("channel")
            if ch == STATUS and m.get("state") == "gap" and isinstance(m.get("gap"), dict):
                self.gaps.append(m["gap"])
            if ch and "seq" in m and "epoch" in m:
                self.pos[ch] = {"epoch": m["epoch"], "seq": m["seq"]}
            if ch == CHANNEL and t == "trade":
                self.trades.append((now, m))

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def ids(self):
        with self.lock:
            return [m["trade_id"] for _, m in self.trades]


def upbit_ts(trade_id):
    return int(trade_id) // 1000


def made_ids(sim):
    return sim.control("GET", "/trades?exchange=upbit")["trades"]["upbit"]["KRW-BTC"]


def check_client(c, made, faults, t_end_ms):
    """Returns (row per fault, problems)."""
    problems = []
    ids = c.ids()
    seen = set()
    dups = []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    # order: per channel, epoch never goes down; seq strictly increases within an epoch
    order = []
    last = None
    for _, m in c.trades:
        cur = (m["epoch"], m["seq"])
        if last is not None:
            if cur[0] < last[0] or (cur[0] == last[0] and cur[1] <= last[1]):
                order.append((last, cur, m["trade_id"]))
        last = cur
    if not ids:
        return [], ["%s received no trade" % c.name]
    first = made.index(ids[0]) if ids[0] in made else 0
    expect = [i for i in made[first:] if upbit_ts(i) <= t_end_ms]
    missing = [i for i in expect if i not in seen]

    def announced(i):
        ts = upbit_ts(i)
        return any(g.get("channel") == CHANNEL and g.get("from_ts", 0) <= ts <= g.get("to_ts", 0)
                   for g in c.gaps)

    lost = [i for i in missing if not announced(i)]
    gapped = [i for i in missing if announced(i)]
    if dups:
        problems.append("%s: %d trades twice, e.g. %s" % (c.name, len(dups), dups[:5]))
    if order:
        problems.append("%s: %d order violations, e.g. %s" % (c.name, len(order), order[:3]))
    if lost:
        problems.append("%s: %d trades lost without a gap announcement, e.g. %s"
                        % (c.name, len(lost), lost[:5]))
    rows = []
    for k, (name, t0) in enumerate(faults):
        t1 = faults[k + 1][1] if k + 1 < len(faults) else t_end_ms + 1

        def inwin(xs):
            return sum(1 for i in xs if t0 <= upbit_ts(i) < t1)
        rows.append((name, inwin(expect), inwin(lost), inwin(gapped),
                     sum(1 for i in dups if t0 <= upbit_ts(i) < t1),
                     sum(1 for _, _, i in order if t0 <= upbit_ts(i) < t1)))
    return rows, problems


def test_chaos_every_trade_once(zk_server, kafka_factory, sim_factory, service_factory):
    kafka_broker = kafka_factory(nodes=1, topics=())   # private: this test takes it down
    sim = sim_factory(args=["--exchanges", "upbit", "--upbit-markets", "KRW-BTC",
                            "--rate", str(RATE), "--rest-window", "1000"])
    topic = "chaos%d" % (int(time.time() * 1000) % 100000)
    name = "chaos%d" % int(time.monotonic() * 1000)
    svcs = []
    for i in range(3):
        svcs.append(service_factory(
            name="node%d" % i, sim_ports=sim.ports,
            overrides={"service": {"cluster": name},
                       "zookeeper": {"connect": zk_server.connect, "session_timeout_ms": SESSION_MS},
                       "kafka": {"brokers": kafka_broker.bootstrap, "topic": topic,
                                 "partitions": 3, "fallback_after_ms": 2000},
                       "exchange.upbit": {"markets": "KRW-BTC", "channels": "trade"},
                       "fanout": {"workers": 1, "drain_ms": 500, "history": 5000}}))
    for s in svcs:
        s.wait_ready(timeout=40)
    util.wait_until(lambda: len(leaders(svcs)) == 1, timeout=30, what="one leader")
    urls = [s.ws_url for s in svcs]
    clients = [ChaosClient(urls[i:] + urls[:i], "client%d" % i).start() for i in range(3)]

    def all_flowing(since_ms):
        # every client has a trade made after since_ms
        return all(any(upbit_ts(m["trade_id"]) > since_ms for _, m in c.trades[-50:]) for c in clients)

    def steady(what):
        t = int(time.time() * 1000)
        util.wait_until(lambda: all_flowing(t), timeout=30, interval=0.1, what="trades flow again after " + what)
        util.wait_until(lambda: len(leaders(svcs)) == 1, timeout=30, what="one leader after " + what)
        # steady trading before the next fault: QUIET_TRADES more on every client
        n = [len(c.trades) for c in clients]
        util.wait_until(lambda: all(len(c.trades) >= k + QUIET_TRADES for c, k in zip(clients, n)),
                        timeout=30, interval=0.1, what="steady trading after " + what)

    faults = [("start", 0)]
    steady("start")

    def fault(name, act):
        faults.append((name, int(time.time() * 1000)))
        t0 = time.monotonic()
        act()
        steady(name)
        print("%-24s recovered in %.1f s" % (name, time.monotonic() - t0))

    def kill9_leader():
        lead = leaders(svcs)[0]
        lead.proc.send_signal(signal.SIGKILL, group=True)
        lead.proc.stop(timeout=5)
        util.wait_until(lambda: len(leaders(svcs)) == 1, timeout=SESSION_MS / 1000 + 10, what="new leader")
        lead.start()
        lead.wait_ready(timeout=40)

    def sigterm_leader():
        lead = leaders(svcs)[0]
        lead.proc.stop(timeout=20, group=False)
        lead.start()
        lead.wait_ready(timeout=40)

    def sigstop_leader():
        lead = leaders(svcs)[0]
        lead.proc.send_signal(signal.SIGSTOP, group=True)
        others = [s for s in svcs if s is not lead]
        util.wait_until(lambda: len(leaders(others)) == 1, timeout=SESSION_MS / 1000 + 10,
                        what="a follower takes over from the frozen leader")
        new_epoch = leaders(others)[0].status()["epoch"]
        # the zombie stays frozen until the new leader's trades reach clients
        util.wait_until(lambda: all(c.trades and c.trades[-1][1]["epoch"] >= new_epoch for c in clients),
                        timeout=20, interval=0.05, what="the new leader's trades reach clients")
        lead.proc.send_signal(signal.SIGCONT, group=True)
        lead.wait_ready(timeout=40)

    def sources():
        return [w.get("source") for s in svcs for w in s.workers(kind="fanout", state="running")]

    def kafka_down():
        t_down = time.monotonic()
        kafka_broker.down()
        util.wait_until(lambda: set(sources()) == {"relay"}, timeout=30, interval=0.1,
                        what="every fanout on the relay while Kafka is down")
        # The outage's length is part of the fault: past two transaction
        # timeouts, so the coordinator times the open transaction out on its
        # own (the case that once cost every client ~860 duplicates), not
        # only when the machine happens to be slow.
        time.sleep(max(0.0, t_down + KAFKA_DOWN_S - time.monotonic()))
        kafka_broker.up()
        util.wait_until(lambda: set(sources()) == {"kafka"}, timeout=60, interval=0.2,
                        what="every fanout back on Kafka")
        lead = leaders(svcs)[0]
        print("Kafka down: leader's transactional producer rebuilds %d, transactions failed %d, aborted %d"
              % tuple(lead.metric(n, lb) or 0 for n, lb in (
                  ("exchange_ingest_kafka_producer_rebuilds_total", None),
                  ("exchange_ingest_kafka_transactions_total", {"result": "failed"}),
                  ("exchange_ingest_kafka_transactions_total", {"result": "aborted"}))))

    def kill9_ingest():
        lead = leaders(svcs)[0]
        pid = [w["pid"] for w in lead.status()["workers"] if w["kind"] == "ingest"][0]
        os.kill(pid, signal.SIGKILL)

    def exchange_drop():
        sim.control("POST", "/drop?exchange=upbit")

    fault("kill -9 leader", kill9_leader)
    fault("SIGTERM leader", sigterm_leader)
    fault("SIGSTOP leader", sigstop_leader)
    fault("Kafka down", kafka_down)
    fault("kill -9 ingest", kill9_ingest)
    fault("exchange drop", exchange_drop)

    sim.control("POST", "/pause")
    made = made_ids(sim)
    t_end = upbit_ts(made[-1])
    util.wait_until(lambda: all(made[-1] in set(c.ids()) for c in clients), timeout=30,
                    what="every client has the last trade made")
    for c in clients:
        c.stop()

    problems = []
    print("\nloss table (trades made per fault window; per client: lost unannounced / "
          "announced gap / duplicates / order violations)")
    table = {}
    for c in clients:
        rows, p = check_client(c, made, faults, t_end)
        problems += p
        for name, n, lost, gapped, dup, order in rows:
            table.setdefault(name, [n]).append("%d/%d/%d/%d" % (lost, gapped, dup, order))
    print("%-18s %6s  %-14s %-14s %-14s" % ("fault", "made", "client0", "client1", "client2"))
    for name, _ in faults:
        r = table.get(name, [0])
        print("%-18s %6d  " % (name, r[0]) + " ".join("%-14s" % x for x in r[1:]))
    print("connects per client: %s" % [c.connects for c in clients])
    assert not problems, "\n".join(problems)
