// Drives the quote page in a real Chromium (Debian's, through
// playwright-core) as a user would: it loads, quotes tick, symbols are
// subscribed and unsubscribed from the keyboard, an order is placed and
// fills, the gateway restarts and the page comes back with every order
// update exactly once.
//
// Run by gateway/tests/browser.rs, which owns the processes:
//   node page.test.mjs --url http://127.0.0.1:PORT/ --scenario demo|redis
//        --artifacts DIR [--token JWT]
// When the script needs the gateway restarted it prints `RESTART` on a
// line of its own and waits for a line on stdin. It exits 0 when every
// check passed; otherwise it prints `FAIL: …` and exits 1.

import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const { url, scenario, artifacts } = args;
if (!url || !scenario || !artifacts) {
  console.error("usage: page.test.mjs --url URL --scenario demo|redis --artifacts DIR [--token JWT]");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const step = (name) => console.log(`STEP ${name}`);

class Failure extends Error {}
function check(ok, message) {
  if (!ok) throw new Failure(message);
}

/** Polls `fn` until it returns a truthy value; fails after `ms`. */
async function until(what, fn, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Failure(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
// Network errors are expected while the gateway restarts (and a 404 from
// /demo/token on a node without demo tokens); anything else is a bug.
const EXPECTED = /Failed to load resource|WebSocket connection to|net::ERR_/;
page.on("console", (msg) => {
  if (msg.type() === "error" && !EXPECTED.test(msg.text())) pageErrors.push(`console: ${msg.text()}`);
});

const text = (selector) => page.locator(selector).first().textContent();
const count = async (symbol) => Number(await text(`tr[data-symbol="${symbol}"] [data-field="updates"]`)) || 0;

/** The page's connection state and node, read from its header. */
async function status() {
  return { state: await text("#state"), node: await text("#node") };
}

/** Every order-update row the page shows, oldest first; `epoch` counts
 * the page's notes that history was lost (a memory node restarted: the
 * topic is numbered anew after it). */
async function updateRows() {
  const rows = await page.$$eval("#fills tbody tr", (trs) =>
    trs
      .map((r) => ({
        gap: r.dataset.gap === "1",
        seq: Number(r.dataset.seq),
        order: r.dataset.order,
        status: r.dataset.status,
        sequence: Number(r.dataset.sequence),
      }))
      .reverse(),
  );
  let epoch = 0;
  return rows.flatMap((r) => (r.gap ? (epoch++, []) : [{ ...r, epoch }]));
}

/** Checks the page showed `order`'s updates new, partially_filled,
 * filled: each exactly once, with consecutive seqs. */
async function checkLifecycle(order) {
  const rows = await until(`the fills of ${order}`, async () => {
    const mine = (await updateRows()).filter((r) => r.order === order);
    return mine.some((r) => r.status === "filled") ? mine : null;
  }, 15_000);
  await sleep(500); // a duplicate arriving late would show now
  const mine = (await updateRows()).filter((r) => r.order === order);
  const statuses = mine.map((r) => r.status);
  check(
    JSON.stringify(statuses) === JSON.stringify(["new", "partially_filled", "filled"]),
    `order ${order}: statuses ${statuses.join(",")} (want new,partially_filled,filled once each)`,
  );
  for (let i = 1; i < mine.length; i++) {
    check(mine[i].seq === mine[i - 1].seq + 1, `order ${order}: seq ${mine[i - 1].seq} then ${mine[i].seq}`);
  }
  const all = await updateRows();
  const keys = all.map((r) => `${r.order}/${r.sequence}`);
  check(new Set(keys).size === keys.length, `an order update is shown twice: ${keys.join(" ")}`);
  const seqs = all.map((r) => `${r.epoch}/${r.seq}`);
  check(new Set(seqs).size === seqs.length, `a seq is shown twice: ${seqs.join(" ")}`);
}

/** Places an order from the form with the keyboard; returns its id. */
async function placeOrder(symbol, side, qty) {
  await page.getByLabel("Order symbol").fill(symbol);
  await page.getByLabel("Side").selectOption(side);
  await page.getByLabel("Quantity").fill(String(qty));
  const before = await page.locator("#replies li").count();
  await page.getByLabel("Quantity").press("Enter");
  const reply = await until("the order's reply", async () => {
    const items = page.locator("#replies li");
    if ((await items.count()) <= before) return null;
    const first = items.first();
    const st = await first.getAttribute("data-status");
    if (!st) return null;
    return { status: st, id: await first.getAttribute("data-order-id"), text: await first.textContent() };
  });
  check(reply.status === "accepted", `order refused: ${reply.text}`);
  return reply.id;
}

async function restartGateway() {
  console.log("RESTART");
  const line = await stdinLines.next();
  check(!line.done, "the harness closed stdin instead of restarting the gateway");
}

try {
  step("page loads and connects");
  await page.goto(url);
  check((await page.title()).includes("rtgate"), `title: ${await page.title()}`);
  if (args.token) {
    const form = page.locator("#token-form");
    await until("the token form (this node hands out no demo token)", () => form.isVisible());
    await page.getByLabel("Token").fill(args.token);
    await page.getByLabel("Token").press("Enter");
  }
  const first = await until("the connection to open", async () => {
    const s = await status();
    return s.state === "open" && s.node && s.node !== "–" ? s : null;
  });
  const account = await until("the account", async () => {
    const a = await text("#account");
    return a && a !== "–" ? a : null;
  });
  console.log(`connected to node ${first.node} as ${account}`);
  if (!args.token) {
    check(!(await page.locator("#token-form").isVisible()), "the token form shows on a node that hands out demo tokens");
  }

  step("the AAPL row ticks with the feed's values");
  await until("AAPL updates", async () => (await count("AAPL")) >= 3);
  // Records the bid cell's changes, to check the colours against them.
  await page.evaluate(() => {
    const cell = document.querySelector('tr[data-symbol="AAPL"] [data-field="bid"]');
    window.__bids = [];
    new MutationObserver(() => window.__bids.push({ v: Number(cell.textContent), up: cell.classList.contains("up"), down: cell.classList.contains("down") }))
      .observe(cell, { childList: true, characterData: true, subtree: true, attributes: true });
  });
  // A raw socket of our own beside the page's: what the feed sends.
  const feed = page.evaluate(async () => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    const seen = {};
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "welcome") ws.send(JSON.stringify({ action: "subscribe", topic: "quotes.AAPL" }));
      if (f.type === "message") seen[f.seq] = { bid: f.data.bid, ask: f.data.ask };
    };
    await new Promise((r) => setTimeout(r, 4000));
    ws.close();
    return seen;
  });
  const samples = [];
  for (let i = 0; i < 10; i++) {
    await sleep(350);
    const row = await page.$eval('tr[data-symbol="AAPL"]', (tr) => {
      const f = (n) => tr.querySelector(`[data-field="${n}"]`).textContent;
      return { seq: Number(f("seq")), bid: Number(f("bid")), ask: Number(f("ask")) };
    });
    samples.push(row);
  }
  const frames = await feed;
  const matched = samples.filter((s) => frames[s.seq]);
  check(matched.length >= 3, `only ${matched.length} of the row's states were seen on the feed meanwhile`);
  for (const s of matched) {
    const f = frames[s.seq];
    check(f.bid === s.bid && f.ask === s.ask, `row shows seq ${s.seq} as ${s.bid}/${s.ask}, the feed sent ${f.bid}/${f.ask}`);
    check(s.bid > 0 && s.bid < s.ask, `bid ${s.bid} ask ${s.ask}`);
  }
  const bids = await page.evaluate(() => window.__bids);
  let moves = 0;
  for (let i = 1; i < bids.length; i++) {
    const [a, b] = [bids[i - 1], bids[i]];
    if (b.v === a.v) continue;
    moves += 1;
    check(b.up === b.v > a.v && b.down === b.v < a.v, `bid ${a.v} → ${b.v} coloured up=${b.up} down=${b.down}`);
  }
  check(moves >= 2, `the AAPL bid moved only ${moves} times in 4 s`);

  step("subscribe a second symbol from the keyboard");
  const symbol = page.getByLabel("Symbol", { exact: true });
  await symbol.fill("nvda");
  await symbol.press("Enter");
  await until("NVDA updates", async () => (await page.locator('tr[data-symbol="NVDA"]').count()) === 1 && (await count("NVDA")) >= 2);

  step("unsubscribe MSFT and see it stop");
  await until("MSFT updates", async () => (await count("MSFT")) >= 1);
  await symbol.fill("MSFT");
  await page.getByRole("button", { name: "Unsubscribe" }).click();
  await until("MSFT marked stopped", () => page.locator('tr[data-symbol="MSFT"].stopped').count());
  await sleep(300);
  const [msft, aapl] = [await count("MSFT"), await count("AAPL")];
  await sleep(2500);
  check((await count("MSFT")) === msft, `MSFT kept updating after unsubscribe (${msft} → ${await count("MSFT")})`);
  check((await count("AAPL")) > aapl, "AAPL stopped updating too");

  step("place an order and see its reply and fills");
  const order = await placeOrder("AAPL", "buy", 10);
  console.log(`order ${order} accepted`);
  await checkLifecycle(order);
  await page.screenshot({ path: join(artifacts, `${scenario}.png`), fullPage: true });

  step("restart the gateway and see the page reconnect");
  await page.evaluate(() => {
    const el = document.getElementById("state");
    window.__states = [];
    new MutationObserver(() => window.__states.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
  });
  // On Redis an order in flight across the restart must lose nothing:
  // its first update is seen before, the rest land while the node is
  // down or after, and come back through `since`.
  let inFlight = null;
  if (scenario === "redis") {
    inFlight = await placeOrder("MSFT", "sell", 20);
    await until(`the first update of ${inFlight}`, async () => (await updateRows()).some((r) => r.order === inFlight));
  }
  const reconnectsBefore = Number(await text("#reconnects"));
  await restartGateway();
  await until("the page to reconnect", async () => {
    const states = await page.evaluate(() => window.__states);
    return states.includes("reconnecting") && (await status()).state === "open";
  }, 20_000);
  check(Number(await text("#reconnects")) > reconnectsBefore, "the reconnect counter did not move");
  const aaplAfter = await count("AAPL");
  await until("AAPL to tick again", async () => (await count("AAPL")) > aaplAfter + 1);
  if (inFlight) await checkLifecycle(inFlight);
  const again = await placeOrder("AAPL", "sell", 4);
  await checkLifecycle(again);
  await page.screenshot({ path: join(artifacts, `${scenario}-after-restart.png`), fullPage: true });

  check(pageErrors.length === 0, `the page reported errors: ${pageErrors.join(" | ")}`);
  console.log("PASS");
  await browser.close();
  process.exit(0);
} catch (e) {
  try {
    await page.screenshot({ path: join(artifacts, `${scenario}-failure.png`), fullPage: true });
  } catch {}
  console.log(`FAIL: ${e instanceof Failure ? e.message : e.stack}`);
  if (pageErrors.length) console.log(`page errors: ${pageErrors.join(" | ")}`);
  await browser.close();
  process.exit(1);
}
