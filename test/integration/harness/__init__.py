"""Test harness for the exchange-service integration suite.

util  -- ports, waiting, process groups, /proc helpers, tiny HTTP client
zk    -- a real ZooKeeper server (Debian's zookeeper package, run with java)
kafka -- a real Kafka cluster (KRaft, 1 or 3 nodes) + confluent_kafka helpers
"""
import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def build_dir():
    """Directory holding the built binaries (EXCHANGE_BUILD or <repo>/build)."""
    return os.path.abspath(os.environ.get("EXCHANGE_BUILD") or os.path.join(REPO, "build"))
