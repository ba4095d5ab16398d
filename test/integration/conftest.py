"""Fixtures for the exchange-service integration suite.

Run from the repo root:
    EXCHANGE_BUILD=$PWD/build /usr/bin/python3 -m pytest -q test/integration

Fixtures here:
    build_dir       absolute path of the built binaries
    procs           a ProcessGroup logging under tmp_path, stopped at teardown
    zk_server       one ZooKeeper for the whole session (never stop it in a test)
    zk_factory      zk_factory() -> a private ZooKeeperServer, started; stopped at teardown
    kafka_broker    a real single-node Kafka (KRaft) shared by the session, with a
                    topic of 3 partitions private to the test: .bootstrap, .topic,
                    .create_topic(), .cluster. Never stop it: use kafka_factory
    kafka_factory   kafka_factory(nodes=1|3, topics=("exchange:3",), overrides={})
                    -> a private KafkaCluster (harness/kafka.py), started, topics
                    created ("name:partitions[:rf]"); stopped at teardown
Other fixture modules (harness/service.py, ...) are pulled in at the bottom.

On failure, the last lines of every process log the test used are printed
(anything among the test's fixtures with a .logs() method, plus every Proc
started during the test). EXCHANGE_TEST_TIMEOUT (seconds, default 180, 0 =
off) fails a test that runs longer, via SIGALRM.
"""
import importlib.util
import os
import signal
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from harness import build_dir as _build_dir  # noqa: E402
from harness import util  # noqa: E402
from harness.kafka import KafkaCluster, start_kafka  # noqa: E402
from harness.zk import ZooKeeperServer  # noqa: E402

TEST_TIMEOUT = float(os.environ.get("EXCHANGE_TEST_TIMEOUT", "180"))
LOG_LINES = int(os.environ.get("EXCHANGE_LOG_LINES", "60"))


# ---- generic ------------------------------------------------------------------

@pytest.fixture(scope="session")
def build_dir():
    d = _build_dir()
    if not os.path.isdir(d):
        pytest.fail("build dir %s missing: run make first (or set EXCHANGE_BUILD)" % d)
    return d


@pytest.fixture
def procs(tmp_path):
    g = util.ProcessGroup(tmp_path / "logs")
    yield g
    g.stop_all()


# ---- ZooKeeper ------------------------------------------------------------------

@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    """Shared ZooKeeper. Tests must not stop it: use zk_factory for that, and
    use a unique root/cluster name per test to stay independent."""
    zk = ZooKeeperServer(tmp_path_factory.mktemp("zk-session"), name="zookeeper-session")
    zk.start()
    yield zk
    zk.stop()


@pytest.fixture
def zk_factory(tmp_path):
    made = []

    def make(**kw):
        zk = ZooKeeperServer(tmp_path / ("zk%d" % len(made)), name="zookeeper%d" % len(made), **kw)
        made.append(zk)
        return zk.start()

    yield make
    for zk in made:
        zk.stop()


# ---- Kafka ------------------------------------------------------------------------

@pytest.fixture
def kafka_factory(tmp_path):
    made = []

    def make(nodes=1, topics=("exchange:3",), overrides=None, name=None):
        k = start_kafka(tmp_path / ("kafka%d" % len(made)), nodes=nodes, topics=topics, overrides=overrides,
                        name=name or ("kafka%d" % len(made) if made else "kafka"))
        made.append(k)
        return k

    yield make
    for k in made:
        k.stop()


@pytest.fixture(scope="session")
def kafka_session(tmp_path_factory):
    """One single-node cluster for the session (kafka_broker's)."""
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-session"), nodes=1, name="kafka-session")
    made = []

    def get():
        if not made:
            made.append(k.start())
        elif not k.running():  # a test broke the rule: bring it back for the next one
            k.up()
        return k

    yield get
    if made:
        k.stop()


class SharedKafka:
    """kafka_broker: the session's cluster seen through one test's topic."""

    def __init__(self, cluster, topic):
        self.cluster = cluster
        self.topic = topic
        self.bootstrap = cluster.bootstrap

    def create_topic(self, name, partitions=3, rf=None, configs=None):
        return self.cluster.create_topic(name, partitions, rf, configs)

    def topic_info(self, name=None):
        return self.cluster.topic_info(name or self.topic)

    def logs(self, lines=40):
        return self.cluster.logs(lines)

    def __repr__(self):
        return "<kafka_broker %s topic %s>" % (self.bootstrap, self.topic)


_topic_seq = [0]


def unique_topic(request, prefix="t"):
    """A topic name unique in the session, readable in logs."""
    _topic_seq[0] += 1
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    return "%s%d-%s" % (prefix, _topic_seq[0], base[:120])


@pytest.fixture
def kafka_broker(kafka_session, request):
    """The shared single-node Kafka with a fresh topic (3 partitions) for this
    test, named in .topic. Tests that stop, kill or pause brokers use
    kafka_factory instead."""
    k = kafka_session()
    return SharedKafka(k, k.create_topic(unique_topic(request), 3))


# ---- failure logs, timeout guard, cleanup --------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item._harness_first_proc = len(util.live_procs())
    old = None
    if TEST_TIMEOUT > 0 and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            pytest.fail("test exceeded EXCHANGE_TEST_TIMEOUT=%gs" % TEST_TIMEOUT, pytrace=True)
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _log_sources(item):
    seen, out = set(), []
    for v in list(getattr(item, "funcargs", {}).values()):
        if callable(getattr(v, "logs", None)) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    inner = {id(getattr(v, "proc", None)) for v in out}
    for p in util.live_procs()[getattr(item, "_harness_first_proc", 0):]:
        if id(p) not in seen and id(p) not in inner:
            seen.add(id(p))
            out.append(p)
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for src in _log_sources(item):
            try:
                text = src.logs(LOG_LINES)
            except Exception as e:  # noqa: BLE001
                text = "(logs unavailable: %r)" % (e,)
            if text:
                rep.sections.append(("process logs: %r" % (src,), text))


def pytest_sessionfinish(session, exitstatus):
    # Nothing started by the suite may outlive it.
    for p in util.live_procs():
        try:
            p.stop(timeout=3)
        except Exception:  # noqa: BLE001
            pass


# ---- more fixture modules, owned by others ---------------------------------------
# Imported when present; a real error inside them must surface, so only a
# missing module is skipped.
for _name in ("harness.service", "harness.sim"):
    if importlib.util.find_spec(_name) is not None:
        _mod = importlib.import_module(_name)
        _names = getattr(_mod, "__all__", [n for n in vars(_mod) if not n.startswith("_")])
        globals().update({n: getattr(_mod, n) for n in _names})
