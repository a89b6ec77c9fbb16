#!/usr/bin/env python3
"""Summarises one bench/run.sh output directory.

Reads loadgen's JSON summary (or sweep.csv), the gateways' /metrics
before/after and the 0.5 s samples, and prints one line plus
OUTDIR/result.json. Gateway figures over the *steady window*: from 1 s
after measuring began (publishing started) to 0.25 s before publishing
stopped, so the ramp (connects, subscribes) is not counted.
"""
import glob
import json
import os
import statistics
import sys


def metrics_file(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


def samples(path):
    series = {}
    for line in open(path):
        parts = line.split()
        if len(parts) != 3:
            continue
        t, name, v = int(parts[0]), parts[1], float(parts[2])
        series.setdefault(name, []).append((t, v))
    return series


def at(series, t):
    """Linear interpolation of a cumulative series at time t (ms)."""
    if not series:
        return None
    if t <= series[0][0]:
        return series[0][1]
    for (t0, v0), (t1, v1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return series[-1][1]


def redis_cpu(path):
    d = {}
    for line in open(path):
        k, _, v = line.strip().partition(":")
        d[k] = float(v)
    return d.get("used_cpu_sys", 0) + d.get("used_cpu_user", 0)


def main(out):
    res = {"dir": out}
    res["machine"] = open(os.path.join(out, "machine.txt")).read().strip().splitlines()
    res["command"] = open(os.path.join(out, "command.txt")).read().strip()
    res["loadgen_rc"] = int(open(os.path.join(out, "loadgen.rc")).read().strip() or -1)
    try:
        u, s_, e = open(os.path.join(out, "loadgen-time.txt")).read().split()[-3:]
        res["loadgen_cpu_s"] = float(u) + float(s_)
        res["loadgen_wall_s"] = float(e)
    except (OSError, ValueError):
        pass
    try:
        res["redis_cpu_s"] = round(redis_cpu(os.path.join(out, "redis-cpu-after.txt"))
                                   - redis_cpu(os.path.join(out, "redis-cpu-before.txt")), 3)
    except OSError:
        pass

    try:
        t0, i0 = map(int, open(os.path.join(out, "proc-stat-before.txt")).read().split())
        t1, i1 = map(int, open(os.path.join(out, "proc-stat-after.txt")).read().split())
        hz = os.sysconf("SC_CLK_TCK")
        res["machine_busy_cpu_s"] = round(((t1 - t0) - (i1 - i0)) / hz, 2)
    except (OSError, ValueError):
        pass

    summ = None
    sp = os.path.join(out, "summary.json")
    if os.path.exists(sp):
        summ = json.load(open(sp))
    nodes = sorted(glob.glob(os.path.join(out, "samples-*.txt")))
    window = None
    if summ:
        start = summ["timing"]["started_unix_ms"] + summ["timing"]["ramp_s"] * 1000
        pub = summ.get("publish")
        length = (pub["seconds"] if pub else summ["timing"]["measure_s"]) * 1000
        window = (start + 1000, start + length - 250)
        res["window_s"] = round((window[1] - window[0]) / 1000, 2)

    gw = []
    for path in nodes:
        port = path.rsplit("-", 1)[1].split(".")[0]
        before = metrics_file(os.path.join(out, f"metrics-before-{port}.txt"))
        after = metrics_file(os.path.join(out, f"metrics-after-{port}.txt"))
        ser = samples(path)
        g = {
            "port": port,
            "rss_before": before.get("process_resident_memory_bytes"),
            "rss_after": after.get("process_resident_memory_bytes"),
            "cpu_total_s": round(after.get("process_cpu_seconds_total", 0) - before.get("process_cpu_seconds_total", 0), 3),
            "frames_total": after.get("gateway_frames_sent_total", 0) - before.get("gateway_frames_sent_total", 0),
            "writes_total": after.get("gateway_socket_writes_total", 0) - before.get("gateway_socket_writes_total", 0),
            "dropped_total": after.get("gateway_frames_dropped_total", 0) - before.get("gateway_frames_dropped_total", 0),
            "conflated_total": after.get("gateway_frames_conflated_total", 0) - before.get("gateway_frames_conflated_total", 0),
            "backplane_reconnects": after.get("gateway_backplane_reconnects_total", 0),
            "rss_max": max((v for _, v in ser.get("process_resident_memory_bytes", [])), default=None),
        }
        if window:
            w0, w1 = window
            secs = (w1 - w0) / 1000
            d = lambda name: (at(ser.get(name, []), w1) or 0) - (at(ser.get(name, []), w0) or 0)
            g["win_cpu_s"] = round(d("process_cpu_seconds_total"), 3)
            g["win_frames"] = d("gateway_frames_sent_total")
            g["win_writes"] = d("gateway_socket_writes_total")
            g["win_cpu_per_s"] = round(g["win_cpu_s"] / secs, 3) if secs > 0 else None
            in_win = [v for t, v in ser.get("process_resident_memory_bytes", []) if w0 <= t <= w1]
            g["rss_window_median"] = statistics.median(in_win) if in_win else None
            conns = [v for t, v in ser.get("gateway_connections", []) if w0 <= t <= w1]
            g["connections_window_median"] = statistics.median(conns) if conns else None
        gw.append(g)
    res["gateways"] = gw

    line = []
    if summ:
        m, lat, c = summ["messages"], summ["latency_ms"], summ["connections"]
        res["loadgen"] = {
            "connected": c["connected"], "established": c["established"], "failed": c["failed"],
            "dropped": c["dropped"], "reconnects": c["reconnects"],
            "subs_ack": summ["subscriptions"]["acknowledged"], "sub_errors": summ["subscriptions"]["errors"],
            "received": m["received_measured"], "expected": m["expected"], "missing": m["missing"],
            "lost": m["lost"], "duplicates": m["duplicates"], "per_second": round(m["per_second"]),
            "p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"], "max": lat["max"],
            "publish_target": (summ.get("publish") or {}).get("target_rate"),
            "publish_achieved": round((summ.get("publish") or {}).get("achieved_rate") or 0, 1),
            "publish_errors": (summ.get("publish") or {}).get("errors"),
            "publish_skipped": (summ.get("publish") or {}).get("skipped"),
            "errors": summ.get("errors"),
        }
        L = res["loadgen"]
        line.append(f"conn {L['connected']}/{c['requested']} drop {L['dropped']} reconn {L['reconnects']}")
        if summ.get("publish"):
            line.append(f"pub {L['publish_achieved']}/s (skipped {L['publish_skipped']})")
            line.append(f"delivered {L['per_second']}/s recv {L['received']} exp {L['expected']} missing {L['missing']} lost {L['lost']}")
            line.append(f"p50 {L['p50']} p99 {L['p99']} p999 {L['p999']} ms")
    if window and gw:
        cpu = sum(g["win_cpu_s"] for g in gw)
        frames = sum(g["win_frames"] for g in gw)
        writes = sum(g["win_writes"] for g in gw)
        secs = (window[1] - window[0]) / 1000
        res["steady"] = {
            "cpu_s_per_s": round(cpu / secs, 3) if secs > 0 else None,
            "deliveries_per_s": round(frames / secs) if secs > 0 else None,
            "cpu_us_per_delivery": round(cpu / frames * 1e6, 2) if frames else None,
            "frames_per_write": round(frames / writes, 2) if writes else None,
        }
        S = res["steady"]
        if frames:
            line.append(f"gw cpu {S['cpu_s_per_s']} s/s, {S['cpu_us_per_delivery']} us/delivery, "
                        f"{S['deliveries_per_s']} frames/s, {S['frames_per_write']} frames/write")
    for g in gw:
        rssw = g.get("rss_window_median")
        line.append(f"[{g['port']}] rss before {g['rss_before']/1048576:.1f} MiB"
                    + (f" during {rssw/1048576:.1f} MiB (conns {g.get('connections_window_median')})" if rssw else "")
                    + f" max {(g['rss_max'] or 0)/1048576:.1f} MiB cpu total {g['cpu_total_s']} s"
                    + (f" dropped {g['dropped_total']:.0f}" if g['dropped_total'] else "")
                    + (f" conflated {g['conflated_total']:.0f}" if g['conflated_total'] else ""))
    if "loadgen_cpu_s" in res and "machine_busy_cpu_s" in res:
        ours = res["loadgen_cpu_s"] + res.get("redis_cpu_s", 0) + sum(g["cpu_total_s"] for g in gw)
        res["others_cpu_s"] = round(res["machine_busy_cpu_s"] - ours, 1)
        res["others_cores"] = round(res["others_cpu_s"] / max(res["loadgen_wall_s"], 1e-9), 2)
    if "loadgen_cpu_s" in res:
        line.append(f"loadgen cpu {res['loadgen_cpu_s']:.1f} s / wall {res['loadgen_wall_s']:.1f} s, redis cpu {res.get('redis_cpu_s')} s, others {res.get('others_cores')} cores")
    line.append("rc " + str(res["loadgen_rc"]))
    idle = [l for l in res["machine"] if l.startswith("idle_before")]
    if idle:
        line.append(idle[0])
    line.append(res["machine"][0].split(" at ")[0].split("loadavg=")[-1] + " -> " + res["machine"][-1].split(" at ")[0].split("loadavg=")[-1])
    json.dump(res, open(os.path.join(out, "result.json"), "w"), indent=1)
    print(" | ".join(line))
    csvp = os.path.join(out, "sweep.csv")
    if os.path.exists(csvp):
        print(open(csvp).read())


if __name__ == "__main__":
    main(sys.argv[1])
