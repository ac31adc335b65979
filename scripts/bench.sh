#!/usr/bin/env bash
# Benchmarks a three-node ConcordKV cluster against a three-node etcd cluster (Debian's
# etcd-server) on this machine, one after the other, with the same load from the same tool
# (`concordctl bench`): 64-byte values, unique keys, 1/16/64 connections, writes and
# linearizable reads, twice: over HTTP (ConcordKV's seed API, etcd's v3 JSON gateway) and over
# etcd's own gRPC protocol on both sides. Prints side-by-side tables with ratios.
#
#   scripts/bench.sh            # full run (a few minutes)
#   QUICK=1 scripts/bench.sh    # fewer requests, for a smoke run
#   ONLY=watch scripts/bench.sh # the watch and lease part alone
#   ONLY=tls scripts/bench.sh   # etcd gRPC in plaintext and over TLS (client and peer ports)
#                               # on both: what TLS costs each, from certificates made here
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-prereqs.sh
WORK=$(mktemp -d /var/tmp/concord-bench.XXXXXX)
RESULTS="$WORK/results.jsonl"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

scale=1; [ -n "${QUICK:-}" ] && scale=10
requests_for() { case "$1" in 1) echo $((3000 / scale));; 16) echo $((30000 / scale));; *) echo $((60000 / scale));; esac; }

run_matrix() { # label protocol endpoints
  local label=$1 target=$2 endpoints=$3
  [ "${ONLY:-}" = watch ] && return 0
  for op in write read; do
    for conns in 1 16 64; do
      "$CTL" -o json bench --target "$target" --label "$label" --op "$op" --connections "$conns" \
        --requests "$(requests_for "$conns")" --value-size 64 --bench-endpoints "$endpoints" \
        | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$RESULTS"
    done
  done
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# Watch and lease load through etcd's gRPC API on both: change delivery to 1,000 watchers on a
# prefix with 1 and 16 writers, the memory 10,000 idle watchers cost one member, and lease
# renewals per second.
run_watch() { # label etcd-endpoints pid-of-the-first-member
  local label=$1 endpoints=$2 pid=$3 first=${2%%,*}
  for writers in 1 16; do
    "$CTL" -o json bench-watch --mode delivery --label "$label" --bench-endpoints "$endpoints" \
      --watchers 1000 --per-stream 10 --writers "$writers" --changes $((2000 / scale)) \
      | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$RESULTS"
  done
  local before after
  before=$(rss_kb "$pid")
  "$CTL" bench-watch --mode idle --bench-endpoints "$first" --watchers 10000 --per-stream 100 \
    --hold-secs 6 >"$WORK/idle.out" &
  local idle=$!
  for _ in $(seq 300); do grep -q ready "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  after=$(rss_kb "$pid")
  wait "$idle" || true
  echo "{\"target\": \"$label\", \"mode\": \"idle\", \"watchers\": 10000, \"rss_before_kb\": $before, \"rss_after_kb\": $after}" >>"$RESULTS"
  "$CTL" -o json bench-watch --mode keepalive --label "$label" --bench-endpoints "$endpoints" \
    --leases 1000 --writers 16 --seconds $((10 / scale + 2)) \
    | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$RESULTS"
}

wait_http() { # url [ca]
  for _ in $(seq 100); do curl -sf ${2:+--cacert "$2"} "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

# A CA and one certificate for every server and peer (127.0.0.1), made with openssl.
make_certs() { # dir
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=bench CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/ext" -out "$d/server.crt" 2>/dev/null
}

stop_all() {
  for p in "${PIDS[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # etcd's members are disowned (wait does not see them): until each is gone, its ports are taken.
  for p in "${PIDS[@]:-}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
}

start_concord() { # tls: "" or a certificate dir
  local tls=$1 scheme=http flags=()
  rm -rf "$WORK/concord"
  if [ -n "$tls" ]; then
    scheme=https
    flags=(--cert-file "$tls/server.crt" --key-file "$tls/server.key"
      --peer-cert-file "$tls/server.crt" --peer-key-file "$tls/server.key"
      --peer-trusted-ca-file "$tls/ca.crt")
  fi
  local peers="c1:127.0.0.1:19080,c2:127.0.0.1:19082,c3:127.0.0.1:19084"
  for i in 1 2 3; do
    local p=$((19078 + 2 * i)); local a=$((p + 1))
    "$NODE" --node-id "c$i" --listen "127.0.0.1:$p" --api "127.0.0.1:$a" --peers "$peers" \
      --etcd-listen "127.0.0.1:$((p + 100))" "${flags[@]}" \
      --data-dir "$WORK/concord/c$i" >"$WORK/c$i.log" 2>&1 &
    PIDS+=($!)
  done
  for a in 19081 19083 19085; do wait_http "$scheme://127.0.0.1:$a/readyz" ${tls:+"$tls/ca.crt"}; done
}

start_etcd() { # tls: "" or a certificate dir
  local tls=$1 scheme=http flags=()
  rm -rf "$WORK/etcd"
  if [ -n "$tls" ]; then
    scheme=https
    flags=(--cert-file "$tls/server.crt" --key-file "$tls/server.key"
      --peer-cert-file "$tls/server.crt" --peer-key-file "$tls/server.key"
      --peer-trusted-ca-file "$tls/ca.crt" --peer-client-cert-auth)
  fi
  local cluster="e1=$scheme://127.0.0.1:23801,e2=$scheme://127.0.0.1:23802,e3=$scheme://127.0.0.1:23803"
  for i in 1 2 3; do
    ETCD_UNSUPPORTED_ARCH=${ETCD_UNSUPPORTED_ARCH:-} etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
      --listen-client-urls "$scheme://127.0.0.1:2379$i" --advertise-client-urls "$scheme://127.0.0.1:2379$i" \
      --listen-peer-urls "$scheme://127.0.0.1:2380$i" --initial-advertise-peer-urls "$scheme://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      "${flags[@]}" --log-level error >"$WORK/e$i.log" 2>&1 &
    PIDS+=($!)
    disown $! 2>/dev/null || true
  done
  for i in 1 2 3; do wait_http "$scheme://127.0.0.1:2379$i/health" ${tls:+"$tls/ca.crt"}; done
}

concord_grpc="127.0.0.1:19180,127.0.0.1:19182,127.0.0.1:19184"
etcd_eps="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
https_eps() { echo "$1" | sed 's|\([^,]*\)|https://\1|g'; }

if [ "${ONLY:-}" = tls ]; then
  make_certs "$WORK/certs"
  export CONCORD_CACERT="$WORK/certs/ca.crt"
  echo "== ConcordKV: 3 nodes, plaintext then TLS"
  start_concord ""
  run_matrix concord-grpc etcd-grpc "$concord_grpc"
  stop_all
  start_concord "$WORK/certs"
  run_matrix concord-grpc-tls etcd-grpc "$(https_eps "$concord_grpc")"
  stop_all
  echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members, plaintext then TLS"
  start_etcd ""
  run_matrix etcd-grpc etcd-grpc "$etcd_eps"
  stop_all
  start_etcd "$WORK/certs"
  run_matrix etcd-grpc-tls etcd-grpc "$(https_eps "$etcd_eps")"
  stop_all
else
  echo "== ConcordKV: 3 nodes"
  start_concord ""
  run_matrix concord concord "127.0.0.1:19081,127.0.0.1:19083,127.0.0.1:19085"
  run_matrix concord-grpc etcd-grpc "$concord_grpc"
  run_watch concord "$concord_grpc" "${PIDS[0]}"
  stop_all

  echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members"
  start_etcd ""
  run_matrix etcd etcd "$etcd_eps"
  run_matrix etcd-grpc etcd-grpc "$etcd_eps"
  run_watch etcd "$etcd_eps" "${PIDS[0]}"
fi

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
watch = [r for r in rows if "mode" in r]
rows = [r for r in rows if "mode" not in r]
by = {(r["target"], r["op"], r["connections"]): r for r in rows}
for title, ours, theirs in (
    ("HTTP: ConcordKV seed API vs etcd v3 JSON gateway", "concord", "etcd"),
    ("etcd v3 gRPC on both", "concord-grpc", "etcd-grpc"),
):
    if not any(t == ours for (t, _, _) in by):
        continue
    print(f"\n{title}")
    print(f'{"op":6} {"conns":>5} | {"concord ops/s":>13} {"p50":>7} {"p99":>7} | {"etcd ops/s":>10} {"p50":>7} {"p99":>7} | {"thru x":>6} {"p99 x":>6}')
    print("-" * 96)
    for op in ("write", "read"):
        for c in (1, 16, 64):
            a, b = by.get((ours, op, c)), by.get((theirs, op, c))
            if not a or not b:
                continue
            tr = a["throughput"] / max(b["throughput"], 1e-9)
            pr = b["p99_ms"] / max(a["p99_ms"], 1e-9)
            print(f'{op:6} {c:>5} | {a["throughput"]:>13.0f} {a["p50_ms"]:>6.2f}m {a["p99_ms"]:>6.2f}m | '
                  f'{b["throughput"]:>10.0f} {b["p50_ms"]:>6.2f}m {b["p99_ms"]:>6.2f}m | {tr:>5.2f}x {pr:>5.2f}x')
            if a["errors"] or b["errors"]:
                print(f'        errors: concord {a["errors"]}, etcd {b["errors"]}')
if by:
    print("\nthru x = ConcordKV throughput / etcd throughput; p99 x = etcd p99 / ConcordKV p99 (higher is better for ConcordKV)")

if any(t == "concord-grpc-tls" for (t, _, _) in by):
    print("\nWhat TLS costs each (etcd v3 gRPC; TLS on the client and peer ports): throughput over TLS / plaintext")
    print(f'{"op":6} {"conns":>5} | {"ConcordKV TLS ops/s":>19} {"of plain":>8} | {"etcd TLS ops/s":>14} {"of plain":>8} | {"TLS ConcordKV/etcd":>18}')
    print("-" * 90)
    for op in ("write", "read"):
        for c in (1, 16, 64):
            ct, cp = by.get(("concord-grpc-tls", op, c)), by.get(("concord-grpc", op, c))
            et, ep = by.get(("etcd-grpc-tls", op, c)), by.get(("etcd-grpc", op, c))
            if not (ct and cp and et and ep):
                continue
            cr = ct["throughput"] / max(cp["throughput"], 1e-9)
            er = et["throughput"] / max(ep["throughput"], 1e-9)
            print(f'{op:6} {c:>5} | {ct["throughput"]:>19.0f} {cr:>7.2f}x | {et["throughput"]:>14.0f} {er:>7.2f}x | '
                  f'{ct["throughput"] / max(et["throughput"], 1e-9):>17.2f}x')
            if ct["errors"] or et["errors"]:
                print(f'        errors: concord {ct["errors"]}, etcd {et["errors"]}')
    print("of plain: the system's own throughput over TLS / in plaintext (closer to 1 is cheaper TLS)")

if watch:
    w = {(r["target"], r["mode"], r.get("writers")): r for r in watch}
    print("\nWatch and leases, etcd v3 gRPC on both")
    for writers in (1, 16):
        a, b = w.get(("concord", "delivery", writers)), w.get(("etcd", "delivery", writers))
        if a and b:
            print(f'1,000 watchers, {writers:>2} writer(s): delivery p50/p99 ConcordKV {a["p50_ms"]:.2f}/{a["p99_ms"]:.2f} ms, '
                  f'etcd {b["p50_ms"]:.2f}/{b["p99_ms"]:.2f} ms (p99 x {b["p99_ms"] / max(a["p99_ms"], 1e-9):.2f}); '
                  f'events/s {a["events_per_s"]:.0f} vs {b["events_per_s"]:.0f}; delivered {a["delivered"]}/{a["expected"]} vs {b["delivered"]}/{b["expected"]}')
    a, b = w.get(("concord", "idle", None)), w.get(("etcd", "idle", None))
    if a and b:
        pa = (a["rss_after_kb"] - a["rss_before_kb"]) * 1024 / a["watchers"]
        pb = (b["rss_after_kb"] - b["rss_before_kb"]) * 1024 / b["watchers"]
        print(f'10,000 idle watchers on one member: ConcordKV +{(a["rss_after_kb"] - a["rss_before_kb"]) / 1024:.1f} MB ({pa:.0f} B/watcher), '
              f'etcd +{(b["rss_after_kb"] - b["rss_before_kb"]) / 1024:.1f} MB ({pb:.0f} B/watcher); ratio {pb / max(pa, 1e-9):.2f}x')
    a, b = w.get(("concord", "keepalive", None)), w.get(("etcd", "keepalive", None))
    if a and b:
        print(f'lease renewals/s (1,000 leases, 16 streams): ConcordKV {a["renewals_per_s"]:.0f}, etcd {b["renewals_per_s"]:.0f} '
              f'({a["renewals_per_s"] / max(b["renewals_per_s"], 1e-9):.2f}x)')
PY

[ -n "${ONLY:-}" ] && exit 0
echo
echo "== write unavailability after kill -9 of the leader (scripts/failover.py)"
python3 scripts/failover.py "$NODE" "${FAILOVER_ROUNDS:-5}"
