"""A real Apache Kafka cluster in KRaft mode for tests (jars from `make deps`
in .deps/kafka/libs or $KAFKA_LIBS, run with java directly), and
confluent_kafka helpers.

    k = KafkaCluster(base_dir, nodes=1).start()   # or nodes=3: quorum of 3
    k.bootstrap                     # "127.0.0.1:P1,..."
    k.create_topic("t", 6, rf=3, configs={"min.insync.replicas": "2"})
    k.topic_info("t")               # {partition: {"leader", "replicas", "isr"}}
    k.nodes[0].kill(); .stop(); .pause(); .resume(); .restart()
    k.down(); k.up()                # every node; up() waits for metadata
    k.stop()

Every node is a combined broker+controller (process.roles=broker,controller)
on free loopback ports, heap <= 256 MB, its own log dir (kept across
restarts) and its own log file (KafkaNode.logs()). A node or cluster is
ready when a metadata request answers with every running broker
registered. Internal topics (offsets, transaction state) get replication
min(3, nodes) and min ISR min(2, nodes), so transactions work on 1 and 3
nodes. auto.create.topics.enable=false, like MSK and Confluent Cloud: the
service creates its own topic.
"""
import base64
import fcntl
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid

from . import REPO
from .util import Proc, free_port, port_open, tail, wait_until

DEFAULT_TOPIC = "exchange"
JAVA = os.environ.get("JAVA", "/usr/bin/java")
LOG4J = os.path.join(REPO, "test", "kafka", "log4j2.properties")
JVM_OPTS = ["-Xmx256m", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", "-Dlog4j2.configurationFile=" + LOG4J]


class BrokerError(RuntimeError):
    pass


def libs_dir():
    d = os.environ.get("KAFKA_LIBS") or os.path.join(REPO, ".deps", "kafka", "libs")
    if not glob.glob(os.path.join(d, "kafka_2.13-*.jar")):
        raise BrokerError("Kafka broker jars not found in %s: run `make deps`" % d)
    return d


def _java(main, *args, cds=None):
    return [JAVA] + JVM_OPTS + (cds or []) + ["-cp", os.path.join(libs_dir(), "*"), main] + list(args)


def _cds_path():
    """Where the class-data archive of this set of jars lives (by a hash of
    their names, sizes and mtimes: new jars, new archive)."""
    d = libs_dir()
    h = hashlib.sha1()
    for j in sorted(glob.glob(os.path.join(d, "*.jar"))):
        st = os.stat(j)
        h.update(("%s %d %d\n" % (os.path.basename(j), st.st_size, int(st.st_mtime))).encode())
    h.update(JAVA.encode())
    return os.path.join(os.path.dirname(d), "cds", "broker-%s.jsa" % h.hexdigest()[:16])


def _uuid():
    """A Kafka Uuid string (22 chars of url-safe base64, not starting with '-')."""
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s


def _admin(bootstrap):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000,
                        "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500,
                        "log_level": 0})


# The metadata.version bootstrap file is the same for every node: format one
# template directory once per test process with StorageTool (a JVM start) and
# write each node's meta.properties ourselves (cluster.id, node.id, a fresh
# directory.id), as `kafka-storage format` would.
_TEMPLATE = {}


def _bootstrap_checkpoint(scratch):
    if "path" in _TEMPLATE and os.path.exists(_TEMPLATE["path"]):
        return _TEMPLATE["path"]
    d = os.path.join(str(scratch), "format-template")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    props = os.path.join(d, "server.properties")
    with open(props, "w") as f:
        f.write("process.roles=broker,controller\nnode.id=1\n"
                "controller.quorum.voters=1@127.0.0.1:1\ncontroller.listener.names=CONTROLLER\n"
                "listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:1\n"
                "log.dirs=%s\n" % os.path.join(d, "data"))
    r = subprocess.run(_java("kafka.tools.StorageTool", "format", "-t", _uuid(), "-c", props),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    path = os.path.join(d, "data", "bootstrap.checkpoint")
    if r.returncode != 0 or not os.path.exists(path):
        raise BrokerError("kafka-storage format failed rc=%s\n%s" % (r.returncode, r.stdout.decode()[-3000:]))
    _TEMPLATE["path"] = path
    return path


def _cds_opts(scratch):
    """JVM options using an application class-data archive (AppCDS): it
    halves a broker's start-up CPU (measured: 4.2 s -> 2.1 s of CPU). The
    archive is made once per set of jars by a throwaway broker that starts
    and exits with -XX:ArchiveClassesAtExit (about one broker start); when
    anything goes wrong the brokers simply run without it."""
    if os.environ.get("KAFKA_CDS", "1") == "0":
        return []
    try:
        path = _cds_path()
    except BrokerError:
        return []
    if os.path.exists(path):
        return ["-XX:SharedArchiveFile=" + path]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            _make_cds(path, os.path.join(str(scratch), "cds-run"))
    return ["-XX:SharedArchiveFile=" + path] if os.path.exists(path) else []


def _make_cds(path, d):
    tmp = "%s.tmp%d" % (path, os.getpid())
    k = KafkaCluster(d, nodes=1, name="cds", cds=["-XX:ArchiveClassesAtExit=" + tmp])
    try:
        k.start(timeout=90)
        k.create_topic("cds", 1)
    except Exception:  # noqa: BLE001 - no archive: slower, not broken
        pass
    finally:
        k.stop(timeout=30)
    if os.path.exists(tmp):
        os.rename(tmp, path)


class KafkaNode:
    """One combined broker+controller process."""

    def __init__(self, cluster, node_id, base_dir):
        self.cluster = cluster
        self.id = node_id
        self.dir = str(base_dir)
        self.data_dir = os.path.join(self.dir, "data")
        self.port = free_port()
        self.controller_port = free_port()
        self.name = "%s-node%d" % (cluster.name, node_id)
        self.props_path = os.path.join(self.dir, "server.properties")
        self.paused = False
        self.proc = Proc(_java("kafka.Kafka", self.props_path, cds=cluster.cds), self.dir, name=self.name)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    @property
    def log_path(self):
        return self.proc.stdout_path

    def write_config(self):
        c = self.cluster
        n = len(c.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": self.id,
            "controller.quorum.voters": ",".join("%d@127.0.0.1:%d" % (x.id, x.controller_port) for x in c.nodes),
            "listeners": "PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (self.port, self.controller_port),
            "advertised.listeners": "PLAINTEXT://127.0.0.1:%d" % self.port,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            "num.partitions": 1,
            "default.replication.factor": min(3, n),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": min(3, n),
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": min(3, n),
            "transaction.state.log.min.isr": min(2, n),
            "transaction.state.log.num.partitions": 3,
            "group.initial.rebalance.delay.ms": 0,
            # A killed broker is fenced (and may register again) after the
            # session timeout: 9 s by default, shorter for tests.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 4000,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 4 * 1024 * 1024,
            "log.segment.bytes": 16 * 1024 * 1024,
            "share.coordinator.state.topic.replication.factor": min(3, n),
            "share.coordinator.state.topic.min.isr": min(2, n),
        }
        props.update(c.overrides)
        with open(self.props_path, "w") as f:
            f.write("".join("%s=%s\n" % kv for kv in props.items()))

    def format(self, cluster_id, checkpoint):
        """What `kafka-storage format` writes, once: meta.properties + the
        metadata.version bootstrap file."""
        if os.path.exists(os.path.join(self.data_dir, "meta.properties")):
            return
        os.makedirs(self.data_dir, exist_ok=True)
        shutil.copy(checkpoint, os.path.join(self.data_dir, "bootstrap.checkpoint"))
        with open(os.path.join(self.data_dir, "meta.properties"), "w") as f:
            f.write("node.id=%d\ndirectory.id=%s\nversion=1\ncluster.id=%s\n" % (self.id, _uuid(), cluster_id))

    # -- lifecycle ---------------------------------------------------------------
    def launch(self):
        """Start the process without waiting."""
        self.paused = False
        self.proc.start()
        return self

    def start(self, timeout=30.0):
        self.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30.0):
        """Ready: this node answers a metadata request and lists itself."""
        def ready():
            if not self.proc.running():
                raise BrokerError("%s exited rc=%s\n%s" % (self.name, self.proc.returncode(), self.logs()))
            if not port_open(self.port):
                return False
            md = _admin(self.address).list_topics(timeout=2)
            return self.id in md.brokers
        try:
            wait_until(ready, timeout=timeout, interval=0.1, what="%s ready on %s" % (self.name, self.address))
        except AssertionError as e:
            raise BrokerError("%s\n%s" % (e, self.logs())) from None
        return self

    def stop(self, timeout=15.0):
        """SIGTERM (controlled shutdown), SIGKILL after `timeout`; the port is
        closed when this returns."""
        if self.paused:
            self.resume()
        rc = self.proc.stop(timeout=timeout)
        self._wait_closed()
        return rc

    def kill(self):
        """kill -9."""
        rc = self.proc.kill()
        self.paused = False
        self._wait_closed()
        return rc

    def pause(self):
        """SIGSTOP: the process hangs, its connections stay open."""
        self.proc.send_signal(signal.SIGSTOP, group=True)
        self.paused = True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT, group=True)
        self.paused = False

    def restart(self, timeout=30.0):
        """Stop if running, start on the same log dir and ports, wait ready."""
        if self.proc.running():
            self.stop()
        return self.start(timeout)

    def running(self):
        return self.proc.running()

    def _wait_closed(self):
        wait_until(lambda: not port_open(self.port), timeout=10, what="%s port %d closed" % (self.name, self.port))

    def logs(self, lines=40):
        out = self.proc.logs(lines)
        return out

    def __repr__(self):
        return "<KafkaNode %s %s pid=%s>" % (self.name, self.address, self.proc.pid)


class KafkaCluster:
    def __init__(self, base_dir, nodes=1, name="kafka", overrides=None, cds=None):
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.dir = os.path.abspath(str(base_dir))
        self.cds = cds if cds is not None else _cds_opts(self.dir)
        self.name = name
        self.cluster_id = _uuid()
        self.overrides = dict(overrides or {})
        self.nodes = []
        for i in range(1, nodes + 1):
            self.nodes.append(KafkaNode(self, i, os.path.join(self.dir, "%s-node%d" % (name, i))))
        self.topic = DEFAULT_TOPIC
        self.started_in = None

    @property
    def bootstrap(self):
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id):
        return next(n for n in self.nodes if n.id == node_id)

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout=30.0):
        t0 = time.monotonic()
        checkpoint = _bootstrap_checkpoint(self.dir)
        for n in self.nodes:
            os.makedirs(n.dir, exist_ok=True)
            n.write_config()
            n.format(self.cluster_id, checkpoint)
        self.up(timeout)
        self.started_in = time.monotonic() - t0
        return self

    def up(self, timeout=30.0):
        """Start every node that is not running; wait until metadata lists all."""
        for n in self.nodes:
            if n.paused:
                n.resume()
            if not n.running():
                n.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30.0):
        want = {n.id for n in self.nodes}

        def ready():
            for n in self.nodes:
                if not n.running():
                    raise BrokerError("%s exited rc=%s\n%s" % (n.name, n.proc.returncode(), n.logs()))
            if not any(port_open(n.port) for n in self.nodes):
                return False
            md = _admin(self.bootstrap).list_topics(timeout=2)
            return set(md.brokers) == want
        try:
            wait_until(ready, timeout=timeout, interval=0.1, what="%s: %d brokers registered" % (self.name, len(want)))
        except AssertionError as e:
            raise BrokerError("%s\n%s" % (e, self.logs())) from None
        return self

    def down(self, kill=False, timeout=15.0):
        """Every node down: SIGTERM to all at once (SIGKILL after `timeout`),
        or kill -9 with kill=True."""
        for n in self.nodes:
            if n.paused:
                n.resume()
            if n.running():
                n.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        for n in self.nodes:
            n.stop(timeout=timeout)

    def stop(self, timeout=15.0):
        self.down(timeout=timeout)

    def running(self):
        return all(n.running() for n in self.nodes)

    # -- topics ------------------------------------------------------------------
    def admin(self):
        return _admin(self.bootstrap)

    def create_topic(self, name, partitions=3, rf=None, configs=None, timeout=20.0):
        """Create a topic (rf: default min(3, nodes)) and wait until every
        partition has a leader in the metadata."""
        from confluent_kafka.admin import NewTopic
        rf = rf or min(3, len(self.nodes))
        nt = NewTopic(name, num_partitions=partitions, replication_factor=rf,
                      config={k: str(v) for k, v in (configs or {}).items()})
        admin = self.admin()  # must outlive the future
        fut = admin.create_topics([nt], operation_timeout=timeout, request_timeout=timeout)[name]
        fut.result(timeout=timeout)
        wait_until(lambda: len([p for p in self.topic_info(name).values() if p["leader"] >= 0]) == partitions,
                   timeout=timeout, what="topic %s: %d partitions with a leader" % (name, partitions))
        return name

    def delete_topic(self, name, timeout=20.0):
        admin = self.admin()
        fut = admin.delete_topics([name], operation_timeout=timeout, request_timeout=timeout)[name]
        fut.result(timeout=timeout)
        wait_until(lambda: name not in self.admin().list_topics(timeout=2).topics, timeout=timeout,
                   what="topic %s deleted" % name)

    def topic_info(self, name, timeout=5.0):
        """{partition: {"leader": id, "replicas": [...], "isr": [...]}}; {} if unknown."""
        md = self.admin().list_topics(name, timeout=timeout)
        t = md.topics.get(name)
        if t is None or t.error is not None:
            return {}
        return {p.id: {"leader": p.leader, "replicas": list(p.replicas), "isr": list(p.isrs)}
                for p in t.partitions.values()}

    def topic_config(self, name):
        from confluent_kafka.admin import ConfigResource
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        admin = self.admin()
        cfg = admin.describe_configs([res])[res].result(timeout=10)
        return {k: v.value for k, v in cfg.items()}

    def leader_counts(self, name):
        """{node id: partitions of `name` it leads}."""
        counts = {n.id: 0 for n in self.nodes}
        for p in self.topic_info(name).values():
            if p["leader"] in counts:
                counts[p["leader"]] += 1
        return counts

    # -- logs --------------------------------------------------------------------
    def logs(self, lines=40):
        return "\n".join(filter(None, (n.logs(lines) for n in self.nodes)))

    def __repr__(self):
        return "<KafkaCluster %s %s>" % (self.name, self.bootstrap)


KafkaBroker = KafkaCluster


def parse_topic(spec):
    """"name", "name:partitions" or "name:partitions:rf" -> (name, partitions, rf)."""
    parts = spec.split(":")
    return parts[0], int(parts[1]) if len(parts) > 1 else 3, int(parts[2]) if len(parts) > 2 else None


def start_kafka(base_dir, nodes=1, topics=(DEFAULT_TOPIC + ":3",), name="kafka", overrides=None):
    """A started KafkaCluster with `topics` ("name:partitions[:rf]") created;
    .topic is the first one. Stopped (and re-raised) if anything fails."""
    k = KafkaCluster(base_dir, nodes=nodes, name=name, overrides=overrides)
    try:
        k.start()
        for i, spec in enumerate(topics):
            t, parts, rf = parse_topic(spec)
            k.create_topic(t, parts, rf)
            if i == 0:
                k.topic = t
    except BaseException:
        k.stop()
        raise
    return k


# ---- confluent_kafka helpers ------------------------------------------------

def producer(bootstrap, idempotent=True, **conf):
    from confluent_kafka import Producer
    c = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": idempotent,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
    }
    c.update(conf)
    return Producer(c)


def produce(bootstrap, topic, key, value, headers=None, timeout=15.0, **conf):
    """Produce one record and wait for its delivery; returns the Message
    (partition(), offset()). Raises on delivery error or timeout."""
    p = producer(bootstrap, **conf)
    result = {}

    def cb(err, msg):
        result["err"], result["msg"] = err, msg

    p.produce(topic, key=_b(key), value=_b(value), headers=_headers(headers), on_delivery=cb)
    left = p.flush(timeout)
    if left:
        raise AssertionError("produce to %s: not delivered within %.1fs" % (topic, timeout))
    if result.get("err") is not None:
        raise AssertionError("produce to %s: %s" % (topic, result["err"]))
    return result["msg"]


def _b(v):
    if v is None or isinstance(v, bytes):
        return v
    return str(v).encode()


def _headers(h):
    if not h:
        return None
    items = h.items() if isinstance(h, dict) else h
    return [(k, _b(v)) for k, v in items]


class Consumer:
    """Assigns every partition of `topic` (no group), reads from the beginning
    (or `offset`), collects messages as dicts:
    {"partition","offset","key","value","headers"(dict),"timestamp"}.
    isolation.level is read_committed (the service's fanout reads so)."""

    def __init__(self, bootstrap, topic=DEFAULT_TOPIC, offset="beginning", **conf):
        from confluent_kafka import Consumer as _C, TopicPartition, OFFSET_BEGINNING, OFFSET_END
        c = {
            "bootstrap.servers": bootstrap,
            "group.id": "harness-%d-%d" % (os.getpid(), id(self)),  # unused: assign(), no commits
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
        }
        c.update(conf)
        self.topic = topic
        self.c = _C(c)
        md = self.c.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            self.c.close()
            raise AssertionError("topic %s unknown: %s" % (topic, t and t.error))
        start = {"beginning": OFFSET_BEGINNING, "end": OFFSET_END}.get(offset, offset)
        self.partitions = sorted(t.partitions)
        self.c.assign([TopicPartition(topic, p, start) for p in self.partitions])
        self.messages = []

    def poll(self, timeout=0.2):
        """Read what is available for up to `timeout`; returns new messages."""
        new = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            m = self.c.poll(min(left, 0.1))
            if m is not None:
                if m.error():
                    # transient broker/partition errors are expected in failure tests
                    pass
                else:
                    new.append({
                        "partition": m.partition(), "offset": m.offset(),
                        "key": m.key(), "value": m.value(),
                        "headers": dict(m.headers() or []), "timestamp": m.timestamp()[1],
                    })
                    continue
        self.messages.extend(new)
        return new

    def collect(self, n, timeout=20.0):
        """Poll until at least n messages in total were collected."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() > deadline:
                raise AssertionError("consumed %d of %d messages from %s within %.1fs"
                                     % (len(self.messages), n, self.topic, timeout))
            self.poll(0.2)
        return self.messages

    def close(self):
        try:
            self.c.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


__all__ = ["KafkaCluster", "KafkaBroker", "KafkaNode", "BrokerError", "Consumer", "producer", "produce",
           "parse_topic", "start_kafka", "DEFAULT_TOPIC", "tail"]
