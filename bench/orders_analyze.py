#!/usr/bin/env python3
"""Summarises one bench/orders.sh output directory (or, with `service
OUTDIR`, one bench/order_service.sh directory: how fast the order service
alone drained a pre-filled request stream).

Prints (and writes OUTDIR/result.json):
  * loadgen's figures: orders/s asked and replied, reply p50/p90/p99/p99.9/
    max, error answers, the exactly-once verdict;
  * CPU of each process in cores over the steady window (1 s after
    measuring began to 0.25 s before the asked duration ended), and the
    machine's other load ("others" = busy CPU − our processes);
  * the request stream over that window: the consumer group's lag
    (requests XADDed, not yet read by any order service) and pending
    (read, not yet acknowledged), median and max, and a per-second table
    of lag, pending, requests read/s and CPU;
  * with a trace (-t): reply latency split by stage, from loadgen's
    per-order times, the stream ids (XADD time in Redis), the gateway's
    request ts and the `new` update's ts (written by the order service
    right after it replied and acknowledged):
      A client → gateway        gateway ts − sent
      B gateway → XADD          stream id time − gateway ts
      C XADD → service replied  new.ts − stream id time
      D replied → client        reply received − new.ts
    and E, `new` update written → received (the update path).
    All clocks are this machine's; stream ids and ts have ms resolution.
"""
import csv
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analyze import at as interp  # noqa: E402  (bench/analyze.py: linear interpolation of a series)

CLK = os.sysconf("SC_CLK_TCK")


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main(out):
    summary = json.load(open(os.path.join(out, "summary.json")))
    o = summary.get("orders") or {}
    t = summary["timing"]
    start = t["started_unix_ms"] + t["ramp_s"] * 1000
    duration = t.get("duration_s") or t["measure_s"]
    w0, w1 = start + 1000, start + duration * 1000 - 250
    rc = open(os.path.join(out, "loadgen.rc")).read().strip() if os.path.exists(os.path.join(out, "loadgen.rc")) else "?"
    lat = o.get("latency_ms", {})
    res = {
        "rc": rc,
        "connections": o.get("connections"),
        "asked_per_s": o.get("asked_per_second"),
        "replied_per_s": o.get("per_second"),
        "sent": o.get("sent"),
        "replied": o.get("replied"),
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"),
        "p999_ms": lat.get("p999"),
        "max_ms": lat.get("max"),
        "errors": o.get("errors"),
        "codes": o.get("codes"),
        "unanswered": o.get("unanswered"),
        "duplicate_replies": o.get("duplicate_replies"),
        "updates": o.get("updates"),
        "late_sends": o.get("late_sends"),
    }
    u = o.get("updates", {})
    exact = (
        o.get("unanswered") == 0 and o.get("duplicate_replies") == 0 and o.get("unknown_replies") == 0
        and u.get("missing") == 0 and u.get("duplicates") == 0 and u.get("orphans") == 0
        and u.get("seq_gaps") == 0 and u.get("seq_duplicates") == 0 and u.get("invalid") == 0
    )
    res["exactly_once"] = exact
    print("orders: %s connections, asked %.0f/s, replied %.0f/s (%s of %s), reply ms p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f"
          % (o.get("connections"), o.get("asked_per_second", 0), o.get("per_second", 0), o.get("replied"), o.get("sent"),
             lat.get("p50", 0), lat.get("p90", 0), lat.get("p99", 0), lat.get("p999", 0), lat.get("max", 0)))
    print("        errors %s %s, unanswered %s, duplicate replies %s, updates owed %s missing %s duplicates %s orphans %s seq gaps %s, late sends %s -> %s (loadgen exit %s)"
          % (o.get("errors"), o.get("codes") or "", o.get("unanswered"), o.get("duplicate_replies"), u.get("owed"),
             u.get("missing"), u.get("duplicates"), u.get("orphans"), u.get("seq_gaps"), o.get("late_sends"),
             "exactly once" if exact else "NOT exactly once", rc))

    rows = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl")) if line.strip()]
    rows.sort(key=lambda r: r["t"])
    names = sorted({n for r in rows for n in r.get("cpu_ticks", {})})
    cpu = {}
    for name in names:
        series = [(r["t"], r["cpu_ticks"][name]) for r in rows if name in r.get("cpu_ticks", {})]
        a, b = interp(series, w0), interp(series, w1)
        if a is not None and b is not None:
            cpu[name] = (b - a) / CLK / ((w1 - w0) / 1000)
    busy = [(r["t"], r["busy_ticks"]) for r in rows]
    machine_busy = (interp(busy, w1) - interp(busy, w0)) / CLK / ((w1 - w0) / 1000) if busy else float("nan")
    # redis-server's own figure (INFO cpu) agrees with /proc; prefer /proc.
    others = machine_busy - sum(cpu.values())
    res["cpu_cores"] = {k: round(v, 3) for k, v in cpu.items()}
    res["machine_busy_cores"] = round(machine_busy, 3)
    res["others_cores"] = round(others, 3)
    print("cpu (cores, steady window %.1f s): %s; machine busy %.2f, others %.2f"
          % ((w1 - w0) / 1000, ", ".join("%s %.2f" % (k, v) for k, v in sorted(cpu.items())), machine_busy, others))

    inwin = [r for r in rows if w0 <= r["t"] <= w1 and r.get("lag") is not None]
    if inwin:
        lags = [r["lag"] for r in inwin]
        pend = [r["pending"] for r in inwin]
        rtts = [r["rtt_ms"] for r in inwin if "rtt_ms" in r]
        res["stream"] = {"lag_median": statistics.median(lags), "lag_max": max(lags),
                         "pending_median": statistics.median(pend), "pending_max": max(pend),
                         "xlen_end": inwin[-1]["xlen"],
                         "redis_rtt_ms_median": statistics.median(rtts) if rtts else None,
                         "redis_rtt_ms_max": max(rtts) if rtts else None}
        print("stream: lag (unread) median %d max %d; pending (read, unacked) median %d max %d; "
              "Redis round trip (XLEN) median %.2f ms max %.2f ms"
              % (statistics.median(lags), max(lags), statistics.median(pend), max(pend),
                 statistics.median(rtts) if rtts else float("nan"), max(rtts) if rtts else float("nan")))
    if o.get("sent"):
        per = redis_commands(out, o["sent"])
        if per is not None:
            res["redis_commands"] = per
    # Per-second table over the whole measured phase.
    print("  t(s)   lag  pending  read/s  " + "  ".join("%9s" % n for n in names))
    table = []
    sec = 0
    end = start + t["measure_s"] * 1000
    prev = None
    while start + sec * 1000 <= end:
        at = start + sec * 1000
        near = min(rows, key=lambda r: abs(r["t"] - at)) if rows else None
        if near is not None and near.get("entries_read") is not None:
            read_s = ""
            if prev is not None and prev.get("entries_read") is not None:
                read_s = (near["entries_read"] - prev["entries_read"]) / max((near["t"] - prev["t"]) / 1000, 1e-3)
            cpus = []
            for n in names:
                if prev is not None and n in near.get("cpu_ticks", {}) and n in prev.get("cpu_ticks", {}):
                    cpus.append((near["cpu_ticks"][n] - prev["cpu_ticks"][n]) / CLK / max((near["t"] - prev["t"]) / 1000, 1e-3))
                else:
                    cpus.append(float("nan"))
            table.append({"t": sec, "lag": near["lag"], "pending": near["pending"], "read_per_s": read_s,
                          "cpu": dict(zip(names, cpus))})
            print("  %4d %5s %8s %7s  %s" % (sec, near["lag"], near["pending"],
                                           "%.0f" % read_s if read_s != "" else "", "  ".join("%9.2f" % c for c in cpus)))
            prev = near
        sec += 1
    res["per_second"] = table

    trace, reqs = os.path.join(out, "trace.csv"), os.path.join(out, "requests.csv")
    if os.path.exists(trace) and os.path.exists(reqs):
        gw_ts = {}
        with open(reqs) as f:
            for r in csv.DictReader(f):
                gw_ts["ord-" + r["stream_id"]] = int(r["gateway_ts_ms"] or 0)
        stages = {k: [] for k in "ABCDE"}
        joined = 0
        with open(trace) as f:
            for r in csv.DictReader(f):
                if r["code"] != "ok" or r["order_id"] not in gw_ts:
                    continue
                joined += 1
                sent, ans = int(r["sent_us"]) / 1000, int(r["answer_us"]) / 1000
                xadd = int(r["order_id"][4:].split("-")[0])
                gw, new_ts, new_recv = gw_ts[r["order_id"]], int(r["new_ts_ms"]), int(r["new_recv_us"]) / 1000
                stages["A"].append(gw - sent)
                stages["B"].append(xadd - gw)
                if new_ts:
                    stages["C"].append(new_ts - xadd)
                    stages["D"].append(ans - new_ts)
                    stages["E"].append(new_recv - new_ts)
        labels = {"A": "client -> gateway", "B": "gateway -> XADD", "C": "XADD -> service replied",
                  "D": "replied -> client", "E": "new update -> client"}
        res["stages_ms"] = {}
        print("stages (ms, %d orders joined with the stream):       p50      p90      p99    p99.9" % joined)
        for k in "ABCDE":
            v = stages[k]
            res["stages_ms"][labels[k]] = {q: pct(v, x) for q, x in (("p50", .5), ("p90", .9), ("p99", .99), ("p999", .999))}
            print("  %s %-28s %8.1f %8.1f %8.1f %8.1f" % (k, labels[k], pct(v, .5), pct(v, .9), pct(v, .99), pct(v, .999)))
    mon = os.path.join(out, "monitor.txt")
    if os.path.exists(mon):
        res["monitor"] = monitor_cycles(mon)
    json.dump(res, open(os.path.join(out, "result.json"), "w"), indent=1)


def redis_commands(out, per_what_count, what="order"):
    """Redis commands between commandstats-before/after, per order."""
    before, after = os.path.join(out, "commandstats-before.txt"), os.path.join(out, "commandstats-after.txt")
    if not (os.path.exists(before) and os.path.exists(after)):
        return None

    def stats(path):
        d = {}
        for line in open(path):
            if line.startswith("cmdstat_"):
                name, rest = line.strip()[8:].split(":", 1)
                kv = dict(x.split("=") for x in rest.split(","))
                d[name] = (int(kv["calls"]), float(kv["usec"]))
        return d

    b, a = stats(before), stats(after)
    per = {}
    for name, (calls, usec) in a.items():
        c0, u0 = b.get(name, (0, 0.0))
        if calls - c0 > 0:
            per[name] = {"calls": calls - c0, "per_" + what: (calls - c0) / per_what_count,
                         "usec_per_call": (usec - u0) / (calls - c0), "usec_total": usec - u0}
    top = sorted(per.items(), key=lambda kv: -kv[1]["usec_total"])[:10]
    # Commands a script runs are counted under their own names too (and
    # their time inside the script's), so the figures do not add up.
    print("redis commands (a shared Redis counts its other users too; a script's commands count twice): "
          + "; ".join("%s %.2f/%s %.1f us/call" % (k, v["per_" + what], what, v["usec_per_call"]) for k, v in top))
    return per


def service(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl")) if line.strip()]
    rows.sort(key=lambda r: r["t"])
    count = int(open(os.path.join(out, "command.txt")).read().split(" -n ")[1].split()[0])
    started = int(open(os.path.join(out, "started_ms")).read())
    drained = int(open(os.path.join(out, "drained_ms")).read())
    reading = [r for r in rows if (r.get("entries_read") or 0) > 0]
    if not reading:
        print("the order service read nothing")
        return
    t_first = reading[0]["t"]
    done = next((r for r in reading if r.get("lag") == 0), reading[-1])
    read_s = max((done["t"] - t_first) / 1000, 1e-3)
    rate = (done["entries_read"] or 0) / read_s
    peak = 0.0
    for a in reading:
        b = next((r for r in reading if r["t"] >= a["t"] + 1000), None)
        if b is None:
            break
        peak = max(peak, (b["entries_read"] - a["entries_read"]) / ((b["t"] - a["t"]) / 1000))
    res = {"requests": count, "read_seconds": read_s, "served_per_s": rate, "peak_1s_per_s": peak,
           "start_to_drained_s": (drained - started) / 1000}
    served = skipped = updates = 0.0
    codes = {}
    for path in sorted(os.listdir(out)):
        if path.startswith("metrics-publisher-"):
            for line in open(os.path.join(out, path)):
                parts = line.split()
                if len(parts) != 2:
                    continue
                if parts[0] == "publisher_requests_served_total":
                    served += float(parts[1])
                elif parts[0] == "publisher_requests_skipped_total":
                    skipped += float(parts[1])
                elif parts[0] == "publisher_order_updates_published_total":
                    updates += float(parts[1])
                elif parts[0].startswith("publisher_replies_total{"):
                    code = parts[0].split('code="')[1].split('"')[0]
                    codes[code] = codes.get(code, 0) + float(parts[1])
    res.update({"served": served, "skipped": skipped, "updates_written": updates, "codes": codes})
    print("order service: %d requests read in %.2f s = %.0f requests/s (peak 1 s: %.0f/s); start to fully drained"
          " (updates written) %.2f s; served %d, skipped %d, replies %s, lifecycle updates written %d"
          % (count, read_s, rate, peak, res["start_to_drained_s"], served, skipped, codes, updates))
    cpu = {}
    for name in sorted({n for r in rows for n in r.get("cpu_ticks", {})}):
        series = [(r["t"], r["cpu_ticks"][name]) for r in rows if name in r.get("cpu_ticks", {})]
        a, b = interp(series, t_first), interp(series, done["t"])
        if a is not None and b is not None:
            cpu[name] = (b - a) / CLK / read_s
    busy = [(r["t"], r["busy_ticks"]) for r in rows]
    machine_busy = (interp(busy, done["t"]) - interp(busy, t_first)) / CLK / read_s
    res["cpu_cores"] = cpu
    res["us_per_request"] = {k: v * 1e6 / rate for k, v in cpu.items()}
    res["others_cores"] = machine_busy - sum(cpu.values())
    print("cpu while reading (cores): %s; machine busy %.2f, others %.2f; per request: %s"
          % (", ".join("%s %.2f" % kv for kv in sorted(cpu.items())), machine_busy, res["others_cores"],
             ", ".join("%s %.0f us" % (k, v) for k, v in sorted(res["us_per_request"].items()))))
    per = redis_commands(out, count, "request")
    if per is not None:
        res["redis_commands"] = per
    json.dump(res, open(os.path.join(out, "result.json"), "w"), indent=1)


def parse_monitor(path):
    """(ts, client, COMMAND, first arg, arg count) per MONITOR line."""
    rows = []
    for line in open(path, errors="replace"):
        try:
            ts, rest = line.split(" ", 1)
            client, rest = rest[1:].split("] ", 1)
            parts = rest.split('" "')
            cmd = parts[0].strip('"').upper()
            arg = parts[1].strip('"\n') if len(parts) > 1 else ""
            rows.append((float(ts), client.split(" ", 1)[-1], cmd, arg, len(parts)))
        except ValueError:
            continue
    return rows


def monitor_cycles(path):
    """Each Redis client's command cycle from a MONITOR capture: the
    gateway pool connections that XADD requests, the order service's
    XREADGROUP loop and the update writer's EVALSHA pipelines."""
    rows = parse_monitor(path)
    if not rows:
        return {}
    span = rows[-1][0] - rows[0][0]
    by_client = {}
    for r in rows:
        by_client.setdefault(r[1], []).append(r)
    ms = lambda v: v * 1000
    out = {"seconds": span, "commands": len(rows)}
    # Gateway pool: connections that XADD to the request stream.
    pool = {c: cmds for c, cmds in by_client.items()
            if any(x[2] == "XADD" and x[3].endswith("orders:requests") for x in cmds)}
    cycles, ping_to_xadd, xadd_to_next = [], [], []
    xadds = 0
    for cmds in pool.values():
        last_xadd, last_ping = None, None
        for ts, _, cmd, arg, _ in cmds:
            if cmd == "PING":
                last_ping = ts
                if last_xadd is not None:
                    xadd_to_next.append(ms(ts - last_xadd))
            elif cmd == "XADD" and arg.endswith("orders:requests"):
                xadds += 1
                if last_ping is not None:
                    ping_to_xadd.append(ms(ts - last_ping))
                if last_xadd is not None:
                    cycles.append(ms(ts - last_xadd))
                last_xadd, last_ping = ts, None
    if pool:
        med = statistics.median(cycles) if cycles else float("nan")
        out["gateway_pool"] = {
            "connections": len(pool), "xadd_per_s": xadds / span, "cycle_ms_p50": med,
            "cycle_ms_p90": pct(cycles, .9), "ping_to_xadd_ms_p50": pct(ping_to_xadd, .5),
            "ping_to_xadd_ms_p90": pct(ping_to_xadd, .9), "xadd_to_next_checkout_ms_p50": pct(xadd_to_next, .5),
            "pings_per_xadd": sum(1 for c in pool.values() for x in c if x[2] == "PING") / max(xadds, 1),
            "ceiling_per_s": len(pool) / (med / 1000) if cycles else None,
        }
        g = out["gateway_pool"]
        print("monitor %.1f s: gateway pool: %d connections XADD %.0f requests/s; per connection one XADD every %.2f ms"
              " (p90 %.2f): checkout PING -> XADD %.2f ms (p90 %.2f), XADD -> next checkout %.2f ms; %.2f PINGs per XADD;"
              " ceiling %d connections / %.2f ms = %.0f requests/s"
              % (span, g["connections"], g["xadd_per_s"], med, g["cycle_ms_p90"], g["ping_to_xadd_ms_p50"],
                 g["ping_to_xadd_ms_p90"], g["xadd_to_next_checkout_ms_p50"], g["pings_per_xadd"], g["connections"],
                 med, g["ceiling_per_s"] or 0))
    # Order service: XREADGROUP (">" or "0"), then PUBLISH replies + XACK.
    for client, cmds in by_client.items():
        reads = [x for x in cmds if x[2] == "XREADGROUP"]
        if not reads:
            continue
        acks = [x for x in cmds if x[2] == "XACK"]
        sizes = [x[4] - 3 for x in acks]  # XACK key group id...
        read_ts = [x[0] for x in reads]
        gaps = [ms(b - a) for a, b in zip(read_ts, read_ts[1:])]
        # Time from a read to its XACK (serving the batch, replies included).
        serve = []
        j = 0
        for i, ts in enumerate(read_ts):
            nxt = read_ts[i + 1] if i + 1 < len(read_ts) else float("inf")
            while j < len(acks) and acks[j][0] < ts:
                j += 1
            if j < len(acks) and acks[j][0] < nxt:  # empty reads have no XACK
                serve.append(ms(acks[j][0] - ts))
        d = {"reads_per_s": len(reads) / span, "acked_per_s": sum(sizes) / span,
             "batch_p50": pct(sizes, .5), "batch_max": max(sizes) if sizes else 0,
             "read_to_read_ms_p50": pct(gaps, .5), "read_to_read_ms_p90": pct(gaps, .9),
             "read_to_ack_ms_p50": pct(serve, .5), "read_to_ack_ms_p90": pct(serve, .9)}
        out.setdefault("order_service", {})[client] = d
        print("  order service %s: %.0f reads/s, %.0f requests acked/s, batch p50 %s max %s; read -> XACK %.2f ms"
              " (p90 %.2f), read -> next read %.2f ms (p90 %.2f)"
              % (client, d["reads_per_s"], d["acked_per_s"], d["batch_p50"], d["batch_max"], d["read_to_ack_ms_p50"],
                 d["read_to_ack_ms_p90"], d["read_to_read_ms_p50"], d["read_to_read_ms_p90"]))
    # Update writers: EVALSHA bursts (a pipeline executes back to back).
    for client, cmds in by_client.items():
        ev = [x[0] for x in cmds if x[2] == "EVALSHA"]
        if len(ev) < 10:
            continue
        bursts, cur = [], [ev[0]]
        for a, b in zip(ev, ev[1:]):
            if b - a > 0.0005:
                bursts.append(cur)
                cur = []
            cur.append(b)
        bursts.append(cur)
        sizes = [len(b) for b in bursts]
        busy = [ms(b[-1] - b[0]) for b in bursts]
        starts = [b[0] for b in bursts]
        gaps = [ms(b - a) for a, b in zip(starts, starts[1:])]
        d = {"evalsha_per_s": len(ev) / span, "pipeline_p50": pct(sizes, .5), "pipeline_max": max(sizes),
             "pipeline_ms_p50": pct(busy, .5), "start_to_start_ms_p50": pct(gaps, .5)}
        out.setdefault("update_writers", {})[client] = d
        print("  update writer %s: %.0f EVALSHA/s in pipelines of p50 %d (max %d) taking %.2f ms in Redis, one every %.2f ms"
              % (client, d["evalsha_per_s"], d["pipeline_p50"], d["pipeline_max"], d["pipeline_ms_p50"],
                 d["start_to_start_ms_p50"]))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "service":
        service(sys.argv[2])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else ".")
