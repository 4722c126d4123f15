#!/usr/bin/env bash
# Is `ringmesh bench http` a ruler at least as fast as wrk? Both drive
# HTTP/1.1 keep-alive against the same nginx (one worker, pinned to CPU
# $TARGET_CPU), each with ONE thread pinned to CPU $LOAD_CPU, interleaved
# for $ROUNDS rounds. Reports req/s and the generator's own CPU per request
# (utime+stime from /proc), medians over the rounds.
#
# Usage: bench/generator-vs-wrk.sh [seconds (default 10)] [connections (default 50)]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; CONNS=${2:-50}; ROUNDS=${ROUNDS:-3}
LOAD_CPU=${LOAD_CPU:-0}; TARGET_CPU=${TARGET_CPU:-1}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
need() { command -v "$1" >/dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; } || { echo "install $2" >&2; exit 1; }; }
need wrk wrk; need nginx nginx
cargo build --release -q
RM=target/release/ringmesh
PORT=18480
sed -e "s|{{WORK}}|$WORK|g" -e "s|{{LISTEN}}|127.0.0.1:$PORT|" bench/peers/nginx-static.conf > "$WORK/nginx.conf"
taskset -c "$TARGET_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" -e stderr 2>"$WORK/nginx.log" & PIDS+=($!)
sleep 0.5
# run_one NAME CMD... -> "NAME<TAB>req/s<TAB>cpu_seconds"
run_one() {
  local name=$1; shift
  # Exact CPU of the generator: getrusage(RUSAGE_CHILDREN) after it exits.
  local cpu
  cpu=$(python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$WORK/out.txt" taskset -c "$LOAD_CPU" "$@")
  local rps
  case "$name" in
    wrk) rps=$(awk '/Requests\/sec/{print $2}' "$WORK/out.txt") ;;
    *) rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_per_sec"])' "$WORK/out.txt") ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$rps" "$cpu" >> "$WORK/samples"
}
for r in $(seq "$ROUNDS"); do
  run_one wrk wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$PORT/"
  run_one ringmesh "$RM" bench http "http://127.0.0.1:$PORT/" -t 1 -c "$CONNS" -d "${DUR}s" --warmup 0s --json
  echo "round $r done" >&2
done
python3 - "$WORK/samples" "$DUR" <<'PY'
import sys, statistics as st
dur = float(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    name, rps, cpu = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(rps), float(cpu)))
print("| generator (1 thread) | req/s median (min-max) | generator CPU per request, µs (median) |")
print("|---|---|---|")
for name, v in rows.items():
    r = [x for x, _ in v]
    per_req = [cpu * 1e6 / (rps * dur) for rps, cpu in v if rps > 0]
    print(f"| {name} | {st.median(r):.0f} ({min(r):.0f}-{max(r):.0f}) | {st.median(per_req):.2f} |")
PY
