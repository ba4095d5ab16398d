"""The exchange simulator (test/sim/sim.py) as a fixture.

    sim = sim_factory()            # all four protocols on free ports
    sim.ports["upbit"]; sim.control("POST", "/drop?exchange=upbit")
"""
import json
import os
import urllib.request

import pytest

from harness import util

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
__all__ = ["Sim", "sim_factory"]


class Sim:
    def __init__(self, log_dir, args=(), name="sim"):
        self.record = os.path.join(str(log_dir), "%s-record.jsonl" % name)
        argv = ["/usr/bin/python3", os.path.join(REPO, "test/sim/sim.py"), "--control-port", "0",
                "--upbit-port", "0", "--bithumb-port", "0", "--binance-port", "0",
                "--coinbase-port", "0", "--record", self.record] + list(args)
        self.proc = util.Proc(argv, log_dir, name=name, stdout_pipe=True)
        self.ports = None

    def start(self):
        self.proc.start()
        line = self.proc.popen.stdout.readline()
        if not line:
            raise AssertionError("simulator did not start\n" + self.proc.logs())
        self.info = json.loads(line)
        self.ports = {k: v for k, v in self.info.items() if isinstance(v, int)}
        return self

    def control(self, method, path, timeout=5):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.ports["control"], path),
                                     method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def stop(self):
        self.proc.stop(timeout=5)

    def logs(self, lines=40):
        return self.proc.logs(lines)


@pytest.fixture
def sim_factory(tmp_path):
    made = []

    def make(args=(), name="sim"):
        s = Sim(tmp_path, args=args, name=name).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
