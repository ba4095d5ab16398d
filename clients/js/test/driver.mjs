// Drives the client library for test/integration/test_clients.py: subscribes,
// prints one JSON line per event on stdout, stops when stdin closes.
//   node driver.mjs --urls ws://a/ws/exchange,ws://b/ws/exchange --channels trade.upbit.BTC-KRW
//        [--lib PATH/index.js] [--heartbeat-ms N] [--heartbeat-timeout-ms N]
//        [--browser --playwright DIR/node_modules/playwright-core [--chromium /usr/bin/chromium]]
// Lines: {"ev":"msg",ch,epoch,seq,trade_id,ts} {"ev":"gap",...} {"ev":"reconnect",...}
//        {"ev":"resumed",...} {"ev":"error",...} {"ev":"end",stats,positions}
// In Node the library gets the ws package's WebSocket; with --browser it runs
// in Debian's chromium (playwright-core) on a blank page, with its own WebSocket.
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const opt = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith("--")) continue;
  const next = process.argv[i + 1];
  if (next === undefined || next.startsWith("--")) opt[a.slice(2)] = true;
  else opt[a.slice(2)] = process.argv[++i];
}
const lib = resolve(opt.lib || join(here, "..", "dist", "index.js"));
const config = {
  urls: String(opt.urls).split(","),
  channels: String(opt.channels).split(","),
  options: {
    heartbeatMs: Number(opt["heartbeat-ms"] || 15000),
    heartbeatTimeoutMs: Number(opt["heartbeat-timeout-ms"] || 10000),
    backoffMinMs: 100,
    backoffMaxMs: 2000,
  },
};
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

/* The same code runs in Node and in the page: it wires a client to emit(). */
function run(ExchangeClient, config, emit, WebSocket) {
  const c = new ExchangeClient(config.urls, WebSocket ? { ...config.options, WebSocket } : config.options);
  c.on("gap", (g) => emit({ ev: "gap", ...g }));
  c.on("reconnect", (r) => emit({ ev: "reconnect", code: r.code, reason: r.reason, hint: r.hint || null, url: r.url, delay: r.delayMs }));
  c.on("resumed", (r) => emit({ ev: "resumed", since: r.since, recovered: r.recovered }));
  c.on("error", (e) => emit({ ev: "error", code: e.code, message: e.message }));
  c.subscribe(config.channels, (m) =>
    emit({ ev: "msg", ch: m.channel, epoch: m.epoch, seq: m.seq, trade_id: m.trade_id, ts: m.ts, backfill: !!m.backfill }));
  return () => {
    const end = { ev: "end", stats: c.stats, positions: c.positions() };
    c.close();
    return end;
  };
}

const stdinClosed = new Promise((r) => {
  process.stdin.on("end", r);
  process.stdin.on("close", r);
  process.stdin.resume();
});

if (!opt.browser) {
  const { ExchangeClient } = await import(pathToFileURL(lib).href);
  const { default: WebSocket } = await import("ws"); /* injected: lib may live outside this package */
  const stop = run(ExchangeClient, config, out, WebSocket);
  await stdinClosed;
  out(stop());
  process.exit(0);
} else {
  const { chromium } = await import(pathToFileURL(join(resolve(opt.playwright), "index.mjs")).href);
  const browser = await chromium.launch({
    executablePath: opt.chromium || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-background-timer-throttling"],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => out({ ev: "error", code: "pageerror", message: e.message }));
  await page.exposeFunction("emitLine", (s) => process.stdout.write(s + "\n"));
  await page.setContent("<!doctype html><title>exchange client test</title>");
  const source = readFileSync(lib, "utf8");
  await page.addScriptTag({ type: "module", content: source + "\nwindow.ExchangeClient = ExchangeClient;\n" });
  await page.waitForFunction(() => !!window.ExchangeClient);
  await page.evaluate(([runSrc, cfg]) => {
    const runIt = new Function("return (" + runSrc + ")")();
    window.stopClient = runIt(window.ExchangeClient, cfg, (o) => window.emitLine(JSON.stringify(o)));
  }, [run.toString(), config]);
  out({ ev: "started", browser: browser.version() });
  await stdinClosed;
  out(await page.evaluate(() => window.stopClient()));
  await browser.close();
  process.exit(0);
}
