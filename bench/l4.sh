#!/usr/bin/env bash
# L4 benchmark: TCP throughput and proxy CPU per GiB (iperf3), and RSS per
# idle proxied connection, for direct, ringmesh and HAProxy (mode tcp) in
# the same run.
#
# Method (see README.md): the proxy runs one worker pinned to CPU $PROXY_CPU;
# iperf3 client and server share CPU $LOAD_CPU. On 2 cores the load side
# saturates first, so compare CPU seconds per GiB forwarded (from
# /proc/PID/stat utime+stime) rather than raw Gbit/s alone.
#
# Usage: bench/l4.sh [seconds-per-run (default 10)] [idle connections (default 9900:
# 10,000 proxied connections need 20,000+ descriptors, above the 20,000
# hard limit of the machine this was written on)]
# Needs: iperf3, haproxy, python3 (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
IDLE=${2:-9900}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else echo "missing $1: apt-get install $2" >&2; exit 1; fi
}
need iperf3 iperf3; need haproxy haproxy; need python3 python3
# 10k idle proxied connections need ~20k descriptors in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q
RM=target/release/ringmesh

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; tail -5 "$WORK"/*.log >&2; return 1
}

taskset -c "$LOAD_CPU" iperf3 -s -p 5201 -D --logfile "$WORK/iperf-server.log"
sleep 0.3; PIDS+=("$(pgrep -f 'iperf3 -s -p 5201' | head -1)")

# run_iperf PORT -> prints "bits_per_second bytes"
run_iperf() {
  taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$1" -t "$DUR" -J > "$WORK/iperf.json"
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]["sum_received"]; print(e["bits_per_second"], e["bytes"])' "$WORK/iperf.json"
}

start_ringmesh() {
  cat > "$WORK/rm.yaml" <<YAML
admin: { listen: 127.0.0.1:$(( $1 + 4000 )) }
listeners:
  - { name: bench, listen: 127.0.0.1:$1, cluster: backend, access_log: false }
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$2"], circuit_breakers: { max_connections: 100000 } }
YAML
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$RM" run -c "$WORK/rm.yaml" --workers 1 --io-engine "${3:-uring}" >"$WORK/rm.log" 2>&1 &
  PIDS+=($!); wait_port "$1"; echo $!
}

start_haproxy() {
  sed -e "s/__LISTEN__/127.0.0.1:$1/" -e "s/__BACKEND__/127.0.0.1:$2/" bench/peers/haproxy-tcp.cfg > "$WORK/haproxy.cfg"
  taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
  PIDS+=($!); wait_port "$1"; echo $!
}

# Measurements are done when we stop a proxy: no need to wait for a drain.
stop() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

ROUNDS=${ROUNDS:-3}
echo "# L4 throughput: ${ROUNDS} interleaved rounds of ${DUR}s per path, proxy on CPU $PROXY_CPU, iperf3 on CPU $LOAD_CPU"
: > "$WORK/samples"
sample() { # name pid port ->  appends "name<TAB>bps<TAB>bytes<TAB>cpu_seconds"
  local before after bps bytes
  before=$(cpu_ticks "$2")
  read -r bps bytes < <(run_iperf "$3")
  after=$(cpu_ticks "$2")
  printf '%s\t%s\t%s\t%s\n' "$1" "$bps" "$bytes" "$(python3 -c "print(($after-$before)/$TICKS)")" >> "$WORK/samples"
}
HAPROXY_NAME="HAProxy $(haproxy -v | head -1 | awk '{print $3}')"
for round in $(seq "$ROUNDS"); do
  read -r bps bytes < <(run_iperf 5201); printf 'direct\t%s\t%s\t0\n' "$bps" "$bytes" >> "$WORK/samples"
  pid=$(start_ringmesh 15201 5201 uring); sample "ringmesh (io_uring)" "$pid" 15201; stop "$pid"
  pid=$(start_ringmesh 15202 5201 epoll); sample "ringmesh (epoll)" "$pid" 15202; stop "$pid"
  pid=$(start_haproxy 15203 5201); sample "$HAPROXY_NAME" "$pid" 15203; stop "$pid"
  echo "round $round done" >&2
done
python3 - "$WORK/samples" "$DUR" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    name, bps, nbytes, cpu = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(bps), float(nbytes), float(cpu)))
dur = float(sys.argv[2])
def med(xs): return st.median(xs)
per_gib = {n: [c / (b / 2**30) for _, b, c in v] for n, v in rows.items() if n != "direct"}
haproxy = next((n for n in per_gib if n.startswith("HAProxy")), None)
print("| path | Gbit/s (median, min-max) | proxy CPU s per GiB (median, min-max) | vs HAProxy CPU per GiB | proxy CPU busy |")
print("|---|---|---|---|---|")
for n, v in rows.items():
    g = [b / 1e9 for b, _, _ in v]
    gbit = f"{med(g):.1f} ({min(g):.1f}-{max(g):.1f})"
    if n == "direct":
        print(f"| {n} | {gbit} | - | - | - |"); continue
    c = per_gib[n]
    ratio = f"{med(c) / med(per_gib[haproxy]):.2f}x" if haproxy else "-"
    busy = med([cpu / dur * 100 for _, _, cpu in v])
    print(f"| {n} | {gbit} | {med(c):.3f} ({min(c):.3f}-{max(c):.3f}) | {ratio} | {busy:.0f}% |")
PY

# Idle connections: a backend that accepts and holds, a client that opens
# $IDLE connections through the proxy and keeps them open.
# A fresh backend per proxy: the previous one still holds its sockets.
idle_row() { # name pid port
  local base after
  sleep 0.5; base=$(rss_kib "$2")
  python3 bench/idle_connections.py client "$3" "$IDLE" > "$WORK/client.out" & local c=$!
  for _ in $(seq 600); do grep -q open "$WORK/client.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2; after=$(rss_kib "$2")
  kill "$c" 2>/dev/null; wait "$c" 2>/dev/null || true
  python3 -c 'import sys
name,base,after,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
print(f"| {name} | {n} | {base/1024:.1f} | {after/1024:.1f} | {(after-base)*1024/n:.0f} |")' "$1" "$base" "$after" "$IDLE"
}
echo
echo "# RSS with idle proxied connections"
echo "| proxy | connections | RSS before (MiB) | RSS with connections (MiB) | bytes per connection |"
echo "|---|---|---|---|---|"
idle_case() { # name kind proxy-port backend-port
  python3 bench/idle_connections.py backend "$4" & local b=$!
  wait_port "$4"
  local pid
  case "$2" in
    uring|epoll) pid=$(start_ringmesh "$3" "$4" "$2") ;;
    haproxy) pid=$(start_haproxy "$3" "$4") ;;
  esac
  idle_row "$1" "$pid" "$3"; stop "$pid"; stop "$b"
}
idle_case "ringmesh (io_uring)" uring 15211 5301
idle_case "ringmesh (epoll)" epoll 15212 5302
idle_case "HAProxy" haproxy 15213 5303
