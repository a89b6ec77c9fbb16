// The quote page: live quotes for the symbols you subscribe to, and an
// orders panel that places orders (request/reply) and shows their
// lifecycle as it streams in on orders.<account>. Everything goes through
// /client.js; this file only draws.

import { RtClient } from "/client.js";

const $ = (id) => document.getElementById(id);
const TICKERS = [
  "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V",
  "UNH", "XOM", "JNJ", "WMT", "MA", "PG", "HD", "CVX", "KO", "PEP",
];
const START_WITH = ["AAPL", "MSFT"];
const TOPIC_CHARS = /^[A-Za-z0-9._:-]{1,120}$/;
const MAX_FILL_ROWS = 200;
const MAX_REPLIES = 20;
const TOKEN_KEY = "rtgate.token";

const quotes = new Map(); // symbol -> row state
let account = null;
let userToken = sessionStorage.getItem(TOKEN_KEY);
let windowCount = 0;
let latencies = [];

for (const t of TICKERS) {
  const option = document.createElement("option");
  option.value = t;
  $("symbols").append(option);
}

/** The account (`sub`) a JWT acts for, read from its payload. */
function subOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

/** Before each connect: a fresh demo token, else the one the user gave. */
async function token() {
  const res = await fetch("/demo/token", { cache: "no-store" });
  if (res.ok) {
    const issued = await res.json();
    $("token-form").hidden = true;
    setAccount(issued.account);
    return issued.token;
  }
  // 404: this node hands out none; anything else is a passing failure.
  if (res.status !== 404) throw new Error(`/demo/token answered ${res.status}`);
  $("token-form").hidden = false;
  if (userToken) setAccount(subOf(userToken));
  return userToken;
}

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const client = new RtClient(wsUrl, { token });

function setAccount(next) {
  if (!next || next === account) return;
  if (account) client.unsubscribe(`orders.${account}`);
  account = next;
  $("account").textContent = account;
  $("orders-topic").textContent = `orders.${account}`;
  client
    .subscribe(`orders.${account}`)
    .catch((e) => ($("orders-note").textContent = `orders.${account}: ${e.code} — ${e.message}`));
}

// --- status -----------------------------------------------------------------

client.on("state", ({ state, node }) => {
  $("state").textContent = state;
  $("state").dataset.state = state;
  $("node").textContent = node ?? "–";
  $("reconnects").textContent = client.stats.reconnects;
});

client.on("error", ({ code, message, topic }) => {
  const where = topic && !topic.startsWith("quotes.") ? "orders-note" : "symbol-note";
  $(where).textContent = `${topic ? topic + ": " : ""}${code}${message ? " — " + message : ""}`;
  // Updates missed while away could not all be replayed (history lost or
  // trimmed): say so where they would have been.
  if (code === "recovery_failed" && account && topic === `orders.${account}`) showGap(message);
});

setInterval(() => {
  $("rate").textContent = windowCount;
  windowCount = 0;
  if (latencies.length) {
    latencies.sort((a, b) => a - b);
    $("latency").textContent = `${latencies[latencies.length >> 1]} ms`;
  }
  latencies = [];
}, 1000);

function note(text) {
  $("symbol-note").textContent = text;
}

// --- messages ---------------------------------------------------------------

client.on("message", ({ topic, seq, ts, data }) => {
  windowCount += 1;
  $("count").textContent = client.stats.messages;
  if (typeof ts === "number") latencies.push(Math.max(0, Date.now() - ts));
  if (topic.startsWith("quotes.")) showQuote(topic.slice(7), seq, data);
  else if (account && topic === `orders.${account}`) showUpdate(seq, data);
});

function quoteRow(symbol) {
  let q = quotes.get(symbol);
  if (q) return q;
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  tr.tabIndex = 0;
  tr.title = "Select to fill the symbol fields";
  const cells = {};
  for (const name of ["symbol", "bid", "ask", "last", "change", "updates", "seq"]) {
    const td = document.createElement(name === "symbol" ? "th" : "td");
    if (name === "symbol") td.scope = "row";
    else td.className = "num";
    td.dataset.field = name;
    tr.append(td);
    cells[name] = td;
  }
  cells.symbol.textContent = symbol;
  const pick = () => {
    $("symbol").value = symbol;
    $("order-symbol").value = symbol;
  };
  tr.addEventListener("click", pick);
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      pick();
    }
  });
  $("quotes").tBodies[0].append(tr);
  q = { tr, cells, first: null, bid: null, ask: null, updates: 0 };
  quotes.set(symbol, q);
  return q;
}

function tick(cell, previous, next) {
  cell.textContent = next.toFixed(2);
  if (previous === null || next === previous) return;
  const up = next > previous;
  cell.classList.toggle("up", up);
  cell.classList.toggle("down", !up);
  cell.classList.remove("flash-up", "flash-down");
  void cell.offsetWidth; // restart the animation
  cell.classList.add(up ? "flash-up" : "flash-down");
}

function showQuote(symbol, seq, data) {
  const q = quotes.get(symbol);
  if (!q || q.tr.classList.contains("stopped")) return;
  const { bid, ask, last } = data;
  if (typeof bid !== "number" || typeof ask !== "number") return;
  tick(q.cells.bid, q.bid, bid);
  tick(q.cells.ask, q.ask, ask);
  q.bid = bid;
  q.ask = ask;
  if (typeof last === "number") {
    q.cells.last.textContent = last.toFixed(2);
    if (q.first === null) q.first = last;
    const change = last - q.first;
    const pct = q.first ? (change / q.first) * 100 : 0;
    q.cells.change.textContent = `${change >= 0 ? "+" : ""}${change.toFixed(2)} (${pct.toFixed(2)}%)`;
    q.cells.change.className = `num ${change > 0 ? "up" : change < 0 ? "down" : ""}`;
  }
  q.updates += 1;
  q.cells.updates.textContent = q.updates;
  q.cells.seq.textContent = seq;
}

function showUpdate(seq, data) {
  const tbody = $("fills").tBodies[0];
  const tr = document.createElement("tr");
  tr.dataset.seq = seq;
  tr.dataset.order = data.order_id ?? "";
  tr.dataset.status = data.status ?? "";
  tr.dataset.sequence = data.sequence ?? "";
  const cells = [
    [seq, true],
    [data.order_id, false],
    [data.symbol, false],
    [data.side, false],
    [data.status, false],
    [data.filled_qty, true],
    [data.last_qty, true],
    [typeof data.last_price === "number" ? data.last_price.toFixed(2) : "", true],
  ];
  for (const [value, num] of cells) {
    const td = document.createElement("td");
    if (num) td.className = "num";
    td.textContent = value ?? "";
    tr.append(td);
  }
  tr.cells[4].className = data.status === "filled" ? "up" : data.status === "cancelled" ? "down" : "";
  tbody.prepend(tr);
  while (tbody.rows.length > MAX_FILL_ROWS) tbody.deleteRow(-1);
}

function showGap(message) {
  const tr = document.createElement("tr");
  tr.className = "gap";
  tr.dataset.gap = "1";
  const td = document.createElement("td");
  td.colSpan = 8;
  td.textContent = `— ${message} —`;
  tr.append(td);
  $("fills").tBodies[0].prepend(tr);
}

// --- quotes form --------------------------------------------------------------

function symbolInput() {
  const symbol = $("symbol").value.trim().toUpperCase();
  if (!TOPIC_CHARS.test(symbol)) {
    note("a symbol is 1–120 of A–Z a–z 0–9 . _ : -");
    return null;
  }
  note("");
  return symbol;
}

async function subscribe(symbol) {
  const q = quoteRow(symbol);
  q.tr.classList.remove("stopped");
  q.tr.removeAttribute("aria-disabled");
  try {
    await client.subscribe(`quotes.${symbol}`);
  } catch (e) {
    note(`quotes.${symbol}: ${e.code} — ${e.message}`);
  }
}

$("symbol-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const symbol = symbolInput();
  if (symbol) subscribe(symbol);
});

$("unsubscribe").addEventListener("click", async () => {
  const symbol = symbolInput();
  if (!symbol) return;
  const q = quotes.get(symbol);
  if (q) {
    q.tr.classList.add("stopped");
    q.tr.setAttribute("aria-disabled", "true");
  }
  await client.unsubscribe(`quotes.${symbol}`);
});

// --- orders form ----------------------------------------------------------------

$("order-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const order = {
    symbol: $("order-symbol").value.trim().toUpperCase(),
    side: $("side").value,
    qty: Number.parseInt($("qty").value, 10),
  };
  const price = Number.parseFloat($("price").value);
  if (Number.isFinite(price)) order.price = price;
  const li = document.createElement("li");
  li.textContent = `${order.side} ${order.qty} ${order.symbol}${order.price ? " @ " + order.price : ""}: waiting…`;
  const list = $("replies");
  list.prepend(li);
  while (list.children.length > MAX_REPLIES) list.lastElementChild.remove();
  try {
    const data = await client.order(order);
    li.dataset.orderId = data.order_id;
    li.dataset.status = data.status;
    li.textContent = `${data.status} ${data.order_id}: ${data.side} ${data.qty} ${data.symbol} @ ${data.price}`;
  } catch (err) {
    li.className = "error";
    li.dataset.status = "error";
    li.dataset.code = err.code;
    li.textContent = `refused (${err.code}): ${err.message}`;
  }
});

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  userToken = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, userToken);
  setAccount(subOf(userToken));
  // Reconnect so the gateway sees the new token.
  client.close();
  client.connect();
});

// --- start ------------------------------------------------------------------------

for (const symbol of START_WITH) subscribe(symbol);
client.connect();
