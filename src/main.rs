//! The `ringmesh` command: run the proxy, or validate a configuration.

mod cert;
mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ringmesh_core::IoEngineChoice;

/// ringmesh: a service-mesh data plane (thread-per-core io_uring proxy).
#[derive(Parser, Debug)]
#[command(name = "ringmesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy with a configuration file.
    ///
    /// SIGHUP re-reads the file; SIGTERM or SIGINT drains (stop accepting,
    /// let open connections finish) and exits 0.
    Run(RunArgs),
    /// Check a configuration file and print every error with file:line:col.
    ///
    /// Exits 0 when the file is valid, 1 otherwise. Host names of endpoints
    /// are resolved, as `run` would.
    Validate {
        /// The YAML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Development CA and workload certificates (SPIFFE IDs, DNS names).
    Cert(cert::CertArgs),
    /// Load generator and proxy comparison (see bench/README.md).
    Bench(Box<ringmesh_bench::BenchArgs>),
    /// Talk to a running proxy's admin API (`ctl tap`: live requests).
    #[command(subcommand)]
    Ctl(ctl::CtlCommand),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The YAML configuration file (see the README's config reference).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Worker threads, each pinned to its own CPU with its own runtime and
    /// accept socket per listener. Default: one per CPU this process may use.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// I/O driver: `uring` (io_uring, fail if unavailable), `epoll`, or
    /// `auto` (io_uring, falling back to epoll where it is blocked, e.g. by
    /// seccomp or kernel.io_uring_disabled; the startup log says which).
    #[arg(long, value_enum, default_value_t = IoEngineArg::Auto)]
    io_engine: IoEngineArg,
    /// Log format: `text` for people, `json` (one object per line) for log
    /// pipelines. RUST_LOG filters (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// On SIGTERM or POST /drain, how long to wait for open connections
    /// before exiting anyway (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often certificate, key and trust-bundle files named in the
    /// config are checked for changes (rotation without restart).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    cert_watch_interval: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum IoEngineArg {
    Auto,
    Uring,
    Epoll,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ringmesh_control::decode::parse_duration(s).ok_or_else(|| {
        format!("invalid duration `{s}`: write a number and a unit, e.g. 500ms, 30s, 2m")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Cert(args) => match cert::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh cert: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(command) => match ctl::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh ctl: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match ringmesh_bench::main(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh bench: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let _guard = init_logging(args.log_format);
            match run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("ringmesh: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let fds = raise_open_file_limit();
    tracing::info!(open_file_limit = fds, "file descriptors available");
    let options = ringmesh_control::RunOptions {
        config_path: args.config,
        workers: args.workers.map(usize::from),
        io_engine: match args.io_engine {
            IoEngineArg::Auto => IoEngineChoice::Auto,
            IoEngineArg::Uring => IoEngineChoice::Uring,
            IoEngineArg::Epoll => IoEngineChoice::Epoll,
        },
        drain_timeout: args.drain_timeout,
        cert_watch_interval: args.cert_watch_interval,
    };
    ringmesh_control::run(options).context("ringmesh run")
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every proxied
/// connection holds two descriptors, and distributions default the soft
/// limit to 1024. Returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

fn validate(path: &std::path::Path) -> ExitCode {
    let source = path.display().to_string();
    let text = match ringmesh_control::limits::read_text_file(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = ringmesh_control::load(&source, &text)
        .and_then(|doc| ringmesh_control::proxy::check(&source, &doc).map(|_| doc));
    match result {
        Ok(doc) => {
            println!(
                "{source}: ok ({} listener(s), {} cluster(s))",
                doc.listeners.len(),
                doc.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{source}: {} error(s)", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through a writer thread, so a slow terminal or pipe
/// never blocks a data-plane core; the guard flushes at exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    guard
}
