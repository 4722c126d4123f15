#!/usr/bin/env bash
# HTTP/2 and gRPC (issue 17): proxy CPU per request for h2c clients against
# nginx and HAProxy, and the latency ringmesh adds to a gRPC unary call.
#
#   h2 (h2load, h2c prior knowledge, GET /, 12-byte body) through each proxy
#   to an nginx backend answering `return 200` over HTTP/1.1 keep-alive, in
#   two shapes:
#     streams  h2load -c 1 -m 100   (one connection, 100 concurrent streams)
#     conns    h2load -c 100 -m 1   (100 connections, one stream each)
#   proxies, one core each: ringmesh (`protocol: http` listener: HTTP/1.1
#   and h2c on one port; no access log, no x-forwarded-for or x-request-id),
#   HAProxy (`nbthread 1`, `mode http`, `bind ... proto h2`, `http-reuse
#   always`), nginx (`worker_processes 1`, `listen ... http2`, upstream
#   `keepalive` pool). The figure is the proxy's CPU (utime+stime from
#   /proc/PID/stat over the h2load run) per completed request; the ratio
#   ringmesh/peer is taken per round (same round) and its median reported.
#   Target: ringmesh below both peers (ratio < 1.00x).
#
#   grpc  a grpcio server (tests/helpers/grpc_peer.py when present, else a
#   generic-handler server written here; `ringmesh.test.Echo/Unary` answers
#   the request's bytes, grpc_peer.py prefixed with `NAME:`) called directly and through ringmesh (a cluster with `http2:
#   true`) by a grpcio client doing $GRPC_CALLS sequential unary calls
#   ($GRPC_SIZE-byte message) after $GRPC_WARMUP warm-up calls; per-call
#   latency p50/p99, and the added latency (ringmesh - direct, same round).
#
# The proxy runs on CPU $PROXY_CPU; h2load, the backends and the gRPC client
# share CPU $LOAD_CPU. Each cell starts its proxy anew and warms it up for
# $WARMUP s (not counted); rounds are interleaved (ringmesh, HAProxy, nginx
# per shape, each round starting one proxy later) and every figure is the
# median over rounds with the min-max range, plus the steal time of the
# proxy's CPU (the VM's neighbours). A proxy that fails a cell (no h2
# responses, non-2xx, errors) is reported and dropped from the run; the
# others' rows are still printed, and the script exits 2.
#
# Usage: [ROUNDS=5] bench/h2.sh [seconds per h2 cell (default 5)]
#   SHAPES="streams conns" PROXIES="ringmesh haproxy nginx" GRPC=1|0
#   GRPC_CALLS=5000 GRPC_WARMUP=500 GRPC_SIZE=100
# Needs h2load (nghttp2-client), nginx, haproxy, python3 with grpcio;
# the Debian packages are installed with apt-get when run as root.
# RINGMESH=path overrides the binary (A/B runs); otherwise target/release/ringmesh is built.
# A full run (5 rounds of 5 s cells, gRPC 5 x 5,000 calls per path) takes about 4 minutes
# (2.5 when the ringmesh rows fail at once).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
read -r -a SHAPES <<<"${SHAPES:-streams conns}"
read -r -a PROXIES <<<"${PROXIES:-ringmesh haproxy nginx}"
GRPC=${GRPC:-1}
GRPC_CALLS=${GRPC_CALLS:-5000}
GRPC_WARMUP=${GRPC_WARMUP:-500}
GRPC_SIZE=${GRPC_SIZE:-100}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
# Every process started goes into PIDS and the pid file: whatever way the
# script ends, nothing it started survives it.
cleanup() {
  exec 2>/dev/null   # no "Killed" job notices for what is ended here
  for p in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
track() { PIDS+=("$1"); echo "$1" >> "$WORK/pids"; }

need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else echo "missing $1: apt-get install $2" >&2; exit 1; fi
}
need h2load nghttp2-client; need nginx nginx; need haproxy haproxy; need python3 python3
if [ "$GRPC" = 1 ] && ! python3 -c 'import grpc' 2>/dev/null; then
  echo "missing grpcio for the gRPC part: pip install grpcio (or GRPC=0)" >&2; exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ " ${PROXIES[*]} " == *" ringmesh "* ]] || [ "$GRPC" = 1 ]; then
  if [ -z "${RINGMESH:-}" ]; then cargo build --release -q; RINGMESH=target/release/ringmesh; fi
  # Every cell starts the proxy anew: a copy keeps a concurrent build from
  # swapping the binary in the middle of the run.
  cp "$RINGMESH" "$WORK/ringmesh"; RINGMESH=$WORK/ringmesh
fi
RINGMESH_BUILD=$(git describe --always --dirty 2>/dev/null || echo "?")

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
steal_ticks() { awk -v c="cpu$PROXY_CPU" '$1==c{print $9}' /proc/stat; }
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; return 1
}
stop() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The HTTP backend on the load CPU: nginx answering itself (12-byte body).
BACKEND=18880
sed -e "s|{{WORK}}|$WORK|g" -e "s|{{LISTEN}}|127.0.0.1:$BACKEND|" bench/peers/nginx-static.conf > "$WORK/backend.conf"
taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.conf" -p "$WORK" -e stderr 2>"$WORK/backend.log" & track $!
wait_port "$BACKEND"

# --- proxy configs ----------------------------------------------------------
# config KIND PORT UPSTREAM_PORT [grpc] -> writes $WORK/KIND-PORT.conf
config() {
  local f="$WORK/$1-$2.conf"
  case "$1" in
    ringmesh)
      # One listener, `protocol: http` (HTTP/1.1 and h2c prior knowledge on
      # the same port). The gRPC config's cluster speaks HTTP/2 upstream.
      cat > "$f" <<YAML
admin: { listen: "127.0.0.1:$(( $2 + 1000 ))" }
listeners:
  - name: l
    listen: "127.0.0.1:$2"
    protocol: http
    access_log: false
    generate_request_id: false
    append_x_forwarded_for: false
    cluster: c
clusters:
  - name: c
YAML
      [ "${4:-}" = grpc ] && echo "    http2: true" >> "$f"
      cat >> "$f" <<YAML
    endpoints: ["127.0.0.1:$3"]
    circuit_breakers: { max_connections: 100000, max_requests: 100000 }
YAML
      ;;
    haproxy)
      # HAProxy 2.6: `proto h2` on a clear bind is h2c prior knowledge only.
      cat > "$f" <<CFG
global
    nbthread 1
    # 2 descriptors per connection at most; must fit the fd limit (20000 here).
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-keep-alive 1h
frontend fe
    bind 127.0.0.1:$2 proto h2
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$3
CFG
      ;;
    nginx)
      # nginx 1.22: `listen ... http2` without ssl is h2c prior knowledge
      # only. keepalive_requests also bounds the requests per h2 connection
      # (default 1000, then GOAWAY) and per upstream connection.
      cat > "$f" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $WORK/body;
    proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/fastcgi;
    uwsgi_temp_path $WORK/uwsgi;
    scgi_temp_path $WORK/scgi;
    keepalive_timeout 3600s;
    keepalive_requests 1000000000;
    http2_max_concurrent_streams 128;
    upstream be { server 127.0.0.1:$3; keepalive 256; keepalive_requests 1000000000; }
    server {
        listen 127.0.0.1:$2 http2;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
      ;;
  esac
}

# start_proxy KIND PORT -> sets PROXY_PID; returns 1 (with the log's tail
# in $WORK/why) if it exits at start or never listens.
start_proxy() {
  local f="$WORK/$1-$2.conf" log="$WORK/$1-$2.log"
  case "$1" in
    ringmesh) RUST_LOG=warn taskset -c "$PROXY_CPU" "$RINGMESH" run -c "$f" --workers 1 >"$log" 2>&1 & ;;
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$f" -db >"$log" 2>&1 & ;;
    nginx) taskset -c "$PROXY_CPU" nginx -c "$f" -p "$WORK" -e stderr >"$log" 2>&1 & ;;
  esac
  PROXY_PID=$!; track "$PROXY_PID"
  # A port still held by someone else would measure the wrong process.
  sleep 0.2
  local why=""
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then why="exited at start"
  elif ! wait_port "$2" 2>/dev/null; then why="did not listen on 127.0.0.1:$2 in 10 s"
  elif ! kill -0 "$PROXY_PID" 2>/dev/null; then why="exited at start (and someone else holds 127.0.0.1:$2)"
  fi
  if [ -n "$why" ]; then
    [ "$1" = nginx ] && cat "$WORK/nginx-proxy-error.log" >> "$log" 2>/dev/null
    { echo "$1 $why: $(grep -v '^\s*$' "$log" | tail -n 1 | sed -E 's/^[0-9T:.-]+Z +//')"; echo "config $f, log:"; tail -n 5 "$log"; } > "$WORK/why"
    stop "$PROXY_PID"; return 1
  fi
}

# h2load_check OUT -> 0 if every request got a 2xx over h2c, else 1 with
# the reason in $WORK/why
h2load_check() {
  local out=$1 ok bad proto
  ok=$(awk '/^requests:/{for(i=1;i<=NF;i++) if($i ~ /^succeeded/) print $(i-1)}' <<<"$out")
  # Anything but a 2xx, and any failed, errored or timed-out request.
  # (With -D, a request in flight at the end counts neither as succeeded
  # nor as failed; its status may be counted.)
  bad=$(awk '/^status codes:/{n+=$5+$7+$9} /^requests:/{for(i=1;i<=NF;i++) if($i ~ /^(failed|errored|timeout)/) n+=$(i-1)} END{print n+0}' <<<"$out")
  proto=$(awk '/Application protocol:/{print $3}' <<<"$out")
  local summary
  summary="h2load: $(grep -m1 '^requests:' <<<"$out" | sed 's/^requests: //'), protocol ${proto:-none}"
  if [ -z "$ok" ] || [ "${ok:-0}" = 0 ]; then
    echo "0 requests succeeded over h2c ($summary)" > "$WORK/why"
  elif [ "$proto" != h2c ]; then
    echo "not h2c ($summary)" > "$WORK/why"
  elif [ "${bad:-1}" != 0 ]; then
    echo "$bad requests not 2xx, failed, errored or timed out ($summary)" > "$WORK/why"
  else
    return 0
  fi
  { echo "h2load said:"; grep -E '^(requests|status codes|Application protocol|finished in)|rror|failed|refused' <<<"$out" | head -8; } >> "$WORK/why"
  return 1
}

# h2_cell SHAPE KIND PORT PID -> appends "round shape kind requests cpu_s req/s steal_s"
h2_cell() {
  local args out before after s0 s1 n rps
  case "$1" in streams) args="-c 1 -m 100" ;; conns) args="-c 100 -m 1" ;; esac
  # The warm-up is also the check that the proxy speaks h2c at all.
  if [ "$WARMUP" != 0 ]; then
    # shellcheck disable=SC2086
    out=$(timeout 60 taskset -c "$LOAD_CPU" h2load $args -t 1 -D "$WARMUP" "http://127.0.0.1:$3/" 2>&1) || true
    h2load_check "$out" || return 1
  fi
  before=$(cpu_ticks "$4"); s0=$(steal_ticks)
  # shellcheck disable=SC2086
  out=$(timeout $(( DUR + 60 )) taskset -c "$LOAD_CPU" h2load $args -t 1 -D "$DUR" "http://127.0.0.1:$3/" 2>&1) || true
  after=$(cpu_ticks "$4"); s1=$(steal_ticks)
  h2load_check "$out" || return 1
  n=$(awk '/^requests:/{for(i=1;i<=NF;i++) if($i ~ /^succeeded/) print $(i-1)}' <<<"$out")
  rps=$(awk '/^finished in/{print $4}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$1" "$2" "$n" \
    "$(python3 -c "print(($after-$before)/$TICKS)")" "$rps" "$(python3 -c "print(($s1-$s0)/$TICKS)")" >> "$WORK/h2.samples"
}

name_of() {
  case "$1" in
    ringmesh) echo "ringmesh" ;;
    haproxy) echo "HAProxy $(haproxy -v | head -1 | awk '{print $3}')" ;;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's|.*/||' | awk '{print $1}')" ;;
  esac
}

FAILED=""   # "kind:reason" lines for the summary
fail() { # fail KIND WHAT [CELL: streams, conns, grpc]
  echo "!! $1 failed $2, dropped from the run: $(head -1 "$WORK/why")" >&2
  sed 1d "$WORK/why" | sed 's/^/!!   /' >&2
  if [ "$1" = ringmesh ] && grep -q "0 requests succeeded" "$WORK/why"; then
    echo "!! (this ringmesh binary does not answer HTTP/2 with prior knowledge on a \`protocol: http\` listener: h2 support not in this build?)" >&2
  fi
  FAILED+="$1 ($2): $(head -1 "$WORK/why")"$'\n'
  printf '%s\t%s\t%s\n' "$1" "$3" "failed $2: $(head -1 "$WORK/why" | tr '|\t' '/ ' | cut -c1-220)" >> "$WORK/dead"
}

# --- h2 cells -------------------------------------------------------------
: > "$WORK/h2.samples"; : > "$WORK/dead"
declare -A PORT DEAD
p=18881
for k in "${PROXIES[@]}"; do PORT[$k]=$p; config "$k" "$p" "$BACKEND"; p=$((p + 1)); done
echo "# h2: $ROUNDS interleaved rounds of ${DUR}s h2load cells (+${WARMUP}s warm-up), shapes ${SHAPES[*]}, proxy on CPU $PROXY_CPU, h2load and nginx backend on CPU $LOAD_CPU, ringmesh at $RINGMESH_BUILD, $(h2load --version | head -1)" >&2
START=$SECONDS
for round in $(seq "$ROUNDS"); do
  for shape in "${SHAPES[@]}"; do
    for j in $(seq 0 $(( ${#PROXIES[@]} - 1 ))); do
      k=${PROXIES[$(( (j + round - 1) % ${#PROXIES[@]} ))]}
      [ -z "${DEAD[$k]:-}" ] || continue
      if ! start_proxy "$k" "${PORT[$k]}"; then DEAD[$k]=1; fail "$k" "to start" "$shape"; continue; fi
      if ! h2_cell "$shape" "$k" "${PORT[$k]}" "$PROXY_PID"; then DEAD[$k]=1; fail "$k" "the $shape cell" "$shape"; fi
      stop "$PROXY_PID"
    done
  done
  echo "round $round done ($((SECONDS - START)) s)" >&2
done

# --- gRPC ---------------------------------------------------------------
if [ "$GRPC" = 1 ]; then
  cat > "$WORK/grpc_server.py" <<'PY'
# Minimal gRPC echo server (used when tests/helpers/grpc_peer.py is absent):
# service ringmesh.test.Echo, method Unary returns the request's bytes.
import argparse
from concurrent import futures
import grpc
p = argparse.ArgumentParser()
p.add_argument("mode", choices=["server"])
p.add_argument("--listen", default="127.0.0.1:0")
p.add_argument("--name", default="bench")
a = p.parse_args()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "ringmesh.test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
port = server.add_insecure_port(a.listen)
server.start()
print(f"LISTENING {port}", flush=True)
server.wait_for_termination()
PY
  cat > "$WORK/grpc_client.py" <<'PY'
# Sequential unary calls; prints "p50_us p99_us calls" or "FAILED ..." (exit 3).
import gc, sys, time, grpc
target, calls, warm, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ch = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
call = ch.unary_unary("/ringmesh.test.Echo/Unary")
msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
try:
    for _ in range(warm):
        # grpc_peer.py answers NAME + ":" + request, the inline server the request.
        if not call(msg, timeout=5).endswith(msg):
            raise RuntimeError("echo mismatch")
    lat = []
    clock = time.perf_counter_ns
    gc.collect(); gc.disable()   # no collector pause inside the timed calls
    for _ in range(calls):
        t0 = clock()
        r = call(msg, timeout=5)
        lat.append(clock() - t0)
        if not r.endswith(msg):
            raise RuntimeError("echo mismatch")
except grpc.RpcError as e:
    print(f"FAILED {e.code()}: {e.details()}")
    sys.exit(3)
except RuntimeError as e:
    print(f"FAILED {e}")
    sys.exit(3)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
print(f"{q(0.50):.1f} {q(0.99):.1f} {len(lat)}")
PY
  GRPC_SERVER="$WORK/grpc_server.py"; GRPC_SERVER_NAME="inline grpcio echo server (bench/h2.sh)"
  if [ -f tests/helpers/grpc_peer.py ]; then GRPC_SERVER=tests/helpers/grpc_peer.py; GRPC_SERVER_NAME=tests/helpers/grpc_peer.py; fi
  # start_grpc_server SCRIPT -> sets GRPC_PORT
  start_grpc_server() {
    GRPC_PORT=""
    taskset -c "$LOAD_CPU" python3 "$1" server --listen 127.0.0.1:0 --name bench >"$WORK/grpc-server.out" 2>&1 & track $!
    for _ in $(seq 200); do
      GRPC_PORT=$(awk '/^LISTENING/{print $2; exit}' "$WORK/grpc-server.out")
      [ -n "$GRPC_PORT" ] && return 0; sleep 0.05
    done
    return 1
  }
  if ! start_grpc_server "$GRPC_SERVER"; then
    echo "!! $GRPC_SERVER printed no LISTENING line in 10 s ($(head -c 200 "$WORK/grpc-server.out")); using the inline server" >&2
    GRPC_SERVER="$WORK/grpc_server.py"; GRPC_SERVER_NAME="inline grpcio echo server (bench/h2.sh)"
    start_grpc_server "$GRPC_SERVER" || { echo "the gRPC server did not start: $(cat "$WORK/grpc-server.out")" >&2; exit 1; }
  fi
  GRPC_PROXY_PORT=18890
  config ringmesh "$GRPC_PROXY_PORT" "$GRPC_PORT" grpc
  : > "$WORK/grpc.samples"
  echo "# grpc: $ROUNDS interleaved rounds of $GRPC_CALLS sequential unary calls (+$GRPC_WARMUP warm-up, $GRPC_SIZE-byte message) per path, server: $GRPC_SERVER_NAME, client and server on CPU $LOAD_CPU, ringmesh on CPU $PROXY_CPU" >&2
  grpc_dead=""
  for round in $(seq "$ROUNDS"); do
    for path in direct ringmesh; do
      [ "$path" = ringmesh ] && [ -n "$grpc_dead" ] && continue
      target=127.0.0.1:$GRPC_PORT
      if [ "$path" = ringmesh ]; then
        if ! start_proxy ringmesh "$GRPC_PROXY_PORT"; then grpc_dead=1; fail ringmesh "to start with the gRPC config (cluster http2: true)" grpc; continue; fi
        target=127.0.0.1:$GRPC_PROXY_PORT
      fi
      out=$(timeout 300 taskset -c "$LOAD_CPU" python3 "$WORK/grpc_client.py" "$target" "$GRPC_CALLS" "$GRPC_WARMUP" "$GRPC_SIZE" 2>&1) || true
      [ "$path" = ringmesh ] && stop "$PROXY_PID"
      if [[ "$out" =~ ^[0-9.]+\ [0-9.]+\ [0-9]+$ ]]; then
        printf '%s\t%s\t%s\n' "$round" "$path" "$out" >> "$WORK/grpc.samples"
      else
        echo "gRPC unary calls failed: $(tail -n 1 <<<"$out")" > "$WORK/why"
        if [ "$path" = direct ]; then fail direct "the gRPC cell (server: $GRPC_SERVER_NAME)" grpc; break 2; fi
        grpc_dead=1; fail ringmesh "the gRPC cell" grpc
      fi
    done
  done
  echo "gRPC done ($((SECONDS - START)) s)" >&2
fi

# --- report ---------------------------------------------------------------
NAMES=""
for k in ringmesh haproxy nginx; do NAMES+="$k=$(name_of "$k");"; done
python3 - "$WORK/h2.samples" "$DUR" "$NAMES" "$WORK/grpc.samples" "$WORK/dead" "${SHAPES[*]}" "${PROXIES[*]}" <<'PY'
import sys, os, statistics as st
samples, dur, names = sys.argv[1], float(sys.argv[2]), dict(x.split("=", 1) for x in sys.argv[3].split(";") if x)
dead = {}
for line in open(sys.argv[5]):
    kind, cell, why = line.rstrip("\n").split("\t", 2)
    dead[(kind, "grpc" if cell == "grpc" else "h2")] = why
shapes, proxies = sys.argv[6].split(), sys.argv[7].split()
rows = {}
for line in open(samples):
    rnd, shape, kind, n, cpu, rps, steal = line.rstrip("\n").split("\t")
    rows.setdefault(shape, {}).setdefault(kind, {})[rnd] = (int(n), float(cpu), float(rps), float(steal))
titles = {"streams": "h2load -c 1 -m 100 (1 connection x 100 streams)", "conns": "h2load -c 100 -m 1 (100 connections x 1 stream)"}
f1 = lambda x: f"{x:.2f}"
if rows or dead:
    print("| shape | proxy | throughput (median) | proxy CPU per request, µs (median, min-max) | per proxy core | ringmesh / this, CPU per request (same round: median, min-max) | steal on the proxy's CPU |")
    print("|---|---|---|---|---|---|---|")
for shape in ("streams", "conns"):
    if shape not in shapes:
        continue
    us = {k: {r: cpu / n * 1e6 for r, (n, cpu, _, _) in v.items() if n > 0} for k, v in rows.get(shape, {}).items()}
    for kind in ("ringmesh", "haproxy", "nginx"):
        if kind not in proxies:
            continue
        if kind not in us or not us[kind]:
            print(f"| {titles[shape]} | {names[kind]} | **{dead.get((kind, 'h2'), 'no samples')}** | - | - | - | - |")
            continue
        v, c = rows[shape][kind], list(us[kind].values())
        note = " (then failed: see below)" if (kind, "h2") in dead else ""
        tput = st.median([rps for _, _, rps, _ in v.values()])
        core = st.median([n / cpu for n, cpu, _, _ in v.values() if cpu > 0] or [0])
        steal = st.median([s / dur * 100 for _, _, _, s in v.values()])
        ratio = "-"
        if kind != "ringmesh" and "ringmesh" in us:
            rs = [us["ringmesh"][r] / us[kind][r] for r in us[kind] if r in us["ringmesh"]]
            if rs:
                ratio = f"**{st.median(rs):.2f}x** ({min(rs):.2f}-{max(rs):.2f})"
        print(f"| {titles[shape]} | {names[kind]}{note} | {tput:.0f} req/s | {f1(st.median(c))} ({f1(min(c))}-{f1(max(c))}) | {core:.0f} req/s | {ratio} | {steal:.1f}% |")
g = sys.argv[4]
if os.path.exists(g):
    per = {}
    for line in open(g):
        rnd, path, res = line.rstrip("\n").split("\t")
        p50, p99, n = res.split()
        per.setdefault(path, {})[rnd] = (float(p50), float(p99), int(n))
    print()
    print("| gRPC unary (sequential calls) | calls per round | p50 µs (median, min-max) | p99 µs (median, min-max) | added p50 / p99 µs (same round: median, min-max) |")
    print("|---|---|---|---|---|")
    for path in ("direct", "ringmesh"):
        label = "direct" if path == "direct" else "through ringmesh (cluster `http2: true`)"
        if path not in per:
            print(f"| {label} | **{dead.get((path, 'grpc'), 'no samples')}** | - | - | - |")
            continue
        v = per[path]
        p50s, p99s = [x[0] for x in v.values()], [x[1] for x in v.values()]
        added = "-"
        if path == "ringmesh" and "direct" in per:
            d50 = [v[r][0] - per["direct"][r][0] for r in v if r in per["direct"]]
            d99 = [v[r][1] - per["direct"][r][1] for r in v if r in per["direct"]]
            added = f"**{st.median(d50):+.0f} / {st.median(d99):+.0f}** ({min(d50):+.0f}..{max(d50):+.0f} / {min(d99):+.0f}..{max(d99):+.0f})"
        n = st.median([x[2] for x in v.values()])
        print(f"| {label} | {n:.0f} | {st.median(p50s):.0f} ({min(p50s):.0f}-{max(p50s):.0f}) | {st.median(p99s):.0f} ({min(p99s):.0f}-{max(p99s):.0f}) | {added} |")
PY
echo "total $((SECONDS - START)) s" >&2
if [ -n "$FAILED" ]; then
  echo >&2
  echo "FAILED (rows missing above):" >&2
  printf '%s' "$FAILED" | sed 's/^/  /' >&2
  exit 2
fi
