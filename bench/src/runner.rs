//! Runs a load: one thread per core, each with its own compio runtime (the
//! proxy's runtime, io_uring with epoll fallback) driving its share of the
//! connections. Threads record into their own histograms and counters; the
//! runner merges them once at the end, and reads single-writer live counters
//! once a second for the progress line.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::http1::Request;
use crate::report::Report;
use crate::scenarios;
use crate::stats::{ErrorKind, LiveCounters, ThreadRecord};

/// Which direction `tcp-stream` moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server (the server must discard: `ringmesh bench serve sink`).
    Upload,
    /// Server to client (the server must send: `ringmesh bench serve source`).
    Download,
}

/// What each connection does.
#[derive(Debug, Clone)]
pub enum Workload {
    /// HTTP/1.1 requests.
    Http(HttpWorkload),
    /// Fixed-size request/response round trips over TCP against an echo server.
    TcpRr {
        /// Message size in bytes.
        size: usize,
    },
    /// Bulk transfer in one direction.
    TcpStream {
        /// Which way bytes move.
        direction: Direction,
        /// Bytes per write or read.
        chunk: usize,
    },
}

impl Workload {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Http(h) if h.new_connection_per_request => "http-churn",
            Workload::Http(_) => "http-keepalive",
            Workload::TcpRr { .. } => "tcp-rr",
            Workload::TcpStream { .. } => "tcp-stream",
        }
    }
}

/// HTTP workload settings.
#[derive(Debug, Clone)]
pub struct HttpWorkload {
    /// The request, serialised.
    pub request: Request,
    /// The status a successful response must have.
    pub expect_status: u16,
    /// Open a new connection for every request.
    pub new_connection_per_request: bool,
}

/// A whole load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to connect.
    pub target: SocketAddr,
    /// What to send.
    pub workload: Workload,
    /// Generator threads (each with its own runtime).
    pub threads: usize,
    /// Concurrent connections over all threads.
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
    /// Time run before measuring (not counted).
    pub warmup: Duration,
    /// Open loop: total requests per second; `None` = closed loop.
    pub rate: Option<f64>,
    /// Time allowed for one request (or connect).
    pub timeout: Duration,
    /// CPUs to pin threads to (round robin); empty = not pinned.
    pub cpus: Vec<usize>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

/// Why a run could not happen.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A generator thread could not start.
    #[error("generator thread: {0}")]
    Thread(String),
    /// Bad settings.
    #[error("{0}")]
    Spec(String),
}

/// The measured window, shared by every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Connections start sending here.
    pub start: Instant,
    /// Results count from here (after the warmup).
    pub measure_from: Instant,
    /// Nothing new is sent from here.
    pub end: Instant,
}

impl Window {
    pub(crate) fn measures(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
}

/// What a connection task works with.
pub(crate) struct ConnCtx<'a> {
    pub spec: &'a LoadSpec,
    pub window: Window,
    /// Global index of this connection (0..connections).
    pub index: usize,
    pub record: &'a RefCell<ThreadRecord>,
    pub live: &'a LiveCounters,
}

impl ConnCtx<'_> {
    /// Counts an error for a request intended or sent at `at`.
    pub(crate) fn error(&self, kind: ErrorKind, at: Instant) {
        self.live.error();
        if self.window.measures(at) {
            self.record.borrow_mut().errors.add(kind);
        }
    }

    /// Records a successful request started at `at`, with `latency`.
    pub(crate) fn success(&self, at: Instant, latency: Duration) {
        self.live.complete();
        if self.window.measures(at) {
            self.record.borrow_mut().record_latency(latency);
        }
    }
}

/// Runs `spec` and returns the merged report.
pub fn run(spec: &LoadSpec) -> Result<Report, BenchError> {
    if spec.connections == 0 {
        return Err(BenchError::Spec("--connections must be at least 1".into()));
    }
    if spec.duration.is_zero() {
        return Err(BenchError::Spec("--duration must be more than 0".into()));
    }
    if spec.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Spec("--rate must be a positive number".into()));
    }
    let threads = spec.threads.clamp(1, spec.connections);
    // Give every thread time to build its runtime and connect before t0.
    let start = Instant::now() + Duration::from_millis(200);
    let window = Window {
        start,
        measure_from: start + spec.warmup,
        end: start + spec.warmup + spec.duration,
    };
    let spec = Arc::new(spec.clone());
    let mut handles = Vec::with_capacity(threads);
    let mut live = Vec::with_capacity(threads);
    for t in 0..threads {
        // Connections [lo, hi) belong to thread t.
        let lo = spec.connections * t / threads;
        let hi = spec.connections * (t + 1) / threads;
        let counters = Arc::new(LiveCounters::default());
        live.push(counters.clone());
        let spec = spec.clone();
        let cpu = (!spec.cpus.is_empty()).then(|| spec.cpus[t % spec.cpus.len()]);
        let handle = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || thread_main(&spec, cpu, lo..hi, window, &counters))
            .map_err(|e| BenchError::Thread(e.to_string()))?;
        handles.push(handle);
    }
    if spec.progress {
        progress_loop(&live, &handles, window);
    }
    let mut merged = ThreadRecord::default();
    for h in handles {
        let record = h
            .join()
            .map_err(|_| BenchError::Thread("a generator thread panicked".into()))?
            .map_err(BenchError::Thread)?;
        merged.merge(&record);
    }
    Ok(Report::new(&spec, threads, merged))
}

fn thread_main(
    spec: &LoadSpec,
    cpu: Option<usize>,
    connections: std::ops::Range<usize>,
    window: Window,
    live: &LiveCounters,
) -> Result<ThreadRecord, String> {
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu);
    }
    let runtime = build_runtime().map_err(|e| format!("cannot start runtime: {e}"))?;
    let record = RefCell::new(ThreadRecord::default());
    runtime.block_on(async {
        let tasks = connections.map(|index| {
            let ctx = ConnCtx {
                spec,
                window,
                index,
                record: &record,
                live,
            };
            async move { scenarios::run_connection(&ctx).await }
        });
        futures_util::future::join_all(tasks).await;
    });
    Ok(record.into_inner())
}

fn progress_loop(
    live: &[Arc<LiveCounters>],
    handles: &[thread::JoinHandle<Result<ThreadRecord, String>>],
    window: Window,
) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now.duration_since(last.0) < Duration::from_secs(1) {
            continue;
        }
        let done: u64 = live.iter().map(|l| l.completed.load(Relaxed)).sum();
        let errors: u64 = live.iter().map(|l| l.errors.load(Relaxed)).sum();
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let elapsed = now.saturating_duration_since(window.start).as_secs_f64();
        let phase = if now < window.measure_from {
            " (warmup)"
        } else {
            ""
        };
        let line =
            format!("[{elapsed:6.1}s] {rate:>10.0} req/s  {done:>10} done  {errors} errors{phase}");
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
        last = (now, done);
    }
    if tty {
        eprintln!();
    }
}

/// io_uring with DEFER_TASKRUN + SINGLE_ISSUER (completions are processed
/// when the thread asks for them, not by interrupting it: +15-35% req/s per
/// generator core here); without them on kernels before 6.1; epoll where
/// io_uring is unavailable.
fn build_runtime() -> std::io::Result<compio::runtime::Runtime> {
    use compio::driver::{DriverType, ProactorBuilder};
    let mut deferred = ProactorBuilder::new();
    deferred
        .driver_type(DriverType::IoUring)
        .single_issuer(true)
        .defer_taskrun(true);
    let mut plain = ProactorBuilder::new();
    plain.driver_type(DriverType::IoUring);
    let mut poll = ProactorBuilder::new();
    poll.driver_type(DriverType::Poll);
    let mut last = None;
    for p in [deferred, plain, poll] {
        match compio::runtime::RuntimeBuilder::new()
            .with_proactor(p)
            .build()
        {
            Ok(rt) => return Ok(rt),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no I/O driver")))
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
