"""Fixtures for the exchange-service integration suite.

Run from the repo root:
    EXCHANGE_BUILD=$PWD/build /usr/bin/python3 -m pytest -q test/integration

Fixtures here:
    build_dir       absolute path of the built binaries
    procs           a ProcessGroup logging under tmp_path, stopped at teardown
    zk_server       one ZooKeeper for the whole session (never stop it in a test)
    zk_factory      zk_factory() -> a private ZooKeeperServer, started; stopped at teardown
    kafka_broker    test-kafka-broker with topic `exchange` (3 partitions), per test
    kafka_factory   kafka_factory(brokers=3, topics=("exchange:3",)) -> KafkaBroker
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
from harness.kafka import KafkaBroker  # noqa: E402
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
def kafka_factory(tmp_path, build_dir):
    made = []

    def make(brokers=3, topics=("exchange:3",)):
        b = KafkaBroker(tmp_path / "logs", brokers=brokers, topics=topics,
                        binary=os.path.join(build_dir, "test-kafka-broker"),
                        name="kafka-broker%d" % len(made) if made else "kafka-broker")
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def kafka_broker(kafka_factory):
    """A 3-broker mock Kafka cluster with topic `exchange` (3 partitions)."""
    return kafka_factory()


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
