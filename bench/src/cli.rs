//! `ringmesh bench ...`: the command line of the load generator, its
//! backends and the comparison harness.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::backend::{self, BackendKind, BackendSpec};
use crate::http1::Request;
use crate::runner::{self, Direction, HttpWorkload, LoadSpec, Workload};

/// Load generator and proxy comparison harness.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// HTTP/1.1 load: keep-alive (default) or a new connection per request;
    /// closed loop, or open loop at --rate with coordinated-omission correction.
    Http(HttpArgs),
    /// TCP request/response of fixed-size messages against an echo server
    /// (L4 latency).
    TcpRr(TcpRrArgs),
    /// Bulk TCP throughput in one direction.
    TcpStream(TcpStreamArgs),
    /// Run a backend to measure against (echo, sink, source, http).
    Serve(ServeArgs),
    /// Compare direct, ringmesh, HAProxy and nginx on every workload and
    /// print one markdown table of ratios.
    Compare(crate::compare::CompareArgs),
}

/// Settings shared by every load.
#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// Generator threads, one runtime each (default: one per usable CPU).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Concurrent connections over all threads.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Measured time, e.g. 10s, 1m.
    #[arg(short, long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time run before measuring (excluded from every figure).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Time allowed per request (and per connect) before it counts as a timeout.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Open loop: total requests per second over all connections. Latency is
    /// counted from each request's intended send time (no coordinated omission).
    #[arg(short, long)]
    rate: Option<f64>,
    /// Pin generator threads to these CPUs, e.g. `0` or `0,1`.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the latency distribution as an HdrHistogram .hgrm file.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile plot as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct HttpArgs {
    /// Target, e.g. http://127.0.0.1:8080/path
    url: String,
    #[command(flatten)]
    load: LoadArgs,
    /// Request method.
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(long, default_value = "")]
    body: String,
    /// Status a successful response must have.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// Open a new connection for every request (connection churn).
    #[arg(long)]
    new_connection_per_request: bool,
}

#[derive(Args, Debug)]
struct TcpRrArgs {
    /// Echo server (or proxy in front of one), host:port.
    addr: String,
    #[command(flatten)]
    load: LoadArgs,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

#[derive(Args, Debug)]
struct TcpStreamArgs {
    /// Sink (upload) or source (download) server, or a proxy in front of one.
    addr: String,
    #[command(flatten)]
    load: LoadArgs,
    /// Which way bytes move.
    #[arg(long, value_enum, default_value_t = Direction::Upload)]
    direction: Direction,
    /// Bytes per write or read.
    #[arg(long, default_value_t = 256 * 1024)]
    chunk: usize,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// What to serve.
    #[arg(value_enum)]
    kind: BackendKind,
    /// Address to listen on.
    #[arg(short, long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HTTP: wait this long before each response.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// HTTP: response body size in bytes.
    #[arg(long, default_value_t = 13)]
    body_size: usize,
    /// Pin the backend to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// Runs `ringmesh bench ...`.
pub fn main(args: BenchArgs) -> Result<(), String> {
    match args.command {
        BenchCommand::Http(a) => {
            let (target, host, path) = parse_url(&a.url)?;
            let mut headers = Vec::new();
            for h in &a.headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("header `{h}` must be `Name: value`"))?;
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            let request = Request::build(
                &a.method,
                &path,
                &host,
                &headers,
                a.body.as_bytes(),
                a.new_connection_per_request,
            );
            let workload = Workload::Http(HttpWorkload {
                request,
                expect_status: a.expect_status,
                new_connection_per_request: a.new_connection_per_request,
            });
            load(target, workload, &a.load)
        }
        BenchCommand::TcpRr(a) => {
            load(resolve(&a.addr)?, Workload::TcpRr { size: a.size }, &a.load)
        }
        BenchCommand::TcpStream(a) => load(
            resolve(&a.addr)?,
            Workload::TcpStream {
                direction: a.direction,
                chunk: a.chunk,
            },
            &a.load,
        ),
        BenchCommand::Serve(a) => {
            let b = backend::start(BackendSpec {
                kind: a.kind,
                listen: a.listen,
                delay: a.delay,
                body_size: a.body_size,
                cpu: a.cpu,
            })
            .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
            eprintln!("serving {:?} on {}", a.kind, b.addr);
            loop {
                std::thread::park();
            }
        }
        BenchCommand::Compare(a) => crate::compare::run(a),
    }
}

pub(crate) fn spec_from(target: SocketAddr, workload: Workload, a: &LoadArgs) -> LoadSpec {
    LoadSpec {
        target,
        workload,
        threads: a.threads.unwrap_or_else(|| {
            if a.cpus.is_empty() {
                available_cpus()
            } else {
                a.cpus.len()
            }
        }),
        connections: a.connections,
        duration: a.duration,
        warmup: a.warmup,
        rate: a.rate,
        timeout: a.timeout,
        cpus: a.cpus.clone(),
        progress: !a.quiet && !a.json,
    }
}

fn load(target: SocketAddr, workload: Workload, a: &LoadArgs) -> Result<(), String> {
    let spec = spec_from(target, workload, a);
    let report = runner::run(&spec).map_err(|e| e.to_string())?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &a.hgrm {
        std::fs::write(path, report.hgrm()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &a.svg {
        let title = format!(
            "{} -> {} ({} connections)",
            report.workload, report.target, report.connections
        );
        std::fs::write(path, report.svg(&title)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{addr}` resolved to no address"))
}

/// Splits `http://host[:port]/path` into (address, Host header, path).
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((resolve(&with_port)?, authority.to_owned(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        let (addr, host, path) = parse_url("http://127.0.0.1:8080/a/b?c=d").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(host, "127.0.0.1:8080");
        assert_eq!(path, "/a/b?c=d");
        let (addr, _, path) = parse_url("http://127.0.0.1").unwrap();
        assert_eq!(addr.port(), 80);
        assert_eq!(path, "/");
        assert!(parse_url("https://x").is_err());
    }
}
