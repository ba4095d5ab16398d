"""A real Apache Kafka broker for the bench: one KRaft node (broker and
controller in one JVM) from the jars `make deps` puts in .deps/kafka/libs
(test/kafka/pom.xml), loopback only, data in the run's log folder.

    b = KraftBroker(log_dir, topics={"exchange": 6}).start()
    b.bootstrap        # "127.0.0.1:P"
    b.proc.pid         # the JVM (its CPU is reported as the broker's)
    b.stop()
"""
import base64
import os
import shutil
import uuid

from harness import util

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIBS = os.environ.get("KAFKA_LIBS") or os.path.join(REPO, ".deps", "kafka", "libs")


def available():
    if not os.path.isdir(LIBS) or not any(f.startswith("kafka_") for f in os.listdir(LIBS)):
        return "Kafka jars missing in %s (make deps)" % LIBS
    if not shutil.which("java"):
        return "java not installed"
    return None


class KraftBroker:
    def __init__(self, log_dir, topics=None, heap="768m"):
        self.dir = os.path.join(str(log_dir), "kraft")
        self.topics = dict(topics or {"exchange": 6})
        self.heap = heap
        self.proc = None
        self.bootstrap = None

    def _java(self, main, *args):
        log4j = os.path.join(REPO, "test", "kafka", "log4j2.properties")
        # A small, quickly warm JVM: on a 2-core machine shared with the
        # servers under test, C2 compilation and many threads starve the
        # request path (measured: acks at ~50/s for the first minute).
        return ["java", "-Xms%s" % self.heap, "-Xmx%s" % self.heap, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", "-Dlog4j2.configurationFile=" + log4j,
                "-cp", os.path.join(LIBS, "*"), main] + list(args)

    def start(self, timeout=120.0):
        os.makedirs(self.dir, exist_ok=True)
        port, cport = util.free_port(), util.free_port()
        data = os.path.join(self.dir, "data")
        shutil.rmtree(data, ignore_errors=True)  # a fresh cluster every run
        props = os.path.join(self.dir, "server.properties")
        with open(props, "w") as f:
            f.write("process.roles=broker,controller\nnode.id=1\n"
                    "controller.quorum.voters=1@127.0.0.1:%d\n"
                    "listeners=PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d\n"
                    "advertised.listeners=PLAINTEXT://127.0.0.1:%d\n"
                    "controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n"
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                    "log.dirs=%s\nnum.partitions=1\nauto.create.topics.enable=false\n"
                    "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
                    "transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
                    "log.retention.bytes=1073741824\nlog.segment.bytes=268435456\n"
                    "num.network.threads=1\nnum.io.threads=2\nbackground.threads=2\nnum.replica.fetchers=1\n"
                    % (cport, port, cport, port, data))
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = util.Proc(self._java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", props), self.dir,
                        name="kraft-format")
        fmt.start()
        rc = fmt.wait(timeout=120)
        if rc != 0:
            raise RuntimeError("kafka storage format failed (rc=%s)\n%s" % (rc, fmt.logs()))
        self.proc = util.Proc(self._java("kafka.Kafka", props), self.dir, name="kraft")
        self.proc.start()
        self.bootstrap = "127.0.0.1:%d" % port
        util.wait_until(lambda: util.port_open(port) or not self.proc.running(), timeout=timeout,
                        interval=0.2, what="Kafka broker port")
        if not self.proc.running():
            raise RuntimeError("Kafka broker exited\n%s" % self.proc.logs())
        self._create_topics(timeout)
        return self

    def _create_topics(self, timeout):
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futs = admin.create_topics([NewTopic(t, p, 1) for t, p in self.topics.items()], request_timeout=timeout)
        for t, fut in futs.items():
            fut.result(timeout=timeout)

        def ready():
            md = admin.list_topics(timeout=5)
            return all(t in md.topics and len(md.topics[t].partitions) == p
                       and all(pm.leader >= 0 for pm in md.topics[t].partitions.values())
                       for t, p in self.topics.items())
        util.wait_until(ready, timeout=timeout, interval=0.2, what="topic leaders")

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=20)
