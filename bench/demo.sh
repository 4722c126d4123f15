#!/usr/bin/env bash
# `ringmesh demo` at rest and under its own load (issue 16):
#   - at rest (no background user) for $REST seconds: the RSS of every
#     process of the demo summed, and their CPU time over the period, as a
#     share of one core;
#   - the latency one mesh hop adds: $N keep-alive GETs to review's app
#     directly against the same GETs through product's sidecar (outbound
#     listener -> mTLS -> review's sidecar -> app), interleaved in rounds,
#     p50/p99 of each, while the demo's background user runs at $RPS.
# Usage: [REST=30] [N=2000] [RPS=4] bench/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REST=${REST:-30}; N=${N:-2000}; RPS=${RPS:-4}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
BIN=$PWD/target/release/ringmesh
DIR=$(mktemp -d /tmp/ringmesh-demo-bench.XXXXXX)
cleanup() { "$BIN" demo --dir "$DIR/rest" down >/dev/null 2>&1 || true; "$BIN" demo --dir "$DIR/load" down >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT

up() { # dir rps
  "$BIN" demo --dir "$1" --rps "$2" > "$1.out" 2>&1 &
  for _ in $(seq 300); do grep -q "running" "$1.out" 2>/dev/null && return; sleep 0.1; done
  echo "the demo did not start:"; cat "$1.out"; exit 1
}

up "$DIR/rest" 0
sleep 3
python3 - "$DIR/rest" "$REST" <<'PY'
import os, sys, time
d, rest = sys.argv[1], int(sys.argv[2])
pids = [int(p) for p in open(f"{d}/pids").read().split()] + [int(open(f"{d}/demo.pid").read())]
def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def cpu(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
c0 = sum(cpu(p) for p in pids); t0 = time.monotonic()
time.sleep(rest)
c1 = sum(cpu(p) for p in pids); t1 = time.monotonic()
total = sum(rss(p) for p in pids)
print(f"at rest: {len(pids)} processes, RSS {total/1024:.1f} MiB in total, CPU {100*(c1-c0)/(t1-t0):.2f}% of one core over {rest}s")
PY
"$BIN" demo --dir "$DIR/rest" down >/dev/null

up "$DIR/load" "$RPS"
python3 - "$N" <<'PY'
import http.client, statistics, sys, time
n = int(sys.argv[1])
# review's app (slot 2) and product's sidecar outbound (slot 0): demo/src/landscape.rs
direct = ("127.0.0.1", 15740, "review")
mesh = ("127.0.0.1", 15722, "review")
def measure(host, port, h, count):
    c = http.client.HTTPConnection(host, port)
    out = []
    for i in range(count):
        t = time.perf_counter()
        c.request("GET", f"/review/{i % 10}", headers={"Host": h})
        r = c.getresponse(); r.read()
        if r.status != 200: raise SystemExit(f"{host}:{port} answered {r.status}")
        out.append((time.perf_counter() - t) * 1e6)
    return out
d, m = [], []
for _ in range(10):  # interleaved rounds
    d += measure(*direct, n // 10)
    m += measure(*mesh, n // 10)
def q(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]
print(f"direct to review's app:        p50 {q(d,.5):.0f} us, p99 {q(d,.99):.0f} us")
print(f"through the mesh (one hop):    p50 {q(m,.5):.0f} us, p99 {q(m,.99):.0f} us")
print(f"added by the hop (2 sidecars, mTLS): p50 +{q(m,.5)-q(d,.5):.0f} us, p99 +{q(m,.99)-q(d,.99):.0f} us")
PY
