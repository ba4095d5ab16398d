// Unit tests of the compiled library (dist/) against a small fake server
// built on ws: `npm test` (tsc, then node --test).
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket, { WebSocketServer } from "ws";
import { pathToFileURL } from "node:url";

// The library under test: dist/ (npm test), or EXCHANGE_CLIENT_JS (the build's
// copy, from test/integration/test_clients.py).
const lib = process.env.EXCHANGE_CLIENT_JS ? pathToFileURL(process.env.EXCHANGE_CLIENT_JS).href : "../dist/index.js";
const { ExchangeClient, PROTOCOL_VERSION, VERSION, channelMatches } = await import(lib);

/** A fake exchange-service endpoint: remembers every request per connection. */
async function fakeServer() {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.once("listening", r));
  const srv = {
    wss,
    url: `ws://127.0.0.1:${wss.address().port}/ws/exchange`,
    conns: [],
    onRequest: null, // (conn, req) => boolean handled
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }),
  };
  wss.on("connection", (sock, req) => {
    const conn = { sock, url: req.url, reqs: [], send: (o) => sock.send(JSON.stringify(o)) };
    srv.conns.push(conn);
    sock.on("message", (data) => {
      const r = JSON.parse(String(data));
      conn.reqs.push(r);
      if (srv.onRequest && srv.onRequest(conn, r)) return;
      if (r.op === "subscribe") conn.send({ type: "subscribed", channels: r.channels, id: r.id,
        ...(r.since ? { recovered: Object.fromEntries(Object.keys(r.since).map((k) => [k, true])) } : {}) });
      else if (r.op === "ping") conn.send({ type: "pong", ts: Date.now(), id: r.id });
      else if (r.op === "list") conn.send({ type: "list", channels: ["trade.x.A-B"], id: r.id });
    });
  });
  return srv;
}

async function until(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const trade = (ch, epoch, seq, id) => ({ channel: ch, type: "trade", epoch, seq, trade_id: String(id ?? seq), price: "1", qty: "1" });
const fast = { WebSocket, backoffMinMs: 10, backoffMaxMs: 50, gapStatus: false };

test("version constants", () => {
  assert.equal(PROTOCOL_VERSION, 1);
  assert.equal(Number(VERSION.split(".")[0]), PROTOCOL_VERSION);
  assert.ok(channelMatches("trade.*.BTC-KRW", "trade.upbit.BTC-KRW"));
  assert.ok(!channelMatches("trade.*", "trade.upbit.BTC-KRW"));
});

test("order, duplicates, lower epochs, re-sent trade ids, resume with since", async () => {
  const srv = await fakeServer();
  const c = new ExchangeClient(srv.url, fast);
  const got = [], gaps = [];
  c.on("gap", (g) => gaps.push(g));
  c.subscribe("trade.x.A-B", (m) => got.push(`${m.epoch}:${m.seq}:${m.trade_id}`));
  const conn = await until("subscribe", () => srv.conns[0]?.reqs.find((r) => r.op === "subscribe") && srv.conns[0]);
  assert.equal(conn.reqs[0].since, undefined);
  const ch = "trade.x.A-B";
  for (const m of [trade(ch, 5, 1), trade(ch, 5, 2), trade(ch, 5, 2), trade(ch, 4, 9, "x"), trade(ch, 5, 3),
    trade(ch, 6, 1, 3) /* the same trade re-sent by a new leader */, trade(ch, 6, 2, 4)]) conn.send(m);
  await until("4 trades", () => got.length === 4);
  conn.sock.close(1001, "bye");
  const conn2 = await until("second connection", () => srv.conns[1]?.reqs.find((r) => r.op === "subscribe") && srv.conns[1]);
  assert.deepEqual(conn2.reqs[0].since, { [ch]: { epoch: 6, seq: 2 } });
  conn2.send(trade(ch, 6, 2, 4)); // replay overlap
  conn2.send(trade(ch, 6, 3, 5));
  await until("5 trades", () => got.length === 5);
  assert.deepEqual(got, ["5:1:1", "5:2:2", "5:3:3", "6:2:4", "6:3:5"]);
  assert.equal(gaps.length, 0);
  assert.equal(c.stats.duplicates + c.stats.stale, 4);
  c.close();
  await srv.close();
});

test("gaps: recovered:false, a seq jump on a trade channel, status.EXCHANGE gap", async () => {
  const srv = await fakeServer();
  const c = new ExchangeClient(srv.url, { ...fast, gapStatus: true });
  const gaps = [], got = [];
  c.on("gap", (g) => gaps.push(g));
  c.subscribe(["trade.x.A-B", "ticker.x.A-B"], (m) => got.push(m));
  const conn = await until("subscribes", () => srv.conns[0]?.reqs.filter((r) => r.op === "subscribe").length === 2 && srv.conns[0]);
  assert.deepEqual(conn.reqs.map((r) => r.channels).sort(), [["status.x"], ["trade.x.A-B", "ticker.x.A-B"]].sort());
  conn.send(trade("trade.x.A-B", 1, 1));
  conn.send(trade("trade.x.A-B", 1, 4)); // 2 and 3 missing
  conn.send({ channel: "ticker.x.A-B", type: "ticker", epoch: 1, seq: 1 });
  conn.send({ channel: "ticker.x.A-B", type: "ticker", epoch: 1, seq: 7 }); // conflated: not a gap
  conn.send({ channel: "status.x", type: "status", epoch: 1, seq: 3, state: "gap",
    gap: { channel: "trade.x.A-B", from_ts: 10, to_ts: 20, last_trade_id: "4" } });
  await until("2 gaps", () => gaps.length === 2);
  assert.deepEqual(gaps[0], { channel: "trade.x.A-B", reason: "seq", after: { epoch: 1, seq: 1 }, before: { epoch: 1, seq: 4 }, missing: 2 });
  assert.equal(gaps[1].reason, "exchange");
  assert.equal(gaps[1].exchange.to_ts, 20);
  assert.ok(got.every((m) => m.channel !== "status.x"), "status messages not subscribed by the application");
  srv.onRequest = (cn, r) => {
    if (r.op !== "subscribe" || !r.since || !r.since["trade.x.A-B"]) return false;
    cn.send({ type: "subscribed", channels: r.channels, id: r.id, recovered: { "trade.x.A-B": false, "ticker.x.A-B": true } });
    cn.send(trade("trade.x.A-B", 1, 9));
    return true;
  };
  conn.sock.terminate(); // no close frame
  await until("not_recovered gap", () => gaps.length === 3);
  assert.equal(gaps[2].reason, "not_recovered");
  assert.deepEqual(gaps[2].after, { epoch: 1, seq: 4 });
  await until("trade 9", () => got.some((m) => m.seq === 9));
  assert.equal(gaps.length, 3, "the jump after recovered:false is not reported twice");
  c.close();
  await srv.close();
});

test("reconnect hint, endpoint rotation, token refresh on 4001", async () => {
  const a = await fakeServer(), b = await fakeServer();
  const asked = [];
  let n = 0;
  const c = new ExchangeClient([a.url, b.url], { ...fast, getToken: (ctx) => { asked.push(ctx.reason); return "t" + n++; } });
  const recs = [];
  c.on("reconnect", (r) => recs.push(r));
  c.subscribe("trade.x.A-B", () => {});
  const ca = await until("a", () => a.conns[0]?.reqs.length && a.conns[0]);
  assert.match(ca.url, /token=t0/);
  ca.send({ type: "reconnect", reason: "drain", after_ms: 300 });
  const t0 = Date.now();
  ca.sock.close(1001, "server draining");
  const cb = await until("b", () => b.conns[0]?.reqs.length && b.conns[0]);
  assert.ok(Date.now() - t0 >= 280, "waited for after_ms");
  assert.equal(recs[0].hint.after_ms, 300);
  assert.equal(recs[0].url, b.url);
  cb.sock.close(4001, "token expired");
  await until("back on a", () => a.conns[1]);
  assert.deepEqual(asked, ["connect", "connect", "auth"]);
  assert.match(a.conns[1].url, /token=t2/);
  c.close();
  await a.close();
  await b.close();
});

test("a silent connection is dropped by the heartbeat", async () => {
  const srv = await fakeServer();
  const c = new ExchangeClient(srv.url, { ...fast, heartbeatMs: 100, heartbeatTimeoutMs: 150 });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  c.subscribe("trade.x.A-B", () => {});
  const conn = await until("conn", () => srv.conns[0]?.reqs.length && srv.conns[0]);
  conn.sock.pause(); // the server reads nothing, answers nothing
  srv.onRequest = (cn, r) => cn === conn;
  await until("reconnected", () => srv.conns.length === 2, 5000);
  assert.ok(errors.includes("heartbeat_timeout"));
  c.close();
  await srv.close();
});

test("async iteration and request()", async () => {
  const srv = await fakeServer();
  const c = new ExchangeClient(srv.url, fast);
  const it = c.stream(["trade.x.*"]);
  const conn = await until("conn", () => srv.conns[0]?.reqs.length && srv.conns[0]);
  assert.deepEqual((await c.request({ op: "list" })).channels, ["trade.x.A-B"]);
  for (let i = 1; i <= 3; i++) conn.send(trade("trade.x.C-D", 1, i));
  const seqs = [];
  for await (const m of it) {
    seqs.push(m.seq);
    if (seqs.length === 3) break;
  }
  assert.deepEqual(seqs, [1, 2, 3]);
  await until("unsubscribed", () => conn.reqs.some((r) => r.op === "unsubscribe"));
  assert.deepEqual(conn.reqs.find((r) => r.op === "unsubscribe").channels, ["trade.x.*"]);
  assert.deepEqual(c.positions(), {});
  c.close();
  await srv.close();
});

test("an endpoint that never completes the handshake: connect timeout, next endpoint", async () => {
  const sockets = [];
  const mute = net.createServer((s) => sockets.push(s));
  await new Promise((r) => mute.listen(0, "127.0.0.1", r));
  const srv = await fakeServer();
  const c = new ExchangeClient([`ws://127.0.0.1:${mute.address().port}/ws/exchange`, srv.url], { ...fast, connectTimeoutMs: 200 });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  c.subscribe("trade.x.A-B", () => {});
  await until("connected to the second endpoint", () => srv.conns[0]?.reqs.length);
  assert.deepEqual(errors, ["timeout"]);
  c.close();
  sockets.forEach((s) => s.destroy());
  mute.close();
  await srv.close();
});
