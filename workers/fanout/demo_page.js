/* ---- the page: everything about the connection is the client library's ---- */
const WS_PATH = document.querySelector("meta[name=ws-path]").content || "/ws/exchange";
const STALE_MS = 10000, MAX_TRADES = 20, DEPTH = 10;
const markets = {};        /* "exchange|SYMBOL" -> {exchange, symbol} from the channel list */
const picked = {};         /* keys the person chose */
let focus = null;          /* key shown in trades + book */
const tickers = {};        /* key -> last ticker message */
const exState = {};        /* exchange -> {state, detail, at} from status.EXCHANGE */
let trades = [], book = null, marketSub = null, openedAt = 0;
const stats = {reconnects: 0, messages: 0, replayed: 0, gaps: 0, duplicates: 0, subscribes: 0, recovered: null, since: null, hints: 0};

/* A token given to the page (?token=JWT) goes on to the endpoint ([auth]). */
const token = new URLSearchParams(location.search).get("token");
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + WS_PATH;
const client = new ExchangeClient(url, {token: token || undefined, backoffMaxMs: 5000});
window.demo = {stats: stats, exState: exState, tickers: tickers, picked: picked, client: client};
Object.defineProperty(window.demo, "last", {get: () => client.positions()});

function $(id) { return document.getElementById(id); }
function mk(tag, t, c) { const e = document.createElement(tag); if (t != null) e.textContent = t; if (c) e.className = c; return e; }
function key(ex, sym) { return ex + "|" + sym; }
function log(s) {
  const el = $("log"), line = new Date().toLocaleTimeString() + "  " + s + "\n";
  el.textContent = (line + el.textContent).slice(0, 6000);
}
function pillCls(s) {
  return s === "connected" || s === "subscribed" || s === "open" ? "ok"
    : s === "stale" || s === "connecting" || s === "reconnecting" ? "warn"
    : s === "disconnected" || s === "error" || s === "closed" || s === "gap" ? "bad" : "none";
}
function setConn(s) { const e = $("conn"); e.textContent = s; e.className = "pill " + pillCls(s); e.setAttribute("data-state", s); }
function counters() {
  stats.duplicates = client.stats.duplicates;
  $("reconnects").textContent = stats.reconnects;
  $("msgcount").textContent = stats.messages;
  $("replayed").textContent = stats.replayed;
  $("gaps").textContent = stats.gaps;
}

/* ---- connection events ---- */
client.on("state", setConn);
client.on("open", function () {
  openedAt = Date.now();
  log("connected to " + url);
  list();
});
client.on("reconnect", function (r) {
  stats.reconnects++;
  if (r.hint) stats.hints++;
  log("connection closed (" + r.code + (r.reason ? " " + r.reason : "") + ")" +
    (r.hint ? "; the server asked to reconnect (" + (r.hint.reason || "") + ")" : "") +
    "; reconnecting in " + r.delayMs + " ms");
  counters();
});
/* Every subscription is back, resumed "since" the last message of each channel. */
client.on("resumed", function (r) {
  if (!r.since) return;
  stats.since = r.since;
  stats.recovered = r.recovered;
  const all = Object.keys(r.recovered || {}).every(function (c) { return r.recovered[c]; });
  log("resubscribed with since: " + (all ? "every gap filled from history" : "some gaps could not be filled: " + JSON.stringify(r.recovered)));
});
client.on("gap", function (g) {
  stats.gaps += g.missing || 1;
  log("gap in " + g.channel + ": " + (g.reason === "seq" ? (g.after.seq + 1) + ".." + (g.before.seq - 1)
    : g.reason === "exchange" ? "exchange time " + g.exchange.from_ts + ".." + g.exchange.to_ts + " not covered"
    : "missed messages could not be replayed"));
  counters();
});
client.on("error", function (e) { log("error " + e.code + ": " + e.message); });
function list() {
  client.request({op: "list"}).then(function (r) { onList(r.channels || []); }, function () {});
}

/* ---- subscriptions ---- */
/* Exchange states on their own: a token that does not grant them must not
 * fail the market subscriptions (a subscribe is all or nothing). */
client.subscribe("status.*", onData);
function wanted() {
  const ch = [];
  Object.keys(picked).forEach(function (k) {
    const m = markets[k];
    if (m) ch.push("ticker." + m.exchange + "." + m.symbol);
  });
  if (focus && markets[focus]) {
    const f = markets[focus];
    ch.push("trade." + f.exchange + "." + f.symbol, "orderbook." + f.exchange + "." + f.symbol);
  }
  return ch;
}
/* The market channels are one subscription, replaced when the choice
 * changes: the new one first, so a channel kept is never dropped. */
function sync() {
  const want = wanted();
  if (marketSub && want.join() === marketSub.channels.join()) return;
  const next = want.length ? client.subscribe(want, onData) : null;
  if (marketSub) marketSub.unsubscribe();
  marketSub = next;
  stats.subscribes++;
}
function onData(m) {
  if (stats.reconnects && m.recv_ts < openedAt) stats.replayed++;
  stats.messages++;
  if (m.type === "ticker") onTicker(m);
  else if (m.type === "trade") onTrade(m);
  else if (m.type === "orderbook") onBook(m);
  else if (m.type === "status") onStatus(m);
}

/* ---- market picker ---- */
function onList(chans) {
  var added = 0;
  chans.forEach(function (c) {
    var p = c.split(".");
    if (p.length === 3 && p[0] === "ticker" && !markets[key(p[1], p[2])]) {
      markets[key(p[1], p[2])] = {exchange: p[1], symbol: p[2]};
      added++;
    }
  });
  if (!added) return;
  var keys = Object.keys(markets).sort();
  if (!Object.keys(picked).length) {
    /* Start with the first market of each exchange. */
    var seen = {};
    keys.forEach(function (k) { var e = markets[k].exchange; if (!seen[e]) { seen[e] = 1; picked[k] = 1; } });
  }
  if (!focus) focus = Object.keys(picked).sort()[0] || keys[0];
  drawPicker();
  drawFocus();
  sync();
  drawTickers();
}
function drawPicker() {
  var box = $("picker"), by = {};
  box.textContent = "";
  Object.keys(markets).sort().forEach(function (k) { var m = markets[k]; (by[m.exchange] = by[m.exchange] || []).push(k); });
  Object.keys(by).forEach(function (ex) {
    var fs = mk("fieldset"), lg = mk("legend", ex);
    fs.appendChild(lg);
    by[ex].forEach(function (k) {
      var lb = mk("label"), cb = mk("input");
      cb.type = "checkbox";
      cb.checked = !!picked[k];
      cb.setAttribute("data-market", k);
      cb.onchange = function () {
        if (cb.checked) picked[k] = 1; else { delete picked[k]; delete tickers[k]; }
        if (!picked[focus]) focus = Object.keys(picked).sort()[0] || null;
        drawFocus();
        sync();
        drawTickers();
      };
      lb.appendChild(cb);
      lb.appendChild(document.createTextNode(" " + markets[k].symbol));
      fs.appendChild(lb);
    });
    box.appendChild(fs);
  });
}
function drawFocus() {
  var sel = $("focus");
  sel.textContent = "";
  Object.keys(picked).sort().forEach(function (k) {
    var o = mk("option", markets[k].exchange + " " + markets[k].symbol);
    o.value = k;
    if (k === focus) o.selected = true;
    sel.appendChild(o);
  });
}
$("focus").onchange = function () { setFocus($("focus").value); };
function setFocus(k) {
  if (k === focus) return;
  focus = k;
  trades = [];
  book = null;
  drawTrades();
  drawBook();
  drawFocus();
  sync();
  drawTickers();
}

/* ---- ticker board ---- */
function fmt(s) {
  if (s == null || s === "") return "-";
  var x = Number(s);
  if (!isFinite(x)) return s;
  var d = (String(s).split(".")[1] || "").length;
  return x.toLocaleString("en-US", {minimumFractionDigits: Math.min(d, 8), maximumFractionDigits: 8});
}
function onTicker(m) {
  var k = key(m.exchange, m.symbol);
  if (!picked[k]) return;
  var prev = tickers[k];
  m._dir = prev && Number(m.last) !== Number(prev.last) ? (Number(m.last) > Number(prev.last) ? "up" : "down") : (prev ? prev._dir : "");
  m._changed = prev && Number(m.last) !== Number(prev.last);
  m._at = Date.now();
  tickers[k] = m;
  drawTickers();
}
function feedState(ex, k) {
  var s = exState[ex], t = tickers[k];
  if (s && s.state !== "connected" && s.state !== "subscribed") return s.state;
  if (t && Date.now() - t._at > STALE_MS) return "stale";
  return s ? "live" : (t ? "live" : "waiting");
}
/* Rows are made once per market and updated in place. */
var rows = {};
function row(k) {
  if (rows[k]) return rows[k];
  var mkt = markets[k], tr = mk("tr"), cells = {};
  tr.setAttribute("data-market", k);
  tr.onclick = function () { setFocus(k); };
  [["exchange", ""], ["market", ""], ["last", "n"], ["change", "n"], ["high", "n"], ["low", "n"],
   ["volume", "n"], ["time", "n"], ["feed", ""]].forEach(function (c) {
    var d = mk("td", null, c[1]);
    d.setAttribute("data-field", c[0]);
    cells[c[0]] = d;
    tr.appendChild(d);
  });
  cells.exchange.textContent = mkt.exchange;
  cells.market.textContent = mkt.symbol;
  cells.pill = mk("span");
  cells.feed.appendChild(cells.pill);
  return (rows[k] = {tr: tr, c: cells});
}
/* The trades and the book of the focused market go stale with its exchange. */
function drawFocusState() {
  var st = focus && markets[focus] ? feedState(markets[focus].exchange, focus) : "waiting";
  var bad = st !== "live" && st !== "waiting";
  var msg = bad ? markets[focus].exchange + " is " + st + ": these are the last values received" : "";
  ["tradestale", "bookstale"].forEach(function (id) { $(id).hidden = !bad; $(id).textContent = msg; });
  $("trades").classList.toggle("stale", bad);
  document.querySelector(".book").classList.toggle("stale", bad);
}
function drawTickers() {
  drawFocusState();
  var tb = document.querySelector("#tickers tbody");
  Object.keys(rows).forEach(function (k) {
    if (!picked[k]) { rows[k].tr.remove(); delete rows[k]; }
  });
  Object.keys(picked).sort().forEach(function (k, i) {
    var mkt = markets[k], t = tickers[k] || {}, st = feedState(mkt.exchange, k), r = row(k), c = r.c;
    r.tr.className = "sel" + (st === "live" || st === "waiting" ? "" : " stale") + (k === focus ? " focus" : "");
    r.tr.setAttribute("data-feed", st);
    c.last.textContent = fmt(t.last);
    c.last.className = "n " + (t._dir || "");
    if (t._changed) {
      void c.last.offsetWidth;
      c.last.classList.add(t._dir === "up" ? "flash-up" : "flash-down");
      t._changed = false;
    }
    var cr = t.change_rate != null ? Number(t.change_rate) * 100 : null;
    c.change.textContent = cr == null ? "-" : (cr > 0 ? "+" : "") + cr.toFixed(2) + "%";
    c.change.className = "n " + (cr > 0 ? "up" : cr < 0 ? "down" : "");
    c.high.textContent = fmt(t.high);
    c.low.textContent = fmt(t.low);
    c.volume.textContent = fmt(t.volume);
    c.time.textContent = t._at ? new Date(t.ts || t._at).toLocaleTimeString() : "-";
    c.pill.textContent = st;
    c.pill.className = "pill " + (st === "live" ? "ok" : st === "waiting" ? "none" : pillCls(st));
    c.pill.title = exState[mkt.exchange] && exState[mkt.exchange].detail || "";
    if (tb.children[i] !== r.tr) tb.insertBefore(r.tr, tb.children[i] || null);
  });
}

/* ---- exchange status (status.EXCHANGE) ---- */
function onStatus(m) {
  if (m.state === "gap") return; /* a span not backfilled: the gap event reports it */
  exState[m.exchange] = {state: m.state, detail: m.detail || "", at: Date.now()};
  log("exchange " + m.exchange + " is " + m.state + (m.detail ? " (" + m.detail + ")" : ""));
  drawExStates();
  drawTickers();
}
function drawExStates() {
  var box = $("exstates");
  box.textContent = "";
  Object.keys(exState).sort().forEach(function (ex) {
    var s = exState[ex], p = mk("span", ex + " " + s.state, "pill " + pillCls(s.state));
    p.setAttribute("data-exchange", ex);
    p.setAttribute("data-state", s.state);
    if (s.detail) p.title = s.detail;
    box.appendChild(p);
    box.appendChild(document.createTextNode(" "));
  });
}

/* ---- trades and book of the focused market ---- */
function isFocus(m) { return focus === key(m.exchange, m.symbol); }
function onTrade(m) {
  if (!isFocus(m)) return;
  trades.unshift(m);
  if (trades.length > MAX_TRADES) trades.length = MAX_TRADES;
  drawTrades();
}
function drawTrades() {
  var tb = document.querySelector("#trades tbody");
  tb.textContent = "";
  trades.forEach(function (t) {
    var tr = mk("tr", null, t.side === "buy" ? "up" : t.side === "sell" ? "down" : "");
    tr.appendChild(mk("td", new Date(t.ts).toLocaleTimeString()));
    tr.appendChild(mk("td", t.side || "-"));
    tr.appendChild(mk("td", fmt(t.price), "n"));
    tr.appendChild(mk("td", fmt(t.qty), "n"));
    tr.appendChild(mk("td", t.seq, "n muted"));
    tb.appendChild(tr);
  });
}
function onBook(m) {
  if (!isFocus(m)) return;
  book = m;
  drawBook();
}
function drawBook() {
  var b = book || {bids: [], asks: []};
  var bids = (b.bids || []).slice(0, DEPTH), asks = (b.asks || []).slice(0, DEPTH), max = 0;
  bids.concat(asks).forEach(function (l) { max = Math.max(max, Number(l[1]) || 0); });
  function fill(id, levels, bidSide) {
    var tb = document.querySelector("#" + id + " tbody");
    tb.textContent = "";
    levels.forEach(function (l) {
      var tr = mk("tr"), p = mk("td", fmt(l[0]), "n " + (bidSide ? "up" : "down")), q = mk("td", fmt(l[1]), "n");
      var bar = mk("div", null, "bar");
      bar.style.width = (max ? 100 * Number(l[1]) / max : 0) + "%";
      q.appendChild(bar);
      p.setAttribute("data-price", l[0]);
      if (bidSide) { tr.appendChild(q); tr.appendChild(p); } else { tr.appendChild(p); tr.appendChild(q); }
      tb.appendChild(tr);
    });
  }
  fill("bids", bids, true);
  fill("asks", asks, false);
  $("bookstate").textContent = book ? "seq " + book.seq + (bids.length && asks.length ? " \u00b7 spread " + fmt(String(+(Number(asks[0][0]) - Number(bids[0][0])).toPrecision(12))) : "") : "";
}

setInterval(function () {
  counters();
  if (client.state === "open" && !Object.keys(markets).length) list();
}, 1000);
setInterval(function () { if (client.state === "open") list(); }, 15000);
setInterval(drawTickers, 2000);
