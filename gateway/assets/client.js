// rtgate client: one WebSocket to a gateway, subscriptions that outlive
// reconnects, and request/reply orders. Plain ES module, no dependencies:
// import it from the gateway (`/client.js`) or copy it.
//
//   import { RtClient } from "/client.js";
//   const client = new RtClient("ws://127.0.0.1:8080/ws", {
//     token: async () => (await (await fetch("/demo/token")).json()).token,
//   });
//   client.on("message", ({ topic, seq, data }) => console.log(topic, seq, data));
//   client.on("state", ({ state, node }) => console.log(state, node));
//   client.connect();
//   await client.subscribe("quotes.AAPL");
//   await client.subscribe("orders.demo");
//   const accepted = await client.order({ symbol: "AAPL", side: "buy", qty: 100 });
//
// The wire protocol is shared/spec/protocol.md. What this module adds:
// - Reconnects after any close (but the terminal ones below) with
//   exponential backoff and jitter, and subscribes again to every topic.
// - Resumes with `since`: topics that keep history (`orders.*` and any
//   topic but `quotes.*`) are resubscribed with the last `seq` received,
//   so the gateway replays what was missed, then goes live with no gap
//   and no duplicate. `quotes.*` are resubscribed without `since`: the
//   gateway sends the latest quote at once, and for a quote only the
//   latest value matters.
// - `order()` returns a promise for the reply's `data`, rejected with an
//   RtError carrying the gateway's `code` (`timeout`, `invalid_side`, …),
//   `disconnected` if the socket closed first (the order may or may not
//   have been placed), or `client_timeout` if nothing came back in time.
// - `token` may be a function (sync or async) called before every
//   connect, so an expired short-lived token is replaced on reconnect.
//
// Events (`client.on(type, fn)` returns a function that removes `fn`;
// the client is also an EventTarget whose events carry `detail`):
//   state   {state, node, attempt, delayMs}: state is "connecting",
//           "open", "reconnecting" or "closed"
//   message {topic, seq, ts, data}
//   error   {code, message, topic?, id?}: error frames not answered to a
//           pending call (e.g. `recovery_failed`), and terminal closes
//   close   {code, reason}: every socket close

const QUOTES = "quotes.";

/** Close codes after which reconnecting cannot help. */
const TERMINAL_CLOSES = new Set([
  1002, // a WebSocket protocol violation: a client (library) bug
  1007, // a text frame that was not valid UTF-8: a client bug
  1009, // a frame over the gateway's max_frame_bytes: a client bug
  4003, // too_many_errors: a client bug
]);
/** Error codes about a held topic that do not refuse the subscription. */
const NOT_REFUSALS = new Set(["recovery_failed", "not_subscribed"]);
/** 1008: bad or expired token; hopeless only if the token cannot change. */
const POLICY_VIOLATION = 1008;

export class RtError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "RtError";
    this.code = code;
    Object.assign(this, extra);
  }
}

export class RtClient extends EventTarget {
  /**
   * @param {string} url ws:// or wss:// URL of the gateway's /ws
   * @param {object} [options]
   * @param {string|function|null} [options.token] JWT, or a function
   *   returning one (or a promise of one) before each connect
   * @param {number} [options.backoffInitialMs=250] first reconnect delay
   * @param {number} [options.backoffMaxMs=10000] reconnect delay cap
   * @param {number} [options.orderTimeoutMs=10000] client-side order timeout
   * @param {number} [options.stableAfterMs=5000] an open connection this
   *   old resets the backoff
   * @param {typeof WebSocket} [options.WebSocket] implementation to use
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      token: null,
      backoffInitialMs: 250,
      backoffMaxMs: 10_000,
      orderTimeoutMs: 10_000,
      stableAfterMs: 5_000,
      WebSocket: globalThis.WebSocket,
      ...options,
    };
    this.state = "closed";
    this.node = null;
    this.stats = { messages: 0, reconnects: 0 };
    this._ws = null;
    this._wanted = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._stableTimer = null;
    // topic -> {since, last, waiters: [{resolve, reject}]}
    this._subs = new Map();
    // topic -> [{resolve, reject}] waiting for `unsubscribed`
    this._unsubs = new Map();
    // id -> {resolve, reject, timer}
    this._orders = new Map();
    this._nextOrder = 1;
    // Bumped by close(): a connect still waiting for its token gives up.
    this._generation = 0;
  }

  /** Adds `fn` for events of `type`; returns a function that removes it. */
  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Opens the connection (and keeps it open until `close()`). */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this._open();
  }

  /** Closes for good: no reconnect; pending orders are rejected. */
  close() {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    clearTimeout(this._stableTimer);
    this._generation += 1;
    const ws = this._ws;
    this._ws = null;
    this.node = null;
    if (ws) ws.close(1000, "client closed");
    this._failPending("disconnected", "client closed");
    this._setState("closed");
  }

  /**
   * Subscribes to `topic` (kept across reconnects). Resolves once the
   * gateway confirmed; rejects with an RtError if it refused.
   * @param {string} topic
   * @param {object} [opts]
   * @param {number} [opts.since] replay what followed this seq first
   */
  subscribe(topic, opts = {}) {
    if (this._subs.has(topic)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const sub = { since: opts.since ?? null, last: null, waiters: [{ resolve, reject }] };
      this._subs.set(topic, sub);
      if (this._isOpen()) this._sendSubscribe(topic, sub);
    });
  }

  /** Stops `topic`; resolves once the gateway confirmed (at once offline). */
  unsubscribe(topic) {
    const sub = this._subs.get(topic);
    if (!sub) return Promise.resolve();
    this._subs.delete(topic);
    for (const w of sub.waiters.splice(0)) w.reject(new RtError("unsubscribed", "unsubscribed before confirmed"));
    if (!this._isOpen()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiting = this._unsubs.get(topic) || [];
      waiting.push({ resolve, reject });
      this._unsubs.set(topic, waiting);
      this._send({ action: "unsubscribe", topic });
    });
  }

  /** Topics held (or to be held once connected). */
  topics() {
    return [...this._subs.keys()];
  }

  /** The last seq received on `topic`, or null. */
  lastSeq(topic) {
    return this._subs.get(topic)?.last ?? null;
  }

  /**
   * Places an order; resolves with the reply's `data`.
   * @param {object} order e.g. {symbol: "AAPL", side: "buy", qty: 100, price: 189.1}
   * @param {object} [opts]
   * @param {number} [opts.timeoutMs]
   */
  order(order, opts = {}) {
    if (!this._isOpen()) {
      return Promise.reject(new RtError("disconnected", "not connected"));
    }
    const id = `o${this._nextOrder++}`;
    const timeoutMs = opts.timeoutMs ?? this.options.orderTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._orders.delete(id);
        reject(new RtError("client_timeout", `no reply within ${timeoutMs} ms`, { id }));
      }, timeoutMs);
      this._orders.set(id, { resolve, reject, timer });
      this._send({ action: "order", id, order });
    });
  }

  // --- connection ---------------------------------------------------------

  async _open() {
    const generation = this._generation;
    this._setState(this.stats.reconnects > 0 || this._attempt > 0 ? "reconnecting" : "connecting");
    let url = this.url;
    try {
      const token = await this._token();
      if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    } catch (e) {
      if (generation !== this._generation) return;
      this._emit("error", { code: "token_unavailable", message: String(e?.message || e) });
      this._scheduleRetry();
      return;
    }
    if (!this._wanted || generation !== this._generation) return;
    let ws;
    try {
      ws = new this.options.WebSocket(url);
    } catch (e) {
      this._emit("error", { code: "connect_failed", message: String(e?.message || e) });
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    // Errors are followed by a close event, which does the work.
    ws.onerror = () => {};
  }

  async _token() {
    const token = this.options.token;
    return typeof token === "function" ? await token() : token;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this.node = null;
    clearTimeout(this._stableTimer);
    this._failPending("disconnected", `connection closed (${code})`);
    for (const [topic, waiting] of this._unsubs) {
      for (const w of waiting) w.resolve();
      this._unsubs.delete(topic);
    }
    this._emit("close", { code, reason });
    if (!this._wanted) return;
    const staticToken = typeof this.options.token !== "function";
    if (TERMINAL_CLOSES.has(code) || (code === POLICY_VIOLATION && staticToken)) {
      this._wanted = false;
      this._emit("error", { code: "closed", message: `closed by the gateway: ${code} ${reason || ""}`.trim() });
      this._setState("closed");
      return;
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    if (!this._wanted) return;
    const { backoffInitialMs, backoffMaxMs } = this.options;
    const base = Math.min(backoffMaxMs, backoffInitialMs * 2 ** Math.min(this._attempt, 20));
    // Half fixed, half random: clients dropped together by one node do
    // not all come back at the same instant, and none retries at once.
    const delayMs = Math.round(base / 2 + Math.random() * (base / 2));
    this._attempt += 1;
    this.stats.reconnects += 1;
    this._setState("reconnecting", { attempt: this._attempt, delayMs });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delayMs);
  }

  _onWelcome(frame) {
    this.node = frame.node;
    this._setState("open");
    clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(() => {
      this._attempt = 0;
    }, this.options.stableAfterMs);
    for (const [topic, sub] of this._subs) this._sendSubscribe(topic, sub);
  }

  _sendSubscribe(topic, sub) {
    const frame = { action: "subscribe", topic };
    const since = topic.startsWith(QUOTES) ? null : sub.last ?? sub.since;
    if (since !== null && since !== undefined) frame.since = since;
    this._send(frame);
  }

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "message":
        return this._onMessage(frame);
      case "subscribed":
        return this._settleSubscribe(frame.topic, null);
      case "unsubscribed": {
        const waiting = this._unsubs.get(frame.topic) || [];
        this._unsubs.delete(frame.topic);
        for (const w of waiting) w.resolve();
        return;
      }
      case "reply":
        return this._settleOrder(frame.id, null, frame.data);
      case "error":
        return this._onError(frame);
      default:
        return;
    }
  }

  _onMessage(frame) {
    const sub = this._subs.get(frame.topic);
    if (!sub) return; // sent before our unsubscribe was processed
    sub.last = frame.seq;
    this.stats.messages += 1;
    this._emit("message", { topic: frame.topic, seq: frame.seq, ts: frame.ts, data: frame.data });
  }

  _onError(frame) {
    const error = new RtError(frame.code, frame.message, { topic: frame.topic, id: frame.id });
    if (frame.id !== undefined && this._orders.has(frame.id)) {
      return this._settleOrder(frame.id, error);
    }
    const sub = frame.topic ? this._subs.get(frame.topic) : undefined;
    if (sub && frame.code === "already_subscribed") {
      // Held already (a resubscribe raced ours): that is what was asked.
      return this._settleSubscribe(frame.topic, null);
    }
    if (sub && frame.code === "backplane_unavailable") {
      // The node lost Redis for a moment: ask again shortly, so a topic
      // resubscribed after a reconnect is not silently missing.
      const topic = frame.topic;
      setTimeout(() => {
        const still = this._subs.get(topic);
        if (still && this._isOpen()) this._sendSubscribe(topic, still);
      }, 500 + Math.random() * 1000);
    } else if (sub && !NOT_REFUSALS.has(frame.code)) {
      // Refused for good (unauthorized, forbidden, invalid_topic, …).
      this._subs.delete(frame.topic);
      const waiters = sub.waiters.splice(0);
      for (const w of waiters) w.reject(error);
      if (waiters.length > 0) return;
    }
    this._emit("error", { code: frame.code, message: frame.message, topic: frame.topic, id: frame.id });
  }

  _settleSubscribe(topic, error) {
    const sub = this._subs.get(topic);
    if (!sub) return;
    for (const w of sub.waiters.splice(0)) (error ? w.reject(error) : w.resolve());
  }

  _settleOrder(id, error, data) {
    const pending = this._orders.get(id);
    if (!pending) return;
    this._orders.delete(id);
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(data);
  }

  _failPending(code, message) {
    for (const [id, pending] of this._orders) {
      clearTimeout(pending.timer);
      pending.reject(new RtError(code, message, { id }));
    }
    this._orders.clear();
  }

  _isOpen() {
    return this._ws !== null && this.state === "open" && this._ws.readyState === 1;
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, node: this.node, attempt: this._attempt, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
