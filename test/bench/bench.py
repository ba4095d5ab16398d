"""`make bench`: runs the benchmark scenarios (test/bench/run.sh BUILD_DIR
calls this) against exchange-service, Centrifugo, nginx + nchan and the Node
`ws` peer, and prints one table with the goals of issue 18 and the elapsed
time. BENCH_QUICK=1: fewer clients, shorter steps.
BENCH_ONLY=1,3 runs only the named scenarios. Raw figures go to
BUILD/bench/results.json, logs to BUILD/bench/logs/.

Every figure comes from a measurement in this run; a scenario that cannot run
prints "n/a (reason)". Servers are fed the same JSON (publish.c) and served
to the same clients (loadgen.c); server CPU is utime+stime from /proc of every
process of the server (descendants included), measured over the same window
as the delivered messages."""
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build"))
os.environ["EXCHANGE_BUILD"] = BUILD
sys.path.insert(0, os.path.join(REPO, "test", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import util  # noqa: E402
from harness.kafka import BrokerError, libs_dir, start_kafka  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
ONLY = set(os.environ.get("BENCH_ONLY", "1,2,3,4,5,6,7,8,9,10,11").split(","))
BENCH = os.path.join(BUILD, "bench")
LOGS = os.path.join(BENCH, "logs")
NODE_DIR = os.path.dirname(os.path.abspath(__file__))
CPUS = os.cpu_count() or 2

# Scenario sizes. 100 clients per channel throughout: the fan-out ratio, not
# the publish path, is what is measured.
PER_CH = 100
FANOUT_N = [1000] if QUICK else [1000, 10000]
SIZES = [0, 1024]  # 0: the natural trade message (no padding, ~240 B)
STEP_WARM, STEP_S = (0.5, 1.5) if QUICK else (1.0, 2.0)
REPS = 1 if QUICK else 3
# Latency: a load below every system's saturation here, and the goal's load
# (10k clients, 1k msg/s published = 100k msgs/s delivered).
LAT_N, LAT_RATES = (1000, [250, 1000]) if QUICK else (10000, [250, 1000])
# Efficiency at equal load: every system at this delivered rate.
EQ_RATE = 25000 // PER_CH
IDLE_N = 4000 if QUICK else 20000
SYS_N = 1000
# The Kafka-fed systems (exchange-service, Centrifugo) read a real Apache
# Kafka broker (one KRaft node, harness.kafka) that publish.c feeds; our
# default [kafka] fetch_wait_max_ms stands unless BENCH_FETCH_WAIT_MS says.
FETCH_WAIT_MS = int(os.environ.get("BENCH_FETCH_WAIT_MS", "0"))
CENTRIFUGO = os.environ.get("CENTRIFUGO") or os.path.join(REPO, ".deps", "centrifugo", "centrifugo")
FAIL_REPS = 2 if QUICK else 5
# Scenario 7, market data on 100 channels at 10 messages/s per channel:
# orderbook-heavy (15-level books, 1.6 KB) and mixed (channels.h: half the
# messages trades, 30% books, 20% tickers).
MD_CHANNELS, MD_RATE = 100, 1000
MD_N = 1000 if QUICK else 5000  # 10k made the full run ~40 min on 2 cores
MD_KINDS = ["orderbook", "mixed"]
# Delivered messages/s targets of the ramp; the publish rate is target / PER_CH.
RAMP = [25000, 50000, 100000, 200000, 400000, 800000, 1600000]
# Scenario 9, write coalescing: our fanout at each [fanout] write_delay_ms,
# 1k clients, small trades, at the equal load and at saturation; nginx+nchan
# at the equal load beside it.
WRITE_DELAYS = [0, 1, 5]
COAL_N = 1000
# Scenario 10, permessage-deflate: 1k clients at the equal load (25k
# delivered/s) of unpadded 15-level books and small trades, clients offering
# permessage-deflate or not; us and Centrifugo (its websocket.compression on).
COMP_N = 1000
COMP_KINDS = ["orderbook", "trade"]
# Scenario 11, reconnect storm: STORM_N clients on trade channels at the
# equal load drop at once and resume with since; plus one observer client per
# channel that stays (it knows each channel's newest seq).
STORM_N = 2000 if QUICK else 10000
STORM_CONC = 1024

results = {"quick": QUICK, "scenarios": {}}


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def ensure_dirs():
    os.makedirs(LOGS, exist_ok=True)


# ---- /proc -------------------------------------------------------------------

def tree(pid):
    return [pid] + util.descendants(pid) if pid and util.pid_alive(pid) else []


def aux_cpu(sysobj):
    """CPU seconds of what feeds the server but is not it (the Kafka broker)."""
    return sum(proc_cpu(p) for p in getattr(sysobj, "aux_pids", []))


def proc_cpu(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_rss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---- line-driven helpers (loadgen, publish) ---------------------------------

class LineProc:
    def __init__(self, argv, name):
        self.name = name
        self.err = open(os.path.join(LOGS, name + ".stderr"), "ab")
        self.p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, start_new_session=True)
        self.buf = b""

    def send(self, line):
        try:
            self.p.stdin.write(line.encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def read_event(self, event, timeout):
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if m.get("event") == event:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("%s: no %s within %.0fs" % (self.name, event, timeout))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError("%s exited (rc=%s) waiting for %s" % (self.name, self.p.poll(), event))
                self.buf += chunk

    def stop(self):
        self.send("quit")
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self.err.close()


def start_loadgen(system, n, channels, name, src_first=1, src_ips=4, timeout=180, kind="trade", deflate=False,
                  observers=0, url=None):
    lg = LineProc([os.path.join(BENCH, "loadgen"), "--url", url or system.ws_url, "--clients", n, "--channels",
                   channels, "--src-first", src_first, "--src-ips", src_ips, "--concurrency", 256,
                   "--connect-timeout", timeout - 10, "--proto", system.proto, "--kind", kind,
                   "--observers", observers] + (["--deflate"] if deflate else [])
                  + sum([["--server-pid", p] for p in system.pids], []), name)
    ready = lg.read_event("ready", timeout)
    return lg, ready


PUB_COUNT = [0]


def start_publisher(system, channels, size, name, kind="trade", no_pad=False):
    # each publisher continues above the last one's seqs (same epoch)
    PUB_COUNT[0] += 1
    argv = [os.path.join(BENCH, "publish"), "--channels", channels, "--seq-base", PUB_COUNT[0] * 10**9,
            "--kind", kind] + system.pub_args + (["--no-pad"] if no_pad else [])
    if size:
        argv += ["--size", size]
    else:
        argv += ["--size", 64]  # below the natural size: no padding
    return LineProc(argv, name)


# ---- systems under test -------------------------------------------------------

class System:
    name = "?"
    pids = []
    aux_pids = []
    proto = "exchange"

    def root_pid(self):
        return self.pids[0] if self.pids else None


def start_broker(d):
    """The Kafka broker a Kafka-fed system reads: one KRaft node, a fresh
    topic (its CPU is reported as "feed cpu", not counted as the server's)."""
    kd = os.path.join(d, "kafka")
    shutil.rmtree(kd, ignore_errors=True)  # the harness keeps a node's data across starts
    broker = start_kafka(kd, nodes=1, topics=["exchange:6"])
    BROKER_STARTED[0] = time.monotonic()
    return broker


BROKER_STARTED = [0.0]


def kafka_available():
    try:
        libs_dir()
    except BrokerError as e:
        return str(e)
    return None if shutil.which("java") else "java not installed"


class KafkaFed(System):
    """A server reading the bench's Kafka broker: self.broker, self.proc and
    self.port set by start(), which begins with begin() and ends with
    started(path). broker: one already running (kept by stop()), else its
    own."""

    def __init__(self, broker=None):
        self.shared = broker

    def begin(self, sub):
        d = os.path.join(LOGS, sub)
        os.makedirs(d, exist_ok=True)
        self.broker = self.shared or start_broker(d)
        self.port = util.free_port()
        return d

    def started(self, path):
        self.proc.start()
        util.wait_until(lambda: util.port_open(self.port) or not self.proc.running(), timeout=30,
                        what="%s port" % self.name)
        if not self.proc.running():
            raise RuntimeError("%s exited\n%s" % (self.name, self.proc.logs()))
        self.pids = [self.proc.pid]
        self.aux_pids = [n.proc.pid for n in self.broker.nodes]
        self.ws_url = "ws://127.0.0.1:%d%s" % (self.port, path)
        self.pub_args = ["--kafka", self.broker.bootstrap, "--topic", "exchange"]
        return self

    def stop(self):
        self.proc.stop(timeout=15)
        if not self.shared:
            self.broker.stop()


class Ours(KafkaFed):
    """exchange-service fed from the real Kafka broker."""
    name = "exchange-service"

    def __init__(self, broker=None, **fanout):
        """fanout: [fanout] keys over the defaults (write_delay_ms=5, ...)."""
        super().__init__(broker)
        self.fanout = fanout

    @staticmethod
    def available():
        missing = [b for b in ("exchange-service", "exchange-fanout") if not os.access(os.path.join(BUILD, b), os.X_OK)]
        return "build/%s not built" % missing[0] if missing else kafka_available()

    def start(self):
        d = self.begin("ours")
        admin, relay = util.free_port(), util.free_port()
        ini = os.path.join(d, "bench.ini")
        with open(ini, "w") as f:
            f.write("[service]\ncluster = bench\ninstance = bench\n[zookeeper]\nconnect =\n"
                    "[kafka]\nbrokers = %s\ntopic = exchange\nstart_tail = 0\n%s"
                    % (self.broker.bootstrap,
                       "fetch_wait_max_ms = %d\n" % FETCH_WAIT_MS if FETCH_WAIT_MS else ""))
            for ex in ("upbit", "bithumb", "binance", "coinbase"):
                f.write("[exchange.%s]\nenabled = false\n" % ex)
            f.write("[fanout]\nlisten = 127.0.0.1:%d\nworkers = %d\nmax_clients = 100000\n%s"
                    "[relay]\nlisten = 127.0.0.1:%d\nadvertise = 127.0.0.1:%d\n"
                    "[admin]\nlisten = 127.0.0.1:%d\n[log]\nlevel = warn\n"
                    % (self.port, CPUS, "".join("%s = %s\n" % kv for kv in self.fanout.items()), relay, relay,
                       admin))
        self.proc = util.Proc([os.path.join(BUILD, "exchange-service"), "--conf-dir", os.path.join(REPO, "conf"),
                               "--profile", "local", "--config", ini], d, name="exchange-service", cwd=REPO)
        # Subscribed in the upgrade request (`?channels=`, client protocol),
        # one round trip as nchan's /sub/{ch}; the storm resumes with a
        # subscribe message carrying `since` (resume_url).
        return self.started("/ws/exchange?channels={ch}")

    @property
    def resume_url(self):
        return self.ws_url.split("?", 1)[0]


class Centrifugo(KafkaFed):
    """Centrifugo v6 (built by `make bench` into .deps/centrifugo), its Kafka
    consumer reading the same broker and topic in publication data mode: each
    record's value is published as is to the channel named in its
    centrifugo-channels header. Insecure client mode (no tokens), bench only,
    loopback only; memory engine, no history, defaults otherwise.
    compression: websocket.compression on (min size 128 B as ours, its
    default level 1); history: history and recovery on every channel (the
    reconnect storm)."""
    name = "centrifugo"
    proto = "centrifugo"

    def __init__(self, broker=None, compression=False, history=False):
        super().__init__(broker)
        self.compression, self.history = compression, history

    @staticmethod
    def available():
        built = os.access(CENTRIFUGO, os.X_OK)
        return kafka_available() if built else "%s not built (make bench builds it with go)" % CENTRIFUGO

    def start(self):
        d = self.begin("centrifugo")
        conf = {
            "log": {"level": "warn"},
            "http_server": {"address": "127.0.0.1", "port": self.port},
            "client": {"insecure": True, "allowed_origins": ["*"]},
            "channel": {"without_namespace": dict(
                {"allow_subscribe_for_client": True},
                **({"history_size": 1000, "history_ttl": "300s", "force_recovery": True} if self.history else {}))},
            "consumers": [{
                "name": "bench", "enabled": True, "type": "kafka",
                "kafka": {"brokers": [self.broker.bootstrap], "topics": ["exchange"],
                          "consumer_group": "centrifugo-bench",
                          "publication_data_mode": {"enabled": True, "channels_header": "centrifugo-channels"}}}],
        }
        if self.compression:
            conf["websocket"] = {"compression": True, "compression_min_size": 128}
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(conf, f, indent=1)
        self.proc = util.Proc([CENTRIFUGO, "--config", path], d, name="centrifugo", cwd=d)
        return self.started("/connection/websocket")


class Nchan(System):
    name = "nginx+nchan"

    @staticmethod
    def available():
        if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
            return "nginx not installed"
        if not os.path.exists("/usr/lib/nginx/modules/ngx_nchan_module.so"):
            return "libnginx-mod-nchan not installed"
        return None

    def start(self):
        d = os.path.join(LOGS, "nchan")
        os.makedirs(d, exist_ok=True)
        self.port = util.free_port()
        with open(os.path.join(NODE_DIR, "nchan.conf.in")) as f:
            conf = f.read()
        for k, v in {"DIR": d, "PORT": self.port, "WORKERS": CPUS, "NOFILE": 20000, "CONNS": 19000}.items():
            conf = conf.replace("@%s@" % k, str(v))
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = util.Proc(["nginx", "-p", d, "-c", path], d, name="nginx")
        self.proc.start()
        util.wait_until(lambda: util.port_open(self.port), timeout=20, what="nginx port")
        self.pids = [self.proc.pid]
        self.ws_url = "ws://127.0.0.1:%d/sub/{ch}" % self.port
        self.pub_args = ["--http", "http://127.0.0.1:%d/pub/{ch}" % self.port, "--conns", 4]
        return self

    def stop(self):
        self.proc.stop(timeout=10, sig=signal.SIGTERM)


class NodeWs(System):
    name = "node ws"

    @staticmethod
    def available():
        if not shutil.which("node"):
            return "node not installed"
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ws")):
            return "ws not installed (npm ci --prefix test/bench)"
        return None

    def start(self):
        d = os.path.join(LOGS, "node")
        os.makedirs(d, exist_ok=True)
        self.port, self.feed = util.free_port(), util.free_port()
        self.proc = util.Proc(["node", os.path.join(NODE_DIR, "ws-peer.js"), "--port", self.port,
                               "--feed-port", self.feed], d, name="ws-peer", cwd=NODE_DIR)
        self.proc.start()
        util.wait_until(lambda: util.port_open(self.port) and util.port_open(self.feed), timeout=20,
                        what="node peer ports")
        self.pids = [self.proc.pid]
        self.ws_url = "ws://127.0.0.1:%d/" % self.port
        self.pub_args = ["--tcp", "127.0.0.1:%d" % self.feed]
        return self

    def stop(self):
        self.proc.stop(timeout=10)


SYSTEMS = [Ours, Centrifugo, Nchan, NodeWs]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- scenario 1, 2, 4: fanout ramp, latency, syscalls ---------------------------

def measure(lg, secs):
    lg.send("measure %g" % secs)
    return lg.read_event("result", secs + 30)


def kafka_path_latency(bootstrap, secs):
    """Publish -> Kafka -> a plain consumer, while the bench load runs: the
    part of exchange-service's latency that is the Kafka path."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_END
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency", "enable.auto.commit": False,
                  "fetch.wait.max.ms": FETCH_WAIT_MS or 10})
    try:
        md = c.list_topics("exchange", timeout=10)
        c.assign([TopicPartition("exchange", p, OFFSET_END) for p in md.topics["exchange"].partitions])
        lat, t_start = [], time.time() + 1.0
        while time.time() < t_start + secs:
            m = c.poll(0.1)
            if m is None or m.error():
                continue
            now = time.time()
            if now >= t_start:
                lat.append(now * 1e6 - json.loads(m.value())["bench_us"])
    finally:
        c.close()
    if not lat:
        return None
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    return {"msgs": len(lat), "p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999), "max": lat[-1]}


def wait_flowing(lg, pub, rate, limit=None):
    """A new publisher (or a consumer still joining its group, or a broker
    JVM still compiling its hot paths: measured, the first ~10 s after a
    KRaft broker starts show p99 of seconds): publish at rate until clients
    receive it with a p99 under 100 ms in two windows in a row, or limit
    (30 s within a minute of a broker start, else 12 s: on a loaded machine
    the p99 may never get there)."""
    if limit is None:
        limit = 30 if time.monotonic() - BROKER_STARTED[0] < 60 else 12
    pub.send("rate %d" % rate)
    deadline, good = time.monotonic() + limit, 0
    try:
        while time.monotonic() < deadline and good < 2:
            r = measure(lg, 1.0)
            good = good + 1 if r["msgs"] and r["lat_us"]["p99"] < 100000 else 0
        if not good:
            log("warm-up: delivery did not settle within %ds (last p99 %d us, %d msgs)"
                % (limit, r["lat_us"]["p99"], r["msgs"]))
    finally:
        pub.send("rate 0")
        time.sleep(0.5)


def drain(lg, pub, limit=30):
    """Publishing stopped: wait until the server has delivered its backlog
    (a saturated step leaves one, e.g. as Kafka consumer lag)."""
    pub.send("rate 0")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if measure(lg, 1.0)["msgs"] < 50:
            return True
    log("backlog not drained after %ds" % limit)
    return False


def strace_writes(pids, secs):
    """Fallback without perf: strace -c (slows the server while attached,
    the count per message stays right)."""
    argv = ["strace", "-c", "-f", "-e", "trace=write,writev,sendto,sendmsg,sendmmsg"]
    for p in pids:
        argv += ["-p", str(p)]
    st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(secs)
    st.send_signal(signal.SIGINT)
    _, err = st.communicate(timeout=30)
    counts = {}
    for line in err.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("write", "writev", "sendto", "sendmsg", "sendmmsg"):
            counts[parts[-1]] = int(parts[3])
    return counts or None


def perf_writes(pids, secs):
    """write-type syscalls of every thread of pids over secs (perf tracepoints)."""
    if not shutil.which("perf"):
        return strace_writes(pids, secs) if shutil.which("strace") else None
    evs = ["syscalls:sys_enter_%s" % s for s in ("write", "writev", "sendto", "sendmsg", "sendmmsg")]
    argv = ["perf", "stat", "-x", ",", "-e", ",".join(evs), "-p", ",".join(str(p) for p in pids),
            "--", "sleep", "%g" % secs]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30)
    counts = {}
    for line in p.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:"):
            try:
                counts[parts[2].split("_enter_")[1]] = int(parts[0])
            except ValueError:
                pass
    return counts if counts else None


def measure_cpu(lg, sysobj, secs):
    """measure, plus the load generator's and the feed's (broker's) CPU."""
    c0, b0 = proc_cpu(lg.p.pid), aux_cpu(sysobj)
    r = measure(lg, secs)
    r["loadgen_cpu"] = (proc_cpu(lg.p.pid) - c0) / r["duration_s"]
    r["aux_cpu"] = (aux_cpu(sysobj) - b0) / r["duration_s"]
    return r


def ramp(lg, pub, sysobj, n, label, targets):
    """Publish at each delivered-rate target in turn until delivery falls
    below 90% of it, p99 passes 2 s or clients are lost (twice in a row: the
    machine is shared and noisy); then REPS - 1 more runs of the best step.
    Returns (steps, best, runs, saturated)."""
    steps, retried, left = [], False, list(targets)
    while left:
        rate = left[0] // PER_CH
        pub.send("rate %d" % rate)
        time.sleep(STEP_WARM)
        r = measure_cpu(lg, sysobj, STEP_S)
        r["publish_rate"] = rate
        r["expected"] = expected = rate * PER_CH  # every channel has PER_CH clients
        steps.append(r)
        log("%s rate=%d: %.0f/s (exp %.0f) cpu %.2f/s lg %.2f/s p99 %dus lost %d closed %d"
            % (label, rate, r["msgs_per_s"], expected, r["cpu_s"] / r["duration_s"], r["loadgen_cpu"],
               r["lat_us"]["p99"], r["lost"], r["closed"]))
        if r["msgs_per_s"] < 0.9 * expected or r["lat_us"]["p99"] > 2000000 or r["clients"] < 0.98 * n:
            if retried or r["clients"] < 0.98 * n:
                break
            retried = True
            drain(lg, pub)
            continue
        retried = False
        left.pop(0)
    best = max(steps, key=lambda st: st["msgs_per_s"])
    runs = [best]
    for _ in range(REPS - 1):
        drain(lg, pub)
        pub.send("rate %d" % best["publish_rate"])
        time.sleep(STEP_WARM)
        runs.append(measure_cpu(lg, sysobj, STEP_S))
    return steps, best, runs, bool(left)


def eq_runs(lg, pub, sysobj, rate=None):
    """REPS windows at the equal load (or rate), publishing throughout."""
    pub.send("rate %d" % (rate or EQ_RATE))
    time.sleep(STEP_WARM)
    return [measure_cpu(lg, sysobj, STEP_S) for _ in range(REPS)]


def per_cpu(runs):
    return med([r["msgs"] / r["cpu_s"] if r["cpu_s"] > 0 else None for r in runs])


def run_fanout(cls):
    out = {"fanout": [], "latency": None, "syscalls": None}
    for n in FANOUT_N:
        channels = max(1, n // PER_CH)
        sysobj = cls().start()
        try:
            lg, ready = start_loadgen(sysobj, n, channels, "%s-lg-%d" % (cls.__name__, n))
            log("%s: %d clients ready: %s" % (cls.name, n, ready))
            for size in SIZES:
                pub = start_publisher(sysobj, channels, size, "%s-pub-%d-%d" % (cls.__name__, n, size))
                lg.send("reset")
                wait_flowing(lg, pub, EQ_RATE)
                if size == SIZES[0] and n == LAT_N and "2" in ONLY:
                    out["latency"] = []
                    for lat_rate in LAT_RATES:
                        pub.send("rate %d" % lat_rate)
                        time.sleep(STEP_WARM + 1)
                        runs = [measure(lg, STEP_S) for _ in range(REPS)]
                        row = {
                            "clients": n, "publish_rate": lat_rate, "size": size,
                            "msgs_per_s": med([r["msgs_per_s"] for r in runs]),
                            "bytes_per_msg": runs[0]["bytes"] / max(1, runs[0]["msgs"]),
                            **{k: med([r["lat_us"][k] for r in runs]) for k in ("p50", "p99", "p999", "max")},
                            "lost": sum(r["lost"] for r in runs), "ooo": sum(r["ooo"] for r in runs),
                            "runs": runs}
                        if isinstance(sysobj, Ours):
                            try:
                                row["kafka_path"] = kafka_path_latency(sysobj.broker.bootstrap, STEP_S)
                            except Exception as e:  # noqa: BLE001 - a missing python3-confluent-kafka
                                log("kafka path latency: %r" % e)
                        out["latency"].append(row)
                        log("%s latency: %s" % (cls.name, {k: v for k, v in row.items() if k != "runs"}))
                        drain(lg, pub)
                if size == SIZES[0] and n == SYS_N and "4" in ONLY:
                    rate = 50000 // PER_CH
                    pub.send("rate %d" % rate)
                    time.sleep(STEP_WARM)
                    lg.send("measure %g" % STEP_S)
                    counts = perf_writes(tree(sysobj.root_pid()), STEP_S)
                    r = lg.read_event("result", STEP_S + 30)
                    if counts and r["msgs"]:
                        total = sum(counts.values())
                        out["syscalls"] = {"clients": n, "publish_rate": rate, "msgs": r["msgs"],
                                           "msgs_per_s": r["msgs_per_s"], "counts": counts,
                                           "per_msg": total / r["msgs"]}
                    log("%s syscalls: %s" % (cls.name, out["syscalls"]))
                    drain(lg, pub)
                if "1" not in ONLY:
                    pub.stop()
                    continue
                steps, best, runs, saturated = ramp(lg, pub, sysobj, n, "%s n=%d size=%d" % (cls.name, n, size),
                                                    RAMP)
                eq = [st for st in steps if st["publish_rate"] == EQ_RATE]
                if eq and eq[0]["msgs_per_s"] >= 0.9 * EQ_RATE * PER_CH:
                    for _ in range(REPS - 1):
                        drain(lg, pub)
                        pub.send("rate %d" % EQ_RATE)
                        time.sleep(STEP_WARM)
                        eq.append(measure(lg, STEP_S))
                else:
                    eq = []
                drain(lg, pub)
                pub.stop()
                row = {"clients": n, "size": size, "publish_rate": best["publish_rate"],
                       "bytes_per_msg": best["bytes"] / max(1, best["msgs"]),
                       "msgs_per_s": med([r["msgs_per_s"] for r in runs]),
                       "cpu_per_s": med([r["cpu_s"] / r["duration_s"] for r in runs]),
                       "msgs_per_cpu_s": med([r["msgs"] / r["cpu_s"] if r["cpu_s"] > 0 else None for r in runs]),
                       "p99_us": med([r["lat_us"]["p99"] for r in runs]),
                       "lost": sum(r["lost"] for r in runs), "ooo": sum(r["ooo"] for r in runs),
                       "closed": runs[-1]["closed"], "saturated": saturated,
                       "loadgen_cpu": med([r.get("loadgen_cpu") for r in runs]),
                       "aux_cpu": med([r.get("aux_cpu") for r in runs]), "setup_rate": ready["setup_rate"],
                       "setup_failed": ready["failed"], "steps": steps, "runs": runs,
                       "eq": {"publish_rate": EQ_RATE, "msgs_per_s": med([r["msgs_per_s"] for r in eq]),
                              "cpu_per_s": med([r["cpu_s"] / r["duration_s"] for r in eq]),
                              "msgs_per_cpu_s": med([r["msgs"] / r["cpu_s"] if r["cpu_s"] > 0 else None
                                                     for r in eq]),
                              "runs": len(eq)} if eq else None}
                out["fanout"].append(row)
                time.sleep(1)
            lg.stop()
        finally:
            sysobj.stop()
    return out


# ---- scenario 7: market data (orderbook-heavy, mixed) --------------------------------

def run_market(cls):
    out = {}
    sysobj = cls().start()
    try:
        for kind in MD_KINDS:
            lg, ready = start_loadgen(sysobj, MD_N, MD_CHANNELS, "%s-md-%s" % (cls.__name__, kind), kind=kind)
            pub = start_publisher(sysobj, MD_CHANNELS, 0, "%s-md-pub-%s" % (cls.__name__, kind), kind=kind)
            try:
                wait_flowing(lg, pub, MD_RATE)
                pub.send("rate %d" % MD_RATE)
                time.sleep(STEP_WARM)
                runs = []
                for _ in range(REPS):
                    b0 = aux_cpu(sysobj)
                    r = measure(lg, STEP_S)
                    r["aux_cpu"] = (aux_cpu(sysobj) - b0) / r["duration_s"]
                    runs.append(r)
                out[kind] = {"clients": ready["subscribed"], "publish_rate": MD_RATE,
                             "expected": MD_RATE * MD_N // MD_CHANNELS,
                             "msgs_per_s": med([r["msgs_per_s"] for r in runs]),
                             "bytes_per_msg": runs[0]["bytes"] / max(1, runs[0]["msgs"]),
                             "cpu_per_s": med([r["cpu_s"] / r["duration_s"] for r in runs]),
                             "msgs_per_cpu_s": med([r["msgs"] / r["cpu_s"] if r["cpu_s"] > 0 else None
                                                    for r in runs]),
                             "p50": med([r["lat_us"]["p50"] for r in runs]),
                             "p99": med([r["lat_us"]["p99"] for r in runs]),
                             "lost": sum(r["lost"] for r in runs), "ooo": sum(r["ooo"] for r in runs),
                             "aux_cpu": med([r["aux_cpu"] for r in runs]), "runs": runs}
                log("%s market %s: %s" % (cls.name, kind, {k: v for k, v in out[kind].items() if k != "runs"}))
                drain(lg, pub)
            finally:
                pub.stop()
                lg.stop()
    finally:
        sysobj.stop()
    return out


# ---- scenarios 9, 10, 11: write coalescing, compression, reconnect storm -----------

def run_coalesce(broker):
    """Our fanout at each write_delay_ms on one broker: msgs per server
    CPU-second and p99 at the equal load and at saturation; nginx+nchan at
    the equal load, fed and served the same way."""
    out = {"rows": [], "nchan": None}
    n, channels = COAL_N, COAL_N // PER_CH
    for wd in WRITE_DELAYS:
        sysobj = Ours(broker=broker, write_delay_ms=wd).start()
        lg = pub = None
        try:
            lg, ready = start_loadgen(sysobj, n, channels, "coalesce-%d-lg" % wd)
            pub = start_publisher(sysobj, channels, 0, "coalesce-%d-pub" % wd)
            wait_flowing(lg, pub, EQ_RATE)
            eq = eq_runs(lg, pub, sysobj)
            drain(lg, pub)
            steps, best, runs, saturated = ramp(lg, pub, sysobj, n, "coalesce write_delay_ms=%d" % wd, RAMP[1:])
            drain(lg, pub)
            row = {"write_delay_ms": wd, "clients": ready["subscribed"],
                   "eq": {"msgs_per_s": med([r["msgs_per_s"] for r in eq]), "msgs_per_cpu_s": per_cpu(eq),
                          "p99_us": med([r["lat_us"]["p99"] for r in eq]), "lost": sum(r["lost"] for r in eq)},
                   "sat": {"msgs_per_s": med([r["msgs_per_s"] for r in runs]), "msgs_per_cpu_s": per_cpu(runs),
                           "p99_us": med([r["lat_us"]["p99"] for r in runs]), "saturated": saturated,
                           "lost": sum(r["lost"] for r in runs)},
                   "steps": steps}
            out["rows"].append(row)
            log("coalesce: %s" % {k: v for k, v in row.items() if k != "steps"})
        finally:
            for p in (pub, lg):
                if p:
                    p.stop()
            sysobj.stop()
    if Nchan.available():
        out["nchan"] = "n/a (%s)" % Nchan.available()
        return out
    out["nchan"] = guarded("coalesce nchan", on_system, Nchan, nchan_equal_load)
    return out


def nchan_equal_load(sysobj):
    channels = COAL_N // PER_CH
    lg, _ = start_loadgen(sysobj, COAL_N, channels, "coalesce-nchan-lg")
    pub = start_publisher(sysobj, channels, 0, "coalesce-nchan-pub")
    try:
        wait_flowing(lg, pub, EQ_RATE)
        eq = eq_runs(lg, pub, sysobj)
        return {"msgs_per_s": med([r["msgs_per_s"] for r in eq]), "msgs_per_cpu_s": per_cpu(eq),
                "p99_us": med([r["lat_us"]["p99"] for r in eq])}
    finally:
        pub.stop()
        lg.stop()


def run_compression(sysobj):
    """Clients offering permessage-deflate or not, on unpadded books and
    small trades at the equal load: bytes read from the sockets and server
    CPU per delivered message."""
    out = {}
    channels = COMP_N // PER_CH
    for kind in COMP_KINDS:
        pub = start_publisher(sysobj, channels, 0, "%s-comp-%s-pub" % (sysobj.name, kind), kind=kind, no_pad=True)
        try:
            for deflate in (False, True):
                lg, ready = start_loadgen(sysobj, COMP_N, channels, "%s-comp-%s-%d-lg" % (sysobj.name, kind, deflate),
                                          kind=kind, deflate=deflate)
                try:
                    wait_flowing(lg, pub, EQ_RATE)
                    runs = eq_runs(lg, pub, sysobj)
                    msgs = sum(r["msgs"] for r in runs) or 1
                    row = {"clients": ready["subscribed"], "deflate_clients": ready.get("deflate", 0),
                           "msgs_per_s": med([r["msgs_per_s"] for r in runs]),
                           "json_b": sum(r["bytes"] for r in runs) / msgs,
                           "wire_b": sum(r.get("wire_bytes", 0) for r in runs) / msgs,
                           "cpu_us": 1e6 * sum(r["cpu_s"] for r in runs) / msgs,
                           "p99_us": med([r["lat_us"]["p99"] for r in runs]),
                           "lost": sum(r["lost"] for r in runs), "ooo": sum(r["ooo"] for r in runs)}
                    out["%s %s" % (kind, "deflate" if deflate else "plain")] = row
                    log("%s compression %s deflate=%d: %s" % (sysobj.name, kind, deflate, row))
                    drain(lg, pub)
                finally:
                    lg.stop()
        finally:
            pub.stop()
    return out


def run_storm(sysobj):
    """STORM_N clients (plus an observer per channel) at the equal load; all
    but the observers drop at once and resume from their last message."""
    channels = STORM_N // PER_CH
    lg, ready = start_loadgen(sysobj, STORM_N + channels, channels, "%s-storm-lg" % sysobj.name, src_ips=8,
                              observers=channels, timeout=240, url=getattr(sysobj, "resume_url", None))
    pub = start_publisher(sysobj, channels, 0, "%s-storm-pub" % sysobj.name)
    try:
        if ready["failed"]:
            return "n/a (%d of %d clients failed to connect)" % (ready["failed"], ready["clients"])
        wait_flowing(lg, pub, EQ_RATE)
        pub.send("rate %d" % EQ_RATE)
        time.sleep(STEP_WARM + 1)
        lg.send("storm %d 30" % STORM_CONC)
        r = lg.read_event("storm", 90)
        r["publish_rate"] = EQ_RATE
        r["setup_rate"] = ready["setup_rate"]
        log("%s storm: %s" % (sysobj.name, r))
        drain(lg, pub)
        return r
    finally:
        pub.stop()
        lg.stop()


def run_extra():
    """Scenarios 9-11; our runs share one broker, Centrifugo gets its own."""
    sc = {}
    want = [k for k in ("9", "10", "11") if k in ONLY]
    if not want:
        return sc
    why = Ours.available()
    if why:
        return {k: "n/a (%s)" % why for k in ("coalesce", "compression", "storm")}
    broker = start_broker(os.path.join(LOGS, "ours-extra"))
    try:
        if "9" in want:
            sc["coalesce"] = guarded("coalesce", run_coalesce, broker)
        for key, num, fn in (("compression", "10", run_compression), ("storm", "11", run_storm)):
            if num in want:
                sc.setdefault(key, {})[Ours.name] = guarded(key, on_system, lambda: Ours(broker=broker), fn)
    finally:
        broker.stop()
    for key, num, fn, kw in (("compression", "10", run_compression, {"compression": True}),
                             ("storm", "11", run_storm, {"history": True})):
        if num not in want:
            continue
        why = Centrifugo.available()
        if why:
            sc.setdefault(key, {})[Centrifugo.name] = "n/a (%s)" % why
            continue
        sc.setdefault(key, {})[Centrifugo.name] = guarded(key, on_system, lambda: Centrifugo(**kw), fn)
    return sc


def on_system(make, fn):
    sysobj = make().start()
    try:
        return fn(sysobj)
    finally:
        sysobj.stop()


def guarded(what, fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 - report and go on
        log("%s failed: %r" % (what, e))
        return "n/a (failed: %s)" % str(e).splitlines()[0][:120]


# ---- scenario 8: the physical limit ---------------------------------------------------

def write_cost(sizes):
    """wcost: msgs per CPU-second of one loopback write() of each size (the
    WebSocket frame header included), the kernel's floor for one write per
    delivered message."""
    out = {}
    for size in sorted(set(int(x) for x in sizes if x)):
        p = subprocess.run([os.path.join(BENCH, "wcost"), "--size", str(size), "--writes",
                            "50000" if QUICK else "200000"], capture_output=True, text=True, timeout=300)
        if p.returncode == 0:
            out[size] = json.loads(p.stdout)
        else:
            log("wcost %d failed: %s" % (size, p.stderr.strip()))
    return out


# ---- scenario 3: idle clients -----------------------------------------------------

def run_idle(cls):
    sysobj = cls().start()
    lgs = []
    try:
        time.sleep(1)
        rss0 = tree_rss_kb(sysobj.root_pid())
        per = 10000
        k = 0
        left = IDLE_N
        while left > 0:
            n = min(per, left)
            lg, ready = start_loadgen(sysobj, n, max(1, n // PER_CH), "%s-idle-%d" % (cls.__name__, k),
                                      src_first=1 + 8 * k, src_ips=8)
            lgs.append((lg, ready))
            left -= n
            k += 1
        time.sleep(3)
        rss1 = tree_rss_kb(sysobj.root_pid())
        connected = sum(r["subscribed"] for _, r in lgs)
        return {"clients": connected, "rss0_kb": rss0, "rss1_kb": rss1,
                "bytes_per_client": (rss1 - rss0) * 1024 / connected if connected else None,
                "setup_rate": med([r["setup_rate"] for _, r in lgs]), "failed": sum(r["failed"] for _, r in lgs)}
    finally:
        for lg, _ in lgs:
            lg.stop()
        sysobj.stop()


# ---- scenarios 5 and 6 live in failover.py (ZooKeeper, simulator) -------------------

def run_failover_scenarios():
    import failover
    return failover.run(BUILD, LOGS, quick=QUICK, reps=FAIL_REPS, only=ONLY, log=log)


# ---- the table ----------------------------------------------------------------------

def fmt(v, f="%.0f"):
    return "-" if v is None else f % v


def ratio(a, b):
    return "%.2fx" % (a / b) if a and b else "n/a"


def print_table(res):
    sc = res["scenarios"]
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    L = []
    L.append("exchange-service benchmarks%s — nproc %d, %s; load average at start %s, at end %s" % (
        " (BENCH_QUICK=1)" if QUICK else "", CPUS, cpu, res.get("loadavg_start"), res.get("loadavg_end")))
    L.append("Kafka-fed systems read a real Apache Kafka broker (one KRaft node); its CPU is \"feed cpu\","
             " not server CPU")
    L.append("")
    L.append("(1) fanout at saturation, %d clients per channel, median of %d run(s)" % (PER_CH, REPS))
    hdr = "%-17s %7s %6s %10s %12s %9s %12s %9s %6s %6s %8s %8s %8s" % (
        "system", "clients", "msg B", "publish/s", "delivered/s", "cpu s/s", "msgs/cpu-s", "p99 ms", "lost",
        "ooo", "conn/s", "lg cpu", "feed cpu")
    L.append(hdr)
    rows = {}
    for name, r in sc.get("fanout", {}).items():
        if isinstance(r, str):
            L.append("%-17s %s" % (name, r))
            continue
        for row in r:
            rows[(name, row["clients"], row["size"])] = row
            L.append("%-17s %7d %6.0f %10d %12s %9.2f %12s %9.1f %6d %6d %8s %8s %8s%s" % (
                name, row["clients"], row["bytes_per_msg"], row["publish_rate"], fmt(row["msgs_per_s"]),
                row["cpu_per_s"] or 0, fmt(row["msgs_per_cpu_s"]), (row["p99_us"] or 0) / 1000, row["lost"],
                row["ooo"], fmt(row["setup_rate"]), fmt(row["loadgen_cpu"], "%.2f"),
                fmt(row["aux_cpu"], "%.2f") if name in ("exchange-service", "centrifugo") else "-",
                "" if row["saturated"] else "  (ramp top, not saturated)"))
    ours = "exchange-service"
    for peer in ("centrifugo", "nginx+nchan", "node ws"):
        for (name, n, size), row in sorted(rows.items()):
            if name != ours or (peer, n, size) not in rows:
                continue
            p = rows[(peer, n, size)]
            eo, ep = row.get("eq") or {}, p.get("eq") or {}
            L.append("  ours/%s %5d clients %-5s: at saturation delivered %s, msgs per CPU-second %s;"
                     " at %dk/s delivered msgs per CPU-second %s (%s vs %s)" % (
                         peer, n, "1 KB" if size else "small", ratio(row["msgs_per_s"], p["msgs_per_s"]),
                         ratio(row["msgs_per_cpu_s"], p["msgs_per_cpu_s"]), EQ_RATE * PER_CH // 1000,
                         ratio(eo.get("msgs_per_cpu_s"), ep.get("msgs_per_cpu_s")),
                         fmt(eo.get("msgs_per_cpu_s")), fmt(ep.get("msgs_per_cpu_s"))))
    L.append("")
    L.append("(2) latency at fixed loads below/at saturation (%d clients, %d per channel, small messages),"
             " median of %d" % (LAT_N, PER_CH, REPS))
    L.append("%-17s %10s %12s %8s %8s %9s %8s %6s %6s" % ("system", "publish/s", "delivered/s", "p50 ms", "p99 ms",
                                                         "p99.9 ms", "max ms", "lost", "ooo"))
    for name, rs in sc.get("latency", {}).items():
        if isinstance(rs, str) or not rs:
            L.append("%-17s %s" % (name, rs or "n/a (not measured)"))
            continue
        for r in rs:
            L.append("%-17s %10d %12s %8.2f %8.2f %9.2f %8.1f %6d %6d" % (
                name, r["publish_rate"], fmt(r["msgs_per_s"]), r["p50"] / 1000, r["p99"] / 1000, r["p999"] / 1000,
                r["max"] / 1000, r["lost"], r["ooo"]))
            k = r.get("kafka_path")
            if k:
                L.append("  of which Kafka  %10s %12s %8.2f %8.2f %9.2f %8.1f   (publish -> %s broker -> a"
                         " plain consumer, same load)" % ("", "", k["p50"] / 1000, k["p99"] / 1000,
                                                          k["p999"] / 1000, k["max"] / 1000, "Kafka"))
    L.append("")
    md = sc.get("market")
    if md:
        L.append("(7) market data: %d channels, %d msgs/s published (10 per channel), %d clients, median of %d" % (
            MD_CHANNELS, MD_RATE, MD_N, REPS))
        L.append("%-17s %-9s %7s %12s %12s %8s %12s %8s %8s %6s %6s %8s" % (
            "system", "load", "msg B", "expected/s", "delivered/s", "cpu s/s", "msgs/cpu-s", "p50 ms", "p99 ms",
            "lost", "ooo", "feed cpu"))
        for name, m in md.items():
            if not isinstance(m, dict):
                L.append("%-17s %s" % (name, m))
                continue
            for kind, r in m.items():
                L.append("%-17s %-9s %7.0f %12d %12s %8.2f %12s %8.2f %8.2f %6d %6d %8s" % (
                    name, kind, r["bytes_per_msg"], r["expected"], fmt(r["msgs_per_s"]), r["cpu_per_s"] or 0,
                    fmt(r["msgs_per_cpu_s"]), r["p50"] / 1000, r["p99"] / 1000, r["lost"], r["ooo"],
                    fmt(r["aux_cpu"], "%.2f") if name in ("exchange-service", "centrifugo") else "-"))
        for kind in MD_KINDS:
            o = md.get(ours) if isinstance(md.get(ours), dict) else {}
            for peer in ("centrifugo", "nginx+nchan", "node ws"):
                p = md.get(peer) if isinstance(md.get(peer), dict) else {}
                if kind in o and kind in p:
                    L.append("  ours/%s %-9s: msgs per CPU-second %s, p99 %.1f vs %.1f ms" % (
                        peer, kind, ratio(o[kind]["msgs_per_cpu_s"], p[kind]["msgs_per_cpu_s"]),
                        o[kind]["p99"] / 1000, p[kind]["p99"] / 1000))
        L.append("")
    lim = sc.get("limit")
    if lim:
        L.append("(8) physical limit: one loopback write() of the frame size (wcost: writer thread CPU, user+sys,"
                 " a reader draining 100 sockets)")
        L.append("  " + "; ".join("%d B: %s writes per CPU-second (%.2f us)" % (
            int(k), fmt(v["writes_per_cpu_s"]), v["us_per_write"]) for k, v in sorted(lim.items(),
                                                                                    key=lambda kv: int(kv[0]))))

        def limit_for(nbytes):
            k = min(lim, key=lambda x: abs(int(x) - (nbytes + 4)))
            return lim[k]["writes_per_cpu_s"]
        L.append("  %-17s %-22s %12s %12s %8s" % ("system", "row", "msgs/cpu-s", "limit", "of limit"))
        for (name, n, size), row in sorted(rows.items()):
            for what, v in (("saturation", row["msgs_per_cpu_s"]),
                            ("25k/s", (row.get("eq") or {}).get("msgs_per_cpu_s"))):
                if v:
                    lv = limit_for(row["bytes_per_msg"])
                    L.append("  %-17s %-22s %12s %12s %7.0f%%" % (
                        name, "%dc %s %s" % (n, "1 KB" if size else "small", what), fmt(v), fmt(lv), 100 * v / lv))
        for name, m in (md or {}).items():
            if isinstance(m, dict):
                for kind, r in m.items():
                    if r["msgs_per_cpu_s"]:
                        lv = limit_for(r["bytes_per_msg"])
                        L.append("  %-17s %-22s %12s %12s %7.0f%%" % (name, kind, fmt(r["msgs_per_cpu_s"]), fmt(lv),
                                                                    100 * r["msgs_per_cpu_s"] / lv))
        L.append("")
    L.append("(3) idle clients (subscribed, no traffic): server RSS (all processes, VmRSS)")
    L.append("%-17s %8s %12s %12s %14s %10s" % ("system", "clients", "RSS before", "RSS after", "bytes/client",
                                               "conn/s"))
    for name, r in sc.get("idle", {}).items():
        if isinstance(r, str):
            L.append("%-17s %s" % (name, r))
            continue
        L.append("%-17s %8d %9.1f MB %9.1f MB %14s %10s" % (name, r["clients"], r["rss0_kb"] / 1024,
                                                          r["rss1_kb"] / 1024, fmt(r["bytes_per_client"]),
                                                          fmt(r["setup_rate"])))
    L.append("")
    L.append("(4) write-type syscalls (write, writev, sendto, sendmsg, sendmmsg; perf tracepoints, every"
             " server thread) per delivered message")
    L.append("%-17s %8s %10s %12s %10s  %s" % ("system", "clients", "publish/s", "delivered/s", "per msg",
                                              "counts"))
    for name, r in sc.get("syscalls", {}).items():
        if isinstance(r, str) or r is None:
            L.append("%-17s %s" % (name, r or "n/a (not measured)"))
            continue
        L.append("%-17s %8d %10d %12s %10.4f  %s" % (name, r["clients"], r["publish_rate"], fmt(r["msgs_per_s"]),
                                                    r["per_msg"], " ".join("%s=%d" % kv
                                                                           for kv in sorted(r["counts"].items())
                                                                           if kv[1])))
    L.append("")
    fo = sc.get("failover")
    L.append("(5) failover with a real ZooKeeper: time from the signal to the leader to the first client"
             " message of the new leader")
    if isinstance(fo, dict):
        for sig in ("kill -9", "SIGTERM"):
            r = fo.get(sig)
            if isinstance(r, dict):
                L.append("  %-8s n=%d  median %.2f s  max %.2f s  (session_timeout_ms %d)" % (
                    sig, len(r["times"]), statistics.median(r["times"]), max(r["times"]),
                    r["session_timeout_ms"]))
            else:
                L.append("  %-8s %s" % (sig, r))
    else:
        L.append("  %s" % fo)
    L.append("")
    sw = sc.get("switch")
    L.append("(6) Kafka -> relay switch (all brokers down) and back: longest time a client went without messages")
    if isinstance(sw, dict):
        L.append("  fallback_after_ms %d: longest gap before %.2f s; Kafka down -> relay: gap %.2f s (relay after"
                 " %.2f s); Kafka up -> back: gap %.2f s (kafka after %s s); lost %d, repeated/out of order %d%s"
                 % (sw["fallback_after_ms"], sw["baseline_gap_s"], sw["down_gap_s"], sw["switch_s"],
                    sw["up_gap_s"], fmt(sw["back_s"], "%.2f"), sw["lost"], sw["ooo"],
                    "; " + sw["note"] if sw.get("note") else ""))
    else:
        L.append("  %s" % sw)
    L.extend(extra_lines(sc))
    L.extend(goal_lines(sc, rows))
    print("\n".join(L), flush=True)


def coalesce_ratio(co, wd):
    """Our msgs per CPU-second at the equal load with write_delay_ms = wd,
    against nchan's in the same scenario."""
    if not isinstance(co, dict) or not isinstance(co.get("nchan"), dict):
        return None, None
    row = next((r for r in co["rows"] if r["write_delay_ms"] == wd), None)
    a, b = row and row["eq"]["msgs_per_cpu_s"], co["nchan"]["msgs_per_cpu_s"]
    return (a / b if a and b else None), row


def comp_ratios(m, kind):
    """(wire bytes deflate/plain, CPU per message deflate/plain) of one system."""
    if not isinstance(m, dict):
        return None, None
    p, d = m.get(kind + " plain"), m.get(kind + " deflate")
    if not p or not d or not d["deflate_clients"]:
        return None, None
    return d["wire_b"] / p["wire_b"], d["cpu_us"] / p["cpu_us"]


def section(L, title, data, body):
    """A titled part of the table: body(data) when the scenario ran."""
    L.extend(["", title])
    if isinstance(data, dict):
        body(data)
    else:
        L.append("  %s" % (data or "n/a (not selected)"))


def extra_lines(sc):
    L = []

    def coalesce(co):
        L.append("%-26s %12s %12s %8s %8s | %12s %12s %9s %6s" % (
            "system", "delivered/s", "msgs/cpu-s", "p99 ms", "vs nchan", "sat deliv/s", "msgs/cpu-s", "p99 ms", "lost"))
        for r in co["rows"]:
            rat, _ = coalesce_ratio(co, r["write_delay_ms"])
            e, t = r["eq"], r["sat"]
            L.append("%-26s %12s %12s %8.2f %8s | %12s %12s %9.1f %6d%s" % (
                "exchange-service wd=%d ms" % r["write_delay_ms"], fmt(e["msgs_per_s"]), fmt(e["msgs_per_cpu_s"]),
                e["p99_us"] / 1000, "%.2fx" % rat if rat else "n/a", fmt(t["msgs_per_s"]), fmt(t["msgs_per_cpu_s"]),
                t["p99_us"] / 1000, e["lost"] + t["lost"], "" if t["saturated"] else "  (ramp top)"))
        n = co.get("nchan")
        L.append("%-26s %12s %12s %8.2f" % ("nginx+nchan", fmt(n["msgs_per_s"]), fmt(n["msgs_per_cpu_s"]),
                                          n["p99_us"] / 1000) if isinstance(n, dict) else "%-26s %s" % ("nginx+nchan", n))

    def compression(cm):
        L.append("%-17s %-18s %9s %8s %8s %10s %8s %6s %7s" % (
            "system", "load", "deflated", "JSON B", "wire B", "cpu us/msg", "p99 ms", "lost", "wire %"))
        for name, m in cm.items():
            if not isinstance(m, dict):
                L.append("%-17s %s" % (name, m))
                continue
            for key, r in m.items():
                plain = m.get(key.split()[0] + " plain")
                L.append("%-17s %-18s %9s %8.0f %8.0f %10.2f %8.2f %6d %6.0f%%" % (
                    name, key, "%d/%d" % (r["deflate_clients"], r["clients"]), r["json_b"], r["wire_b"], r["cpu_us"],
                    r["p99_us"] / 1000, r["lost"], 100 * r["wire_b"] / plain["wire_b"] if plain else 0))
            for kind in COMP_KINDS:
                w, c = comp_ratios(m, kind)
                if w:
                    L.append("  %s %-9s: deflate wire %.0f%% of plain, CPU per message %.2fx plain" % (
                        name, kind, 100 * w, c))

    def storm(st):
        L.append("%-17s %7s %7s %8s %7s %6s %6s %11s %9s %9s %9s" % (
            "system", "clients", "served", "not rec", "failed", "lost", "dup", "all served", "p50 s", "p99 s",
            "replies"))
        for name, r in st.items():
            if not isinstance(r, dict) or "served" not in r:
                L.append("%-17s %s" % (name, r))
                continue
            L.append("%-17s %7d %7d %8d %7d %6d %6d %11s %9.3f %9.3f %9.3f" % (
                name, r["clients"], r["served"], r["not_recovered"], r["failed"], r["lost"], r["dup"],
                "%.3f s" % r["all_served_s"] if r["all_served_s"] >= 0 else "no", r["p50_s"], r["p99_s"],
                r["replies_s"]))

    section(L, "(9) write coalescing ([fanout] write_delay_ms), %d clients, small trades, median of %d: at %dk/s"
            " delivered and at saturation" % (COAL_N, REPS, EQ_RATE * PER_CH // 1000), sc.get("coalesce"), coalesce)
    section(L, "(10) permessage-deflate, %d clients at %dk/s delivered, unpadded books (15 levels) and small trades,"
            " median of %d; wire B = bytes read from the sockets per delivered message" % (
                COMP_N, EQ_RATE * PER_CH // 1000, REPS), sc.get("compression"), compression)
    section(L, "(11) reconnect storm: %d clients on %d trade channels at %dk/s delivered drop at once and resume"
            " with since; served = recovered:true and every message published before it re-subscribed, in order"
            % (STORM_N, STORM_N // PER_CH, EQ_RATE * PER_CH // 1000), sc.get("storm"), storm)
    return L


def goal_lines(sc, rows):
    """Issue 18's goals as ratios from this run: met / NOT met / n/a."""
    ours = "exchange-service"
    out = ["", "Goals (this run):"]

    def verdict(ok):
        return "n/a" if ok is None else "met" if ok else "NOT met"
    for peer, want in (("centrifugo", 2.0), ("nginx+nchan", 1.5)):
        for (name, n, size), row in sorted(rows.items()):
            p = rows.get((peer, n, size))
            if name != ours or not p:
                continue
            a, b = (row.get("eq") or {}).get("msgs_per_cpu_s"), (p.get("eq") or {}).get("msgs_per_cpu_s")
            out.append("  msgs per CPU-second at 25k/s >= %.1fx %s (%dc %s): %s %s" % (
                want, peer, n, "1 KB" if size else "small", ratio(a, b), verdict(a / b >= want if a and b else None)))
    lat = {k: v for k, v in sc.get("latency", {}).items() if isinstance(v, list)}
    at = {k: next((r for r in v if r["publish_rate"] == EQ_RATE), None) for k, v in lat.items()}
    mine = at.get(ours)
    peers = [r["p99"] for k, r in at.items() if k != ours and r]
    out.append("  p99 at 25k/s no worse than the best peer: %s vs %s ms %s" % (
        fmt(mine and mine["p99"] / 1000, "%.1f"), fmt(min(peers) / 1000 if peers else None, "%.1f"),
        verdict(mine["p99"] <= min(peers) if mine and peers else None)))
    k1 = next((r for r in lat.get(ours, []) if r["publish_rate"] == 1000), None)
    out.append("  p99 <= 10 ms at %d clients, 1k msgs/s: %s ms %s%s" % (
        LAT_N, fmt(k1 and k1["p99"] / 1000, "%.1f"), verdict(k1["p99"] <= 10000 if k1 else None),
        "" if LAT_N >= 10000 else " (goal is at 10k clients)"))
    idle = sc.get("idle", {})
    mi, ni = idle.get(ours), idle.get("nginx+nchan")
    if isinstance(mi, dict):
        out.append("  idle memory <= 2 KB per client at 20k: %s B at %d clients %s" % (
            fmt(mi["bytes_per_client"]), mi["clients"],
            verdict(mi["bytes_per_client"] <= 2048 if mi["clients"] >= 20000 else None)))
        if isinstance(ni, dict):
            out.append("  connection setup >= nchan's: %s vs %s conn/s %s" % (
                fmt(mi["setup_rate"]), fmt(ni["setup_rate"]), verdict(mi["setup_rate"] >= ni["setup_rate"])))
    rat, _ = coalesce_ratio(sc.get("coalesce"), 5)
    out.append("  write_delay_ms = 5: msgs per CPU-second at 25k/s >= 3x nchan: %s %s" % (
        "%.2fx" % rat if rat else "n/a", verdict(rat >= 3 if rat else None)))
    st = (sc.get("storm") or {}).get(ours) if isinstance(sc.get("storm"), dict) else None
    if isinstance(st, dict) and "served" in st:
        ok = st["all_served_s"] >= 0 and st["all_served_s"] <= 1.0 and not st["lost"] and not st["dup"]
        out.append("  reconnect storm of %d clients with since served within 1 s: %s (lost %d, dup %d) %s%s" % (
            st["clients"], "%.2f s" % st["all_served_s"] if st["all_served_s"] >= 0 else
            "not all served (%d of %d)" % (st["served"], st["clients"]), st["lost"], st["dup"],
            verdict(ok) if st["clients"] >= 10000 or not ok else "n/a", "" if st["clients"] >= 10000 else
            " (goal is at 10k clients)"))
    else:
        out.append("  reconnect storm within 1 s: %s" % (st or "n/a (not selected)"))
    w, c = comp_ratios((sc.get("compression") or {}).get(ours) if isinstance(sc.get("compression"), dict) else None,
                       "orderbook")
    out.append("  compression: orderbook wire <= 30%% of plain for <= 1.2x CPU per message: %s, %s %s" % (
        "%.0f%%" % (100 * w) if w else "n/a", "%.2fx" % c if c else "n/a",
        verdict(w <= 0.30 and c <= 1.2 if w and c else None)))
    return out


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main():
    ensure_dirs()
    results["loadavg_start"] = loadavg()
    t0 = time.monotonic()
    sc = results["scenarios"]
    results["timing"] = {}
    last = [t0]

    def mark(what):
        now = time.monotonic()
        if now - last[0] >= 1:
            results["timing"][what] = round(now - last[0])
        last[0] = now
        log("scenarios %s: elapsed %.0f s" % (what, now - t0))
    for key in ("fanout", "latency", "syscalls", "idle"):
        sc[key] = {}
    for cls in SYSTEMS:
        why = cls.available()
        if why:
            for key in ("fanout", "latency", "syscalls", "idle"):
                sc[key][cls.name] = "n/a (%s)" % why
            continue
        for key, num in (("fanout", "1"), ("latency", "2"), ("syscalls", "4"), ("idle", "3")):
            if num not in ONLY:
                sc[key][cls.name] = "n/a (not selected)"
        if ONLY & {"1", "2", "4"}:
            try:
                r = run_fanout(cls)
                sc["fanout"][cls.name] = r["fanout"] if "1" in ONLY else "n/a (not selected)"
                sc["latency"][cls.name] = r["latency"] if "2" in ONLY else "n/a (not selected)"
                sc["syscalls"][cls.name] = (r["syscalls"] or "n/a (no perf or strace counts)") if "4" in ONLY \
                    else "n/a (not selected)"
            except Exception as e:  # noqa: BLE001 - report and go on with the next system
                log("%s fanout failed: %r" % (cls.name, e))
                for key in ("fanout", "latency", "syscalls"):
                    sc[key][cls.name] = "n/a (failed: %s)" % str(e).splitlines()[0][:120]
    mark("1, 2, 4")
    for cls in SYSTEMS:
        if "3" not in ONLY or cls.available():
            continue
        if cls is NodeWs:
            sc["idle"][cls.name] = "n/a (one process; RLIMIT_NOFILE hard limit %d here)" % \
                __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]
            continue
        try:
            sc["idle"][cls.name] = run_idle(cls)
        except Exception as e:  # noqa: BLE001
            log("%s idle failed: %r" % (cls.name, e))
            sc["idle"][cls.name] = "n/a (failed: %s)" % str(e).splitlines()[0][:120]
    mark("3")
    if "7" in ONLY:
        sc["market"] = {}
        for cls in SYSTEMS:
            why = cls.available()
            try:
                sc["market"][cls.name] = "n/a (%s)" % why if why else run_market(cls)
            except Exception as e:  # noqa: BLE001
                log("%s market failed: %r" % (cls.name, e))
                sc["market"][cls.name] = "n/a (failed: %s)" % str(e).splitlines()[0][:120]
    mark("7")
    if "8" in ONLY:
        sizes = [r["bytes_per_msg"] + (2 if r["bytes_per_msg"] < 126 else 4)
                 for rs in sc.get("fanout", {}).values() if isinstance(rs, list) for r in rs]
        sizes += [r["bytes_per_msg"] + 4 for m in sc.get("market", {}).values() if isinstance(m, dict)
                  for r in m.values()]
        sc["limit"] = write_cost([round(x, -1) for x in sizes] or [270, 1030, 1610])
    mark("8")
    if ONLY & {"9", "10", "11"}:
        sc.update(run_extra())
        mark("9-11")
    if ONLY & {"5", "6"}:
        try:
            sc.update(run_failover_scenarios())
        except Exception as e:  # noqa: BLE001
            log("failover scenarios failed: %r" % e)
            sc.setdefault("failover", "n/a (failed: %s)" % str(e).splitlines()[0][:120])
            sc.setdefault("switch", "n/a (failed: %s)" % str(e).splitlines()[0][:120])
        mark("5, 6")
    for k in ("failover", "switch"):
        sc.setdefault(k, "n/a (not selected)")
    results["elapsed_s"] = time.monotonic() - t0
    results["loadavg_end"] = loadavg()
    with open(os.path.join(BENCH, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print("(elapsed %.0f s: %s; raw figures in %s)" % (
        results["elapsed_s"], ", ".join("%s %d s" % kv for kv in results["timing"].items()),
        os.path.join(BENCH, "results.json")))


if __name__ == "__main__":
    main()
