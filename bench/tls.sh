#!/usr/bin/env bash
# TLS termination: proxy CPU per GiB decrypted and per full handshake,
# ringmesh vs HAProxy, same certificate (ECDSA P-256 from `ringmesh cert`),
# same negotiated suite, in the same run. Proxy pinned to CPU $PROXY_CPU,
# clients and the sink backend on CPU $LOAD_CPU; ROUNDS interleaved rounds,
# medians.
#
# Usage: bench/tls.sh [GiB per throughput run (default 2)] [seconds of handshakes (default 6)]
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${1:-2}; HS_SECS=${2:-6}; ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d); PIDS=()
cleanup() {
  for p in "${PIDS[@]}" $(cat "$WORK/pid" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
command -v haproxy >/dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; } || { echo "install haproxy" >&2; exit 1; }
cargo build --release -q
RM=target/release/ringmesh
"$RM" cert ca --dir "$WORK/certs" >/dev/null
"$RM" cert issue --ca-dir "$WORK/certs" --out "$WORK/certs/server" --dns localhost >/dev/null
cat "$WORK/certs/server.pem" "$WORK/certs/server.key" > "$WORK/certs/server.crt"
taskset -c "$LOAD_CPU" "$RM" bench serve sink --listen 127.0.0.1:18600 >/dev/null 2>&1 & PIDS+=($!)

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# The port answering must be the proxy we just started, not a leftover.
alive() { kill -0 "$(cat "$WORK/pid")" 2>/dev/null || { echo "proxy exited at start:" >&2; tail -3 "$WORK"/*.log >&2; exit 1; }; }

start_ringmesh() {
  cat > "$WORK/rm.yaml" <<YAML
admin: { listen: 127.0.0.1:18601 }
listeners:
  - name: tls
    listen: 127.0.0.1:18602
    cluster: sink
    access_log: false
    tls: { cert: $WORK/certs/server.pem, key: $WORK/certs/server.key }
clusters:
  - { name: sink, endpoints: [127.0.0.1:18600] }
YAML
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$RM" run -c "$WORK/rm.yaml" --workers 1 >"$WORK/rm.log" 2>&1 &
  echo $! > "$WORK/pid"; wait_port 18602; alive
}
start_haproxy() {
  sed -e "s|{{LISTEN}}|127.0.0.1:18603|" -e "s|{{CRT}}|$WORK/certs/server.crt|" -e "s|{{BACKEND}}|127.0.0.1:18600|" bench/peers/haproxy-tls.cfg > "$WORK/h.cfg"
  taskset -c "$PROXY_CPU" haproxy -f "$WORK/h.cfg" -db >"$WORK/h.log" 2>&1 &
  echo $! > "$WORK/pid"; wait_port 18603; alive
}

cat > "$WORK/send.py" <<'PY'
import socket, ssl, sys
port, gib, ca = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
chunk = b"\0" * (1 << 20)
for _ in range(int(gib * 1024)):
    s.sendall(chunk)
print(s.version(), s.cipher()[0])
s.close()
PY

: > "$WORK/samples"
measure() { # name port
  local pid; pid=$(cat "$WORK/pid")
  local b a suite hs
  b=$(cpu "$pid")
  suite=$(taskset -c "$LOAD_CPU" python3 "$WORK/send.py" "$2" "$GIB" "$WORK/certs/ca.pem")
  a=$(cpu "$pid")
  printf '%s\tgib\t%s\t%s\n' "$1" "$GIB" "$(python3 -c "print(($a-$b)/$TICKS)")" >> "$WORK/samples"
  b=$(cpu "$pid")
  hs=$(taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$2" -new -time "$HS_SECS" -CAfile "$WORK/certs/ca.pem" 2>/dev/null | awk '/connections in/ {print $1; exit}')
  a=$(cpu "$pid")
  printf '%s\ths\t%s\t%s\n' "$1" "$hs" "$(python3 -c "print(($a-$b)/$TICKS)")" >> "$WORK/samples"
  echo "$1: $suite" >&2
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  start_ringmesh; measure ringmesh 18602
  start_haproxy; measure "HAProxy $(haproxy -v | head -1 | awk '{print $3}')" 18603
  echo "round $r done" >&2
done
python3 - "$WORK/samples" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    name, kind, amount, cpu = line.rstrip("\n").split("\t")
    rows.setdefault(name, {}).setdefault(kind, []).append((float(amount), float(cpu)))
med = st.median
print("| proxy | CPU s per GiB decrypted (median, min-max) | Gbit/s per proxy core | CPU µs per full handshake (median) | handshakes/s per proxy core |")
print("|---|---|---|---|---|")
base = None
for name, k in rows.items():
    per_gib = [cpu / amount for amount, cpu in k["gib"]]
    per_hs = [cpu / amount for amount, cpu in k["hs"] if amount > 0]
    print(f"| {name} | {med(per_gib):.3f} ({min(per_gib):.3f}-{max(per_gib):.3f}) | {8.59 / med(per_gib):.1f} | {med(per_hs) * 1e6:.0f} | {1 / med(per_hs):.0f} |")
PY
