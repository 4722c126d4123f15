#!/usr/bin/env bash
# What a big route table costs end to end: proxy CPU per request with one
# route against $ROUTES routes (default 1,000), in the same run.
#
#   baseline  one route, `cluster: c` (no match: every request)
#   host      $ROUTES routes, each its own exact `host:`; the request has the last one's
#   exact     $ROUTES routes, each its own `path:`; the request has the last one's
#   prefix    $ROUTES routes, each its own `path_prefix:`; the request is under the last one's
#   fault0    (with CELLS) one route with a fault filter at 0%: its cost when it never fires
#   ratelimit (with CELLS) one route with a rate limit that never triggers (one shared CAS)
#   trace1    (with CELLS) tracing on, 1% of new traces sampled, spans exported over OTLP/HTTP
#             (to the nginx backend, which refuses the POST: encoding and sending are paid)
#   trace100  (with CELLS) the same at 100%
#   mesh      (with CELLS) a `node` block: Istio's mesh metrics counted per request
#   retry     (with CELLS) one route with a retry policy that never fires (nginx answers 200):
#             the budget deposit per request and the replay bookkeeping
#
# Every cell sends the same request (`GET /svc/<last>/items`, `Host:
# svc-<last>.example.com`) with wrk -t1 -c50 (HTTP/1.1 keep-alive) through
# ringmesh (`protocol: http`, one worker pinned to CPU $PROXY_CPU, no access
# log, no x-forwarded-for or x-request-id) to an nginx backend answering
# `return 200`; wrk and nginx share CPU $LOAD_CPU. Rounds are interleaved
# (each round runs every cell once, starting one cell later than the round
# before); a cell's figure is the proxy's CPU (utime+stime from /proc) per
# request, and its ratio is against the baseline of the same round. Reported:
# medians over rounds with the min-max range, and the steal time of the
# proxy's CPU during the cell (the VM's neighbours: a cell with much of it
# is suspect). A cell that gets a non-2xx answer (a request that missed its
# route) fails the run.
#
# MODE=callgrind counts instead of timing (DESIGN.md section 5: a noise-free
# A/B): the proxy runs under `valgrind --tool=callgrind` (epoll engine:
# the one valgrind is sure to follow), warmed up, counters zeroed, then wrk
# for the cell's seconds, and the figure is user-space instructions per
# request (Ir / requests counted by the proxy's own metrics). Kernel work,
# most of a request's CPU here, is not counted: read it as the user-space
# share of the cost.
#
# Usage: ROUNDS=3 [ROUTES=1000] [MODE=cpu|callgrind] bench/routes.sh [seconds per cell (default 8)]
# Needs wrk and nginx (and valgrind for MODE=callgrind), installed with
# apt-get when run as root.
# RINGMESH=path overrides the binary (A/B runs); otherwise target/release/ringmesh is built.
# CELLS="baseline" (a subset of "baseline host exact prefix fault0 ratelimit retry";
# default: the first four) runs only those cells.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
ROUNDS=${ROUNDS:-3}
ROUTES=${ROUTES:-1000}
WARMUP=${WARMUP:-1}
MODE=${MODE:-cpu}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
# The proxy is started inside $(...) subshells, so its pid goes to a file
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
need wrk wrk; need nginx nginx; need python3 python3
[ "$MODE" = callgrind ] && need valgrind valgrind
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -z "${RINGMESH:-}" ]; then cargo build --release -q; RINGMESH=target/release/ringmesh; fi
# Every cell starts the proxy anew: a copy keeps a concurrent build from
# swapping the binary in the middle of the run.
cp "$RINGMESH" "$WORK/ringmesh"; RINGMESH_BUILD=$(git describe --always --dirty 2>/dev/null || echo "?"); RINGMESH=$WORK/ringmesh

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
steal_ticks() { awk -v c="cpu$PROXY_CPU" '$1==c{print $9}' /proc/stat; }
requests() { python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=30).read().decode()
print(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("ringmesh_http_requests_total{")))
PY
}
wait_port() {
  for _ in $(seq 1200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; tail -n 5 "$WORK"/*.log >&2; return 1
}
stop() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The backend on the load CPU: nginx answering itself.
BACKEND=18580
sed -e "s|{{WORK}}|$WORK|g" -e "s|{{LISTEN}}|127.0.0.1:$BACKEND|" bench/peers/nginx-static.conf > "$WORK/backend.conf"
taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.conf" -p "$WORK" -e stderr 2>"$WORK/backend.log" & PIDS+=($!)
wait_port "$BACKEND"

LAST=$((ROUTES - 1))
HOST="svc-$LAST.example.com"
REQ_PATH="/svc/$LAST/items"

# config CELL PORT -> the proxy's config file for that cell
config() {
  local f="$WORK/$1.yaml"
  cat > "$f" <<YAML
admin: { listen: "127.0.0.1:$(( $2 + 1000 ))" }
listeners:
  - name: l
    listen: "127.0.0.1:$2"
    protocol: http
    access_log: false
    generate_request_id: false
    append_x_forwarded_for: false
YAML
  # The baseline names its cluster on the listener (one implicit route):
  # the form every ringmesh since HTTP listeners accepts, for A/B runs
  # against a binary from before routes (CELLS=baseline RINGMESH=old).
  case "$1" in
    trace1|trace100)
      echo "    cluster: c" >> "$f"
      echo "tracing: { sampling: ${1#trace}, otlp: { endpoint: \"http://127.0.0.1:$BACKEND/v1/traces\" } }" >> "$f" ;;
    baseline) echo "    cluster: c" >> "$f" ;;
    mesh)
      echo "    cluster: c" >> "$f"
      echo "node: { service: svc, namespace: bench, workload: svc-v1, version: v1 }" >> "$f" ;;
    *) echo "    routes:" >> "$f" ;;
  esac
  case "$1" in
    baseline) ;;
    host) for i in $(seq 0 "$LAST"); do echo "      - { match: { host: svc-$i.example.com }, cluster: c }"; done >> "$f" ;;
    exact) for i in $(seq 0 "$LAST"); do echo "      - { match: { path: /svc/$i/items }, cluster: c }"; done >> "$f" ;;
    prefix) for i in $(seq 0 "$LAST"); do echo "      - { match: { path_prefix: /svc/$i }, cluster: c }"; done >> "$f" ;;
    fault0) echo "      - { cluster: c, fault: { abort: { status: 503, percent: 0 }, delay: { fixed: 1s, percent: 0 } } }" >> "$f" ;;
    ratelimit) echo "      - { cluster: c, rate_limit: { requests_per_second: 10000000 } }" >> "$f" ;;
    retry) echo "      - { cluster: c, retries: { on: [5xx, reset], attempts: 2, per_try_timeout: 1s } }" >> "$f" ;;
  esac
  cat >> "$f" <<YAML
clusters:
  - { name: c, endpoints: ["127.0.0.1:$BACKEND"], circuit_breakers: { max_connections: 100000, max_requests: 100000 } }
YAML
  echo "$f"
}

# start_proxy CONFIG PORT -> pid
start_proxy() {
  if [ "$MODE" = callgrind ]; then
    RUST_LOG=warn taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$2-$round.out" \
      "$RINGMESH" run -c "$1" --workers 1 --io-engine epoll >>"$WORK/rm.log" 2>&1 &
  else
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$RINGMESH" run -c "$1" --workers 1 >>"$WORK/rm.log" 2>&1 &
  fi
  local pid=$!; echo "$pid" >> "$WORK/pids"
  # A port still held by someone else would measure the wrong process.
  sleep 0.2; kill -0 "$pid" 2>/dev/null || { echo "ringmesh failed to start:" >&2; tail -5 "$WORK/rm.log" >&2; exit 1; }
  wait_port "$2"; echo "$pid"
}

# cell NAME PID PORT -> appends "round<TAB>cell<TAB>requests<TAB>cost<TAB>req/s<TAB>steal_s"
# (cost: CPU seconds, or instructions in MODE=callgrind)
cell() {
  local url="http://127.0.0.1:$3$REQ_PATH" before after s0 s1 out n bad cost
  [ "$WARMUP" = 0 ] || taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${WARMUP}s" -H "Host: $HOST" "$url" >/dev/null
  if [ "$MODE" = callgrind ]; then
    before=$(requests $(( $3 + 1000 ))); callgrind_control -z "$2" >/dev/null 2>&1
  else
    before=$(cpu_ticks "$2")
  fi
  s0=$(steal_ticks)
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${DUR}s" --latency -H "Host: $HOST" "$url")
  s1=$(steal_ticks)
  if [ "$MODE" = callgrind ]; then
    sleep 1; callgrind_control -d "$2" >/dev/null 2>&1; after=$(requests $(( $3 + 1000 )))
    n=$(python3 -c "print(int($after-$before))")
    cost=$(awk '/^summary:/{print $2}' "$WORK/cg-$3-$round.out.1")
  else
    after=$(cpu_ticks "$2")
    n=$(awk '/requests in/{print $1}' <<<"$out")
    cost=$(python3 -c "print(($after-$before)/$TICKS)")
  fi
  bad=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  if [ -n "$bad" ] || grep -q "Socket errors" <<<"$out"; then
    echo "cell $1: requests failed or missed their route:" >&2; echo "$out" >&2; exit 1
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$1" "$n" "$cost" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" "$(python3 -c "print(($s1-$s0)/$TICKS)")" >> "$WORK/samples"
}

read -r -a CELLS <<<"${CELLS:-baseline host exact prefix}"
PORTS=(18601 18602 18603 18604 18605 18606)
for i in "${!CELLS[@]}"; do config "${CELLS[$i]}" "${PORTS[$i]}" >/dev/null; done
: > "$WORK/samples"
echo "# routes ($MODE): $ROUNDS interleaved rounds of ${DUR}s cells (+${WARMUP}s warm-up), 1 vs $ROUTES routes, proxy on CPU $PROXY_CPU, wrk and nginx on CPU $LOAD_CPU, tree at $RINGMESH_BUILD" >&2
for round in $(seq "$ROUNDS"); do
  for k in $(seq 0 $(( ${#CELLS[@]} - 1 ))); do
    i=$(( (k + round - 1) % ${#CELLS[@]} ))
    name=${CELLS[$i]}; port=${PORTS[$i]}
    pid=$(start_proxy "$WORK/$name.yaml" "$port")
    cell "$name" "$pid" "$port"
    stop "$pid"
  done
  echo "round $round done" >&2
done

python3 - "$WORK/samples" "$DUR" "$ROUTES" "$MODE" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    rnd, cell, n, cost, rps, steal = line.rstrip("\n").split("\t")
    rows.setdefault(cell, {})[rnd] = (int(n), float(cost), float(rps), float(steal))
dur, routes, mode = float(sys.argv[2]), sys.argv[3], sys.argv[4]
cg = mode == "callgrind"
titles = {
    "baseline": "1 route, `cluster` (baseline)",
    "host": f"{routes} routes, exact `host`, last one hit",
    "exact": f"{routes} routes, exact `path`, last one hit",
    "prefix": f"{routes} routes, `path_prefix`, last one hit",
    "fault0": "1 route with a fault filter at 0% (abort and delay)",
    "ratelimit": "1 route with a rate limit that never triggers",
    "retry": "1 route with a retry policy that never fires",
    "trace1": "tracing on, 1% sampled, spans exported (OTLP/HTTP)",
    "trace100": "tracing on, 100% sampled, spans exported (OTLP/HTTP)",
    "mesh": "a node block: Istio's mesh metrics per request",
}
us = {c: {r: cost / n * (1 if cg else 1e6) for r, (n, cost, _, _) in v.items()} for c, v in rows.items()}
fmt = (lambda x: f"{x:.0f}") if cg else (lambda x: f"{x:.2f}")
unit = "user-space instructions per request" if cg else "proxy CPU per request, µs"
print(f"| cell | throughput (median) | {unit} (median, min-max) | vs baseline, same round (median, min-max) | per round | steal on the proxy's CPU (median) |")
print("|---|---|---|---|---|---|")
for c in titles:
    if c not in rows:
        continue
    v = us[c]
    ratios = [v[r] / us["baseline"][r] for r in sorted(v) if r in us["baseline"]]
    tput = st.median([rps for _, _, rps, _ in rows[c].values()])
    ratio = "1.00x" if c == "baseline" else f"{st.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
    per = " ".join(fmt(v[r]) for r in sorted(v, key=int))
    steal = st.median([s / dur * 100 for _, _, _, s in rows[c].values()])
    print(f"| {titles[c]} | {tput:.0f} req/s | {fmt(st.median(v.values()))} ({fmt(min(v.values()))}-{fmt(max(v.values()))}) | {ratio} | {per} | {steal:.1f}% |")
PY
