"""HTTP control API of the simulator (tiny HTTP/1.1 server on asyncio)."""

import asyncio
import collections
import json
import logging
from urllib.parse import urlsplit, parse_qsl

from rest import made

log = logging.getLogger("sim.control")

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error"}


class HttpError(Exception):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status
        self.msg = msg


class Control:
    def __init__(self, sim):
        self.sim = sim
        self.server = None
        self.port = None
        self.routes = {
            "/status": ("GET", self.status),
            "/record": ("GET", self.record),
            "/drop": ("POST", self.drop),
            "/silence": ("POST", self.silence),
            "/malformed": ("POST", self.malformed),
            "/oversize": ("POST", self.oversize),
            "/refuse": ("POST", self.refuse),
            "/shutdown-notice": ("POST", self.shutdown_notice),
            "/gap": ("POST", self.gap),
            "/rate": ("POST", self.rate),
            "/pause": ("POST", self.pause),
            "/resume": ("POST", self.resume),
            "/reset-record": ("POST", self.reset_record),
            "/rest": ("POST", self.rest),
            "/trades": ("GET", self.trades),
        }

    async def start(self, host, port):
        self.server = await asyncio.start_server(self._client, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self):
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, target = parts[0].upper(), parts[1]
            length = 0
            while True:
                h = await asyncio.wait_for(reader.readline(), 10)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip() or 0)
            body = await reader.readexactly(length) if length else b""
            status, obj = self._dispatch(method, target, body)
        except HttpError as e:
            status, obj = e.status, {"ok": False, "error": e.msg}
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        except Exception as e:  # pragma: no cover
            log.exception("control")
            status, obj = 500, {"ok": False, "error": str(e)}
        data = (json.dumps(obj, indent=None) + "\n").encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            writer.write(head + data)
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def _dispatch(self, method, target, body):
        u = urlsplit(target)
        params = dict(parse_qsl(u.query))
        if body:
            text = body.decode("utf-8", "replace").strip()
            if text.startswith("{"):
                try:
                    params.update({k: str(v) for k, v in json.loads(text).items()})
                except ValueError:
                    raise HttpError(400, "bad JSON body")
            else:
                params.update(dict(parse_qsl(text)))
        path = u.path.rstrip("/") or "/"
        if path == "/":
            return 200, {"ok": True, "endpoints": {p: m for p, (m, _) in self.routes.items()}}
        if path not in self.routes:
            raise HttpError(404, f"no such endpoint {path}")
        want, fn = self.routes[path]
        if method != want and not (want == "GET" and method == "HEAD"):
            raise HttpError(405, f"{path} needs {want}")
        try:
            res = fn(params)
        except ValueError as e:
            raise HttpError(400, str(e))
        out = {"ok": True}
        out.update(res or {})
        if method != "GET":
            log.info("control %s %s -> %s", method, target, out)
        return 200, out

    # ------------------------------------------------------------ helpers
    def _exchanges(self, p, default="all"):
        name = p.get("exchange", default)
        if name == "all":
            return list(self.sim.exchanges.values())
        if name not in self.sim.exchanges:
            raise ValueError(f"unknown exchange {name!r}; one of {sorted(self.sim.exchanges)} or all")
        return [self.sim.exchanges[name]]

    @staticmethod
    def _int(p, key, default=None, lo=0):
        if key not in p:
            if default is None:
                raise ValueError(f"missing parameter {key}")
            return default
        try:
            v = int(p[key])
        except ValueError:
            raise ValueError(f"{key} must be an integer")
        if v < lo:
            raise ValueError(f"{key} must be >= {lo}")
        return v

    # ------------------------------------------------------------ endpoints
    def status(self, p):
        sim = self.sim
        exs = {n: e.status() for n, e in sim.exchanges.items()}
        return {
            "connections": {n: len(e.conns) for n, e in sim.exchanges.items()},
            "sent": {n: e.stats["sent"] for n, e in sim.exchanges.items()},
            "frames": {n: e.stats["frames"] for n, e in sim.exchanges.items()},
            "received": {n: e.stats["received"] for n, e in sim.exchanges.items()},
            "accepted": {n: e.stats["accepted"] for n, e in sim.exchanges.items()},
            "refused": {n: e.stats["refused"] for n, e in sim.exchanges.items()},
            "paused": sim.paused,
            "ports": sim.ports,
            "exchanges": exs,
            "conns": [c.describe() for e in sim.exchanges.values() for c in e.conns],
            "record": sim.recorder.summary(),
        }

    def record(self, p):
        return self.sim.recorder.summary()

    def drop(self, p):
        mode = p.get("mode", "abort")
        if mode not in ("abort", "reset", "close"):
            raise ValueError("mode is abort (TCP reset, default) or close (close frame 1001)")
        return {"dropped": {e.name: e.drop("close" if mode == "close" else "abort")
                            for e in self._exchanges(p)}}

    def silence(self, p):
        ms = self._int(p, "ms")
        return {"silenced": {e.name: e.silence(ms) for e in self._exchanges(p)}, "ms": ms}

    def malformed(self, p):
        n = self._int(p, "count", 1, lo=1)
        kind = p.get("kind")
        return {"connections": {e.name: e.send_malformed(n, kind) for e in self._exchanges(p)},
                "count": n}

    def oversize(self, p):
        n = self._int(p, "bytes", lo=1)
        return {"connections": {e.name: e.send_oversize(n) for e in self._exchanges(p)}, "bytes": n}

    def refuse(self, p):
        n = self._int(p, "count", 1)
        out = {}
        for e in self._exchanges(p):
            e.refuse = n
            out[e.name] = n
        return {"refuse": out}

    def shutdown_notice(self, p):
        b = self.sim.exchanges.get("binance")
        if b is None:
            raise ValueError("binance is not enabled")
        close_ms = self._int(p, "close_after_ms", -1, lo=-1)
        return {"connections": b.server_shutdown(None if close_ms < 0 else close_ms)}

    def gap(self, p):
        c = self.sim.exchanges.get("coinbase")
        if c is None:
            raise ValueError("coinbase is not enabled")
        return {"connections": c.gap(self._int(p, "count", 1, lo=1))}

    def rate(self, p):
        if "value" not in p:
            raise ValueError("missing parameter value")
        try:
            v = float(p["value"])
        except ValueError:
            raise ValueError("value must be a number")
        if not (0 <= v <= 10000):
            raise ValueError("value must be within 0..10000")
        out = {}
        for e in self._exchanges(p):
            e.rate = v
            out[e.name] = v
        return {"rate": out}

    def pause(self, p):
        self.sim.paused = True
        return {"paused": True}

    def resume(self, p):
        self.sim.paused = False
        return {"paused": False}

    def reset_record(self, p):
        self.sim.recorder.reset()
        return {"record": self.sim.recorder.summary()}

    def rest(self, p):
        """REST faults/settings: limit429=N (the next N REST requests get 429),
        window=N (trades each market's REST endpoint keeps)."""
        out = {}
        for e in self._exchanges(p):
            if "limit429" in p:
                e.rest.limit_next = self._int(p, "limit429")
            if "window" in p:
                w = self._int(p, "window", lo=1)
                self.sim.args.rest_window = w
                for m in e.markets.values():
                    m.history = collections.deque(m.history, maxlen=w)
            out[e.name] = e.rest.status()
        return {"rest": out}

    def trades(self, p):
        """Every trade made per exchange and market (exchange trade ids, oldest first)."""
        market = p.get("market")
        return {"trades": {e.name: made(e, market) for e in self._exchanges(p)}}
