"""A TCP proxy on 127.0.0.1 in front of a service of the test, to break the
network between the service under test and it without touching either side.

    p = Proxy(target_port)     # p.port, p.connect ("127.0.0.1:PORT")
    frozen = p.cut()           # open connections go silent: no FIN, no RST
    Proxy.reset(frozen)        # ... and are reset later
    p.down(); p.up()           # every connection reset, new ones refused; then accepted again
    p.close()
"""
import socket
import threading


class Proxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target_port, one thread a
    direction a connection."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.pairs = []
        self.lock = threading.Lock()
        self.closed = False
        self.refusing = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connect(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.refusing:
                self.reset([{"c": c, "s": None}])
                continue
            try:
                s = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            pair = {"c": c, "s": s, "frozen": False}
            with self.lock:
                self.pairs.append(pair)
                self.accepted += 1
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pump, args=(pair, a, b), daemon=True).start()

    def _pump(self, pair, a, b):
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                data = b""
            if pair["frozen"]:
                return  # a cut: drop everything, close nothing
            if not data:
                for x in (a, b):
                    try:
                        x.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            try:
                b.sendall(data)
            except OSError:
                return

    def cut(self):
        """Freeze every open connection (nothing forwarded either way,
        sockets left open: the client sees silence); returns them."""
        with self.lock:
            frozen = [p for p in self.pairs if not p["frozen"]]
            for p in frozen:
                p["frozen"] = True
            self.pairs = [p for p in self.pairs if not p["frozen"]]
        return frozen

    @staticmethod
    def reset(pairs):
        """Close both sides of each pair with a RST."""
        for p in pairs:
            for x in (p["c"], p["s"]):
                if x is None:
                    continue
                try:
                    x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    x.close()
                except OSError:
                    pass

    def down(self):
        """A network outage: every connection reset, new ones reset at once."""
        self.refusing = True
        self.reset(self.cut())

    def up(self):
        self.refusing = False

    def close(self):
        self.closed = True
        self.lsock.close()
        self.reset(self.cut())
