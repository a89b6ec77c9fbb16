#!/usr/bin/env python3
"""Medians over repeated bench/run.sh runs.

    bench/median.py DIR...      (DIRs named <label>-<rep>, e.g. /tmp/bench/b-4000-1)

Groups the directories by label (the name less its last -<rep>), reads
each result.json (bench/analyze.py) and prints one markdown row per
label with the median of each figure, plus the per-run values of the
headline figure so the spread is visible.
"""
import json
import os
import statistics
import sys
from collections import OrderedDict


def get(r, path):
    cur = r
    for p in path.split("."):
        if isinstance(cur, list):
            cur = cur[int(p)]
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            return None
    return cur


def loadavg(r, which):
    line = r["machine"][0 if which == "before" else -1]
    return float(line.split('loadavg="')[1].split()[0])


FIELDS = [
    ("publish/s", "loadgen.publish_achieved"),
    ("delivered/s", "loadgen.per_second"),
    ("lost", "loadgen.lost"),
    ("missing", "loadgen.missing"),
    ("p50 ms", "loadgen.p50"),
    ("p99 ms", "loadgen.p99"),
    ("p999 ms", "loadgen.p999"),
    ("gw cpu s/s", "steady.cpu_s_per_s"),
    ("gw µs/delivery", "steady.cpu_us_per_delivery"),
    ("frames/write", "steady.frames_per_write"),
    ("gw rss MiB", "rss"),
    ("loadgen cpu s/s", "lg"),
    ("others cores", "others_cores"),
]


def value(r, key):
    if key == "rss":
        vals = [g.get("rss_window_median") or 0 for g in r["gateways"]]
        return round(sum(vals) / 1048576, 1)
    if key == "lg":
        return round(r["loadgen_cpu_s"] / r["loadgen_wall_s"], 2) if r.get("loadgen_wall_s") else None
    return get(r, key)


def main(dirs):
    groups = OrderedDict()
    for d in dirs:
        p = os.path.join(d, "result.json")
        if not os.path.exists(p):
            continue
        label = os.path.basename(d.rstrip("/")).rsplit("-", 1)[0]
        groups.setdefault(label, []).append(json.load(open(p)))
    head = ["label", "runs"] + [f for f, _ in FIELDS] + ["load 1m (before→after)", "delivered/s per run", "p99 per run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, rs in groups.items():
        row = [label, str(len(rs))]
        for _, key in FIELDS:
            vals = [v for v in (value(r, key) for r in rs) if v is not None]
            row.append(f"{statistics.median(vals):g}" if vals else "")
        loads = ", ".join(f"{loadavg(r, 'before'):.2f}→{loadavg(r, 'after'):.2f}" for r in rs)
        row.append(loads)
        row.append(", ".join(str(get(r, "loadgen.per_second")) for r in rs))
        row.append(", ".join(str(get(r, "loadgen.p99")) for r in rs))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
