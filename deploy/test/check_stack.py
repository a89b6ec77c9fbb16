"""Checks a running compose stack from the host, as a user would: through
the balancer's single entry port. Called by deploy/test/compose-test.sh,
which brings the stack up and tears it down.

Checks, in order (each bounded in time; COMPOSE_TEST_SKIP=page,traces
skips named ones and says so):
  page      GET / through the balancer: 200, text/html, a <title>
  quotes    a WebSocket client gets welcome, the quote snapshot right after
            `subscribed`, then live quotes with rising seq
  order     an `order` gets its `reply` (accepted) and the order's updates
            on orders.<account> run to `filled`
  scale     `up --scale gateway=3`: the balancer sees three gateways up, and
            clients land on all three, each getting live quotes
  metrics   Prometheus scrapes the three gateways and the publisher (found
            by DNS: deploy/prometheus/prometheus.yml)
  failover  `docker kill` of one gateway while order updates are published
            (POST /publish through the balancer) on three topics: the
            killed node's clients reconnect through the balancer to another
            node with `since` and every client gets every update of every
            topic exactly once
  load      the `load` profile's loadgen image, run through compose on the
            stack's network (300 subscribers for 5 s, publishing through
            the balancer): exit 0, every connection up, no loss
  traces    at the jaeger service (Jaeger's query API): a quote published
            with a traceparent is one trace, publisher.publish → the
            gateway's gateway.fanout; an order round trip is one trace,
            gateway.order → publisher.order → gateway.order.reply, and
            the order's updates (publisher.order.update) and their
            deliveries (gateway.fanout) in it
  dashboard Grafana is up and lists the provisioned dashboard(s)

Ends with a line `N passed, N failed, N skipped`; exits 1 if any failed.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

RUN = f"ct{random.randrange(16**6):06x}"  # keeps this run's topics apart from the stack's


class Failed(Exception):
    pass


def http(url, data=None, timeout=5.0, headers=None):
    """(status, content type, body) of one request; network errors raise."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


async def wait_for(what, fn, timeout, interval=0.5):
    """Polls fn() until it returns a true value; Failed after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        await asyncio.sleep(interval)
    raise Failed(f"{what}: not within {timeout:.0f} s (last: {last!r})")


class Client:
    """One WebSocket client through the balancer, reading frames as JSON."""

    def __init__(self, ws_url, name):
        self.ws_url, self.name = ws_url, name
        self.ws = None
        self.node = None

    async def open(self, timeout=10.0):
        self.ws = await asyncio.wait_for(connect(self.ws_url, open_timeout=timeout, max_size=2**20), timeout)
        welcome = await self.recv(timeout)
        if welcome.get("type") != "welcome" or not welcome.get("node"):
            raise Failed(f"{self.name}: first frame is not a welcome with a node: {welcome}")
        self.node = welcome["node"]
        return self

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout=10.0):
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def expect(self, pred, what, timeout=10.0):
        """Reads frames until pred(frame); frames before it are returned too."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"{self.name}: no {what} within {timeout:.0f} s (got {seen[-3:]})")
            frame = await self.recv(left)
            if frame.get("type") == "error":
                raise Failed(f"{self.name}: error frame while waiting for {what}: {frame}")
            seen.append(frame)
            if pred(frame):
                return frame, seen

    async def subscribe(self, topic, since=None, timeout=10.0):
        frame = {"action": "subscribe", "topic": topic}
        if since is not None:
            frame["since"] = since
        await self.send(frame)
        _, seen = await self.expect(
            lambda f: f.get("type") == "subscribed" and f.get("topic") == topic, f"subscribed {topic}", timeout
        )
        # Messages of other topics may come first; those of this one cannot.
        return [f for f in seen if f.get("type") == "message"]

    async def close(self):
        if self.ws is not None:
            await self.ws.close()


class Checks:
    def __init__(self, args):
        self.args = args
        self.base = args.url.rstrip("/")
        self.ws_url = self.base.replace("http://", "ws://", 1) + "/ws"
        self.compose = json.loads(args.compose_cmd)
        self.skip = {s.strip() for s in os.environ.get("COMPOSE_TEST_SKIP", "").split(",") if s.strip()}
        self.results = []

    def compose_run(self, *args, timeout=180):
        cmd = self.compose + list(args)
        print(f"    $ {' '.join(cmd)}", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise Failed(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
        return done.stdout

    # -- page ---------------------------------------------------------------

    async def check_page(self):
        status, ctype, body = http(self.base + "/")
        if status != 200:
            raise Failed(f"GET / answered {status}: {body[:200]!r}")
        if not ctype.startswith("text/html"):
            raise Failed(f"GET / is {ctype!r}, not text/html")
        if b"<title>" not in body.lower():
            raise Failed("GET / has no <title>")
        return f"{len(body)} bytes of text/html with a <title>"

    # -- quotes -------------------------------------------------------------

    async def check_quotes(self):
        c = await Client(self.ws_url, "quotes").open()
        try:
            await c.send({"action": "subscribe", "topic": "quotes.AAPL"})
            await c.expect(lambda f: f.get("type") == "subscribed" and f.get("topic") == "quotes.AAPL", "subscribed")
            snapshot = await c.recv(5)
            if snapshot.get("type") != "message" or snapshot.get("topic") != "quotes.AAPL":
                raise Failed(f"the frame after `subscribed` is not the AAPL snapshot: {snapshot}")
            for key in ("seq", "ts", "data"):
                if key not in snapshot:
                    raise Failed(f"snapshot without {key}: {snapshot}")
            seqs = [snapshot["seq"]]
            while len(seqs) < 4:
                frame, _ = await c.expect(lambda f: f.get("type") == "message", "a live quote", 10)
                if frame["seq"] <= seqs[-1]:
                    raise Failed(f"seq went from {seqs[-1]} to {frame['seq']}")
                seqs.append(frame["seq"])
            return f"node {c.node[:8]}: snapshot seq {seqs[0]}, live seq {seqs[1:]}"
        finally:
            await c.close()

    # -- order --------------------------------------------------------------

    async def check_order(self):
        account = f"{RUN}-ord"
        c = await Client(self.ws_url, "order").open()
        try:
            await c.subscribe(f"orders.{account}")
            order = {"account": account, "symbol": "AAPL", "side": "buy", "qty": 10}
            await c.send({"action": "order", "id": "o-1", "order": order})
            updates = []
            reply, seen = await c.expect(lambda f: f.get("type") == "reply" and f.get("id") == "o-1", "reply", 10)
            updates += [f for f in seen if f.get("type") == "message"]
            data = reply.get("data", {})
            if data.get("status") != "accepted" or not data.get("order_id"):
                raise Failed(f"reply is not an accepted order: {reply}")
            oid = data["order_id"]

            def filled(f):
                return f.get("type") == "message" and f.get("data", {}).get("order_id") == oid and f["data"].get("status") == "filled"

            if not any(filled(f) for f in updates):
                _, seen = await c.expect(filled, f"`filled` for {oid}", 15)
                updates += [f for f in seen if f.get("type") == "message"]
            statuses = [f["data"].get("status") for f in updates if f.get("data", {}).get("order_id") == oid]
            return f"reply accepted ({oid}), updates {statuses}"
        finally:
            await c.close()

    # -- scale --------------------------------------------------------------

    def gateways_up(self):
        """Servers of haproxy's `gateways` backend that are UP *and* whose last
        health check passed (stats CSV, columns read by the header's names).

        haproxy counts a server UP from the moment DNS gives it an address,
        before its first check; connections sent to it then are refused and
        redispatched to the other nodes, so "UP" alone is not "serving"."""
        status, _, body = http(self.args.stats.rstrip("/") + "/;csv", timeout=3)
        if status != 200:
            return 0
        lines = body.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return 0
        header = lines[0][2:].split(",")
        up = 0
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if (
                row.get("pxname") == "gateways"
                and row.get("svname") not in ("FRONTEND", "BACKEND")
                and row.get("status") == "UP"
                and row.get("check_status") == "L7OK"
            ):
                up += 1
        return up

    async def check_scale(self):
        self.compose_run("up", "-d", "--no-build", "--no-recreate", "--scale", "gateway=3")
        await wait_for("three gateways UP and checked at the balancer", lambda: self.gateways_up() >= 3, 90)
        clients = [await Client(self.ws_url, f"scale-{i}").open() for i in range(9)]
        try:
            nodes = {c.node for c in clients}
            if len(nodes) != 3:
                raise Failed(f"9 clients landed on {len(nodes)} nodes, not 3: {sorted(nodes)}")
            for c in clients:
                await c.subscribe("quotes.MSFT")
            for c in clients:
                await c.expect(lambda f: f.get("type") == "message" and f.get("topic") == "quotes.MSFT", "an MSFT quote", 10)
            per = {n[:8]: sum(c.node == n for c in clients) for n in sorted(nodes)}
            return f"3 gateways UP; 9 clients over them {per}, each got live quotes"
        finally:
            for c in clients:
                await c.close()

    # -- metrics ------------------------------------------------------------

    async def check_metrics(self):
        prom = self.args.prometheus.rstrip("/")

        def targets():
            status, _, body = http(prom + "/api/v1/targets?state=active", timeout=3)
            if status != 200:
                return None
            active = json.loads(body)["data"]["activeTargets"]
            up = {}
            for t in active:
                if t.get("health") == "up":
                    up.setdefault(t["labels"].get("job"), []).append(t["labels"].get("instance"))
            return up if len(up.get("gateway", [])) >= 3 and up.get("publisher") else None

        up = await wait_for("prometheus scraping 3 gateways and the publisher", targets, 60, 2)
        return f"targets up: gateway {sorted(up['gateway'])}, publisher {up['publisher']}"

    # -- failover -----------------------------------------------------------

    async def check_failover(self):
        topics = [f"orders.{RUN}-fo{i}" for i in range(3)]
        published = {t: 0 for t in topics}  # last seq /publish returned
        stop = asyncio.Event()
        clients = [FailoverClient(self.ws_url, f"fo-{i}", topics) for i in range(9)]
        await asyncio.gather(*(c.start() for c in clients))
        nodes_before = {c.node for c in clients}
        if len(nodes_before) < 2:
            raise Failed(f"failover needs clients on several nodes; all on {nodes_before}")
        runners = [asyncio.create_task(c.run(stop)) for c in clients]

        async def publish():
            n = 0
            while not stop.is_set():
                for t in topics:
                    n += 1
                    body = json.dumps({"topic": t, "data": {"n": n, "status": "test"}}).encode()
                    status, _, resp = await asyncio.to_thread(
                        http, self.base + "/publish", body, 5, {"Content-Type": "application/json"}
                    )
                    if status == 200:
                        published[t] = max(published[t], json.loads(resp)["seq"])
                    # A refused publish (the publisher unreachable) is not an
                    # update anyone should get; it is simply not counted.
                await asyncio.sleep(0.05)

        pub = asyncio.create_task(publish())
        try:
            await asyncio.sleep(2)
            ids = self.compose_run("ps", "-q", "gateway").split()
            if len(ids) < 3:
                raise Failed(f"expected 3 gateway containers, found {len(ids)}")
            victim = ids[0]
            print(f"    $ docker kill {victim[:12]}", flush=True)
            subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=30)
            await wait_for(
                "the killed node's clients reconnected", lambda: any(c.reconnects for c in clients) and all(c.connected for c in clients), 30
            )
            await asyncio.sleep(3)  # publishing goes on after the reconnects
        finally:
            stop.set()
            await pub
        final = dict(published)

        def caught_up():
            return all(c.last.get(t, 0) >= final[t] for c in clients for t in topics)

        try:
            await wait_for("every client at the last published seq", caught_up, 20)
        finally:
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            for c in clients:
                await c.close()
        errors = [e for c in clients for e in c.errors]
        if errors:
            raise Failed("; ".join(errors[:5]))
        for c in clients:
            for t in topics:
                got = c.seqs[t]
                # A publish whose answer was lost may still have happened:
                # the last seq is the highest of what was answered and seen.
                want = list(range(1, max([final[t], *got]) + 1))
                if got != want:
                    missing = sorted(set(want) - set(got))
                    dups = len(got) - len(set(got))
                    raise Failed(f"{c.name} {t}: {len(got)} updates, missing {missing[:10]}, {dups} duplicates")
        dropped = [c for c in clients if c.reconnects]
        killed = {c.first_node for c in dropped}
        if len(killed) != 1:
            raise Failed(f"dropped clients were on {len(killed)} nodes, expected the one killed: {killed}")
        moved = all(c.node != c.first_node for c in dropped)
        if not moved:
            raise Failed("a dropped client reconnected to the killed node")
        return (
            f"killed {victim[:12]}: {len(dropped)} of 9 clients dropped and reconnected with since to "
            f"{sorted({c.node[:8] for c in dropped})}; all 9 got seq 1..{min(final.values())}+ of 3 topics, no gap, no duplicate"
        )

    # -- load ---------------------------------------------------------------

    async def check_load(self):
        out = await asyncio.to_thread(
            self.compose_run,
            "--profile", "load", "run", "--rm", "-T", "--no-deps", "loadgen",
            "--allow-remote", "--url=ws://lb:8080/ws", "--source-ips=0",
            "--connections=300", "--ramp=300", "--topics-per-conn=3", "--quote-topics=20",
            "--publish-http=http://lb:8080/publish", "--publish-rate=200",
            "--duration=5s", "--quiet", "--output=json",
            timeout=120,
        )  # fmt: skip
        summary = json.loads(out[out.index("{"):])
        conns, msgs = summary["connections"], summary["messages"]
        if conns["established"] < 300:
            raise Failed(f"{conns['established']} of 300 connections established: {conns}")
        if msgs["received"] == 0 or msgs["lost"] or msgs["duplicates"]:
            raise Failed(f"messages: {msgs}")
        lat = summary["latency_ms"]
        return f"300 connections, {msgs['received']} messages, lost 0, duplicates 0, latency mean {lat['mean']:.1f} ms, max {lat['max']:.1f} ms"

    # -- traces -------------------------------------------------------------

    def jaeger_trace(self, service, trace_id):
        """The spans of trace `trace_id` among `service`'s recent traces
        (Jaeger's query API), as {operation: [span, ...]}, with each span's
        service and parent span id; None while it is not there."""
        jaeger = self.args.jaeger.rstrip("/")
        status, _, body = http(f"{jaeger}/api/traces?service={service}&limit=500", timeout=5)
        if status != 200:
            return None
        for trace in json.loads(body).get("data") or []:
            if trace.get("traceID") != trace_id:
                continue
            processes = trace.get("processes", {})
            ops = {}
            for span in trace.get("spans", []):
                refs = [r["spanID"] for r in span.get("references", []) if r.get("refType") == "CHILD_OF"]
                ops.setdefault(span["operationName"], []).append(
                    {
                        "id": span["spanID"],
                        "parent": refs[0] if refs else "",
                        "service": processes.get(span.get("processID"), {}).get("serviceName"),
                    }
                )
            return ops
        return None

    async def check_traces(self):
        jaeger = self.args.jaeger.rstrip("/")

        def services():
            status, _, body = http(jaeger + "/api/services", timeout=3)
            names = set(json.loads(body).get("data") or []) if status == 200 else set()
            return names if {"gateway", "publisher"} <= names else None

        await wait_for("spans of gateway and publisher at jaeger", services, 60, 2)

        def traceparent():
            tid, sid = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
            return f"00-{tid}-{sid}-01", tid, sid

        # One quote, published with a sampled traceparent (as a backend
        # that traces would): publisher span → a fan-out span on the node
        # of this client, in one trace.
        c = await Client(self.ws_url, "traces").open()
        try:
            topic = f"quotes.{RUN}TR"
            await c.subscribe(topic)
            tp, tid, sid = traceparent()
            body = json.dumps({"topic": topic, "data": {"symbol": f"{RUN}TR", "bid": 1.0, "ask": 1.1}}).encode()
            status, _, answer = http(
                self.base + "/publish", body, headers={"Content-Type": "application/json", "traceparent": tp}
            )
            if status != 200:
                raise Failed(f"POST /publish answered {status}: {answer[:200]!r}")
            await c.expect(lambda f: f.get("type") == "message" and f.get("topic") == topic, "the traced quote", 10)

            def quote_trace():
                ops = self.jaeger_trace("publisher", tid)
                if not ops or "publisher.publish" not in ops or "gateway.fanout" not in ops:
                    return None
                publish = ops["publisher.publish"][0]
                fanouts = [f for f in ops["gateway.fanout"] if f["parent"] == publish["id"] and f["service"] == "gateway"]
                return (publish, fanouts) if publish["parent"] == sid and fanouts else None

            publish, fanouts = await wait_for(f"quote trace {tid}: publisher.publish → gateway.fanout", quote_trace, 30, 1)

            # One order round trip from a client that traces.
            account = f"{RUN}-trc"
            await c.subscribe(f"orders.{account}")
            tp, otid, osid = traceparent()
            order = {"account": account, "symbol": "AAPL", "side": "buy", "qty": 10}
            await c.send({"action": "order", "id": "t-1", "order": order, "traceparent": tp})
            reply, _ = await c.expect(lambda f: f.get("type") == "reply" and f.get("id") == "t-1", "reply", 10)
            oid = reply.get("data", {}).get("order_id")
            await c.expect(
                lambda f: f.get("type") == "message" and f.get("data", {}).get("order_id") == oid and f["data"].get("status") == "filled",
                f"`filled` for {oid}",
                15,
            )

            def order_trace():
                ops = self.jaeger_trace("gateway", otid)
                need = ("gateway.order", "publisher.order", "gateway.order.reply", "publisher.order.update")
                if not ops or any(n not in ops for n in need):
                    return None
                gw, svc = ops["gateway.order"][0], ops["publisher.order"][0]
                updates = [u for u in ops["publisher.order.update"] if u["parent"] == svc["id"]]
                delivered = [f for f in ops.get("gateway.fanout", []) if f["parent"] in {u["id"] for u in updates}]
                ok = gw["parent"] == osid and svc["parent"] == gw["id"] and svc["service"] == "publisher"
                return (updates, delivered) if ok and len(updates) >= 3 and len(delivered) >= 3 else None

            updates, delivered = await wait_for(
                f"order trace {otid}: gateway.order → publisher.order → reply, updates, their delivery", order_trace, 30, 1
            )
        finally:
            await c.close()
        return (
            f"quote trace {tid}: publisher.publish → {len(fanouts)} gateway.fanout; "
            f"order trace {otid}: gateway.order → publisher.order → {len(updates)} updates, {len(delivered)} delivered"
        )

    # -- dashboard ----------------------------------------------------------

    async def check_dashboard(self):
        grafana = self.args.grafana.rstrip("/")
        await wait_for("grafana /api/health", lambda: http(grafana + "/api/health", timeout=3)[0] == 200, 60, 2)
        status, _, body = http(grafana + "/api/search?type=dash-db", timeout=5)
        if status != 200:
            raise Failed(f"/api/search answered {status}: {body[:200]!r}")
        found = json.loads(body)
        titles = [d.get("title") for d in found if d.get("title")]
        if not titles:
            raise Failed(f"no provisioned dashboard (deploy/grafana/dashboards/): {found}")
        return f"dashboards {titles}"

    async def run(self):
        for name in ("page", "quotes", "order", "scale", "metrics", "failover", "load", "traces", "dashboard"):
            if name in self.skip:
                print(f"SKIP  {name}  (COMPOSE_TEST_SKIP)", flush=True)
                self.results.append((name, "skipped"))
                continue
            print(f"----  {name}", flush=True)
            started = time.monotonic()
            try:
                detail = await asyncio.wait_for(getattr(self, f"check_{name}")(), 240)
                print(f"PASS  {name}  ({time.monotonic() - started:.1f} s) {detail}", flush=True)
                self.results.append((name, "passed"))
            except (Failed, OSError, ConnectionClosed, asyncio.TimeoutError, subprocess.SubprocessError, ValueError, KeyError) as e:
                print(f"FAIL  {name}  ({time.monotonic() - started:.1f} s) {type(e).__name__}: {e}", flush=True)
                self.results.append((name, "failed"))
        count = {k: sum(r == k for _, r in self.results) for k in ("passed", "failed", "skipped")}
        print(f"compose-test: {count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped")
        return count["failed"] == 0


class FailoverClient:
    """Holds subscriptions to `topics` and reconnects after any close,
    resubscribing with since = the last seq seen, like a real client."""

    def __init__(self, ws_url, name, topics):
        self.ws_url, self.name, self.topics = ws_url, name, topics
        self.seqs = {t: [] for t in topics}
        self.last = {}
        self.client = None
        self.first_node = None
        self.node = None
        self.reconnects = 0
        self.connected = False
        self.errors = []

    async def start(self):
        await self.connect()
        self.first_node = self.node

    async def connect(self):
        self.client = await Client(self.ws_url, self.name).open()
        self.node = self.client.node
        for t in self.topics:
            for frame in await self.client.subscribe(t, since=self.last.get(t, 0)):
                self.take(frame)
        self.connected = True

    def take(self, frame):
        if frame.get("type") == "message" and frame.get("topic") in self.seqs:
            self.seqs[frame["topic"]].append(frame["seq"])
            self.last[frame["topic"]] = max(self.last.get(frame["topic"], 0), frame["seq"])
        elif frame.get("type") == "error":
            self.errors.append(f"{self.name}: {frame}")

    async def run(self, _stop):
        while True:
            try:
                frame = await self.client.recv(timeout=3600)
                self.take(frame)
            except ConnectionClosed:
                self.connected = False
                self.reconnects += 1
                for attempt in range(50):
                    try:
                        await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
                        await self.connect()
                        break
                    except (OSError, ConnectionClosed, asyncio.TimeoutError, Failed):
                        continue
                else:
                    self.errors.append(f"{self.name}: could not reconnect")
                    return

    async def close(self):
        if self.client is not None:
            await self.client.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the balancer, e.g. http://127.0.0.1:8080")
    p.add_argument("--stats", required=True, help="haproxy's stats page")
    p.add_argument("--jaeger", required=True, help="the jaeger service's query/UI port")
    p.add_argument("--prometheus", required=True, help="the prometheus service's port")
    p.add_argument("--grafana", required=True, help="the grafana service's port")
    p.add_argument("--compose-cmd", required=True, help="JSON list: the compose command with -p and -f")
    ok = asyncio.run(Checks(p.parse_args()).run())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
