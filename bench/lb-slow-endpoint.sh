#!/usr/bin/env bash
# Tail latency with one slow endpoint: four HTTP backends, three answering
# after 1 ms and one after 10 ms (10x slower), behind ringmesh (one worker)
# with round_robin, least_request and peak_ewma, in the same run. Every
# request opens a new connection (so every request is a balancing
# decision), at a fixed open-loop rate with coordinated-omission
# correction. ROUNDS interleaved rounds; medians of p50/p99/p99.9.
# WARMUP (default 30s) runs before measuring: peak_ewma's estimates move
# with a 10 s decay from a 30 ms prior, so it needs ~20-30 s of traffic to
# learn (Linkerd's constants).
#
# Usage: bench/lb-slow-endpoint.sh [seconds per run (default 10)] [requests/s (default 1000)]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; RATE=${2:-1000}; ROUNDS=${ROUNDS:-3}; WARMUP=${WARMUP:-30s}
PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
POLICIES=${POLICIES:-"round_robin least_request peak_ewma"}
EWMA=${EWMA:-}   # e.g. "{ decay: 1s }": peak_ewma's constants (default Linkerd's)
WORK=$(mktemp -d); PIDS=()
cleanup() {
  for p in "${PIDS[@]}" $(cat "$WORK/pid" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
cargo build --release -q
RM=target/release/ringmesh
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

for i in 0 1 2; do
  taskset -c "$LOAD_CPU" "$RM" bench serve http --delay 1ms --listen 127.0.0.1:1862$i >/dev/null 2>&1 & PIDS+=($!); disown
done
taskset -c "$LOAD_CPU" "$RM" bench serve http --delay 10ms --listen 127.0.0.1:18623 >/dev/null 2>&1 & PIDS+=($!); disown
for i in 0 1 2 3; do wait_port 1862$i; done

run() { # policy -> "p50 p99 p999 errors"
  cat > "$WORK/rm.yaml" <<YAML
admin: { listen: 127.0.0.1:18625 }
listeners:
  - { name: l, listen: 127.0.0.1:18626, cluster: c, access_log: false }
clusters:
  - name: c
    lb: $1
$( [ "$1" = peak_ewma ] && [ -n "$EWMA" ] && echo "    peak_ewma: $EWMA" )
    endpoints: [127.0.0.1:18620, 127.0.0.1:18621, 127.0.0.1:18622, 127.0.0.1:18623]
    circuit_breakers: { max_connections: 100000 }
YAML
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$RM" run -c "$WORK/rm.yaml" --workers 1 >"$WORK/rm.log" 2>&1 &
  echo $! > "$WORK/pid"; wait_port 18626
  "$RM" bench http http://127.0.0.1:18626/ --new-connection-per-request --rate "$RATE" \
    -c 64 -t 1 --cpus "$LOAD_CPU" -d "${SECS}s" --warmup "$WARMUP" --json -q > "$WORK/out.json"
  kill -9 "$(cat "$WORK/pid")"; wait "$(cat "$WORK/pid")" 2>/dev/null || true
  python3 - "$WORK/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(l["p50"], l["p99"], l["p999"], sum(r["errors"].values()))
PY
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
  for p in $POLICIES; do
    line=$(run "$p")
    echo "round $round $p: p50/p99/p99.9 ms, errors: $line" >&2
    RESULTS[$p]+="$line;"
  done
done

echo "| policy | p50 ms | p99 ms | p99.9 ms | p99 vs round_robin | errors |"
echo "|---|---|---|---|---|---|"
rr_p99=""
for p in $POLICIES; do
  python3 - "$p" "${RESULTS[$p]}" "${rr_p99:-}" <<'PY'
import statistics, sys
p, rows, rr = sys.argv[1], [r.split() for r in sys.argv[2].split(";") if r], sys.argv[3]
med = lambda i: statistics.median(float(r[i]) for r in rows)
p99 = med(1)
ratio = f"{p99 / float(rr):.2f}x" if rr else "1.00x"
print(f"| {p} | {med(0):.2f} | {p99:.2f} | {med(2):.2f} | {ratio} | {sum(int(r[3]) for r in rows)} |")
PY
  if [ -z "$rr_p99" ]; then
    rr_p99=$(python3 -c "import statistics,sys; print(statistics.median(float(r.split()[1]) for r in sys.argv[1].split(';') if r))" "${RESULTS[$p]}")
  fi
done
