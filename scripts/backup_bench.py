#!/usr/bin/env python3
"""Backup and restore, ConcordKV against etcd, with the same data on the same machine: a
three-member cluster of each (scripts/scale.py's), loaded through etcd's gRPC API with
100-byte values, then:

- backup: `concordctl snapshot save` (ConcordKV) and `etcdctl snapshot save` (etcd) from a
  follower: time, the backup file's size, the peak memory of the backup process (ru_maxrss)
  and of the member serving it (VmRSS sampled every 50 ms, against its RSS just before);
- write latency while the backup runs: back-to-back runs of 2,000 writes (16 connections) from
  the start to the end of the backup, against the same runs just before: p99 (the worst run's,
  and the median run's);
- restore: `concordctl snapshot restore` and `etcdctl snapshot restore` of that file into a new
  member's data dir: time and peak memory.

    scripts/backup_bench.py NODE_BIN CTL_BIN [KEYS]      # default 1000000
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import scale


def run_measured(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS bytes of the process, stdout)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    took = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.decode(errors='replace')[-2000:]}")
    return took, usage.ru_maxrss * 1024, out.decode(errors="replace")


def write_runs(cluster, until, label):
    """2,000-write runs back to back until `until()` is true (at least one); their p99s."""
    p99s = []
    n = 0
    while True:
        r = scale.bench(cluster, 16, 2000, f"{label}-{n}-")
        p99s.append(r["p99_ms"])
        n += 1
        if until():
            return p99s


def measure(cls, keys):
    work = tempfile.mkdtemp(prefix=f"backup-{cls.name}-", dir="/var/tmp")
    c = cls(work)
    try:
        c.start_all()
        c.wait_ready(range(3), 60)
        load = scale.bench(c, 64, keys, "backup-")
        time.sleep(3)
        before = write_runs(c, lambda: True, "before") + write_runs(c, lambda: True, "before2")
        member = 1
        endpoint = c.endpoints()[member]
        pid = c.procs[member].pid
        rss_before = scale.proc_field(pid, "VmRSS")
        peak = [rss_before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], scale.proc_field(pid, "VmRSS"))
                time.sleep(0.05)

        file = os.path.join(work, "backup.db")
        if cls is scale.Concord:
            api = f"http://127.0.0.1:{c.base + 3 * member + 1}"
            cmd = [scale.CTL, "--endpoints", api, "snapshot", "save", file]
        else:
            cmd = ["etcdctl", "--endpoints", endpoint, "snapshot", "save", file]
        env = dict(os.environ, ETCDCTL_API="3")
        result = {}

        def backup():
            result["took"], result["rss"], _ = run_measured(cmd, env)
            done.set()

        threads = [threading.Thread(target=sample), threading.Thread(target=backup)]
        for t in threads:
            t.start()
        during = write_runs(c, done.is_set, "during")
        for t in threads:
            t.join()
        size = os.path.getsize(file)
        if os.environ.get("KEEP_BACKUP") and cls is scale.Concord:
            # For profiling the restore by hand: the backup outlives the run.
            shutil.copy(file, os.environ["KEEP_BACKUP"])
        target = os.path.join(work, "restored")
        if cls is scale.Concord:
            rcmd = [scale.CTL, "snapshot", "restore", file, "--data-dir", target, "--name", "r0",
                    "--initial-cluster", "r0=127.0.0.1:1"]
        else:
            rcmd = ["etcdctl", "snapshot", "restore", file, "--data-dir", target, "--name", "r0",
                    "--initial-cluster", "r0=http://127.0.0.1:1",
                    "--initial-advertise-peer-urls", "http://127.0.0.1:1"]
        r_took, r_rss, _ = run_measured(rcmd, env)
        row = {
            "system": c.name, "keys": keys, "load_ops": load["throughput"],
            "backup_s": result["took"], "backup_mb": size / 1e6,
            "backup_process_peak_mb": result["rss"] / 1e6,
            "member_rss_before_mb": rss_before / 1e6, "member_rss_peak_mb": peak[0] / 1e6,
            "p99_before_ms": max(before), "p99_during_worst_ms": max(during),
            "p99_during_median_ms": statistics.median(during), "runs_during": len(during),
            "restore_s": r_took, "restore_peak_mb": r_rss / 1e6,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        for p in c.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def table(a, b):
    print(f"\n{a['keys']:,} keys, {scale.VALUE}-byte values")
    print(f'{"":42} {"ConcordKV":>11} {"etcd":>11} {"ratio":>7}')
    for label, key in [
        ("backup time s", "backup_s"),
        ("backup file MB", "backup_mb"),
        ("backup process peak RSS MB", "backup_process_peak_mb"),
        ("serving member RSS before MB", "member_rss_before_mb"),
        ("serving member RSS peak during MB", "member_rss_peak_mb"),
        ("write p99 before ms (worst run)", "p99_before_ms"),
        ("write p99 during backup ms (worst run)", "p99_during_worst_ms"),
        ("write p99 during backup ms (median run)", "p99_during_median_ms"),
        ("restore time s", "restore_s"),
        ("restore process peak RSS MB", "restore_peak_mb"),
    ]:
        x, y = a[key], b[key]
        ratio = y / x if x else float("nan")
        print(f"{label:42} {x:>11.2f} {y:>11.2f} {ratio:>6.2f}x")
    print("\nratio: etcd / ConcordKV, above 1 means ConcordKV is ahead (less time, memory or latency)")


if __name__ == "__main__":
    scale.NODE, scale.CTL = sys.argv[1], sys.argv[2]
    keys = int(sys.argv[3]) if len(sys.argv) > 3 else 1000000
    systems = os.environ.get("SYSTEMS", "concordkv,etcd").split(",")
    a = measure(scale.Concord, keys) if "concordkv" in systems else None
    b = measure(scale.Etcd, keys) if "etcd" in systems else None
    if a and b:
        table(a, b)
