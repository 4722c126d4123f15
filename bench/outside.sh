#!/usr/bin/env bash
# The outside ruler: direct, ringmesh, HAProxy and nginx measured with tools
# that are not ours, so that `ringmesh bench` is never the only witness.
#
#   request/response  wrk -t1 -c50 (HTTP/1.1 keep-alive) through each proxy
#                     in TCP mode to an nginx backend (`return 200`)
#   churn             the same with `Connection: close`: one new client and
#                     one new upstream connection per request
#   bulk              iperf3, one stream, through each proxy
#   idle              RSS per idle proxied connection ($IDLE connections)
#
# Each proxy gets one worker/thread pinned to CPU $PROXY_CPU; the load tools
# and the backends share CPU $LOAD_CPU. Rounds are interleaved (direct,
# ringmesh, HAProxy, nginx, then again); the figure per cell is the median
# over rounds of the proxy's CPU (utime+stime from /proc) per request or per
# GiB, and the ratio is against the better peer of the same run.
#
# MODE=http runs the proxies in HTTP mode instead (ringmesh `protocol: http`,
# HAProxy `mode http` with `http-reuse always`, nginx `proxy_pass` with an
# upstream keepalive pool): request/response and churn, then RSS per idle
# keep-alive client connection (each sent one request first); no bulk cell.
#
# Usage: ROUNDS=3 [MODE=tcp|http] bench/outside.sh [seconds per cell (default 8)] [idle connections (default 9900)]
# Needs wrk, iperf3, nginx (+ stream module), haproxy; installed with apt-get
# when run as root. RINGMESH=path overrides the binary (A/B runs).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
IDLE=${2:-9900}
ROUNDS=${ROUNDS:-3}
MODE=${MODE:-tcp}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
# Proxies are started inside $(...) subshells, so their pids go to a file
# as well: whatever way the script ends, nothing it started survives it.
cleanup() {
  for p in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else echo "missing $1: apt-get install $2" >&2; exit 1; fi
}
need wrk wrk; need iperf3 iperf3; need haproxy haproxy; need nginx nginx; need python3 python3
STREAM_MODULE=""
for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so; do
  [ -f "$m" ] && STREAM_MODULE="load_module $m;" && break
done
if [ -z "$STREAM_MODULE" ] && ! nginx -V 2>&1 | grep -q -- --with-stream; then
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >/dev/null
    STREAM_MODULE="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
  else echo "missing nginx stream module: apt-get install libnginx-mod-stream" >&2; exit 1; fi
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -z "${RINGMESH:-}" ]; then cargo build --release -q; RINGMESH=target/release/ringmesh; fi

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; tail -5 "$WORK"/*.log >&2; return 1
}
stop() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Backends on the load CPU: nginx answering itself, and iperf3.
HTTP_BACKEND=18580; IPERF_BACKEND=18581
sed -e "s|{{WORK}}|$WORK|g" -e "s|{{LISTEN}}|127.0.0.1:$HTTP_BACKEND|" bench/peers/nginx-static.conf > "$WORK/backend.conf"
taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.conf" -p "$WORK" -e stderr 2>"$WORK/backend.log" & PIDS+=($!)
taskset -c "$LOAD_CPU" iperf3 -s -p "$IPERF_BACKEND" >"$WORK/iperf-server.log" 2>&1 & PIDS+=($!)
wait_port "$HTTP_BACKEND"; wait_port "$IPERF_BACKEND"

# start_proxy KIND LISTEN_PORT BACKEND_PORT -> pid
start_proxy() {
  case "$1" in
    ringmesh)
      # Like for like with the peers: no access log, no forwarding fields.
      local http=""
      [ "$MODE" = http ] && http=", protocol: http, generate_request_id: false, append_x_forwarded_for: false"
      cat > "$WORK/rm-$2.yaml" <<YAML
admin: { listen: "127.0.0.1:$(( $2 + 1000 ))" }
listeners:
  - { name: l, listen: "127.0.0.1:$2", cluster: c, access_log: false$http }
clusters:
  - { name: c, endpoints: ["127.0.0.1:$3"], circuit_breakers: { max_connections: 100000, max_requests: 100000 } }
YAML
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$RINGMESH" run -c "$WORK/rm-$2.yaml" --workers 1 >"$WORK/rm.log" 2>&1 & ;;
    haproxy)
      sed -e "s/__LISTEN__/127.0.0.1:$2/" -e "s/__BACKEND__/127.0.0.1:$3/" "bench/peers/haproxy-$MODE.cfg" > "$WORK/haproxy-$2.cfg"
      taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy-$2.cfg" -db >"$WORK/haproxy.log" 2>&1 & ;;
    nginx)
      sed -e "s|{{WORK}}|$WORK|g" -e "s|{{LISTEN}}|127.0.0.1:$2|" -e "s|{{BACKEND}}|127.0.0.1:$3|" \
          -e "s|{{LOAD_STREAM_MODULE}}|$STREAM_MODULE|" "bench/peers/nginx-$MODE.conf" > "$WORK/nginx-$2.conf"
      taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx-$2.conf" -p "$WORK" -e stderr >"$WORK/nginx.log" 2>&1 & ;;
  esac
  local pid=$!; echo "$pid" >> "$WORK/pids"
  # A port still held by someone else would measure the wrong process.
  sleep 0.2; kill -0 "$pid" 2>/dev/null || { echo "$1 failed to start:" >&2; tail -5 "$WORK"/*.log >&2; exit 1; }
  wait_port "$2"; echo "$pid"
}

# cell WORKLOAD PATH PID PORT -> appends "workload<TAB>path<TAB>units<TAB>cpu_s<TAB>extra"
cell() {
  local before after out units extra
  before=$([ "$3" = 0 ] && echo 0 || cpu_ticks "$3")
  case "$1" in
    rr) out=$(taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${DUR}s" --latency "http://127.0.0.1:$4/")
        units=$(awk '/requests in/{print $1}' <<<"$out"); extra=$(awk '$1=="99%"{print $2}' <<<"$out") ;;
    churn) out=$(taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${DUR}s" -H 'Connection: close' "http://127.0.0.1:$4/")
        units=$(awk '/requests in/{print $1}' <<<"$out"); extra=$(awk '/Socket errors/{print $0}' <<<"$out" | tr ' ' '_') ;;
    bulk) # iperf3 -s serves one test at a time and may still be closing
        # the previous one ("server is busy"): retry, never count a failure.
        for _ in 1 2 3 4 5; do
          taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$4" -t "$DUR" -J > "$WORK/iperf.json" || true
          units=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"])' "$WORK/iperf.json" 2>/dev/null) && break
          sleep 1; before=$([ "$3" = 0 ] && echo 0 || cpu_ticks "$3")
        done
        [ -n "$units" ] || { echo "iperf3 failed through $2: $(head -c 300 "$WORK/iperf.json")" >&2; exit 1; }
        extra=- ;;
  esac
  after=$([ "$3" = 0 ] && echo 0 || cpu_ticks "$3")
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$units" "$(python3 -c "print(($after-$before)/$TICKS)")" "${extra:--}" >> "$WORK/samples"
}

HAPROXY_NAME="HAProxy $(haproxy -v | head -1 | awk '{print $3}')"
NGINX_NAME="nginx $(nginx -v 2>&1 | sed 's|.*/||' | awk '{print $1}')"
: > "$WORK/samples"
WORKLOADS="rr churn bulk"; [ "$MODE" = http ] && WORKLOADS="rr churn"
echo "# outside ruler ($MODE mode): $ROUNDS interleaved rounds of ${DUR}s cells, proxy on CPU $PROXY_CPU, load and backends on CPU $LOAD_CPU" >&2
for round in $(seq "$ROUNDS"); do
  for w in $WORKLOADS; do
    backend=$HTTP_BACKEND; [ "$w" = bulk ] && backend=$IPERF_BACKEND
    cell "$w" direct 0 "$backend"
    port=18600
    for kind in ringmesh haproxy nginx; do
      port=$((port + 1))
      pid=$(start_proxy "$kind" "$port" "$backend")
      case $kind in ringmesh) name=ringmesh ;; haproxy) name=$HAPROXY_NAME ;; nginx) name=$NGINX_NAME ;; esac
      cell "$w" "$name" "$pid" "$port"
      stop "$pid"
    done
  done
  echo "round $round done" >&2
done

python3 - "$WORK/samples" "$DUR" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    w, path, units, cpu, extra = line.rstrip("\n").split("\t")
    rows.setdefault((w, path), []).append((float(units or 0), float(cpu), extra))
dur = float(sys.argv[2])
titles = {"rr": "request/response (wrk -c50, keep-alive)", "churn": "churn (wrk -c16, Connection: close)", "bulk": "bulk (iperf3, 1 stream)"}
print("| workload | path | throughput (median) | proxy CPU per unit (median, min-max) | vs better peer | per proxy core | wrk p99 |")
print("|---|---|---|---|---|---|---|")
for w in ("rr", "churn", "bulk"):
    if not any(ww == w for (ww, _) in rows):
        continue
    paths = [p for (ww, p) in rows if ww == w]
    per = {}
    for p in paths:
        v = rows[(w, p)]
        if p == "direct":
            continue
        if w == "bulk":
            per[p] = [c / (u / 2**30) for u, c, _ in v if u > 0]
        else:
            per[p] = [c / u * 1e6 for u, c, _ in v if u > 0]
    peers = [st.median(per[p]) for p in per if not p.startswith("ringmesh")]
    best = min(peers) if peers else None
    for p in paths:
        v = rows[(w, p)]
        tput = st.median([u for u, _, _ in v]) / dur
        t = f"{tput * 8 / 1e9:.1f} Gbit/s" if w == "bulk" else f"{tput:.0f} req/s"
        p99 = st.median([float(e[:-2]) * (1000 if e.endswith("ms") else 1) for _, _, e in v if e.endswith("us") or e.endswith("ms")] or [0]) if w == "rr" else None
        p99s = f"{p99:.0f} µs" if p99 else "-"
        if p == "direct":
            print(f"| {titles[w]} | direct | {t} | - | - | - | {p99s} |")
            continue
        c = per[p]
        unit = "s/GiB" if w == "bulk" else "µs/req"
        fmt = (lambda x: f"{x:.3f}") if w == "bulk" else (lambda x: f"{x:.1f}")
        ratio = f"{st.median(c) / best:.2f}x" if best else "-"
        busy = st.median([cpu / dur for _, cpu, _ in v])
        core = tput / busy if busy > 0 else 0
        cores = f"{core * 8 / 1e9:.1f} Gbit/s" if w == "bulk" else f"{core:.0f} req/s"
        print(f"| {titles[w]} | {p} | {t} | {fmt(st.median(c))} ({fmt(min(c))}-{fmt(max(c))}) {unit} | {ratio} | {cores} | {p99s} |")
PY

# Idle connections: a backend that accepts and holds, a client that opens
# $IDLE connections through the proxy and keeps them open.
echo
echo "| proxy | idle connections | RSS before (MiB) | RSS with connections (MiB) | bytes per connection |"
echo "|---|---|---|---|---|"
port=18700
for kind in ringmesh haproxy nginx; do
  port=$((port + 2))
  if [ "$MODE" = http ]; then
    # Keep-alive clients that each had one response, via the nginx backend.
    b=0; pid=$(start_proxy "$kind" "$port" "$HTTP_BACKEND")
    sleep 0.5; base=$(rss_kib "$pid")
    python3 bench/http_idle_connections.py "$port" "$IDLE" > "$WORK/client.out" & c=$!
  else
    python3 bench/idle_connections.py backend $((port + 1)) & b=$!; PIDS+=("$b"); wait_port $((port + 1))
    pid=$(start_proxy "$kind" "$port" $((port + 1)))
    sleep 0.5; base=$(rss_kib "$pid")
    python3 bench/idle_connections.py client "$port" "$IDLE" > "$WORK/client.out" & c=$!
  fi
  for _ in $(seq 600); do grep -q open "$WORK/client.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2; after=$(rss_kib "$pid")
  stop "$c"; stop "$pid"; [ "$b" = 0 ] || stop "$b"
  case $kind in ringmesh) name=ringmesh ;; haproxy) name=$HAPROXY_NAME ;; nginx) name=$NGINX_NAME ;; esac
  python3 -c 'import sys
name,base,after,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
print(f"| {name} | {n} | {base/1024:.1f} | {after/1024:.1f} | {(after-base)*1024/n:.0f} |")' "$name" "$base" "$after" "$IDLE"
done
