// Browser test of the two pages a person sees, run by
// test/integration/test_pages.py against a running exchange-service fed by
// the simulator:
//   - the admin status page (admin port /), refreshed from /status;
//   - the live demo page (fanout port /), a WebSocket client of /ws/exchange.
// Debian's chromium (/usr/bin/chromium) is driven by playwright-core; the
// flags below keep it off the network (this sandbox refuses connections to
// anything else). One JSON line of results goes to stdout; on failure the
// message goes to stderr and the exit status is 1. Screenshots go to --out.
//
//   node pages.mjs --admin http://127.0.0.1:8090 --fanout http://127.0.0.1:8080 \
//     --sim http://127.0.0.1:9100 --pid SERVICE_PID --out DIR [--admin-token T] [--step-timeout-ms N]
//   node pages.mjs --scenario follower --admin FOLLOWER_ADMIN --leader-admin LEADER_ADMIN \
//     --leader-pid LEADER_PID --out DIR      (the follower's page, then its promotion)
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const argv = process.argv.slice(2);
const opt = {};
for (let i = 0; i < argv.length; i += 2) opt[argv[i].replace(/^--/, "")] = argv[i + 1];
const SCENARIO = opt.scenario || "main";
const NEED = SCENARIO === "follower" ? ["admin", "leader-admin", "leader-pid", "out"] : ["admin", "fanout", "sim", "pid", "out"];
for (const k of NEED)
  if (!opt[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
const STEP_MS = Number(opt["step-timeout-ms"] || 12000);
const CHROMIUM = opt.chromium || "/usr/bin/chromium";
mkdirSync(opt.out, { recursive: true });

const results = { steps: [], screenshots: [] };
const t0 = Date.now();
let browser = null;
const profile = mkdtempSync(join(tmpdir(), "exchange-pages-"));
const pages = {};

function note(name, extra) {
  results.steps.push({ step: name, ms: Date.now() - t0, ...(extra || {}) });
}

async function shot(page, name) {
  const path = join(opt.out, name + ".png");
  await page.screenshot({ path, fullPage: true });
  results.screenshots.push(path);
}

async function sim(path) {
  const r = await fetch(opt.sim + path, { method: "POST" });
  if (!r.ok) throw new Error(`simulator ${path}: HTTP ${r.status}`);
  return r.json();
}

// With an [admin] token (--admin-token) the page is opened as /?token=T and
// passes it on to its own /status requests.
const ADMIN_Q = opt["admin-token"] ? "?token=" + encodeURIComponent(opt["admin-token"]) : "";

async function getStatus(admin) {
  const r = await fetch((admin || opt.admin) + "/status" + ADMIN_Q);
  if (!r.ok) throw new Error(`/status: HTTP ${r.status}`);
  return r.json();
}

/* Wait for fn(arg) in the page to return a truthy value, with a message. */
async function until(page, what, fn, arg, ms) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: ms || STEP_MS, polling: 100 });
    return await h.jsonValue();
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}`);
  }
}

async function untilNode(what, fn, ms) {
  const end = Date.now() + (ms || STEP_MS);
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const isNum = (s) => /^-?[0-9][0-9,]*(\.[0-9]+)?$/.test(String(s).trim());
const toNum = (s) => Number(String(s).replace(/,/g, ""));

/* ---- the demo page ---------------------------------------------------------- */

async function demoLive(page) {
  await page.goto(opt.fanout + "/");
  await until(page, "demo connection open", () => document.querySelector("#conn").dataset.state === "open");
  // The picker is filled from {"op":"list"}; one market per exchange is picked.
  const markets = await until(page, "market picker",
    () => document.querySelectorAll("#picker input[data-market]").length >= 4 &&
      [...document.querySelectorAll("#picker input[data-market]")].map((i) => i.dataset.market));
  for (const m of ["upbit|BTC-KRW", "upbit|ETH-KRW", "binance|BTC-USDT"])
    if (!markets.includes(m)) throw new Error(`market ${m} not offered: ${markets}`);
  // A person adds a market: upbit ETH-KRW.
  if (!(await page.isChecked('#picker input[data-market="upbit|ETH-KRW"]')))
    await page.check('#picker input[data-market="upbit|ETH-KRW"]');
  const rowLast = (m) => `#tickers tr[data-market="${m}"] [data-field=last]`;
  for (const m of ["upbit|BTC-KRW", "upbit|ETH-KRW", "binance|BTC-USDT"])
    await until(page, `ticker ${m} shows a price`,
      (sel) => { const e = document.querySelector(sel); return e && /^[0-9][0-9,]*(\.[0-9]+)?$/.test(e.textContent); },
      rowLast(m));
  // Prices move: the board's last price changes.
  const first = await page.textContent(rowLast("upbit|BTC-KRW"));
  const changed = await until(page, "upbit BTC-KRW price to change",
    ([sel, v]) => { const t = document.querySelector(sel).textContent; return t !== v && t; }, [rowLast("upbit|BTC-KRW"), first]);
  note("demo: prices update", { from: first, to: changed });
  // Pick upbit BTC-KRW for trades and the book (click its board row).
  await page.click(`#tickers tr[data-market="upbit|BTC-KRW"]`);
  await until(page, "trades of upbit BTC-KRW", () => document.querySelectorAll("#trades tbody tr").length >= 3);
  await until(page, "top-10 book", () =>
    document.querySelectorAll("#bids tbody tr").length === 10 && document.querySelectorAll("#asks tbody tr").length === 10);
  const book = await page.evaluate(() => ({
    bids: [...document.querySelectorAll("#bids [data-price]")].map((e) => Number(e.dataset.price)),
    asks: [...document.querySelectorAll("#asks [data-price]")].map((e) => Number(e.dataset.price)),
  }));
  for (let i = 1; i < 10; i++) {
    if (!(book.bids[i] < book.bids[i - 1])) throw new Error(`bids not descending: ${book.bids}`);
    if (!(book.asks[i] > book.asks[i - 1])) throw new Error(`asks not ascending: ${book.asks}`);
  }
  if (!(book.bids[0] < book.asks[0])) throw new Error(`crossed book: ${book.bids[0]} >= ${book.asks[0]}`);
  const trade = await page.$$eval("#trades tbody tr td", (tds) => tds.slice(0, 5).map((t) => t.textContent));
  if (!["buy", "sell"].includes(trade[1]) || !isNum(trade[2]) || !isNum(trade[3]))
    throw new Error(`bad trade row: ${trade}`);
  // New trades keep arriving.
  const seq0 = toNum(trade[4]);
  await until(page, "new trades", (s) => Number(document.querySelector("#trades tbody tr td:last-child").textContent) > s, seq0);
  note("demo: board, trades and book", { best_bid: book.bids[0], best_ask: book.asks[0], trade });
  await shot(page, "demo-live");
}

/* ---- the status page -------------------------------------------------------- */

async function statusLive(page) {
  if (ADMIN_Q) {
    const r = await page.goto(opt.admin + "/");
    if (r.status() !== 401) throw new Error(`status page without the admin token: HTTP ${r.status()}`);
  }
  await page.goto(opt.admin + "/" + ADMIN_Q);
  await until(page, "role leader", () => document.querySelector("#role").dataset.state === "leader");
  for (const ex of ["upbit", "binance"])
    await until(page, `${ex} connected on the board`, (ex) => {
      const p = document.querySelector(`[data-exchange="${ex}"] [data-field=state]`);
      return p && ["connected", "subscribed"].includes(p.dataset.state) && p.classList.contains("ok");
    }, ex);
  const st = await getStatus();
  const shown = await page.evaluate(() => ({
    instance: document.querySelector("#instance").textContent,
    leader: document.querySelector("#leader").textContent,
    epoch: document.querySelector("#epoch").textContent,
    fanouts: document.querySelectorAll('#workers tr[data-kind="fanout"]').length,
    ingest: document.querySelectorAll('#workers tr[data-kind="ingest"]').length,
    pids: [...document.querySelectorAll("#workers tr[data-pid]")].map((r) => Number(r.dataset.pid)).sort(),
    sources: [...document.querySelectorAll('#workers tr[data-kind="fanout"] [data-source]')].map((e) => e.dataset.source),
  }));
  if (shown.instance !== st.instance) throw new Error(`instance ${shown.instance} != ${st.instance}`);
  if (!shown.leader.startsWith(st.leader)) throw new Error(`leader ${shown.leader} != ${st.leader}`);
  if (shown.epoch !== String(st.leader_epoch)) throw new Error(`epoch ${shown.epoch} != ${st.leader_epoch}`);
  const fanouts = st.workers.filter((w) => w.kind === "fanout");
  if (shown.fanouts !== fanouts.length || shown.ingest !== 1) throw new Error(`workers shown ${JSON.stringify(shown)}`);
  const pids = st.workers.map((w) => w.pid).sort();
  if (JSON.stringify(shown.pids) !== JSON.stringify(pids)) throw new Error(`pids ${shown.pids} != ${pids}`);
  if (shown.sources.length !== fanouts.length || !shown.sources.every((s) => s === "relay" || s === "kafka"))
    throw new Error(`fanout sources ${shown.sources}`);
  // The demo page is the only client: the page's count matches /status and reality.
  const clients = await until(page, "clients = 1", () => document.querySelector("#clients").textContent === "1" && 1);
  const stc = (await getStatus()).clients;
  if (stc !== clients) throw new Error(`clients: page ${clients}, /status ${stc}`);
  // Rates and latency appear and the numbers move.
  await until(page, "messages/s out", () => Number(document.querySelector("#rate-out").textContent.replace(/,/g, "")) > 0);
  await until(page, "latency p50/p99", () => / ms$/.test(document.querySelector("#latency").textContent));
  await until(page, "exchange messages/s", () =>
    Number(document.querySelector('[data-exchange="upbit"] [data-field=rate]').textContent) > 0);
  const m0 = toNum(await page.textContent('[data-exchange="upbit"] [data-field=messages]'));
  await until(page, "upbit message count to grow", (m0) =>
    Number(document.querySelector('[data-exchange="upbit"] [data-field=messages]').textContent.replace(/,/g, "")) > m0, m0);
  const kpi = await page.evaluate(() => ({
    rate_out: document.querySelector("#rate-out").textContent,
    latency: document.querySelector("#latency").textContent,
    upbit_rate: document.querySelector('[data-exchange="upbit"] [data-field=rate]').textContent,
  }));
  note("status: live values", { ...kpi, clients, workers: shown.pids.length });
  await shot(page, "status-live");
}

/* ---- an exchange drops, stays down, comes back ------------------------------ */

async function exchangeDown(status, demo) {
  await sim("/refuse?exchange=upbit&count=100000");
  await sim("/drop?exchange=upbit");
  const bad = await until(status, "upbit disconnected on the board", () => {
    const p = document.querySelector('[data-exchange="upbit"] [data-field=state]');
    return p && !["connected", "subscribed"].includes(p.dataset.state) && p.classList.contains("bad") && p.dataset.state;
  });
  const still = await status.evaluate(() =>
    document.querySelector('[data-exchange="binance"] [data-field=state]').dataset.state);
  if (!["connected", "subscribed"].includes(still)) throw new Error(`binance went ${still}`);
  // The demo page learns it from status.upbit and marks upbit's markets.
  const feed = await until(demo, "demo marks upbit markets", () => {
    const r = document.querySelector('#tickers tr[data-market="upbit|BTC-KRW"]');
    const b = document.querySelector('#tickers tr[data-market="binance|BTC-USDT"]');
    return r && b && r.dataset.feed !== "live" && r.dataset.feed !== "waiting" && r.classList.contains("stale") &&
      b.dataset.feed === "live" && r.dataset.feed;
  });
  note("upbit down", { status_page: bad, demo_feed: feed });
  await shot(status, "status-upbit-down");
  await shot(demo, "demo-upbit-down");
  await sim("/refuse?exchange=upbit&count=0");
  await until(status, "upbit connected again", () => {
    const p = document.querySelector('[data-exchange="upbit"] [data-field=state]');
    const r = document.querySelector('[data-exchange="upbit"] [data-field=reconnects]');
    return p && ["connected", "subscribed"].includes(p.dataset.state) && Number(r.textContent) >= 1;
  }, undefined, 20000);
  await until(demo, "demo shows upbit live again", () =>
    document.querySelector('#tickers tr[data-market="upbit|BTC-KRW"]').dataset.feed === "live");
  note("upbit back");
}

/* ---- a drain: the demo page reconnects with since ---------------------------- */

async function drain(status, demo) {
  const before = (await getStatus()).workers.filter((w) => w.kind === "fanout").map((w) => w.pid);
  // Follow a market whose trades flow throughout: binance BTC-USDT.
  await demo.selectOption("#focus", "binance|BTC-USDT");
  await until(demo, "binance trades", () => document.querySelectorAll("#trades tbody tr").length >= 3);
  const s0 = await demo.evaluate(() => ({ ...window.demo.stats }));
  process.kill(Number(opt.pid), "SIGHUP"); // reload: new fanout workers, the old ones drain
  const s1 = await until(demo, "reconnect after the drain", (r0) => {
    const s = window.demo.stats;
    return s.reconnects > r0 && s.hints > 0 && s.recovered && document.querySelector("#conn").dataset.state === "open" &&
      JSON.parse(JSON.stringify(s));
  }, s0.reconnects, 20000);
  const unrecovered = Object.keys(s1.recovered).filter((c) => !s1.recovered[c]);
  const since = Object.keys(s1.since || {});
  if (!since.includes("trade.binance.BTC-USDT")) throw new Error(`no since for the trade channel: ${JSON.stringify(s1.since)}`);
  if (unrecovered.length) throw new Error(`gaps not filled after the drain: ${unrecovered}`);
  // Data keeps coming on the new connection, with no hole in the trade seqs.
  const seqAt = await demo.evaluate(() => window.demo.last["trade.binance.BTC-USDT"].seq);
  await until(demo, "trades after the reconnect", (q) => window.demo.last["trade.binance.BTC-USDT"].seq > q + 2, seqAt);
  const s2 = await demo.evaluate(() => ({ ...window.demo.stats }));
  if (s2.gaps !== 0) throw new Error(`the demo page saw ${s2.gaps} missing trades`);
  // The status page shows the new workers and the client on one of them.
  await until(status, "new fanout workers on the status page", (old) => {
    const rows = [...document.querySelectorAll('#workers tr[data-kind="fanout"]')];
    return rows.length === old.length && rows.every((r) => !old.includes(Number(r.dataset.pid))) &&
      rows.every((r) => r.querySelector("[data-field=state]").textContent.includes("running"));
  }, before, 20000);
  await until(status, "clients = 1 after the drain", () => document.querySelector("#clients").textContent === "1");
  note("drain", { hints: s2.hints, reconnects: s2.reconnects, since: s1.since, recovered: s1.recovered,
    replayed: s2.replayed, duplicates: s2.duplicates, gaps: s2.gaps });
  await shot(demo, "demo-after-drain");
  await shot(status, "status-after-drain");
}

/* ---- a follower's status page, then its promotion ------------------------------ */

async function follower(page) {
  const leader = await getStatus(opt["leader-admin"]);
  await page.goto(opt.admin + "/");
  await until(page, "role follower", () => document.querySelector("#role").dataset.state === "follower");
  const shown = await until(page, "leader and epoch", (l) => {
    const t = (id) => document.querySelector(id).textContent;
    return t("#leader") === l.instance && t("#epoch") === String(l.leader_epoch) &&
      !document.querySelector("#follower-note").classList.contains("hidden") &&
      document.querySelectorAll('#workers tr[data-kind="fanout"] [data-source="relay"]').length > 0 && {
        role_class: document.querySelector("#role").className, leader: t("#leader"), epoch: t("#epoch"),
        session: document.querySelector("#session").dataset.state, note: t("#follower-note"), board: t("#board"),
        ingest_rows: document.querySelectorAll('#workers tr[data-kind="ingest"]').length,
        exchange_tiles: document.querySelectorAll("#board [data-exchange]").length,
      };
  }, leader);
  if (!shown.role_class.includes("info")) throw new Error(`follower pill class ${shown.role_class}`);
  if (shown.session !== "connected") throw new Error(`session ${shown.session}`);
  if (shown.ingest_rows !== 0 || shown.exchange_tiles !== 0) throw new Error(`a follower shows ingest state: ${JSON.stringify(shown)}`);
  if (!shown.board.includes(leader.instance)) throw new Error(`board does not name the leader: ${shown.board}`);
  note("follower", shown);
  await shot(page, "status-follower");
  // The leader stops: this instance takes over and the same page shows it.
  process.kill(Number(opt["leader-pid"]), "SIGTERM");
  const promoted = await until(page, "promotion to leader", (e0) => {
    const t = (id) => document.querySelector(id).textContent;
    const tile = document.querySelector('#board [data-exchange="upbit"] [data-field=state]');
    return document.querySelector("#role").dataset.state === "leader" && Number(t("#epoch")) > e0 &&
      document.querySelector("#follower-note").classList.contains("hidden") &&
      document.querySelectorAll('#workers tr[data-kind="ingest"]').length === 1 &&
      tile && ["connected", "subscribed"].includes(tile.dataset.state) && { epoch: t("#epoch"), leader: t("#leader") };
  }, leader.epoch, 25000);
  note("promoted", promoted);
  await shot(page, "status-promoted");
}

let failed = null;
try {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
  });
  for (const name of SCENARIO === "follower" ? ["status"] : ["demo", "status"]) {
    const p = await browser.newPage();
    p.setDefaultTimeout(STEP_MS);
    p.on("pageerror", (e) => { results.page_errors = (results.page_errors || []).concat(`${name}: ${e.message}`); });
    pages[name] = p;
  }
  if (SCENARIO === "follower") {
    await follower(pages.status);
  } else {
    await demoLive(pages.demo);
    await statusLive(pages.status);
    await exchangeDown(pages.status, pages.demo);
    await drain(pages.status, pages.demo);
  }
  if (results.page_errors) throw new Error(`JavaScript errors: ${results.page_errors}`);
} catch (e) {
  failed = e;
  for (const [name, p] of Object.entries(pages)) await shot(p, `FAILED-${SCENARIO}-${name}`).catch(() => {});
  for (const [name, p] of Object.entries(pages))
    results[`${name}_log`] = await p.evaluate(() => document.querySelector("#log, #err")?.textContent).catch(() => null);
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
results.ok = !failed;
results.ms = Date.now() - t0;
process.stdout.write(JSON.stringify(results) + "\n");
if (failed) {
  console.error(failed.stack || String(failed));
  process.exit(1);
}
