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
# Usage: bench/l4.sh [seconds-per-run (default 10)] [idle connections (default 10000)]
# Needs: iperf3, haproxy, python3 (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
IDLE=${2:-10000}
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

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

taskset -c "$LOAD_CPU" iperf3 -s -p 5201 -D --logfile "$WORK/iperf-server.log"
sleep 0.3; PIDS+=("$(pgrep -f 'iperf3 -s -p 5201' | head -1)")

# run_iperf PORT -> prints "bits_per_second bytes"
run_iperf() {
  taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$1" -t "$DUR" -J > "$WORK/iperf.json"
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]["sum_received"]; print(e["bits_per_second"], e["bytes"])' "$WORK/iperf.json"
}

start_ringmesh() {
  cat > "$WORK/rm.yaml" <<YAML
admin: { listen: 127.0.0.1:19901 }
listeners:
  - { name: bench, listen: 127.0.0.1:$1, cluster: backend, access_log: false }
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$2"] }
YAML
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$RM" run -c "$WORK/rm.yaml" --workers 1 --io-engine "${3:-uring}" >"$WORK/rm.log" 2>&1 &
  PIDS+=($!); wait_port "$1"; echo $!
}

start_haproxy() {
  sed -e "s/__LISTEN__/127.0.0.1:$1/" -e "s/__BACKEND__/127.0.0.1:$2/" bench/peers/haproxy-tcp.cfg > "$WORK/haproxy.cfg"
  taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
  PIDS+=($!); wait_port "$1"; echo $!
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

echo "# L4 throughput, ${DUR}s per run, proxy on CPU $PROXY_CPU, iperf3 on CPU $LOAD_CPU"
echo "| path | Gbit/s | proxy CPU s per GiB | proxy CPU utilisation |"
echo "|---|---|---|---|"
read -r bps _ < <(run_iperf 5201)
printf '| direct | %.1f | - | - |\n' "$(echo "$bps/1e9" | bc -l)"

throughput_row() { # name pid port
  local before after bps bytes
  before=$(cpu_ticks "$2")
  read -r bps bytes < <(run_iperf "$3")
  after=$(cpu_ticks "$2")
  python3 -c 'import sys
name,bps,nbytes,ticks,tck,dur=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),float(sys.argv[5]),float(sys.argv[6])
cpu=ticks/tck; gib=nbytes/2**30
print(f"| {name} | {bps/1e9:.1f} | {cpu/gib:.3f} | {100*cpu/dur:.0f}% |")' "$1" "$bps" "$bytes" "$((after-before))" "$TICKS" "$DUR"
}

pid=$(start_ringmesh 15201 5201 uring); throughput_row "ringmesh (io_uring)" "$pid" 15201; stop "$pid"
pid=$(start_ringmesh 15202 5201 epoll); throughput_row "ringmesh (epoll)" "$pid" 15202; stop "$pid"
pid=$(start_haproxy 15203 5201); throughput_row "HAProxy $(haproxy -v | head -1 | awk '{print $3}')" "$pid" 15203; stop "$pid"

# Idle connections: a backend that accepts and holds, a client that opens
# $IDLE connections through the proxy and keeps them open.
cat > "$WORK/idle.py" <<'PY'
import socket, sys, time, threading
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "backend":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(4096); held = []
    while True:
        c, _ = s.accept(); held.append(c)
else:
    n = int(sys.argv[3]); held = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port)); held.append(c)
    # One byte each way on a sample proves they are proxied, not just queued.
    print("open", len(held), flush=True)
    time.sleep(3600)
PY
python3 "$WORK/idle.py" backend 5301 & PIDS+=($!)
wait_port 5301

idle_row() { # name pid port
  local base after
  sleep 0.5; base=$(rss_kib "$2")
  python3 "$WORK/idle.py" client "$3" "$IDLE" > "$WORK/client.out" & local c=$!
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
pid=$(start_ringmesh 15211 5301 uring); idle_row "ringmesh (io_uring)" "$pid" 15211; stop "$pid"
pid=$(start_ringmesh 15212 5301 epoll); idle_row "ringmesh (epoll)" "$pid" 15212; stop "$pid"
pid=$(start_haproxy 15213 5301); idle_row "HAProxy" "$pid" 15213; stop "$pid"
