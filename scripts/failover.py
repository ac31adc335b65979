#!/usr/bin/env python3
"""Write unavailability after kill -9 of the leader: ConcordKV against etcd, same machine, same
client. Each round starts a fresh 3-member cluster, runs one writer per surviving member (a
write, wait for its answer with a 2 s timeout, at once again), kills the leader with SIGKILL and
measures the time from the kill to the first acknowledgement of a write issued after it. Prints
each round and the medians; `ratio` is etcd's median over ConcordKV's (above 1: ConcordKV
recovers faster).

    scripts/failover.py NODE_BIN [ROUNDS]     # etcd from PATH (Debian's etcd-server)
"""
import base64
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TIMEOUT = 2.0


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Cluster:
    """Three members on 127.0.0.1: peer ports base, base+2, base+4; client ports one above."""

    def __init__(self, binary, work, base):
        self.binary, self.work = binary, work
        self.peer = [base + 2 * i for i in range(3)]
        self.api = [base + 2 * i + 1 for i in range(3)]


class Concord(Cluster):
    name = "concordkv"

    def start(self):
        peers = ",".join(f"c{i}:127.0.0.1:{self.peer[i]}" for i in range(3))
        self.procs = [
            subprocess.Popen(
                [self.binary, "--node-id", f"c{i}", "--listen", f"127.0.0.1:{self.peer[i]}",
                 "--api", f"127.0.0.1:{self.api[i]}", "--peers", peers,
                 "--etcd-listen", "127.0.0.1:0",
                 "--data-dir", os.path.join(self.work, f"c{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(3)
        ]

    def leader(self):
        for i in range(3):
            try:
                s, body = get(self.api[i], "/api/status")
                if s == 200 and json.loads(body).get("role") == "leader":
                    return i
            except OSError:
                pass
        return None

    def write(self, i, key):
        s, _ = post(self.api[i], "/api/set", {"key": key, "value": "v"})
        return s == 200


class Etcd(Cluster):
    name = "etcd"

    def start(self):
        cluster = ",".join(f"e{i}=http://127.0.0.1:{self.peer[i]}" for i in range(3))
        self.procs = [
            subprocess.Popen(
                [self.binary, "--name", f"e{i}", "--data-dir", os.path.join(self.work, f"e{i}"),
                 "--listen-client-urls", f"http://127.0.0.1:{self.api[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.api[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "failover", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(3)
        ]

    def leader(self):
        for i in range(3):
            try:
                s, body = post(self.api[i], "/v3/maintenance/status", {})
                if s != 200:
                    continue
                st = json.loads(body)
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return i
            except OSError:
                pass
        return None

    def write(self, i, key):
        b64 = lambda s: base64.b64encode(s.encode()).decode()
        s, _ = post(self.api[i], "/v3/kv/put", {"key": b64(key), "value": b64("v")})
        return s == 200


def round_once(kind, binary, base):
    work = tempfile.mkdtemp(prefix=f"failover-{kind.name}-", dir="/var/tmp")
    c = kind(binary, work, base)
    c.start()
    try:
        deadline = time.time() + 30
        leader = None
        while leader is None and time.time() < deadline:
            time.sleep(0.1)
            leader = c.leader()
        if leader is None:
            raise RuntimeError(f"{kind.name}: no leader in 30 s")
        # Let the cluster settle (etcd members finish publishing themselves).
        time.sleep(1.0)
        acks = []  # (issued, acknowledged) of every acknowledged write
        stop = threading.Event()

        def writer(i):
            n = 0
            while not stop.is_set():
                n += 1
                issued = time.time()
                try:
                    if c.write(i, f"w{i}/{n}"):
                        acks.append((issued, time.time()))
                        continue
                except OSError:
                    pass
                time.sleep(0.005)

        survivors = [i for i in range(3) if i != leader]
        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in survivors]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed = time.time()
        c.procs[leader].send_signal(signal.SIGKILL)
        deadline = killed + 20
        gap = None
        while time.time() < deadline:
            # Writes issued after the kill: one in flight at the kill may be acknowledged by a
            # leader that committed it just before dying.
            after = [acked for issued, acked in list(acks) if issued > killed]
            if after:
                gap = min(after) - killed
                break
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(timeout=5)
        return gap
    finally:
        for p in c.procs:
            try:
                p.kill()
            except OSError:
                pass
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    node = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    etcd = shutil.which("etcd")
    results = {}
    for kind, binary, base in ((Concord, node, 19380), (Etcd, etcd, 23880)):
        if binary is None:
            print(f"{kind.name}: not installed, skipped")
            continue
        gaps = []
        for r in range(rounds):
            gap = round_once(kind, binary, base)
            gaps.append(gap if gap is not None else float("inf"))
            print(f"{kind.name:9} round {r + 1}: first acknowledged write {gaps[-1] * 1000:7.0f} ms after kill -9 of the leader", flush=True)
        results[kind.name] = gaps
    print()
    for name, gaps in results.items():
        print(f"{name:9} median {statistics.median(gaps) * 1000:6.0f} ms   max {max(gaps) * 1000:6.0f} ms   ({len(gaps)} rounds)")
    if len(results) == 2:
        a, b = (statistics.median(results[n]) for n in ("concordkv", "etcd"))
        print(f"ratio (etcd median / concordkv median): {b / a:.2f}x")


if __name__ == "__main__":
    main()
