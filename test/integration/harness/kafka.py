"""build/test-kafka-broker (librdkafka's mock cluster in its own process)
and confluent_kafka helpers.

    b = KafkaBroker(log_dir, topics=["exchange:3"]).start()
    b.bootstrap            # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
    b.down(); b.up()       # all brokers (or an id 1..N)
    b.rtt(200)
    b.inject_error("Produce", "NOT_LEADER_FOR_PARTITION", 3)
    b.command("status")    # -> "ok {...}"
    b.stop()
"""
import json
import os
import select
import subprocess
import time

from . import build_dir
from .util import Proc

DEFAULT_TOPIC = "exchange"


class BrokerError(RuntimeError):
    pass


class KafkaBroker:
    def __init__(self, log_dir, brokers=3, topics=(DEFAULT_TOPIC + ":3",), binary=None, name="kafka-broker"):
        self.binary = binary or os.path.join(build_dir(), "test-kafka-broker")
        self.nbrokers = brokers
        self.log_dir = str(log_dir)
        argv = [self.binary, "--brokers", str(brokers)]
        for t in topics:
            argv += ["--topic", t]
        self.proc = Proc(argv, self.log_dir, name=name, stdin=subprocess.PIPE, stdout_pipe=True)
        self.bootstrap = None
        self._buf = b""

    def start(self, timeout=10.0):
        if not os.access(self.binary, os.X_OK):
            raise BrokerError("%s not built (make build/test-kafka-broker)" % self.binary)
        self.proc.start()
        line = self._readline(timeout)
        try:
            info = json.loads(line)
        except ValueError:
            self.proc.stop(timeout=2)
            raise BrokerError("bad ready line %r\n%s" % (line, self.proc.logs()))
        self.bootstrap = info["bootstrap"]
        self.nbrokers = info["brokers"]
        return self

    def _readline(self, timeout):
        out = self.proc.popen.stdout
        fd = out.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError("test-kafka-broker: no reply within %.1fs\n%s" % (timeout, self.proc.logs()))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BrokerError("test-kafka-broker exited (rc=%s)\n%s"
                                  % (self.proc.popen.poll(), self.proc.logs()))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, line, timeout=10.0, check=False):
        """Send one command line, return the reply line ("ok ..." / "error ...")."""
        if not self.proc.running():
            raise BrokerError("test-kafka-broker not running\n%s" % self.proc.logs())
        self.proc.popen.stdin.write(line.strip().encode() + b"\n")
        self.proc.popen.stdin.flush()
        reply = self._readline(timeout)
        if check and not reply.startswith("ok"):
            raise BrokerError("%s -> %s" % (line, reply))
        return reply

    def down(self, id="all"):
        return self.command("down %s" % id, check=True)

    def up(self, id="all"):
        return self.command("up %s" % id, check=True)

    def rtt(self, ms, id="all"):
        return self.command("rtt %s %d" % (id, ms), check=True)

    def create_topic(self, name, partitions, replication=None):
        cmd = "topic %s %d" % (name, partitions)
        if replication:
            cmd += " %d" % replication
        return self.command(cmd, check=True)

    def inject_error(self, api, err, count=1):
        """Fail the next `count` requests of `api` (e.g. "Produce") with `err`
        (a Kafka error name like "NOT_LEADER_FOR_PARTITION" or a number)."""
        return self.command("error %s %s %d" % (api, err, count), check=True)

    def clear_errors(self, api):
        return self.command("clear %s" % api, check=True)

    def status(self):
        r = self.command("status", check=True)
        return json.loads(r[3:])

    def running(self):
        return self.proc.running()

    def stop(self, timeout=5.0):
        """Close stdin (the broker exits on EOF), then SIGTERM/SIGKILL."""
        if self.proc.running():
            try:
                self.proc.popen.stdin.close()
            except OSError:
                pass
            try:
                self.proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.stop(timeout=timeout)

    def logs(self, lines=40):
        return self.proc.logs(lines)

    def __repr__(self):
        return "<KafkaBroker %s pid=%s>" % (self.bootstrap, self.proc.pid)


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
    {"partition","offset","key","value","headers"(dict),"timestamp"}."""

    def __init__(self, bootstrap, topic=DEFAULT_TOPIC, offset="beginning", **conf):
        from confluent_kafka import Consumer as _C, TopicPartition, OFFSET_BEGINNING, OFFSET_END
        c = {
            "bootstrap.servers": bootstrap,
            "group.id": "harness-%d-%d" % (os.getpid(), id(self)),  # unused: assign(), no commits
            "enable.auto.commit": False,
            "enable.partition.eof": False,
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
