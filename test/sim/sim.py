#!/usr/bin/python3
"""Exchange simulator: serves the Upbit, Bithumb, Binance and Coinbase public
market-data WebSocket protocols on 127.0.0.1 with an HTTP control port.

Run with no arguments for a local demo feed on the default ports. On start it
prints one JSON line with the actual ports to stdout. See README.md."""

import argparse
import asyncio
import collections
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep test/sim free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from control import Control                      # noqa: E402
from market import Market                        # noqa: E402
from proto_binance import Binance                # noqa: E402
from proto_coinbase import Coinbase              # noqa: E402
from proto_upbit import Upbit, Bithumb           # noqa: E402
from rest import Rest                            # noqa: E402
from simcore import Recorder                     # noqa: E402

EXCHANGES = {"upbit": Upbit, "bithumb": Bithumb, "binance": Binance, "coinbase": Coinbase}
DEFAULT_PORTS = {"control": 9100, "upbit": 9101, "bithumb": 9102, "binance": 9103, "coinbase": 9104}
DEFAULT_MARKETS = {"upbit": "KRW-BTC,KRW-ETH", "bithumb": "KRW-BTC,KRW-ETH",
                   "binance": "BTCUSDT,ETHUSDT", "coinbase": "BTC-USD,ETH-USD"}
BINANCE_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "KRW")

log = logging.getLogger("sim")


def split_symbol(exchange, sym):
    """-> (base, quote) in the exchange's own spelling."""
    if exchange in ("upbit", "bithumb"):
        quote, _, base = sym.partition("-")
        if not base or not quote:
            raise ValueError(f"{exchange} market must be QUOTE-BASE, e.g. KRW-BTC: {sym!r}")
        return base, quote
    if exchange == "coinbase":
        base, _, quote = sym.partition("-")
        if not base or not quote:
            raise ValueError(f"coinbase market must be BASE-QUOTE, e.g. BTC-USD: {sym!r}")
        return base, quote
    for q in BINANCE_QUOTES:
        if sym.endswith(q) and len(sym) > len(q):
            return sym[: -len(q)], q
    raise ValueError(f"binance market has an unknown quote asset: {sym!r}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--control-port", type=int, default=DEFAULT_PORTS["control"])
    for ex in EXCHANGES:
        ap.add_argument(f"--{ex}-port", type=int, default=DEFAULT_PORTS[ex],
                        help=f"0 = any free port (default {DEFAULT_PORTS[ex]})")
        ap.add_argument(f"--{ex}-markets", default=DEFAULT_MARKETS[ex],
                        help=f"comma separated (default {DEFAULT_MARKETS[ex]})")
    ap.add_argument("--exchanges", default=",".join(EXCHANGES),
                    help="which protocols to serve (default all)")
    ap.add_argument("--tls", action="store_true", help="serve wss:// with a generated self-signed cert")
    ap.add_argument("--cert", help="PEM certificate to serve (implies --tls)")
    ap.add_argument("--key", help="PEM private key for --cert")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=5.0,
                    help="messages per channel per market per second (default 5)")
    ap.add_argument("--record", help="append every frame sent to this JSONL file")
    ap.add_argument("--idle-s", type=float, default=120.0,
                    help="Upbit/Bithumb: close after this long with no data either way")
    ap.add_argument("--upbit-status-s", type=float, default=10.0,
                    help="Upbit/Bithumb: {\"status\":\"UP\"} period after a PING")
    ap.add_argument("--bithumb-variants", action=argparse.BooleanOptionalAction, default=True,
                    help="Bithumb: string sequential_id, 16-digit us timestamp, delisting_date \"\"")
    ap.add_argument("--binance-ping-s", type=float, default=20.0)
    ap.add_argument("--binance-pong-timeout-s", type=float, default=60.0)
    ap.add_argument("--binance-max-msgs", type=int, default=5,
                    help="incoming messages per second before disconnect (0 = no limit)")
    ap.add_argument("--binance-max-conn-s", type=float, default=86400.0,
                    help="connection lifetime (0 = unlimited)")
    ap.add_argument("--coinbase-subscribe-s", type=float, default=5.0)
    ap.add_argument("--coinbase-idle-s", type=float, default=60.0,
                    help="close connections quiet this long without a heartbeats subscription")
    ap.add_argument("--coinbase-heartbeat-s", type=float, default=1.0)
    ap.add_argument("--enforce-conn-limits", action="store_true",
                    help="429 over the per-IP connection rate (upbit 5/s, bithumb 10/s, "
                         "coinbase 8/s, binance 5/s)")
    ap.add_argument("--rest-window", type=int, default=1000,
                    help="REST recent-trades endpoints serve the last N trades of each market (default 1000)")
    ap.add_argument("--snapshot-resend", action=argparse.BooleanOptionalAction, default=True,
                    help="on subscribe re-send the last trade(s) as SNAPSHOT (Upbit/Bithumb stream_type, "
                         "Coinbase market_trades snapshot), as the real exchanges do (default on)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    a = ap.parse_args(argv)
    if (a.cert is None) != (a.key is None):
        ap.error("--cert and --key go together")
    if a.cert:
        a.tls = True
    a.exchanges = [e.strip() for e in a.exchanges.split(",") if e.strip()]
    for e in a.exchanges:
        if e not in EXCHANGES:
            ap.error(f"unknown exchange {e}")
    return a


def make_cert(tmpdir):
    cert = os.path.join(tmpdir, "cert.pem")
    key = os.path.join(tmpdir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
         "-addext", "extendedKeyUsage=serverAuth"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


class Sim:
    def __init__(self, args):
        self.args = args
        self.paused = False
        self.recorder = Recorder(args.record)
        self.exchanges = {}
        self.ports = {}
        self.control = Control(self)
        self.tmpdir = None
        self.cert = None

    async def start(self):
        a = self.args
        ssl_ctx = None
        if a.tls:
            if a.cert:
                cert, key = a.cert, a.key
            else:
                self.tmpdir = tempfile.mkdtemp(prefix="exsim-tls-")
                cert, key = make_cert(self.tmpdir)
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_ctx.load_cert_chain(cert, key)
            self.cert = os.path.abspath(cert)
        for name in a.exchanges:
            syms = [s.strip() for s in getattr(a, f"{name}_markets").split(",") if s.strip()]
            markets = {}
            for s in syms:
                base, quote = split_symbol(name, s)
                markets[s] = Market(name, s, base, quote, a.seed)
                markets[s].history = collections.deque(markets[s].history, maxlen=max(1, a.rest_window))
            ex = EXCHANGES[name](self, markets, a.rate)
            ex.rest = Rest(ex)
            self.ports[name] = await ex.start(a.host, getattr(a, f"{name}_port"), ssl_ctx)
            self.exchanges[name] = ex
        self.ports["control"] = await self.control.start(a.host, a.control_port)
        line = {"control": self.ports["control"]}
        line.update({n: self.ports[n] for n in self.exchanges})
        line.update({"tls": bool(a.tls), "cert": self.cert, "host": a.host,
                     "pid": os.getpid(), "record": a.record})
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def stop(self):
        for ex in self.exchanges.values():
            ex.drop("close")
        await asyncio.sleep(0.2)
        await self.control.close()
        for ex in self.exchanges.values():
            ex.feed_task.cancel()
            await ex.close()
        self.recorder.close()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


async def amain(args):
    sim = Sim(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1: drop every connection abruptly (same as POST /drop?exchange=all)
    loop.add_signal_handler(signal.SIGUSR1, lambda: [e.drop("abort") for e in sim.exchanges.values()])
    try:
        await sim.start()
    except OSError as e:
        log.error("cannot listen: %s", e)
        return 1
    await stop.wait()
    log.info("stopping")
    await sim.stop()
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s sim %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING if args.verbose < 2 else logging.DEBUG)
    try:
        return asyncio.run(amain(args))
    except ValueError as e:
        print(f"sim: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
