"""The status page (admin port /) and the live demo page (fanout port /) in a
real browser: Debian's chromium driven by playwright-core (test/browser/,
installed by `make deps`), against a running exchange-service fed by the
simulator. test/browser/pages.mjs does the clicking and asserting; this file
starts the processes, runs it, checks its results and keeps the screenshots
(under the test's tmp dir, the last run's copied to build/screenshots/).
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from harness import build_dir, util
from harness.service import REPO, cluster_nodes

BROWSER_DIR = os.path.join(REPO, "test", "browser")
CHROMIUM = "/usr/bin/chromium"
NODE = shutil.which("node")
ADMIN_TOKEN = "pages-admin-token"


def need_browser():
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM + " (Debian package chromium)")
    if NODE is None:
        missing.append("node")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        missing.append("test/browser/node_modules/playwright-core")
    if missing:
        pytest.fail("browser test tools missing: %s; run `make deps`" % ", ".join(missing))


def admin_status(svc, token=None):
    st, _, body = svc.get("/status" + ("?token=" + token if token else ""))
    assert st == 200, "status %s" % st
    return json.loads(body)


def keep_screenshots(paths, scenario):
    """Copy this run's screenshots to build/screenshots/, replacing the
    previous run's of the same scenario (names start with its pages)."""
    dest = os.path.join(build_dir(), "screenshots")
    os.makedirs(dest, exist_ok=True)
    for old in os.listdir(dest):
        if old.startswith("FAILED-%s-" % scenario) or old in {os.path.basename(p) for p in paths}:
            os.unlink(os.path.join(dest, old))
    for p in paths:
        if os.path.exists(p):
            shutil.copy(p, dest)
    return dest


# Each step of pages.mjs has its own bound (12 s, --step-timeout-ms); the main
# scenario has six, so this outer bound only catches a hung browser: it must
# not be tighter than the steps' bounds (44 s runs were seen at load 16).
def run_pages(tmp_path, args, timeout=120):
    scenario = args[args.index("--scenario") + 1] if "--scenario" in args else "main"
    out = tmp_path / "screenshots"
    argv = [NODE, os.path.join(BROWSER_DIR, "pages.mjs"), "--out", str(out)] + list(args)
    try:
        r = subprocess.run(argv, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        shots = sorted(str(p) for p in out.glob("*.png")) if out.exists() else []
        keep_screenshots(shots, scenario)
        pytest.fail("pages.mjs ran over %ss\nstdout: %s\nstderr: %s" % (timeout, e.stdout, e.stderr))
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    res = json.loads(lines[-1]) if lines else {}
    keep_screenshots(res.get("screenshots") or sorted(str(p) for p in out.glob("*.png")), scenario)
    assert r.returncode == 0, "browser test failed:\n%s\nresults: %s" % (r.stderr[-4000:], json.dumps(res, indent=1)[-4000:])
    return res


def test_status_and_demo_pages_in_chromium(tmp_path, service_factory, sim_factory):
    need_browser()
    t0 = time.monotonic()
    sim = sim_factory(args=["--exchanges", "upbit,binance", "--upbit-markets", "KRW-BTC,KRW-ETH",
                            "--binance-markets", "BTCUSDT,ETHUSDT", "--rate", "10"])
    svc = service_factory(name="pages", sim_ports=sim.ports, overrides={
        "fanout": {"workers": 2},
        "admin": {"token": ADMIN_TOKEN},
        "exchange.upbit": {"markets": "KRW-BTC,KRW-ETH", "reconnect_min_ms": 100, "reconnect_max_ms": 500},
        "exchange.binance": {"markets": "BTCUSDT,ETHUSDT"},
    })
    svc.wait_ready()

    def flowing():
        st = admin_status(svc, ADMIN_TOKEN)
        ex = st.get("exchanges", {})
        fan = [w for w in st["workers"] if w["kind"] == "fanout"]
        return (all(ex.get(n, {}).get("state") in ("connected", "subscribed") for n in ("upbit", "binance"))
                and fan and all((w.get("last_message_age_ms") or 10 ** 9) < 2000 for w in fan))
    util.wait_until(flowing, timeout=15, what="data flowing to the fanout workers")

    # The page is served from the binary, on both ports, with no external reference.
    for url in (svc.admin + "/?token=" + ADMIN_TOKEN, "http://127.0.0.1:%d/" % svc.port):
        st, hdrs, body = util.http_get(url)
        text = body.decode() if isinstance(body, bytes) else body
        assert st == 200 and "<html" in text, (url, st)
        assert "text/html" in str(hdrs).lower(), (url, hdrs)
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, url
    assert util.http_get("http://127.0.0.1:%d/nope" % svc.port)[0] == 404

    res = run_pages(tmp_path, ["--admin", svc.admin, "--fanout", "http://127.0.0.1:%d" % svc.port,
                               "--sim", "http://127.0.0.1:%d" % sim.ports["control"], "--pid", str(svc.pid),
                               "--admin-token", ADMIN_TOKEN])
    steps = {s["step"]: s for s in res["steps"]}
    assert steps["status: live values"]["clients"] == 1
    assert steps["upbit down"]["status_page"] in ("disconnected", "error")
    drain = steps["drain"]
    assert drain["hints"] >= 1 and drain["gaps"] == 0
    assert drain["recovered"] and all(drain["recovered"].values()), drain
    assert len(res["screenshots"]) >= 6

    # What the page showed is what /status says.
    st = admin_status(svc, ADMIN_TOKEN)
    assert st["latency_ms"]["p50"] is not None and st["latency_ms"]["p99"] >= st["latency_ms"]["p50"]
    assert st["exchanges"]["upbit"]["messages_per_s"] > 0
    assert all(w["messages_in_per_s"] is not None for w in st["workers"] if w["kind"] == "fanout")
    assert time.monotonic() - t0 < 60


def test_status_page_on_a_follower_in_chromium(tmp_path, zk_server, service_factory, sim_factory):
    """Two instances over ZooKeeper, relay mode: the follower's page names the
    leader and its epoch, shows no exchange board of its own, then follows
    the promotion when the leader stops."""
    need_browser()
    t0 = time.monotonic()
    sim = sim_factory(args=["--exchanges", "upbit", "--upbit-markets", "KRW-BTC", "--rate", "10"])
    svcs = cluster_nodes(service_factory, zk_server, sim, session_ms=4000, node0_leads=True, overrides={
        "exchange.upbit": {"markets": "KRW-BTC"},
        "fanout": {"workers": 1}})
    leader, fol = svcs
    util.wait_until(lambda: fol.status()["role"] == "follower" and fol.status()["leader"] == "node0",
                    timeout=15, what="node1 follows node0")
    res = run_pages(tmp_path, ["--scenario", "follower", "--admin", fol.admin,
                               "--leader-admin", leader.admin, "--leader-pid", str(leader.pid)])
    steps = {s["step"]: s for s in res["steps"]}
    assert steps["follower"]["leader"] == "node0"
    assert int(steps["promoted"]["epoch"]) > int(steps["follower"]["epoch"])
    st = fol.status()
    assert st["role"] == "leader" and st["leader"] == "node1"
    assert time.monotonic() - t0 < 60
