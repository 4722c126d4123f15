//! `ringmesh bench compare`: the same workloads through direct, ringmesh,
//! HAProxy and nginx, in one run, printed as one markdown table of ratios.
//!
//! Method (bench/README.md): each proxy runs on `--proxy-cpu` (one worker or
//! thread); the generator and the backends share `--load-cpu`. Proxy CPU
//! time (the whole process tree, from /proc) per request or per GiB is the
//! comparable figure on a 2-core machine, where the load side saturates
//! first. Latency added by a proxy is measured in a separate open-loop pass
//! at a fixed, unsaturated rate.
//!
//! Every child process is started pinned, with PR_SET_PDEATHSIG(SIGKILL),
//! and killed by its pid on drop: nothing survives the harness, Ctrl-C
//! included.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::backend::{self, BackendKind, BackendSpec};
use crate::http1::Request;
use crate::report::Report;
use crate::runner::{self, Direction, HttpWorkload, LoadSpec, Workload};

/// A path through which load is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Via {
    /// Straight to the backend.
    Direct,
    /// ringmesh (`--workers 1`).
    Ringmesh,
    /// HAProxy (`nbthread 1`).
    Haproxy,
    /// nginx (`worker_processes 1`).
    Nginx,
}

/// A workload of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Bulk upload (Gbit/s, CPU per GiB).
    TcpStream,
    /// 64-byte request/response over TCP.
    TcpRr,
    /// HTTP/1.1 keep-alive.
    Http,
    /// HTTP/1.1 with a new connection per request.
    HttpChurn,
}

/// `ringmesh bench compare` flags.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Paths to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    via: Vec<Via>,
    /// Workloads (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Scenario>,
    /// Measured time per cell and round.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds of the whole matrix; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds-scale smoke run: 1 round of 1 s cells; absent peers skipped.
    #[arg(long)]
    quick: bool,
    /// CPU for the proxy.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// CPU for the load generator and the backends.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Rate of the open-loop latency pass (requests per second).
    #[arg(long, default_value_t = 2000.0)]
    latency_rate: f64,
    /// The ringmesh binary to measure (default: this executable).
    #[arg(long)]
    ringmesh: Option<PathBuf>,
    /// Never run apt-get; skip missing peers instead.
    #[arg(long)]
    no_install: bool,
    /// Also write the markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

const PEER_HAPROXY: &str = include_str!("../peers/haproxy-compare.cfg");
const PEER_NGINX: &str = include_str!("../peers/nginx-compare.conf");
const PEER_RINGMESH: &str = include_str!("../peers/ringmesh-compare.yaml");

/// Backends every path leads to.
struct Backends {
    stream: SocketAddr,
    rr: SocketAddr,
    http: SocketAddr,
}

/// Where a path accepts each workload.
#[derive(Clone, Copy)]
struct Entry {
    stream: SocketAddr,
    rr: SocketAddr,
    http: SocketAddr,
}

/// A started proxy, leading its own process group; the group is killed on
/// drop, and PDEATHSIG kills the leader if the harness dies first.
struct Peer {
    child: Child,
    _dir: tempdir::Dir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The peer leads its own process group: workers it forked go too.
        // SAFETY: kill(2) on a process group we created.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    //! A directory removed on drop (peers write configs and logs here).
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> std::io::Result<Dir> {
            let p =
                std::env::temp_dir().join(format!("ringmesh-compare-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One measured cell (one round).
#[derive(Clone)]
struct Sample {
    load: Report,
    latency: Option<Report>,
    proxy_cpu_seconds: Option<f64>,
    peak_rss_kib: Option<u64>,
}

pub(crate) fn run(mut a: CompareArgs) -> Result<(), String> {
    if a.quick {
        a.duration = Duration::from_secs(1);
        a.rounds = 1;
        a.no_install = true;
    }
    let vias = if a.via.is_empty() {
        vec![Via::Direct, Via::Ringmesh, Via::Haproxy, Via::Nginx]
    } else {
        a.via.clone()
    };
    let scenarios = if a.workloads.is_empty() {
        vec![
            Scenario::TcpStream,
            Scenario::TcpRr,
            Scenario::Http,
            Scenario::HttpChurn,
        ]
    } else {
        a.workloads.clone()
    };
    let started = Instant::now();
    let backends = start_backends(a.load_cpu)?;
    let mut notes = Vec::new();
    let mut available = Vec::new();
    for via in &vias {
        match ensure_available(*via, &a) {
            Ok(()) => available.push(*via),
            Err(why) => notes.push(format!("{via:?} skipped: {why}")),
        }
    }
    let mut samples: BTreeMap<(Scenario, Via), Vec<Sample>> = BTreeMap::new();
    for round in 0..a.rounds.max(1) {
        for via in &available {
            let (peer, entry) = match start_peer(*via, &backends, &a) {
                Ok(p) => p,
                Err(e) => {
                    notes.push(format!("{via:?} round {}: {e}", round + 1));
                    continue;
                }
            };
            for s in &scenarios {
                let sample = measure(*s, entry, peer.as_ref(), &a)?;
                samples.entry((*s, *via)).or_default().push(sample);
            }
            drop(peer);
        }
        eprintln!(
            "compare: round {} of {} done ({:.0}s)",
            round + 1,
            a.rounds.max(1),
            started.elapsed().as_secs_f64()
        );
    }
    let table = render(&samples, &scenarios, &available, &a, &notes);
    print!("{table}");
    if let Some(out) = &a.out {
        std::fs::write(out, &table).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn start_backends(cpu: usize) -> Result<Backends, String> {
    let start = |kind, body_size| {
        backend::start(BackendSpec {
            kind,
            listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            delay: Duration::ZERO,
            body_size,
            cpu: Some(cpu),
        })
        .map(|b| b.addr)
        .map_err(|e| format!("backend: {e}"))
    };
    Ok(Backends {
        stream: start(BackendKind::Sink, 0)?,
        rr: start(BackendKind::Echo, 0)?,
        http: start(BackendKind::Http, 100)?,
    })
}

fn binary(via: Via, a: &CompareArgs) -> Option<PathBuf> {
    match via {
        Via::Direct => None,
        Via::Ringmesh => a.ringmesh.clone().or_else(|| std::env::current_exe().ok()),
        Via::Haproxy => find_in_path("haproxy"),
        Via::Nginx => find_in_path("nginx"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Where nginx's stream module comes from: `Ok(Some(path))` for the dynamic
/// module to load, `Ok(None)` when it is compiled in; an error when this nginx
/// has none (Debian ships it apart, as `libnginx-mod-stream`).
fn nginx_stream_module(nginx: &Path) -> Result<Option<String>, String> {
    if let Some(m) = [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    {
        return Ok(Some(m.to_owned()));
    }
    // `nginx -V` prints its configure arguments on stderr.
    let built_in = Command::new(nginx)
        .arg("-V")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            text.split_whitespace().any(|arg| arg == "--with-stream")
        })
        .unwrap_or(false);
    if built_in {
        Ok(None)
    } else {
        Err("nginx has no stream module (Debian: apt-get install libnginx-mod-stream)".into())
    }
}

fn ensure_available(via: Via, a: &CompareArgs) -> Result<(), String> {
    if via == Via::Direct {
        return Ok(());
    }
    let missing = match binary(via, a) {
        None => "not installed".to_owned(),
        Some(bin) => match via {
            Via::Nginx => match nginx_stream_module(&bin) {
                Ok(_) => return Ok(()),
                Err(_) => "nginx has no stream module".to_owned(),
            },
            _ => return Ok(()),
        },
    };
    let packages: &[&str] = match via {
        Via::Haproxy => &["haproxy"],
        Via::Nginx => &["nginx", "libnginx-mod-stream"],
        _ => return Err("binary not found (use --ringmesh PATH)".into()),
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if a.no_install || !root {
        return Err(format!(
            "{missing}; install with: apt-get install {}",
            packages.join(" ")
        ));
    }
    eprintln!("compare: installing {} with apt-get", packages.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match binary(via, a) {
        Some(bin) if ok && via == Via::Nginx => nginx_stream_module(&bin).map(|_| ()),
        Some(_) if ok => Ok(()),
        _ => Err(format!("apt-get install {} failed", packages.join(" "))),
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

/// Starts the proxy for `via` (pinned, dying with us); `None` for direct.
fn start_peer(via: Via, b: &Backends, a: &CompareArgs) -> Result<(Option<Peer>, Entry), String> {
    if via == Via::Direct {
        return Ok((
            None,
            Entry {
                stream: b.stream,
                rr: b.rr,
                http: b.http,
            },
        ));
    }
    let entry = Entry {
        stream: free_port()?,
        rr: free_port()?,
        http: free_port()?,
    };
    let dir = tempdir::Dir::new(&format!("{via:?}").to_lowercase()).map_err(|e| e.to_string())?;
    let work = dir.path().to_path_buf();
    let mut vars = vec![
        ("STREAM_LISTEN", entry.stream.to_string()),
        ("RR_LISTEN", entry.rr.to_string()),
        ("HTTP_LISTEN", entry.http.to_string()),
        ("STREAM_BACKEND", b.stream.to_string()),
        ("RR_BACKEND", b.rr.to_string()),
        ("HTTP_BACKEND", b.http.to_string()),
        ("WORK", work.display().to_string()),
        ("ADMIN_LISTEN", free_port()?.to_string()),
    ];
    let bin = binary(via, a).ok_or("binary not found")?;
    let mut cmd = Command::new(&bin);
    match via {
        Via::Ringmesh => {
            let cfg = work.join("ringmesh.yaml");
            std::fs::write(&cfg, fill(PEER_RINGMESH, &vars)).map_err(|e| e.to_string())?;
            cmd.args(["run", "--workers", "1", "-c"])
                .arg(cfg)
                .env("RUST_LOG", "warn");
        }
        Via::Haproxy => {
            let cfg = work.join("haproxy.cfg");
            std::fs::write(&cfg, fill(PEER_HAPROXY, &vars)).map_err(|e| e.to_string())?;
            cmd.arg("-f").arg(cfg).arg("-db");
        }
        Via::Nginx => {
            let module = nginx_stream_module(&bin)?;
            vars.push((
                "LOAD_STREAM_MODULE",
                module.map_or_else(String::new, |m| format!("load_module {m};")),
            ));
            let cfg = work.join("nginx.conf");
            std::fs::write(&cfg, fill(PEER_NGINX, &vars)).map_err(|e| e.to_string())?;
            cmd.arg("-c")
                .arg(cfg)
                .arg("-p")
                .arg(&work)
                .args(["-e", "stderr"]);
        }
        Via::Direct => {}
    }
    let log = std::fs::File::create(work.join("peer.log")).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    let cpu = a.proxy_cpu;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut peer = Peer { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in [entry.stream, entry.rr, entry.http] {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || peer.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(work.join("peer.log")).unwrap_or_default();
                return Err(format!(
                    "did not start: {}",
                    log.lines().last().unwrap_or("no output")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The readiness probes above are connections too; let them settle.
    std::thread::sleep(Duration::from_millis(100));
    Ok((Some(peer), entry))
}

fn spec(target: SocketAddr, workload: Workload, connections: usize, a: &CompareArgs) -> LoadSpec {
    LoadSpec {
        target,
        workload,
        threads: 1,
        connections,
        duration: a.duration,
        warmup: if a.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        },
        rate: None,
        timeout: Duration::from_secs(2),
        cpus: vec![a.load_cpu],
        progress: false,
    }
}

fn http_workload(churn: bool) -> Workload {
    Workload::Http(HttpWorkload {
        request: Request::build("GET", "/", "bench", &[], b"", churn),
        expect_status: 200,
        new_connection_per_request: churn,
    })
}

fn measure(s: Scenario, e: Entry, peer: Option<&Peer>, a: &CompareArgs) -> Result<Sample, String> {
    let (load_spec, latency_spec) = match s {
        Scenario::TcpStream => (
            spec(
                e.stream,
                Workload::TcpStream {
                    direction: Direction::Upload,
                    chunk: 256 * 1024,
                },
                4,
                a,
            ),
            None,
        ),
        Scenario::TcpRr => {
            let w = Workload::TcpRr { size: 64 };
            let mut lat = spec(e.rr, w.clone(), 10, a);
            lat.rate = Some(a.latency_rate);
            (spec(e.rr, w, 50, a), Some(lat))
        }
        Scenario::Http => {
            let mut lat = spec(e.http, http_workload(false), 10, a);
            lat.rate = Some(a.latency_rate);
            (spec(e.http, http_workload(false), 50, a), Some(lat))
        }
        Scenario::HttpChurn => (spec(e.http, http_workload(true), 16, a), None),
    };
    let pid = peer.map(|p| p.child.id());
    let before = pid.map(tree_cpu_seconds);
    let load = runner::run(&load_spec).map_err(|e| e.to_string())?;
    let after = pid.map(tree_cpu_seconds);
    let latency = match latency_spec {
        Some(l) => Some(runner::run(&l).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(Sample {
        load,
        latency,
        proxy_cpu_seconds: before.zip(after).map(|(b, a)| a - b),
        peak_rss_kib: pid.map(tree_peak_rss_kib),
    })
}

/// The pid and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|v| v.parse().ok()))
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn tree_cpu_seconds(root: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    process_tree(root)
        .into_iter()
        .filter_map(stat_fields)
        // utime and stime are fields 14 and 15, i.e. [11] and [12] here.
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (n(11) + n(12)) as f64 / ticks
        })
        .sum()
}

fn tree_peak_rss_kib(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median figures of one cell.
struct Cell {
    throughput: f64,
    unit: &'static str,
    /// Proxy CPU seconds per unit of work (per request, or per GiB).
    cpu_per_unit: Option<f64>,
    cpu_busy: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    rss_mib: Option<f64>,
    errors: u64,
}

fn summarise(s: Scenario, samples: &[Sample], duration: Duration) -> Cell {
    let stream = s == Scenario::TcpStream;
    let work = |x: &Sample| {
        if stream {
            (x.load.bytes_sent + x.load.bytes_received) as f64 / (1u64 << 30) as f64
        } else {
            x.load.requests as f64
        }
    };
    Cell {
        throughput: median(
            samples
                .iter()
                .map(|x| {
                    if stream {
                        x.load.gbit_per_sec
                    } else {
                        x.load.requests_per_sec
                    }
                })
                .collect(),
        )
        .unwrap_or(0.0),
        unit: if stream { "Gbit/s" } else { "req/s" },
        cpu_per_unit: median(
            samples
                .iter()
                .filter_map(|x| x.proxy_cpu_seconds.map(|c| c / work(x).max(1e-12)))
                .collect(),
        ),
        cpu_busy: median(
            samples
                .iter()
                .filter_map(|x| x.proxy_cpu_seconds.map(|c| c / duration.as_secs_f64()))
                .collect(),
        ),
        p50: median(
            samples
                .iter()
                .filter_map(|x| x.latency.as_ref().and_then(|l| l.latency_ms.map(|l| l.p50)))
                .collect(),
        ),
        p99: median(
            samples
                .iter()
                .filter_map(|x| x.latency.as_ref().and_then(|l| l.latency_ms.map(|l| l.p99)))
                .collect(),
        ),
        rss_mib: median(
            samples
                .iter()
                .filter_map(|x| x.peak_rss_kib.map(|k| k as f64 / 1024.0))
                .collect(),
        ),
        errors: samples
            .iter()
            .map(|x| x.load.errors.total() + x.latency.as_ref().map_or(0, |l| l.errors.total()))
            .sum(),
    }
}

fn label(via: Via, s: Scenario) -> String {
    match (via, s) {
        (Via::Direct, _) => "direct".into(),
        (Via::Ringmesh, _) => "ringmesh".into(),
        (Via::Haproxy, _) => "HAProxy".into(),
        (Via::Nginx, _) => "nginx".into(),
    }
}

fn render(
    samples: &BTreeMap<(Scenario, Via), Vec<Sample>>,
    scenarios: &[Scenario],
    vias: &[Via],
    a: &CompareArgs,
    notes: &[String],
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let uname = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(o, "## ringmesh bench compare\n");
    let _ = writeln!(
        o,
        "{} CPUs, {uname}; proxy on CPU {}, generator and backends on CPU {}; {} round(s) of {:?} per cell, medians. Latency at {:.0} req/s open loop (10 connections).\n",
        cpus,
        a.proxy_cpu,
        a.load_cpu,
        a.rounds.max(1),
        a.duration,
        a.latency_rate
    );
    let peers: Vec<Via> = vias
        .iter()
        .copied()
        .filter(|v| matches!(v, Via::Haproxy | Via::Nginx))
        .collect();
    let mut header = String::from(
        "| workload | path | throughput | per proxy core | proxy CPU per unit | vs direct |",
    );
    let mut sep = String::from("|---|---|---|---|---|---|");
    for p in &peers {
        let _ = write!(header, " CPU vs {} |", label(*p, Scenario::TcpRr));
        sep.push_str("---|");
    }
    header.push_str(" p50 / p99 ms | added p50 / p99 ms | peak RSS MiB | errors |");
    sep.push_str("---|---|---|---|");
    let _ = writeln!(o, "{header}\n{sep}");
    for s in scenarios {
        let direct = samples
            .get(&(*s, Via::Direct))
            .map(|v| summarise(*s, v, a.duration));
        let cells: Vec<(Via, Cell)> = vias
            .iter()
            .filter_map(|v| {
                samples
                    .get(&(*s, *v))
                    .map(|x| (*v, summarise(*s, x, a.duration)))
            })
            .collect();
        for (via, c) in &cells {
            let per_core = match (c.cpu_busy, via) {
                (Some(busy), _) if busy > 0.0 => format!("{:.1}", c.throughput / busy),
                _ => "-".into(),
            };
            let cpu = match c.cpu_per_unit {
                Some(v) if c.unit == "Gbit/s" => format!("{v:.3} s/GiB"),
                Some(v) => format!("{:.1} µs/req", v * 1e6),
                None => "-".into(),
            };
            let vs_direct = direct
                .as_ref()
                .filter(|d| d.throughput > 0.0)
                .map_or("-".into(), |d| {
                    format!("{:.2}x", c.throughput / d.throughput)
                });
            let amount = if c.unit == "Gbit/s" {
                format!("{:.1}", c.throughput)
            } else {
                format!("{:.0}", c.throughput)
            };
            let per_core = if c.unit == "Gbit/s" {
                per_core
            } else {
                per_core.split('.').next().unwrap_or("-").to_owned()
            };
            let mut row = format!(
                "| {s:?} | {} | {amount} {} | {per_core} | {cpu} | {vs_direct} |",
                label(*via, *s),
                c.unit
            );
            for p in &peers {
                let peer_cpu = cells
                    .iter()
                    .find(|(v, _)| v == p)
                    .and_then(|(_, pc)| pc.cpu_per_unit);
                let _ = match (c.cpu_per_unit, peer_cpu) {
                    (Some(mine), Some(theirs)) if theirs > 0.0 && via != p => {
                        write!(row, " {:.2}x |", mine / theirs)
                    }
                    _ => write!(row, " - |"),
                };
            }
            let lat = match (c.p50, c.p99) {
                (Some(a), Some(b)) => format!("{a:.3} / {b:.3}"),
                _ => "-".into(),
            };
            let added = match (c.p50, c.p99, direct.as_ref().and_then(|d| d.p50.zip(d.p99))) {
                (Some(a), Some(b), Some((da, db))) if *via != Via::Direct => {
                    format!("{:+.3} / {:+.3}", a - da, b - db)
                }
                _ => "-".into(),
            };
            let rss = c.rss_mib.map_or("-".into(), |r| format!("{r:.1}"));
            let _ = writeln!(row, " {lat} | {added} | {rss} | {} |", c.errors);
            o.push_str(&row);
        }
    }
    let _ = writeln!(
        o,
        "\nproxy CPU per unit: CPU seconds of the proxy's process tree (/proc utime+stime) per request, or per GiB for TcpStream; \"CPU vs X\" is that figure divided by X's (below 1.00x: cheaper than X). per proxy core: throughput divided by the proxy's CPU utilisation."
    );
    for n in notes {
        let _ = writeln!(o, "\nnote: {n}");
    }
    o
}
