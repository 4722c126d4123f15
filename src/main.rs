//! The `ringmesh` command: run the proxy, or validate a configuration.

mod cert;
mod ctl;
mod inject;
mod mesh_ctl;

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
    Run(Box<RunArgs>),
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
    /// Talk to a running proxy's admin API (`ctl tap`) or to the control
    /// plane (`ctl status`, `config`, `mesh`, `history`, `rollback`, `token`).
    #[command(subcommand)]
    Ctl(ctl::CtlCommand),
    /// Run the control plane: the mesh's desired state, the mesh CA, and
    /// each proxy's config pushed over a watch (README "The mesh").
    Control(ControlArgs),
    /// Add the ringmesh sidecar, its bootstrap and the traffic-capture init
    /// container to Kubernetes workloads (like `linkerd inject`): manifests
    /// in (FILE or `-`), manifests out on stdout, notes on stderr.
    Inject(inject::InjectArgs),
    /// The service-mesh demo (README "The demo"): `ringmesh demo` starts it,
    /// `ringmesh demo step ...` walks through it, `ringmesh demo down` stops it.
    Demo(DemoArgs),
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Where the demo keeps its state and logs.
    #[arg(long, value_name = "DIR", global = true)]
    dir: Option<PathBuf>,
    /// Requests per second of the background user (0: none).
    #[arg(long, default_value_t = 4)]
    rps: u32,
    #[command(subcommand)]
    command: Option<DemoCommand>,
}

#[derive(Subcommand, Debug)]
enum DemoCommand {
    /// Stop the running demo: every process it started, no port left.
    Down,
    /// The services' request lines, interleaved (joined by trace id).
    Logs {
        /// Only this service (product, recommendation, review).
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// One walkthrough step: observe, fault, retry, delay, timeout,
    /// deploy-v2, canary PERCENT, header-canary, blue-green, reset
    /// (`fault off`, `retry off`... undo one).
    Step {
        /// The step.
        name: String,
        /// For `canary`: the percent of calls to v2 (10, 50, 100); `off`
        /// undoes fault, retry, delay, timeout or header-canary.
        arg: Option<String>,
    },
    /// One of the demo's services (product, recommendation, review): a
    /// small HTTP app that logs each request with its trace id.
    App {
        /// product, recommendation or review.
        #[arg(long)]
        service: String,
        /// Its version label.
        #[arg(long, default_value = "v1")]
        version: String,
        /// Where it listens.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Its sidecar's outbound listener (product calls the others there).
        #[arg(long, value_name = "ADDR")]
        outbound: Option<std::net::SocketAddr>,
        /// Append request lines to this file instead of stdout.
        #[arg(long, value_name = "FILE", requires = "log_tag")]
        log_file: Option<PathBuf>,
        /// The prefix of those lines (`[TAG] `).
        #[arg(long, value_name = "TAG")]
        log_tag: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The mesh document. Applied as a new version at start when it
    /// changed since it was last applied; else the stored state is current.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the control API listens (TLS).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    listen: std::net::SocketAddr,
    /// History of the desired state, the mesh CA and the secrets.
    #[arg(long, value_name = "DIR", default_value = "ringmesh-control")]
    state_dir: PathBuf,
    /// DNS names (or IPs) proxies use to reach the control plane
    /// (repeatable; the listen IP is always included).
    #[arg(long = "server-name", value_name = "NAME", default_values_t = ["localhost".to_owned()])]
    server_names: Vec<String>,
    /// The operators' token (default: DIR/admin.token, made on first start).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the mesh-wide dashboard here (plain HTTP, read-only; e.g.
    /// 127.0.0.1:15711): every workload, who calls whom, rates, success
    /// and latency, from every joined proxy's metrics.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The YAML configuration file (see the README's config reference).
    /// With --control, optional: a bootstrap whose admin settings are kept.
    #[arg(short, long, value_name = "FILE", required_unless_present = "control")]
    config: Option<PathBuf>,
    #[command(flatten)]
    join: JoinArgs,
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
    /// Serve binary upgrades on this Unix socket: a new `ringmesh run
    /// --upgrade-from PATH` (or SIGUSR2, which starts one) takes the
    /// listening sockets over, and this process drains.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the ringmesh serving upgrades
    /// on PATH, then serve upgrades there (unless --upgrade-socket says
    /// elsewhere). If this process fails to start, the old one serves on.
    #[arg(long, value_name = "PATH")]
    upgrade_from: Option<PathBuf>,
}

/// Joining a mesh: `ringmesh run --control URL --node NAME ...`.
#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// The control plane (`https://HOST:PORT`): the proxy takes its
    /// configuration and its workload certificate from it.
    #[arg(long, value_name = "URL", requires_all = ["node", "workload", "app_port", "token_file", "ca"])]
    control: Option<String>,
    /// This proxy's node name, unique in the mesh.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The workload it serves (its identity: spiffe://TD/ns/NS/sa/WORKLOAD).
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// The workload's namespace.
    #[arg(long, value_name = "NAME", default_value = "default")]
    namespace: String,
    /// The workload's version label (e.g. v1).
    #[arg(long = "workload-version", value_name = "LABEL")]
    workload_version: Option<String>,
    /// Port of the local app, on 127.0.0.1, the inbound listener forwards to.
    #[arg(long, value_name = "PORT")]
    app_port: Option<u16>,
    /// Where the inbound listener (mTLS, from other sidecars) binds.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15006")]
    inbound: std::net::SocketAddr,
    /// The address other sidecars reach the inbound listener at (default:
    /// --inbound, with 127.0.0.1 for an unspecified IP).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<std::net::SocketAddr>,
    /// Where the outbound listener (the app's calls) binds.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    outbound: std::net::SocketAddr,
    /// The inbound listener takes connections redirected by iptables
    /// (Istio's 15006 pattern) and forwards each to its original port.
    #[arg(long)]
    capture: bool,
    /// File holding the bootstrap token (`ringmesh ctl token`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The mesh CA bundle (the control plane's state-dir/ca.pem).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Where the key, certificate and last good config are kept.
    #[arg(long, value_name = "DIR", default_value = "ringmesh-state")]
    state_dir: PathBuf,
    /// The admin API's address when no config file is given.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

impl JoinArgs {
    fn options(&self) -> anyhow::Result<Option<ringmesh_control::mesh::JoinOptions>> {
        let Some(control) = &self.control else {
            return Ok(None);
        };
        let missing = |what: &str| anyhow::anyhow!("--control needs {what}");
        let address = self.advertise.unwrap_or_else(|| {
            let mut a = self.inbound;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a
        });
        Ok(Some(ringmesh_control::mesh::JoinOptions {
            control: control.clone(),
            ca_file: self.ca.clone().ok_or_else(|| missing("--ca"))?,
            token_file: self
                .token_file
                .clone()
                .ok_or_else(|| missing("--token-file"))?,
            state_dir: self.state_dir.clone(),
            registration: ringmesh_control::mesh::protocol::Registration {
                node: self.node.clone().ok_or_else(|| missing("--node"))?,
                namespace: self.namespace.clone(),
                workload: self.workload.clone().ok_or_else(|| missing("--workload"))?,
                version: self.workload_version.clone(),
                address,
                inbound: self.inbound,
                outbound: self.outbound,
                app_port: self.app_port.ok_or_else(|| missing("--app-port"))?,
                capture: self.capture,
                admin: None,
            },
        }))
    }
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
        Command::Inject(args) => match inject::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh inject: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Control(args) => {
            let _guard = init_logging(args.log_format);
            let options = ringmesh_plane::ControlOptions {
                mesh_file: args.config,
                listen: args.listen,
                state_dir: args.state_dir,
                server_names: args.server_names,
                admin_token_file: args.admin_token_file,
                dashboard: args.dashboard,
            };
            match ringmesh_plane::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("ringmesh control: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => match demo(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(command) => match ctl::run(command) {
            Ok(code) => code,
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
            match run(*args) {
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

/// `ringmesh demo [down|logs|step|app]`.
fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let demo = ringmesh_demo::up::Demo {
        dir: args
            .dir
            .unwrap_or_else(|| std::env::temp_dir().join("ringmesh-demo")),
        binary: std::env::current_exe().context("locating this binary")?,
    };
    match args.command {
        None => ringmesh_demo::up::up(&demo, args.rps)?,
        Some(DemoCommand::Down) => ringmesh_demo::up::down(&demo)?,
        Some(DemoCommand::Logs { service, follow }) => {
            ringmesh_demo::up::logs(&demo, service.as_deref(), follow)?
        }
        Some(DemoCommand::Step { name, arg }) => {
            ringmesh_demo::step::step(&demo, &name, arg.as_deref())?
        }
        Some(DemoCommand::App {
            service,
            version,
            listen,
            outbound,
            log_file,
            log_tag,
        }) => {
            let service = ringmesh_demo::app::Service::parse(&service).ok_or_else(|| {
                anyhow::anyhow!("unknown service `{service}` (product, recommendation or review)")
            })?;
            ringmesh_demo::app::run(ringmesh_demo::app::AppOptions {
                service,
                version,
                listen,
                outbound,
                log: log_file.zip(log_tag),
            })?
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let fds = raise_open_file_limit();
    tracing::info!(open_file_limit = fds, "file descriptors available");
    let options = ringmesh_control::RunOptions {
        mesh: args.join.options()?,
        admin_listen: args.join.admin,
        config_path: args.config,
        workers: args.workers.map(usize::from),
        io_engine: match args.io_engine {
            IoEngineArg::Auto => IoEngineChoice::Auto,
            IoEngineArg::Uring => IoEngineChoice::Uring,
            IoEngineArg::Epoll => IoEngineChoice::Epoll,
        },
        drain_timeout: args.drain_timeout,
        cert_watch_interval: args.cert_watch_interval,
        upgrade_socket: args.upgrade_socket,
        upgrade_from: args.upgrade_from,
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
