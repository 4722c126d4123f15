#!/usr/bin/env bash
# Control-plane propagation (issue "control plane", README "A mesh in 5 minutes"):
#
#   - a mesh of $SERVICES services (default 100): `hub`, whose routes every
#     other workload calls, and s1..s$((SERVICES-1));
#   - $PROXIES real `ringmesh run` processes (default 100, one worker each,
#     epoll), one per workload s1.. (s0 too), joined to one `ringmesh control`;
#   - $SIMULATED more watch clients (default 900; plane/examples/watchers.rs,
#     one TLS connection each, registering as nodes of workload s1, which
#     calls hub like the real ones, and ACKing every push without applying
#     it) to reach 1,000 watches;
#   - $CHANGES changes (default 20) to hub's route timeout, each through
#     `PUT /mesh/services/hub`: the time from the PUT's start until every
#     real proxy (and, separately, every watch) has ACKed the new version,
#     read by polling `GET /proxies` every 5 ms.
#
# Reported: p50 / p99 / max of the propagation over the changes; the control
# plane's RSS and CPU per connected proxy; the RSS of a proxy whose workload
# calls one service (`calls: [hub]`) against one that may call all $SERVICES
# (s0 has no `calls`), in the same run.
#
# Usage: [PROXIES=100] [SIMULATED=900] [SERVICES=100] [CHANGES=20] bench/mesh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROXIES=${PROXIES:-100}
SIMULATED=${SIMULATED:-900}
SERVICES=${SERVICES:-100}
CHANGES=${CHANGES:-20}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q
  cargo build --release -q -p ringmesh-plane --example watchers
fi
BIN=$PWD/target/release/ringmesh
WATCHERS=$PWD/target/release/examples/watchers
WORK=$(mktemp -d /tmp/ringmesh-mesh-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

PORT=$((20000 + RANDOM % 20000))
URL=https://localhost:$PORT
{
  echo "mesh: { trust_domain: bench.local, lease: 30s }"
  echo "services:"
  echo "  - name: hub"
  echo "    port: 9000"
  echo "    routes: [{ name: main, cluster: hub, timeout: 1s }]"
  echo "  - { name: s0, port: 9000 }"
  for i in $(seq 1 $((SERVICES - 1))); do echo "  - { name: s$i, port: 9000, calls: [hub] }"; done
} > "$WORK/mesh.yaml"
"$BIN" control -c "$WORK/mesh.yaml" --listen 127.0.0.1:$PORT --state-dir "$WORK/cp" 2> "$WORK/cp.log" &
CP=$!; PIDS+=($CP); disown $CP
for _ in $(seq 100); do [ -f "$WORK/cp/admin.token" ] && grep -q "listening" "$WORK/cp.log" && break; sleep 0.1; done
C=(--control "$URL" --ca "$WORK/cp/ca.pem" --token-file "$WORK/cp/admin.token")

echo "starting $PROXIES proxies"
for i in $(seq 0 $((PROXIES - 1))); do
  w=s$((i % SERVICES))
  [ -f "$WORK/$w.token" ] || "$BIN" ctl token "${C[@]}" --workload "$w" > "$WORK/$w.token"
  base=$((30000 + i * 4))
  "$BIN" run --control "$URL" --ca "$WORK/cp/ca.pem" --token-file "$WORK/$w.token" \
    --node "p$i" --workload "$w" --app-port 9 --workers 1 --io-engine epoll \
    --inbound 127.0.0.1:$base --outbound 127.0.0.1:$((base + 1)) --admin 127.0.0.1:$((base + 2)) \
    --state-dir "$WORK/p$i" 2> "$WORK/p$i.log" &
  PIDS+=($!); disown $!
done

python3 - "$URL" "$WORK" "$PROXIES" "$SIMULATED" "$CHANGES" "$CP" "$WATCHERS" <<'PY'
import http.client, json, os, ssl, statistics, subprocess, sys, time
url, work, proxies, simulated, changes, cp, watchers = sys.argv[1:8]
proxies, simulated, changes, cp = int(proxies), int(simulated), int(changes), int(cp)
port = int(url.rsplit(":", 1)[1])
ctx = ssl.create_default_context(cafile=f"{work}/cp/ca.pem")
token = open(f"{work}/cp/admin.token").read().strip()
conn = http.client.HTTPSConnection("localhost", port, context=ctx)
def call(method, path, body=None):
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    return r.status, r.read()
def rows():
    return json.loads(call("GET", "/proxies")[1])
def wait(pred, timeout=120):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rs = rows()
        if pred(rs):
            return time.monotonic() - start
        time.sleep(0.005)
    raise SystemExit(f"timeout: {sum(r['state'] == 'SYNCED' for r in rows())} synced")
def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def synced(n):
    return lambda rs: len(rs) >= n and all(r["state"] == "SYNCED" for r in rs)
t = wait(synced(proxies))
print(f"{proxies} proxies joined and SYNCED {t:.1f}s after the last start")
def propagate(label, n_real, base):
    times_real, times_all, times_put = [], [], []
    for i in range(changes):
        body = "port: 9000\nroutes: [{ name: main, cluster: hub, timeout: %ds }]\n" % (i + 2 + base)
        start = time.monotonic()
        st, b = call("PUT", "/mesh/services/hub", body)
        assert st == 200, b
        times_put.append(time.monotonic() - start)
        version = json.loads(b)["version"]
        prefix = f"{version}-"
        done_real = None
        while True:
            rs = rows()
            real = [r for r in rs if r["node"].startswith("p")]
            if done_real is None and all((r["acked"] or "").startswith(prefix) for r in real):
                done_real = time.monotonic() - start
            if all((r["acked"] or "").startswith(prefix) for r in rs) and done_real is not None:
                times_all.append(time.monotonic() - start)
                break
            if time.monotonic() - start > 60:
                raise SystemExit("a change did not propagate in 60s")
            time.sleep(0.005)
        times_real.append(done_real)
    def summary(ts):
        ts = sorted(x * 1000 for x in ts)
        p99 = ts[min(len(ts) - 1, int(round(0.99 * (len(ts) - 1))))]
        return f"p50 {statistics.median(ts):.0f} ms, p99 {p99:.0f} ms, max {ts[-1]:.0f} ms"
    print(f"[{label}] PUT answered (validated, stored, derived): {summary(times_put)}")
    print(f"[{label}] {n_real} real proxies all ACKed: {summary(times_real)}")
    if label != "real only":
        print(f"[{label}] every watch ({len(rows())}) ACKed: {summary(times_all)}")
rss0, cpu0 = rss_kb(cp), cpu_s(cp)
propagate("real only", proxies, 0)
rss1, cpu1 = rss_kb(cp), cpu_s(cp)
print(f"control plane with {proxies} proxies: RSS {rss1/1024:.1f} MiB; CPU for {changes} changes {cpu1-cpu0:.2f} s "
      f"({(cpu1-cpu0)/changes/proxies*1e3:.2f} ms per change per proxy)")
if simulated > 0:
    sim = subprocess.Popen([watchers, url, f"{work}/cp/ca.pem", f"{work}/p1/identity.pem", "default", "s1", str(simulated)],
                           stderr=open(f"{work}/watchers.log", "w"))
    try:
        t = wait(synced(proxies + simulated), timeout=300)
        print(f"{simulated} simulated watches joined; all {proxies + simulated} SYNCED {t:.1f}s later")
        rss2, cpu2 = rss_kb(cp), cpu_s(cp)
        propagate("with simulated", proxies, 100)
        rss3, cpu3 = rss_kb(cp), cpu_s(cp)
        n = proxies + simulated
        print(f"control plane with {n} watches: RSS {rss3/1024:.1f} MiB "
              f"({(rss3 - rss0) / (n - proxies) :.1f} KiB per added watch); "
              f"CPU for {changes} changes {cpu3-cpu2:.2f} s ({(cpu3-cpu2)/changes/n*1e3:.2f} ms per change per watch)")
    finally:
        sim.kill()
# Proxy memory: p0 (workload s0, may call every service) against p1 (calls hub only).
def proxy_pid(node):
    out = subprocess.run(["pgrep", "-f", "--", f"--node {node} "], capture_output=True, text=True).stdout.split()
    return int(out[0])
wide, narrow = rss_kb(proxy_pid("p0")), rss_kb(proxy_pid("p1"))
cfg = lambda n: json.loads(call("GET", f"/proxies/{n}/config")[1])["config"]
print(f"proxy RSS: calls every service ({len(cfg('p0')['clusters'])} clusters) {wide/1024:.1f} MiB, "
      f"calls one ({len(cfg('p1')['clusters'])} clusters) {narrow/1024:.1f} MiB: ratio {wide/narrow:.2f}x")
PY
