// Chromium as a permessage-deflate client of the fanout port, run by
// test/integration/test_deflate.py: opens the demo page's origin, connects a
// WebSocket to /ws/exchange (Chromium offers permessage-deflate by itself),
// subscribes, prints {"ready":true,"extensions":...} and then, once --count
// data messages arrived, one JSON line {"extensions":...,"messages":[text...]}.
//
//   node deflate.mjs --fanout http://127.0.0.1:8080 --channel CH --count N
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const argv = process.argv.slice(2);
const opt = {};
for (let i = 0; i < argv.length; i += 2) opt[argv[i].replace(/^--/, "")] = argv[i + 1];
const profile = mkdtempSync(join(tmpdir(), "exchange-deflate-"));
let browser = null;
let code = 0;
try {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: opt.chromium || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(opt.fanout + "/");
  const ext = await page.evaluate((ch) => new Promise((resolve, reject) => {
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws/exchange");
    window.__got = [];
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === "subscribed") resolve(ws.extensions);
      else if (m.channel) window.__got.push(e.data);
    };
    ws.onerror = () => reject(new Error("websocket error"));
    ws.onclose = (e) => reject(new Error("websocket closed " + e.code));
    // a request long enough that Chromium sends it compressed
    ws.onopen = () => ws.send(JSON.stringify({ op: "subscribe", channels: [ch], id: 1, pad: "p".repeat(400) }));
  }), opt.channel);
  console.log(JSON.stringify({ ready: true, extensions: ext }));
  const n = Number(opt.count);
  await page.waitForFunction((k) => window.__got.length >= k, n, { timeout: 30000 });
  const messages = await page.evaluate(() => window.__got);
  console.log(JSON.stringify({ extensions: ext, messages }));
} catch (e) {
  console.error(String(e && e.stack || e));
  code = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
