/* Client for the exchange-service WebSocket protocol (README.md, "Client
 * protocol"). One file, no runtime dependency: in a browser it uses the
 * global WebSocket; in Node 20 it takes a constructor (options.WebSocket) or
 * loads the `ws` package on first connect.
 *
 * What it promises the application, per exact channel:
 *   - messages in order: epoch never goes down, seq strictly increases within
 *     an epoch; a duplicate (replay overlap, a trade re-sent under a new
 *     epoch: same trade_id) is never handed over;
 *   - after a drop or a drain it reconnects (backoff with full jitter over the
 *     endpoint list, or after the server's {"type":"reconnect","after_ms"})
 *     and resubscribes with `since` {"CH":{"epoch":E,"seq":S}} so the server
 *     replays what was missed;
 *   - what could not be replayed is reported, never hidden: a "gap" event for
 *     recovered:false, for a jump in a trade channel's seq, and for a
 *     status.EXCHANGE message with state "gap" (span the ingest could not
 *     backfill).
 * The demo page served by the fanout embeds this file's compiled output. */

/** Protocol spoken (major version of this package). */
export const PROTOCOL_VERSION = 1;
/** Package version: major = PROTOCOL_VERSION. */
export const VERSION = "1.0.0";

export interface Position {
  epoch: number;
  seq: number;
}

/** A data message as the server forwards it (normalized by the ingest). */
export interface Message {
  channel: string;
  type: string;
  seq: number;
  epoch: number;
  exchange?: string;
  symbol?: string;
  ts?: number;
  recv_ts?: number;
  trade_id?: string;
  backfill?: boolean;
  state?: string;
  [field: string]: unknown;
}

export type GapReason = "not_recovered" | "seq" | "exchange";

export interface GapEvent {
  /** Exact channel the gap is on. */
  channel: string;
  /** not_recovered: the server could not replay from `after` (the reply said
   *  recovered:false); seq: a trade channel's seq jumped from `after` to
   *  `before`; exchange: the ingest announced a span it could not backfill. */
  reason: GapReason;
  after?: Position;
  before?: Position;
  /** Messages known missing (seq reason). */
  missing?: number;
  /** The status message's "gap" object (exchange reason). */
  exchange?: { channel: string; from_ts?: number; to_ts?: number; last_trade_id?: string };
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ReconnectEvent {
  /** Consecutive failures so far (0 after a server hint). */
  attempt: number;
  delayMs: number;
  /** Endpoint the next attempt goes to. */
  url: string;
  code?: number;
  reason?: string;
  hint?: { reason?: string; after_ms: number };
}

export interface SubscribedEvent {
  channels: string[];
  since: Record<string, Position> | null;
  recovered: Record<string, boolean> | null;
}

export interface ClientError {
  code: string;
  message: string;
  channels?: string[];
  cause?: unknown;
}

export interface ClientEvents {
  state: ClientState;
  gap: GapEvent;
  error: ClientError;
  reconnect: ReconnectEvent;
  open: { url: string };
  subscribed: SubscribedEvent;
  /** Every subscription sent on a new connection has its reply: since and
   *  recovered merged over them (null on a first connect). */
  resumed: SubscribedEvent;
}
export type EventName = keyof ClientEvents;

/** The part of the WebSocket API used (browser WebSocket and ws both fit). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

export interface TokenContext {
  /** "connect": every (re)connect; "auth": the server closed with 4001/4003. */
  reason: "connect" | "auth";
  url: string;
}

export interface ClientOptions {
  /** Static token, sent as ?token= (the [auth] section of the server). */
  token?: string;
  /** Called before every connect; a fresh token after a 4001/4003 close. */
  getToken?: (ctx: TokenContext) => string | null | undefined | Promise<string | null | undefined>;
  /** Query parameter carrying the token (default "token"). */
  tokenParam?: string;
  /** WebSocket constructor (Node: `import WebSocket from "ws"`). */
  WebSocket?: WebSocketCtor;
  /** Backoff: full jitter over min(backoffMaxMs, backoffMinMs * 2^attempt). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Upper bound on a server's reconnect hint (after_ms). */
  maxHintMs?: number;
  /** Silence after which {"op":"ping"} is sent (the server's own WebSocket
   *  pings are answered by the WebSocket implementation). */
  heartbeatMs?: number;
  /** No frame this long after that ping: the connection is dead (cut without
   *  a close frame); it is dropped and the client reconnects. */
  heartbeatTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Trade ids remembered per channel to drop re-sent trades. */
  dedupWindow?: number;
  /** Also subscribe status.EXCHANGE for the exchanges of trade subscriptions,
   *  to hear of gaps the ingest could not backfill (default true). Status
   *  messages reach the application only if it subscribed to them. */
  gapStatus?: boolean;
  /** Resume positions from a previous run (see positions()). */
  positions?: Record<string, Position>;
  /** Random source in [0,1) for the jitter (tests). */
  random?: () => number;
}

export type Handler = (msg: Message) => void;

/** A channel pattern with `*` for a whole segment matches a channel. */
export function channelMatches(pattern: string, channel: string): boolean {
  if (pattern === channel) return true;
  const p = pattern.split("."), c = channel.split(".");
  if (p.length !== c.length) return false;
  for (let i = 0; i < p.length; i++) if (p[i] !== "*" && p[i] !== c[i]) return false;
  return true;
}

interface Entry {
  channels: string[];
  handler: Handler | null;
  onGap: ((g: GapEvent) => void) | null;
  internal: boolean;
  /** Channels the server holds for this entry on this connection (the
   *  patterns plus the exact channels given in since). */
  server: Set<string>;
  sub: Subscription | null;
}

interface Pending {
  resolve: (v: any) => void;
  reject: (e: ClientError) => void;
  entry?: Entry;
  since?: Record<string, Position> | null;
  /** One of the subscriptions sent when the connection opened. */
  resume?: boolean;
}

/** Returned by subscribe(); unsubscribe() stops delivery to its handler. */
export class Subscription {
  constructor(private readonly client: ExchangeClient, readonly channels: string[], private readonly entry: Entry) {}
  get active(): boolean {
    return this.client["entries"].has(this.entry);
  }
  unsubscribe(): void {
    this.client["remove"](this.entry);
  }
}

export interface Stats {
  messages: number;
  duplicates: number;
  stale: number;
  gaps: number;
  reconnects: number;
  hints: number;
}

export type StreamItem = Message | (GapEvent & { type: "gap" });

export class ExchangeClient {
  readonly urls: string[];
  readonly stats: Stats = { messages: 0, duplicates: 0, stale: 0, gaps: 0, reconnects: 0, hints: 0 };
  private readonly opt: Required<Omit<ClientOptions, "token" | "getToken" | "WebSocket" | "positions">> & ClientOptions;
  private entries = new Set<Entry>();
  private statusEntries = new Map<string, Entry>();
  private pos = new Map<string, Position>();
  private trades = new Map<string, { ids: Set<string>; order: string[] }>();
  /** Channels whose gap was already reported (recovered:false): the next
   *  message is not reported again as a seq jump. */
  private resync = new Set<string>();
  private listeners = new Map<string, Set<(ev: any) => void>>();
  private pending = new Map<number, Pending>();
  private ws: WebSocketLike | null = null;
  private urlIndex = 0;
  private attempt = 0;
  private hint: { reason?: string; after_ms: number } | null = null;
  private authFailed = false;
  private stopped = false;
  private started = false;
  private nextId = 1;
  private lastRx = 0;
  private pingAt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private beat: ReturnType<typeof setInterval> | null = null;
  private _state: ClientState = "idle";
  private ctorPromise: Promise<WebSocketCtor> | null = null;
  private resuming: { left: number; ev: SubscribedEvent } | null = null;

  constructor(urls: string | string[], options: ClientOptions = {}) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).slice();
    if (this.urls.length === 0) throw new Error("ExchangeClient: no endpoint URL");
    this.opt = {
      tokenParam: "token",
      backoffMinMs: 250,
      backoffMaxMs: 10000,
      maxHintMs: 30000,
      heartbeatMs: 15000,
      heartbeatTimeoutMs: 10000,
      connectTimeoutMs: 10000,
      dedupWindow: 2048,
      gapStatus: true,
      random: Math.random,
      ...options,
    };
    for (const [ch, p] of Object.entries(options.positions || {})) this.pos.set(ch, { epoch: p.epoch, seq: p.seq });
  }

  get state(): ClientState {
    return this._state;
  }

  /** Last delivered position per exact channel (a copy; persist it and pass
   *  it back as options.positions to resume after a restart). */
  positions(): Record<string, Position> {
    const out: Record<string, Position> = {};
    this.pos.forEach((p, ch) => (out[ch] = { epoch: p.epoch, seq: p.seq }));
    return out;
  }

  on<K extends EventName>(event: K, fn: (ev: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off<K extends EventName>(event: K, fn: (ev: ClientEvents[K]) => void): void {
    this.listeners.get(event)?.delete(fn);
  }

  /** Deliver the channels' messages to onMessage (patterns may hold `*`).
   *  Connects on first use. */
  subscribe(channels: string | string[], onMessage: Handler, onGap?: (g: GapEvent) => void): Subscription {
    const list = Array.isArray(channels) ? channels.slice() : [channels];
    const entry: Entry = { channels: list, handler: onMessage, onGap: onGap || null, internal: false, server: new Set(), sub: null };
    entry.sub = new Subscription(this, list, entry);
    this.entries.add(entry);
    this.syncStatus();
    if (this.isOpen()) this.sendSubscribe(entry, this.heldElsewhere(entry));
    this.start();
    return entry.sub;
  }

  /** Async iteration: `for await (const m of client.stream([...]))`. With
   *  {gaps:true} gap events are yielded too, as {type:"gap", ...}. Leaving
   *  the loop unsubscribes. */
  stream(channels: string | string[], options: { gaps?: boolean } = {}): AsyncIterableIterator<StreamItem> {
    const queue: StreamItem[] = [];
    let wake: ((r: IteratorResult<StreamItem>) => void) | null = null;
    let done = false;
    const push = (item: StreamItem) => {
      if (done) return;
      if (wake) {
        const w = wake;
        wake = null;
        w({ value: item, done: false });
      } else queue.push(item);
    };
    const sub = this.subscribe(channels, push, options.gaps ? (g) => push({ ...g, type: "gap" }) : undefined);
    const finish = () => {
      done = true;
      sub.unsubscribe();
      offClose();
      if (wake) {
        const w = wake;
        wake = null;
        w({ value: undefined, done: true });
      }
    };
    const offClose = this.on("state", (s) => {
      if (s === "closed") finish();
    });
    const it: AsyncIterableIterator<StreamItem> = {
      next: () => {
        if (queue.length) return Promise.resolve({ value: queue.shift() as StreamItem, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (wake = resolve));
      },
      return: () => {
        finish();
        queue.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** Send a request ({"op":"list"}, {"op":"ping"}...) and wait for its reply. */
  request(req: Record<string, unknown>): Promise<any> {
    if (!this.isOpen()) return Promise.reject({ code: "not_connected", message: "not connected" });
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send({ ...req, id });
    });
  }

  /** Connect now (subscribe() does it too). */
  connect(): void {
    this.start();
  }

  /** Close for good: no reconnect, streams end. */
  close(): void {
    this.stopped = true;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      this.detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closed */
      }
    }
    this.failPending("closed");
    this.setState("closed");
  }

  // ---- connection ----------------------------------------------------------

  private start(): void {
    if (this.started || this.stopped) return;
    this.started = true;
    void this.open();
  }

  private isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === 1 && this._state === "open";
  }

  private loadCtor(): Promise<WebSocketCtor> {
    if (this.opt.WebSocket) return Promise.resolve(this.opt.WebSocket);
    const g = (globalThis as unknown as { WebSocket?: WebSocketCtor }).WebSocket;
    if (g) return Promise.resolve(g);
    if (!this.ctorPromise) {
      const name = "ws"; /* a variable: bundlers and browsers leave it alone */
      this.ctorPromise = import(name).then((m: any) => (m.default || m.WebSocket) as WebSocketCtor);
    }
    return this.ctorPromise;
  }

  private async tokenFor(url: string): Promise<string | null> {
    const reason = this.authFailed ? "auth" : "connect";
    this.authFailed = false;
    if (this.opt.getToken) return (await this.opt.getToken({ reason, url })) || null;
    return this.opt.token || null;
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    const url = this.urls[this.urlIndex % this.urls.length];
    this.setState(this.stats.reconnects > 0 || this.attempt > 0 ? "reconnecting" : "connecting");
    let full = url;
    let Ctor: WebSocketCtor;
    try {
      const token = await this.tokenFor(url);
      if (token) full += (url.includes("?") ? "&" : "?") + this.opt.tokenParam + "=" + encodeURIComponent(token);
      Ctor = await this.loadCtor();
    } catch (e) {
      this.emit("error", { code: "connect", message: "cannot connect to " + url + ": " + String(e), cause: e });
      this.dropped(null, 1006, "connect failed");
      return;
    }
    if (this.stopped) return;
    let ws: WebSocketLike;
    try {
      ws = new Ctor(full);
    } catch (e) {
      this.emit("error", { code: "connect", message: "cannot connect to " + url + ": " + String(e), cause: e });
      this.dropped(null, 1006, "connect failed");
      return;
    }
    this.ws = ws;
    this.timer = setTimeout(() => {
      if (this.ws !== ws) return;
      this.emit("error", { code: "timeout", message: "no connection to " + url + " after " + this.opt.connectTimeoutMs + " ms" });
      this.abandon(ws, "connect timeout");
    }, this.opt.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.clearTimers();
      this.lastRx = Date.now();
      this.pingAt = 0;
      this.setState("open");
      this.emit("open", { url });
      const sent = new Set<string>();
      const all = [...this.entries, ...this.statusEntries.values()];
      this.resuming = { left: all.length, ev: { channels: [], since: null, recovered: null } };
      for (const e of all) this.sendSubscribe(e, sent, true);
      if (all.length === 0) this.resumed();
      const tick = Math.max(50, Math.min(1000, this.opt.heartbeatMs / 4));
      this.beat = setInterval(() => this.heartbeat(ws), tick);
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      this.pingAt = 0;
      this.onFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.dropped(ws, ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* the close event follows with the code */
    };
  }

  private heartbeat(ws: WebSocketLike): void {
    if (this.ws !== ws) return;
    const now = Date.now();
    if (this.pingAt === 0 && now - this.lastRx >= this.opt.heartbeatMs) {
      this.pingAt = now;
      this.send({ op: "ping", id: this.nextId++ });
    } else if (this.pingAt !== 0 && now - this.pingAt >= this.opt.heartbeatTimeoutMs) {
      this.emit("error", { code: "heartbeat_timeout", message: "no answer to a ping in " + this.opt.heartbeatTimeoutMs + " ms" });
      this.abandon(ws, "heartbeat timeout");
    }
  }

  /** Give up on a socket that does not answer (no close handshake to wait
   *  for on a cut connection). */
  private abandon(ws: WebSocketLike, why: string): void {
    this.detach(ws);
    try {
      if (ws.terminate) ws.terminate();
      else ws.close(4000, why);
    } catch {
      /* nothing to close */
    }
    this.dropped(ws, 1006, why);
  }

  private detach(ws: WebSocketLike): void {
    ws.onopen = ws.onmessage = null;
    ws.onclose = null;
    /* Keep a listener: ws (Node) throws an "error" event nobody listens to,
     * e.g. when a socket still connecting is terminated. */
    ws.onerror = () => {};
  }

  private dropped(ws: WebSocketLike | null, code: number, reason: string): void {
    if (ws && this.ws !== ws) return;
    if (ws) this.detach(ws);
    this.ws = null;
    this.clearTimers();
    this.resuming = null;
    this.failPending("connection closed (" + code + ")");
    for (const e of this.entries) e.server.clear();
    for (const e of this.statusEntries.values()) e.server.clear();
    if (this.stopped) return this.setState("closed");
    if (code === 4001 || code === 4003) this.authFailed = true;
    const hint = this.hint;
    this.hint = null;
    let delay: number;
    if (hint) {
      delay = Math.max(0, Math.min(hint.after_ms, this.opt.maxHintMs));
      this.attempt = 0;
    } else {
      const cap = Math.min(this.opt.backoffMaxMs, this.opt.backoffMinMs * Math.pow(2, this.attempt));
      delay = Math.floor(this.opt.random() * cap);
      this.attempt++;
    }
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.stats.reconnects++;
    this.setState("reconnecting");
    this.emit("reconnect", { attempt: this.attempt, delayMs: delay, url: this.urls[this.urlIndex], code, reason, hint: hint || undefined });
    this.timer = setTimeout(() => void this.open(), delay);
  }

  private clearTimers(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.beat) clearInterval(this.beat);
    this.timer = null;
    this.beat = null;
  }

  private failPending(why: string): void {
    const p = [...this.pending.values()];
    this.pending.clear();
    for (const x of p) x.reject({ code: "disconnected", message: why });
  }

  private send(obj: unknown): void {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj));
  }

  // ---- subscriptions -------------------------------------------------------

  private covers(entry: Entry, ch: string): boolean {
    return entry.channels.some((p) => channelMatches(p, ch));
  }

  /** Subscribe one entry on the open connection, with since for every exact
   *  channel it covers that this connection has not asked for yet. */
  private sendSubscribe(entry: Entry, sent: Set<string>, resume = false): void {
    let since: Record<string, Position> | null = null;
    this.pos.forEach((p, ch) => {
      if (sent.has(ch) || !this.covers(entry, ch)) return;
      sent.add(ch);
      since = since || {};
      since[ch] = { epoch: p.epoch, seq: p.seq };
    });
    const id = this.nextId++;
    const req: Record<string, unknown> = { op: "subscribe", channels: entry.channels, id };
    if (since) req.since = since;
    entry.channels.forEach((c) => entry.server.add(c));
    Object.keys(since || {}).forEach((c) => entry.server.add(c));
    this.pending.set(id, {
      entry,
      since,
      resume,
      resolve: () => {},
      reject: (e) => {
        if (e.code === "disconnected") return;
        this.emit("error", { ...e, channels: entry.channels });
        if (resume) this.resumed();
      },
    });
    this.send(req);
  }

  /** Exact channels and patterns the server already holds for other entries
   *  on this connection: no since for those (nothing was missed). */
  private heldElsewhere(entry: Entry): Set<string> {
    const held = new Set<string>();
    for (const e of [...this.entries, ...this.statusEntries.values()]) if (e !== entry) e.server.forEach((c) => held.add(c));
    const patterns = [...held];
    for (const ch of this.pos.keys()) if (patterns.some((c) => channelMatches(c, ch))) held.add(ch);
    return held;
  }

  /** One reply (or error) of the subscriptions sent at open is in. */
  private resumed(ev?: SubscribedEvent): void {
    const r = this.resuming;
    if (!r) return;
    if (ev) {
      r.ev.channels.push(...ev.channels);
      if (ev.since) r.ev.since = { ...r.ev.since, ...ev.since };
      if (ev.recovered) r.ev.recovered = { ...r.ev.recovered, ...ev.recovered };
    }
    if (--r.left > 0) return;
    this.resuming = null;
    this.attempt = 0;
    this.emit("resumed", r.ev);
  }

  private remove(entry: Entry): void {
    if (!this.entries.delete(entry) && !(entry.internal && [...this.statusEntries.values()].includes(entry))) return;
    if (entry.internal) for (const [k, v] of this.statusEntries) if (v === entry) this.statusEntries.delete(k);
    if (!entry.internal) this.syncStatus();
    const others = [...this.entries, ...this.statusEntries.values()];
    const still = new Set<string>();
    others.forEach((e) => e.server.forEach((c) => still.add(c)));
    const drop = [...entry.server].filter((c) => !still.has(c));
    entry.server.clear();
    if (drop.length && this.isOpen()) this.send({ op: "unsubscribe", channels: drop, id: this.nextId++ });
    /* Forget positions nobody covers any more: a later subscribe starts fresh. */
    for (const ch of [...this.pos.keys()]) {
      if (!others.some((e) => this.covers(e, ch))) {
        this.pos.delete(ch);
        this.trades.delete(ch);
        this.resync.delete(ch);
      }
    }
  }

  /** Keep one internal status.EXCHANGE subscription per exchange that the
   *  application's trade subscriptions name, unless it subscribed it. */
  private syncStatus(): void {
    const want = new Set<string>();
    if (this.opt.gapStatus) {
      for (const e of this.entries) {
        for (const p of e.channels) {
          const s = p.split(".");
          if (s.length === 3 && (s[0] === "trade" || s[0] === "*")) want.add("status." + s[1]);
        }
      }
    }
    for (const st of [...want]) {
      for (const e of this.entries) if (e.channels.some((p) => channelMatches(p, st))) want.delete(st);
    }
    for (const [st, e] of [...this.statusEntries]) if (!want.has(st)) this.remove(e);
    for (const st of want) {
      if (this.statusEntries.has(st)) continue;
      const e: Entry = { channels: [st], handler: null, onGap: null, internal: true, server: new Set(), sub: null };
      this.statusEntries.set(st, e);
      if (this.isOpen()) this.sendSubscribe(e, new Set());
    }
  }

  // ---- incoming ------------------------------------------------------------

  private onFrame(text: string): void {
    let m: any;
    try {
      m = JSON.parse(text);
    } catch {
      this.emit("error", { code: "bad_json", message: "server sent a frame that is not JSON" });
      return;
    }
    if (m === null || typeof m !== "object") return;
    if (typeof m.channel === "string" && typeof m.seq === "number") return this.onData(m as Message);
    const p = typeof m.id === "number" ? this.pending.get(m.id) : undefined;
    if (p) this.pending.delete(m.id);
    switch (m.type) {
      case "subscribed":
        this.onSubscribed(m, p);
        break;
      case "reconnect":
        this.hint = { reason: m.reason, after_ms: typeof m.after_ms === "number" ? m.after_ms : 0 };
        this.stats.hints++;
        break;
      case "ping":
        this.send({ op: "pong", id: m.id });
        break;
      case "error": {
        const err: ClientError = { code: String(m.code), message: String(m.message || "") };
        if (p) p.reject(err);
        else this.emit("error", err);
        break;
      }
      default:
        if (p) p.resolve(m);
    }
  }

  private onSubscribed(m: any, p: Pending | undefined): void {
    const since = (p && p.since) || null;
    const recovered: Record<string, boolean> | null = m.recovered && typeof m.recovered === "object" ? m.recovered : null;
    this.attempt = 0;
    if (recovered) {
      for (const ch of Object.keys(recovered)) {
        if (recovered[ch] !== false) continue;
        this.resync.add(ch);
        this.gap({ channel: ch, reason: "not_recovered", after: since ? since[ch] : this.pos.get(ch) });
      }
    }
    const ev = { channels: Array.isArray(m.channels) ? m.channels : [], since, recovered };
    this.emit("subscribed", ev);
    if (p && p.resume) this.resumed(ev);
    if (p) p.resolve(m);
  }

  private seenTrade(ch: string, id: string): boolean {
    let t = this.trades.get(ch);
    if (!t) this.trades.set(ch, (t = { ids: new Set(), order: [] }));
    if (t.ids.has(id)) return true;
    t.ids.add(id);
    t.order.push(id);
    if (t.order.length > this.opt.dedupWindow) t.ids.delete(t.order.shift() as string);
    return false;
  }

  private onData(m: Message): void {
    const ch = m.channel;
    const app = [...this.entries].filter((e) => this.covers(e, ch));
    const internal = [...this.statusEntries.values()].some((e) => this.covers(e, ch));
    if (app.length === 0 && !internal) return; /* in flight when unsubscribed */
    const epoch = typeof m.epoch === "number" ? m.epoch : 0;
    const last = this.pos.get(ch);
    if (last && epoch < last.epoch) {
      this.stats.stale++;
      return;
    }
    if (last && epoch === last.epoch && m.seq <= last.seq) {
      this.stats.duplicates++;
      return;
    }
    const resync = this.resync.delete(ch);
    this.pos.set(ch, { epoch, seq: m.seq });
    if (m.type === "trade" && m.trade_id != null && this.seenTrade(ch, String(m.trade_id))) {
      this.stats.duplicates++; /* re-sent under another seq or epoch */
      return;
    }
    if (last && !resync && m.type === "trade" && epoch === last.epoch && m.seq > last.seq + 1)
      this.gap({ channel: ch, reason: "seq", after: last, before: { epoch, seq: m.seq }, missing: m.seq - last.seq - 1 });
    if (app.length) this.stats.messages++;
    if (m.type === "status" && m.state === "gap" && m.gap && typeof m.gap === "object") {
      const g = m.gap as GapEvent["exchange"] & object;
      if (typeof g.channel === "string") this.gap({ channel: g.channel, reason: "exchange", exchange: g });
    }
    for (const e of app) {
      try {
        e.handler && e.handler(m);
      } catch (err) {
        this.emit("error", { code: "handler", message: "message handler threw: " + String(err), channels: e.channels, cause: err });
      }
    }
  }

  private gap(g: GapEvent): void {
    const mine = [...this.entries].filter((e) => this.covers(e, g.channel));
    if (mine.length === 0) return;
    this.stats.gaps += g.missing || 1;
    this.emit("gap", g);
    for (const e of mine) if (e.onGap) e.onGap(g);
  }

  private setState(s: ClientState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit("state", s);
  }

  private emit<K extends EventName>(event: K, ev: ClientEvents[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ev);
      } catch {
        /* a listener's exception must not break the client */
      }
    }
  }
}
