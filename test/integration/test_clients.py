"""The client libraries (clients/python, clients/js in Node and in Chromium)
against real instances: two exchange-service nodes over ZooKeeper and Kafka,
fed by the simulator, every client endpoint behind a TCP proxy of the test.
Through a SIGHUP reload drain, a SIGTERM drain, kill -9 of a fanout worker, a
leader change and a connection cut with no close frame, each library must hand
over every trade of the simulator's record once and in order on every
channel, or report the gap (a gap event from the library: the server said
recovered:false, a seq jump, or a status.EXCHANGE gap).

The JS library is the tsc output of `make all` (build/gen/clients-js); the
Node driver is clients/js/test/driver.mjs (ws from clients/js/node_modules,
playwright-core from test/browser/node_modules for Chromium).
"""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from harness import build_dir, util
from harness.proxy import Proxy
from harness.service import REPO, cluster_nodes

sys.path.insert(0, os.path.join(REPO, "clients", "python"))
from exchange_client import ExchangeClient, Gap  # noqa: E402

NODE = shutil.which("node")
DRIVER = os.path.join(REPO, "clients", "js", "test", "driver.mjs")
PLAYWRIGHT = os.path.join(REPO, "test", "browser", "node_modules", "playwright-core")
CHROMIUM = "/usr/bin/chromium"
CHANNELS = ["trade.upbit.BTC-KRW", "trade.upbit.ETH-KRW"]
MARKETS = "KRW-BTC,KRW-ETH"
HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS = 1000, 1500


# ---- the three clients ---------------------------------------------------------

class PyClient:
    """clients/python in-process, on its own event loop thread."""
    name = "python"

    def __init__(self, urls):
        self.lines = []
        self.loop = asyncio.new_event_loop()
        self.urls = urls
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()

    async def _main(self):
        self.stop_ev = asyncio.Event()
        c = ExchangeClient(self.urls, heartbeat=HEARTBEAT_MS / 1000, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS / 1000,
                           backoff_min=0.1, backoff_max=2.0,
                           on_reconnect=lambda r: self.lines.append(dict(ev="reconnect", code=r["code"], hint=r["hint"])),
                           on_resumed=lambda r: self.lines.append(dict(ev="resumed", since=r["since"],
                                                                       recovered=r["recovered"])))
        sub = c.subscribe(CHANNELS, gaps=True)

        async def read():
            async for m in sub:
                if isinstance(m, Gap):
                    self.lines.append(dict(ev="gap", **m.as_dict()))
                else:
                    self.lines.append(dict(ev="msg", ch=m["channel"], epoch=m["epoch"], seq=m["seq"],
                                           trade_id=m.get("trade_id"), ts=m.get("ts"),
                                           backfill=bool(m.get("backfill"))))
        reader = asyncio.get_running_loop().create_task(read())
        await self.stop_ev.wait()
        self.lines.append(dict(ev="end", stats=dict(c.stats), positions=c.positions()))
        await c.close()
        await reader

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(15)
        assert not self.thread.is_alive(), "python client did not stop"

    def kill(self):
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_ev.set)

    def logs(self, n=20):
        return "\n".join(json.dumps(x) for x in self.lines[-n:])


class JsClient:
    """clients/js through test/driver.mjs, in Node (ws) or in Chromium."""

    def __init__(self, urls, log_dir, browser=False):
        self.name = "chromium" if browser else "node"
        argv = [NODE, DRIVER, "--lib", os.path.join(build_dir(), "gen", "clients-js", "index.js"),
                "--urls", ",".join(urls), "--channels", ",".join(CHANNELS),
                "--heartbeat-ms", str(HEARTBEAT_MS), "--heartbeat-timeout-ms", str(HEARTBEAT_TIMEOUT_MS)]
        if browser:
            argv += ["--browser", "--playwright", PLAYWRIGHT, "--chromium", CHROMIUM]
        self.lines = []
        self.errpath = os.path.join(str(log_dir), "client-%s.stderr" % self.name)
        self.err = open(self.errpath, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     cwd=os.path.join(REPO, "clients", "js"), text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(5)
        self.err.close()
        assert self.proc.returncode == 0, "%s driver exited %s:\n%s" % (self.name, self.proc.returncode,
                                                                       open(self.errpath).read()[-3000:])

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def logs(self, n=20):
        with open(self.errpath) as f:
            err = f.read()[-2000:]
        return err + "\n".join(json.dumps(x) for x in self.lines[-n:])


def need_js():
    missing = [p for p in (NODE, os.path.join(REPO, "clients", "js", "node_modules", "ws"), PLAYWRIGHT,
                           os.path.join(build_dir(), "gen", "clients-js", "index.js")) if not p or not os.path.exists(p)]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    if missing:
        pytest.fail("missing %s: run make deps and make all" % missing)


# ---- the libraries' own tests (fake servers, fast) ---------------------------------

def test_library_unit_tests():
    need_js()
    env = dict(os.environ, EXCHANGE_CLIENT_JS=os.path.join(build_dir(), "gen", "clients-js", "index.js"))
    r = subprocess.run([NODE, "--test", "test/client.test.mjs"], cwd=os.path.join(REPO, "clients", "js"), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "# fail 0" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "clients/python/tests"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# ---- the simulator's record -------------------------------------------------------

def recorded_trades(path):
    """{channel: [(trade_id, ts), ...]} in the order the simulator sent them
    (a trade sent on two connections, e.g. to two leaders, counted once)."""
    out, seen = {}, set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            frame = rec.get("frame")
            if rec.get("exchange") != "upbit" or not frame or '"trade"' not in frame:
                continue
            try:
                m = json.loads(frame)
            except ValueError:
                continue
            if m.get("type", m.get("ty")) != "trade":
                continue
            code = m.get("code", m.get("cd"))
            tid = str(m.get("sequential_id", m.get("sid")))
            quote, base = code.split("-")
            ch = "trade.upbit.%s-%s" % (base, quote)
            if (ch, tid) in seen:
                continue
            seen.add((ch, tid))
            out.setdefault(ch, []).append((tid, m.get("trade_timestamp", m.get("ttms"))))
    return out


def check_client(client, record):
    """Every trade once and in order per channel; what is missing must lie
    in a span the client reported as a gap. Returns per-channel counts."""
    lines = client.lines
    assert lines and lines[-1]["ev"] == "end", "%s did not finish: %s" % (client.name, lines[-3:])
    errors = [l for l in lines if l["ev"] == "error" and l.get("code") == "pageerror"]
    assert not errors, errors
    report = {}
    for ch in CHANNELS:
        got = [l for l in lines if l["ev"] == "msg" and l["ch"] == ch]
        assert len(got) >= 10, "%s: only %d trades on %s" % (client.name, len(got), ch)
        ids = [str(l["trade_id"]) for l in got]
        assert len(ids) == len(set(ids)), "%s: duplicate trades on %s" % (client.name, ch)
        for a, b in zip(got, got[1:]):
            assert (b["epoch"], b["seq"]) > (a["epoch"], a["seq"]), "%s: %s out of order: %s then %s" % (
                client.name, ch, a, b)
        rec = record.get(ch, [])
        index = {tid: i for i, (tid, _) in enumerate(rec)}
        # A trade fetched from the exchange's REST API after a takeover
        # (backfill) need not be in the record of WebSocket frames.
        unknown = [l["trade_id"] for l in got if str(l["trade_id"]) not in index and not l.get("backfill")]
        assert not unknown, "%s: trades the simulator never sent on %s: %s" % (client.name, ch, unknown[:5])
        got = [l for l in got if str(l["trade_id"]) in index]
        pos = [index[str(l["trade_id"])] for l in got]
        live = [index[str(l["trade_id"])] for l in got if not l.get("backfill")]
        assert live == sorted(live), "%s: %s not in the exchange's order" % (client.name, ch)
        pos = sorted(pos)
        # Gaps the library reported, as record index spans they excuse.
        excused, gap_events = set(), []
        last_i = None
        for k, l in enumerate(lines):
            if l["ev"] == "msg" and l["ch"] == ch and str(l["trade_id"]) in index:
                last_i = index[str(l["trade_id"])]
            elif l["ev"] == "gap" and l["channel"] == ch:
                gap_events.append(l)
                if l["reason"] == "exchange":
                    g = l["exchange"]
                    excused.update(i for i, (_, ts) in enumerate(rec)
                                   if ts is not None and g.get("from_ts", 0) <= ts <= g.get("to_ts", 0))
                else:  # not_recovered, seq: up to the next trade delivered
                    nxt = next((index[str(m["trade_id"])] for m in lines[k:]
                                if m["ev"] == "msg" and m["ch"] == ch and str(m["trade_id"]) in index), len(rec))
                    excused.update(range((last_i if last_i is not None else -1) + 1, nxt))
        delivered = set(pos)
        missing = [rec[i][0] for i in range(pos[0], pos[-1] + 1) if i not in delivered and i not in excused]
        if missing:
            # What the client saw around the first hole, for the failure message.
            before = max(i for i in pos if i < index[missing[0]])
            k = next(k for k, l in enumerate(lines) if l["ev"] == "msg" and str(l["trade_id"]) == rec[before][0])
            around = [l for l in lines[max(0, k - 4):k + 12] if l["ev"] != "msg" or l["ch"] == ch]
            raise AssertionError("%s: %d trades of the record never delivered on %s and no gap reported: %s\n"
                                 "client stats %s; around the hole:\n%s" % (
                                     client.name, len(missing), ch, missing[:10], json.dumps(lines[-1]["stats"]),
                                     "\n".join(json.dumps(l) for l in around)))
        report[ch] = {"delivered": len(ids), "span": pos[-1] - pos[0] + 1, "gaps": len(gap_events),
                      "epochs": sorted({l["epoch"] for l in got})}
    return report


# ---- the scenarios ------------------------------------------------------------------

def node_cluster(service_factory, zk, kafka, sim):
    svcs = cluster_nodes(service_factory, zk, sim, session_ms=2000, node0_leads=True, overrides={
        "kafka": {"brokers": kafka.bootstrap, "topic": kafka.topic, "fallback_after_ms": 60000},
        "exchange.upbit": {"markets": MARKETS},
        "fanout": {"workers": 1, "drain_ms": 1000}})
    util.wait_until(lambda: svcs[1].status()["role"] == "follower", timeout=20, what="node1 follows")
    return svcs


def trades_of(client):
    return sum(1 for l in client.lines if l["ev"] == "msg")


def wait_trades(clients, more, what, timeout=30):
    """Each client receives `more` trades on every channel from now on."""
    base = {c.name: {ch: sum(1 for l in c.lines if l["ev"] == "msg" and l["ch"] == ch) for ch in CHANNELS}
            for c in clients}

    def ok():
        for c in clients:
            if isinstance(c, JsClient) and c.proc.poll() is not None:
                raise AssertionError("%s driver died: %s" % (c.name, c.logs()))
            for ch in CHANNELS:
                if sum(1 for l in c.lines if l["ev"] == "msg" and l["ch"] == ch) < base[c.name][ch] + more:
                    return False
        return True
    try:
        util.wait_until(ok, timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, "\n".join("== %s: %s trades\n%s" % (c.name, trades_of(c), c.logs(8))
                                                        for c in clients)))


def fanout_pids(svc):
    return [w["pid"] for w in svc.workers(kind="fanout")]


SCENARIOS = ["sighup_drain", "sigterm_drain", "kill9_fanout", "leader_change", "cut_without_close"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_clients_deliver_every_trade_once(scenario, tmp_path, zk_server, kafka_broker, sim_factory,
                                          service_factory):
    need_js()
    sim = sim_factory(args=["--exchanges", "upbit", "--upbit-markets", MARKETS, "--rate", "20"])
    node0, node1 = node_cluster(service_factory, zk_server, kafka_broker, sim)
    proxies = [Proxy(node0.port), Proxy(node1.port)]
    # The clients start on the node the scenario disturbs (the first URL).
    on = node1 if scenario in ("sigterm_drain", "leader_change") else node0
    urls = ["ws://%s/ws/exchange" % p.connect for p in (proxies if on is node0 else proxies[::-1])]
    clients = []
    try:
        clients = [PyClient(urls), JsClient(urls, tmp_path), JsClient(urls, tmp_path, browser=True)]
        wait_trades(clients, 10, "trades at every client", timeout=60)
        before = {c.name: len(c.lines) for c in clients}

        if scenario == "sighup_drain":
            old = fanout_pids(node0)
            node0.sighup()
            util.wait_until(lambda: fanout_pids(node0) and not set(fanout_pids(node0)) & set(old), timeout=20,
                            what="new fanout workers")
        elif scenario == "sigterm_drain":
            node1.signal(signal.SIGTERM)
        elif scenario == "kill9_fanout":
            for pid in fanout_pids(node0):
                os.kill(pid, signal.SIGKILL)
        elif scenario == "leader_change":
            epoch0 = node0.status()["epoch"]
            node0.signal(signal.SIGTERM)
            util.wait_until(lambda: node1.status()["role"] == "leader", timeout=20, what="node1 leads")
            # /status shows the epoch of the ingest start, which follows the
            # promotion once the epoch node in ZooKeeper has been written.
            util.wait_until(lambda: node1.status()["epoch"] > epoch0, timeout=20, what="node1's ingest epoch")
        elif scenario == "cut_without_close":
            frozen = proxies[0].cut()
            assert frozen, "no client connection to cut"

        def reconnected(c):
            return any(l["ev"] == "reconnect" for l in c.lines[before[c.name]:])
        if scenario != "leader_change":
            util.wait_until(lambda: all(reconnected(c) for c in clients), timeout=30, what="every client reconnected")
            if scenario.endswith("drain"):
                for c in clients:
                    hints = [l for l in c.lines[before[c.name]:] if l["ev"] == "reconnect" and l.get("hint")]
                    assert hints, "%s: no drain hint honoured" % c.name
        if scenario == "cut_without_close":
            Proxy.reset(frozen)

        def resumed(c):
            """The resume after the client's last reconnect has every reply
            in: a client stopped before it would report it after its end."""
            after = c.lines[before[c.name]:]
            last = max((k for k, l in enumerate(after) if l["ev"] == "reconnect"), default=None)
            return last is None or any(l["ev"] == "resumed" for l in after[last:])
        util.wait_until(lambda: all(resumed(c) for c in clients), timeout=30, what="every client resumed")
        wait_trades(clients, 20, "trades after the %s" % scenario, timeout=60)
        for c in clients:
            c.stop()
    finally:
        for c in clients:
            c.kill()
        for p in proxies:
            p.close()
    record = recorded_trades(sim.record)
    reports = {c.name: check_client(c, record) for c in clients}
    if scenario == "leader_change":
        for name, rep in reports.items():
            assert all(len(r["epochs"]) >= 2 for r in rep.values()), (name, rep)
    print(scenario, json.dumps(reports))
