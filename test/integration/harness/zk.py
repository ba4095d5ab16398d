"""A real ZooKeeper server for tests (Debian's zookeeper package, run with
java directly: no zkServer.sh, no /etc or /var files touched).

    zk = ZooKeeperServer(tmp_dir)
    zk.start()            # waits for ruok -> imok
    zk.connect            # "127.0.0.1:PORT"
    zk.stop(); zk.start() # same port, same data dir
    zk.kill()             # SIGKILL
"""
import glob
import os
import socket
import time

from .util import Proc, free_port, wait_until

ZK_JAR_CANDIDATES = ["/usr/share/java/zookeeper.jar"] + sorted(glob.glob("/usr/share/zookeeper/lib/*.jar"))
# zookeeper.jar's manifest Class-Path names its own deps (jetty, netty, jute,
# slf4j-api, ...); add an slf4j binding and log4j 1.2 so it logs at all.
LOG_JARS = ["/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar"]
JAVA = os.environ.get("JAVA", "/usr/bin/java")
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

LOG4J = """\
log4j.rootLogger=INFO, FILE
log4j.logger.org.apache.zookeeper.server.NIOServerCnxn=WARN
log4j.logger.org.apache.zookeeper.server.command.FourLetterCommands=WARN
log4j.logger.org.apache.zookeeper.server.ZooKeeperServer=WARN
log4j.appender.FILE=org.apache.log4j.FileAppender
log4j.appender.FILE.File={logfile}
log4j.appender.FILE.Append=true
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} %-5p [%t:%C{{1}}@%L] %m%n
"""


def classpath():
    jars = [j for j in ZK_JAR_CANDIDATES if os.path.exists(j)]
    jars += [j for j in LOG_JARS if os.path.exists(j)]
    if not jars:
        raise RuntimeError("ZooKeeper jars not found (apt-get install zookeeper)")
    return ":".join(jars)


def four_letter(port, cmd="ruok", host="127.0.0.1", timeout=1.0):
    """Send a four-letter command; returns the reply as str."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cmd.encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(4096)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode("utf-8", "replace")


class ZooKeeperServer:
    def __init__(self, base_dir, port=None, tick_ms=200, min_session_ms=1000, max_session_ms=60000,
                 name="zookeeper"):
        self.dir = os.path.abspath(str(base_dir))
        self.data_dir = os.path.join(self.dir, "data")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.name = name
        os.makedirs(self.data_dir, exist_ok=True)
        self.cfg_path = os.path.join(self.dir, "zoo.cfg")
        self.log_path = os.path.join(self.dir, "zookeeper.log")
        self.log4j_path = os.path.join(self.dir, "log4j.properties")
        with open(self.cfg_path, "w") as f:
            f.write("\n".join([
                "tickTime=%d" % tick_ms,
                "initLimit=10",
                "syncLimit=5",
                "dataDir=%s" % self.data_dir,
                "clientPort=%d" % self.port,
                "clientPortAddress=127.0.0.1",
                "minSessionTimeout=%d" % min_session_ms,
                "maxSessionTimeout=%d" % max_session_ms,
                "maxClientCnxns=0",
                "admin.enableServer=false",
                "4lw.commands.whitelist=ruok,stat,srvr,mntr,cons",
                "autopurge.purgeInterval=0",
                "",
            ]))
        with open(self.log4j_path, "w") as f:
            f.write(LOG4J.format(logfile=self.log_path))
        argv = [
            JAVA, "-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            "-Djava.awt.headless=true",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-Dlog4j.configuration=file:" + self.log4j_path,
            "-Dzookeeper.log.dir=" + self.dir,
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.preAllocSize=1024",   # KB; avoid 64 MB txn log files
            "-Dzookeeper.snapCount=10000",
            "-Dzookeeper.forceSync=no",
            "-cp", classpath(), MAIN, self.cfg_path,
        ]
        self.proc = Proc(argv, self.dir, name=name)

    @property
    def connect(self):
        return "%s:%d" % (self.host, self.port)

    def ok(self):
        try:
            return four_letter(self.port, "ruok") == "imok" and "Mode:" in four_letter(self.port, "srvr")
        except OSError:
            return False

    def start(self, timeout=30.0):
        self.proc.start()

        def up():
            if not self.proc.running():
                raise AssertionError("ZooKeeper exited rc=%s\n%s" % (self.proc.returncode(), self.logs()))
            return self.ok()

        try:
            wait_until(up, timeout=timeout, interval=0.05, what="ZooKeeper on %s (ruok)" % self.connect)
        except AssertionError:
            self.proc.stop(timeout=2)
            raise
        return self

    def stop(self, timeout=10.0):
        """SIGTERM and wait; the port is free when this returns."""
        rc = self.proc.stop(timeout=timeout)
        self._wait_port_closed()
        return rc

    def kill(self):
        rc = self.proc.kill()
        self._wait_port_closed()
        return rc

    def restart(self, down_s=0.0):
        self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def running(self):
        return self.proc.running()

    def _wait_port_closed(self):
        def closed():
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return False
            except OSError:
                return True
        wait_until(closed, timeout=5, what="ZooKeeper port %d to close" % self.port)

    def logs(self, lines=40):
        from .util import tail
        out = self.proc.logs(lines)
        t = tail(self.log_path, lines)
        if t:
            out += "\n--- %s log (%s) ---\n%s" % (self.name, self.log_path, t)
        return out

    def __repr__(self):
        return "<ZooKeeperServer %s pid=%s>" % (self.connect, self.proc.pid)
