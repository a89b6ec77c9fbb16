#!/usr/bin/env python3
"""Redis and /proc side of bench/orders.sh, without dependencies (a tiny
RESP client over a socket, so sampling does not fork redis-cli).

  orders_redis.py sample OUTDIR STREAM [EVERY_S]
      Until OUTDIR/.stop exists (at most 2 h), every EVERY_S (0.25) writes
      one JSON line to OUTDIR/samples.jsonl: unix ms, the request stream's
      XLEN and its consumer group's lag / pending / entries-read /
      last-delivered id (XINFO GROUPS), Redis' own CPU, the CPU ticks of
      every process named in OUTDIR/pids/<name>.pid, the XLEN round trip
      (ms) as a probe of Redis latency, (plus its children:
      loadgen's workers) and the machine's busy/total ticks.
  orders_redis.py dump OUTDIR STREAM
      Writes every request still in the stream to OUTDIR/requests.csv:
      stream id, the gateway's receive ts (ms), corr, node.
  orders_redis.py commandstats FILE
      Writes Redis' INFO commandstats (calls and µs per command) to FILE.
  orders_redis.py monitor OUTDIR DELAY_S SECONDS
      After DELAY_S, records Redis MONITOR for SECONDS into
      OUTDIR/monitor.txt (every command with its µs timestamp and client
      address; costly for Redis, so only on a private one, -M).
  orders_redis.py prefill STREAM COUNT NODE ACCOUNTS
      XADDs COUNT valid order requests (as a gateway would: corr, node
      NODE, account TRD<i mod ACCOUNTS>, an order on AAPL/MSFT, ts now),
      pipelined, so an order service can be timed draining them without
      any gateway in front (bench/order_service.sh).
  orders_redis.py cleanup PREFIX
      Deletes every key under PREFIX (SCAN + UNLINK), so runs do not
      leave history streams behind in the shared Redis.

REDIS (default redis://127.0.0.1:6379) says where Redis is.
"""
import json
import os
import socket
import sys
import time


class Resp:
    def __init__(self, url):
        hostport = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=5)
        self.buf = b""

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)


def pairs(flat):
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


CLK = os.sysconf("SC_CLK_TCK")


def proc_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    total = sum(v)
    return total - v[3] - v[4], total


def sample(out, stream, every):
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    pids_dir = os.path.join(out, "pids")
    deadline = time.time() + 7200
    with open(os.path.join(out, "samples.jsonl"), "a") as f:
        while not os.path.exists(os.path.join(out, ".stop")) and time.time() < deadline:
            t0 = time.time()
            row = {"t": int(t0 * 1000)}
            try:
                t_rtt = time.perf_counter()
                row["xlen"] = r.cmd("XLEN", stream)
                # One round trip as any client sees it now, ms.
                row["rtt_ms"] = round((time.perf_counter() - t_rtt) * 1000, 3)
                groups = r.cmd("XINFO", "GROUPS", stream)
                for g in groups or []:
                    g = pairs(g)
                    row["lag"] = g.get("lag")
                    row["pending"] = g.get("pending")
                    row["entries_read"] = g.get("entries-read")
                    row["last_delivered"] = g.get("last-delivered-id")
                    row["consumers"] = g.get("consumers")
            except RuntimeError as e:  # no stream or group yet
                row["redis_error"] = str(e)[:80]
            info = r.cmd("INFO", "cpu")
            for line in info.splitlines():
                if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
                    k, v = line.split(":")
                    row[k] = float(v)
            cpu = {}
            if os.path.isdir(pids_dir):
                for name in sorted(os.listdir(pids_dir)):
                    try:
                        pid = int(open(os.path.join(pids_dir, name)).read().split()[0])
                    except (OSError, ValueError, IndexError):
                        continue
                    ticks = proc_ticks(pid)
                    if ticks is None:
                        continue
                    if name.startswith("loadgen"):
                        for c in children(pid):
                            ticks += proc_ticks(c) or 0
                    cpu[name.rsplit(".pid", 1)[0]] = ticks
            row["cpu_ticks"] = cpu
            row["busy_ticks"], row["total_ticks"] = machine_ticks()
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(max(0.0, every - (time.time() - t0)))


def dump(out, stream):
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    start = "-"
    n = 0
    with open(os.path.join(out, "requests.csv"), "w") as f:
        f.write("stream_id,gateway_ts_ms,corr,node\n")
        while True:
            batch = r.cmd("XRANGE", stream, start, "+", "COUNT", 10000)
            if not batch:
                break
            for entry_id, fields in batch:
                req = json.loads(pairs(fields).get("req", "{}"))
                f.write("%s,%s,%s,%s\n" % (entry_id, req.get("ts", ""), req.get("corr", ""), req.get("node", "")))
                n += 1
            start = "(" + batch[-1][0]
    print("dumped %d requests" % n, file=sys.stderr)


def commandstats(path):
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    with open(path, "w") as f:
        f.write(r.cmd("INFO", "commandstats"))


def monitor(out, delay, seconds):
    time.sleep(delay)
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    r.sock.sendall(b"MONITOR\r\n")
    end = time.time() + seconds
    n = 0
    with open(os.path.join(out, "monitor.txt"), "w") as f:
        while time.time() < end:
            line = r._line().decode("utf-8", "replace")
            if line.startswith("+") and line != "+OK":
                f.write(line[1:] + "\n")
                n += 1
    print("monitor: %d commands in %.1f s" % (n, seconds), file=sys.stderr)


def prefill(stream, count, node, accounts):
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    now = int(time.time() * 1000)
    batch = 1000
    t0 = time.time()
    for start in range(0, count, batch):
        out = []
        for i in range(start, min(count, start + batch)):
            req = json.dumps({"corr": "p%d" % i, "node": node, "account": "TRD%d" % (i % accounts),
                              "order": {"symbol": ("AAPL", "MSFT")[i % 2], "side": ("buy", "sell")[i % 2],
                                        "qty": 1 + i % 500, "price": 150.25},
                              "ts": now}, separators=(",", ":"))
            args = [b"XADD", stream.encode(), b"*", b"req", req.encode()]
            out.append(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        r.sock.sendall(b"".join(out))
        for _ in out:
            r._read()
    print("prefilled %d requests in %.1f s" % (count, time.time() - t0), file=sys.stderr)


def cleanup(prefix):
    if not prefix or "*" in prefix or len(prefix) < 8:
        sys.exit("refusing to delete keys under %r" % prefix)
    r = Resp(os.environ.get("REDIS", "redis://127.0.0.1:6379"))
    cursor, n = "0", 0
    while True:
        cursor, keys = r.cmd("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
        if keys:
            n += r.cmd("UNLINK", *keys)
        if cursor == "0":
            break
    print("deleted %d keys under %s" % (n, prefix), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    what = sys.argv[1]
    if what == "sample":
        sample(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.25)
    elif what == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif what == "commandstats":
        commandstats(sys.argv[2])
    elif what == "monitor":
        monitor(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    elif what == "prefill":
        prefill(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif what == "cleanup":
        cleanup(sys.argv[2])
    else:
        sys.exit(__doc__)
