#!/usr/bin/env python3
"""ConcordKV against etcd with the data in place: a three-member cluster of each, on this
machine, one after the other, loaded through etcd's gRPC API by the same tool
(`concordctl bench --target etcd-grpc`) with 100-byte values, to each size in turn (100k, then
1M keys). At each size it reports:

- load throughput (64 connections) and the bytes the members wrote to disk, per byte stored
  (/proc/PID/io write_bytes since start, summed over members, over keys x (key + value));
- writes with the data in place (16 connections): throughput, p99 and max latency;
- resident memory per member (VmRSS, and the peak VmHWM) and data on disk per member;
- one member killed (-9) and restarted: time until it answers ready;
- the whole cluster killed (-9) and restarted: time until every member answers ready.

Ratios are etcd's over ConcordKV's where lower is better for ConcordKV (latency, memory, disk,
restart), ConcordKV's over etcd's for throughput: above 1 is ConcordKV ahead.

    scripts/scale.py NODE_BIN CTL_BIN [KEYS ...]     # default 100000 1000000
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

VALUE = 100


def http_ok(port, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status == 200 and b"false" not in body
    except OSError:
        return False


def proc_field(pid, name):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def write_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


class Cluster:
    def __init__(self, work):
        self.work = work
        self.procs = [None] * 3
        self.written = [0] * 3  # write_bytes of processes that have exited

    def start_all(self):
        for i in range(3):
            self.start(i)

    def kill(self, i):
        p = self.procs[i]
        self.written[i] += write_bytes(p.pid)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def kill_all(self):
        for i in range(3):
            self.kill(i)

    def wait_ready(self, members, timeout=600):
        t0 = time.monotonic()
        pending = set(members)
        while pending and time.monotonic() - t0 < timeout:
            pending = {i for i in pending if not self.ready(i)}
            if pending:
                time.sleep(0.05)
        if pending:
            raise RuntimeError(f"{self.name}: members {sorted(pending)} not ready in {timeout}s")
        return time.monotonic() - t0

    def total_written(self):
        return sum(self.written[i] + write_bytes(self.procs[i].pid) for i in range(3))


class Concord(Cluster):
    name = "concordkv"
    base = 29300

    def start(self, i):
        peers = ",".join(f"c{j}:127.0.0.1:{self.base + 3 * j}" for j in range(3))
        self.procs[i] = subprocess.Popen(
            [NODE, "--node-id", f"c{i}", "--listen", f"127.0.0.1:{self.base + 3 * i}",
             "--api", f"127.0.0.1:{self.base + 3 * i + 1}", "--peers", peers,
             "--etcd-listen", f"127.0.0.1:{self.base + 3 * i + 2}",
             "--data-dir", os.path.join(self.work, f"c{i}")],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, f"c{i}.log"), "ab"))

    def ready(self, i):
        return http_ok(self.base + 3 * i + 1, "/readyz")

    def endpoints(self):
        return [f"127.0.0.1:{self.base + 3 * i + 2}" for i in range(3)]

    def data_dirs(self):
        return [os.path.join(self.work, f"c{i}") for i in range(3)]


class Etcd(Cluster):
    name = "etcd"
    base = 29400

    def start(self, i):
        cluster = ",".join(f"e{j}=http://127.0.0.1:{self.base + 2 * j}" for j in range(3))
        env = dict(os.environ)
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.work, f"e{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{self.base + 2 * i + 1}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.base + 2 * i + 1}",
             "--listen-peer-urls", f"http://127.0.0.1:{self.base + 2 * i}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.base + 2 * i}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", "scale", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, f"e{i}.log"), "ab"),
            env=env)

    def ready(self, i):
        # etcd's /health: true once the member has a leader and answers a read.
        return http_ok(self.base + 2 * i + 1, "/health")

    def endpoints(self):
        return [f"127.0.0.1:{self.base + 2 * i + 1}" for i in range(3)]

    def data_dirs(self):
        return [os.path.join(self.work, f"e{i}") for i in range(3)]


def bench(cluster, conns, requests, prefix):
    out = subprocess.run(
        [CTL, "-o", "json", "bench", "--target", "etcd-grpc", "--op", "write",
         "--connections", str(conns), "--requests", str(requests), "--value-size", str(VALUE),
         "--key-prefix", prefix, "--label", cluster.name,
         "--bench-endpoints", ",".join(cluster.endpoints())],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def measure(cls, sizes):
    work = tempfile.mkdtemp(prefix=f"scale-{cls.name}-", dir="/var/tmp")
    c = cls(work)
    rows = []
    try:
        c.start_all()
        c.wait_ready(range(3), 60)
        loaded, stored_bytes = 0, 0
        for size in sizes:
            prefix = f"scale-{size}-"
            load = bench(c, 64, size - loaded, prefix)
            key_len = len(prefix) + 1 + len(str(size))
            stored_bytes += (size - loaded) * (key_len + VALUE)
            loaded = size
            time.sleep(3)
            steady = bench(c, 16, 20000, f"steady-{size}-")
            loaded += 20000
            stored_bytes += 20000 * (len(f"steady-{size}-") + 6 + VALUE)
            time.sleep(2)
            written = c.total_written()
            rss = [proc_field(p.pid, "VmRSS") for p in c.procs]
            hwm = [proc_field(p.pid, "VmHWM") for p in c.procs]
            disk = [du(d) for d in c.data_dirs()]
            c.kill(2)
            t0 = time.monotonic()
            c.start(2)
            c.wait_ready([2])
            member_restart = time.monotonic() - t0
            time.sleep(2)
            c.kill_all()
            t0 = time.monotonic()
            c.start_all()
            c.wait_ready(range(3))
            cluster_restart = time.monotonic() - t0
            row = {
                "system": c.name, "keys": size,
                "load_ops": load["throughput"], "load_errors": load["errors"],
                "written_per_stored": written / 3 / max(stored_bytes, 1),
                "steady_ops": steady["throughput"], "steady_p99_ms": steady["p99_ms"],
                "steady_max_ms": steady["max_ms"], "steady_errors": steady["errors"],
                "rss_mb": sum(rss) / 3 / 1e6, "peak_rss_mb": max(hwm) / 1e6,
                "disk_mb": sum(disk) / 3 / 1e6,
                "member_restart_s": member_restart, "cluster_restart_s": cluster_restart,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(2)
    finally:
        for p in c.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows):
    by = {(r["system"], r["keys"]): r for r in rows}
    sizes = sorted({r["keys"] for r in rows})
    metrics = [
        ("load writes/s (64 conns)", "load_ops", True),
        ("disk bytes written per byte stored", "written_per_stored", False),
        ("writes/s, data in place (16 conns)", "steady_ops", True),
        ("write p99 ms", "steady_p99_ms", False),
        ("write max ms", "steady_max_ms", False),
        ("RSS per member MB", "rss_mb", False),
        ("peak RSS (any member) MB", "peak_rss_mb", False),
        ("disk per member MB", "disk_mb", False),
        ("member restart to ready s", "member_restart_s", False),
        ("whole-cluster restart s", "cluster_restart_s", False),
    ]
    for size in sizes:
        a, b = by.get(("concordkv", size)), by.get(("etcd", size))
        if not a or not b:
            continue
        print(f"\n{size:,} keys, {VALUE}-byte values")
        print(f'{"":38} {"ConcordKV":>11} {"etcd":>11} {"ratio":>7}')
        for label, key, higher_better in metrics:
            x, y = a[key], b[key]
            ratio = (x / y if higher_better else y / x) if x and y else float("nan")
            print(f"{label:38} {x:>11.2f} {y:>11.2f} {ratio:>6.2f}x")
    print("\nratio: above 1 means ConcordKV is ahead (throughput: ConcordKV/etcd; "
          "the rest: etcd/ConcordKV)")


if __name__ == "__main__":
    NODE, CTL = sys.argv[1], sys.argv[2]
    sizes = [int(s) for s in sys.argv[3:]] or [100000, 1000000]
    systems = os.environ.get("SYSTEMS", "concordkv,etcd").split(",")
    rows = []
    if "concordkv" in systems:
        rows += measure(Concord, sizes)
    if "etcd" in systems:
        rows += measure(Etcd, sizes)
    table(rows)
