//! `ringmesh ctl`: talk to a running proxy's admin API. `ctl tap` prints
//! its live request records (`GET /tap`) as they come.

use std::path::PathBuf;

use anyhow::{Context, bail};
use http_body_util::BodyExt;

/// `ringmesh ctl` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Stream live request records (one JSON object per line) matching the
    /// filters, until interrupted or `--limit` records were printed.
    Tap(TapArgs),
    /// Control plane: one line per proxy (node, workload, version, ACKed
    /// config, SYNCED/STALE/NACK/NOT CONNECTED, certificate expiry, last
    /// seen). Exits 1 if any proxy is not SYNCED.
    Status {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
        /// Print the JSON of GET /proxies instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Control plane: the config a proxy was sent.
    Config {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
        /// The proxy's node name.
        node: String,
    },
    /// Control plane: print (`get`) or replace (`put FILE`) the desired state.
    Mesh {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
        #[command(subcommand)]
        action: MeshAction,
    },
    /// Control plane: the stored versions of the desired state.
    History {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
    },
    /// Control plane: make stored version VERSION current again (stored as
    /// a new version; history is never rewritten).
    Rollback {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
        /// The version to return to.
        version: u64,
    },
    /// Control plane: print a bootstrap token for a workload's proxies.
    Token {
        #[command(flatten)]
        control: crate::mesh_ctl::ControlArgs,
        /// The workload's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The workload.
        #[arg(long)]
        workload: String,
    },
}

/// `ctl mesh` actions.
#[derive(clap::Subcommand, Debug)]
pub enum MeshAction {
    /// Print the desired state.
    Get,
    /// Replace it with FILE (validated first; every error is printed).
    Put {
        /// The mesh document.
        file: PathBuf,
    },
}

/// `ringmesh ctl tap` options (every filter given must hold).
#[derive(clap::Args, Debug)]
pub struct TapArgs {
    /// The admin API's address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9901")]
    admin: String,
    /// A file holding the admin API's bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Only this listener.
    #[arg(long)]
    listener: Option<String>,
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    /// Only this cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// Only this method.
    #[arg(long)]
    method: Option<String>,
    /// Only paths starting with this.
    #[arg(long, value_name = "PREFIX")]
    path_prefix: Option<String>,
    /// Only this status (`503`) or class (`5xx`).
    #[arg(long)]
    status: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a `ctl` command.
pub fn run(command: CtlCommand) -> anyhow::Result<std::process::ExitCode> {
    use crate::mesh_ctl::{Request, run as mesh};
    let args = match command {
        CtlCommand::Tap(args) => args,
        CtlCommand::Status { control, json } => return mesh(control, Request::Status { json }),
        CtlCommand::Config { control, node } => return mesh(control, Request::Config { node }),
        CtlCommand::Mesh { control, action } => {
            let request = match action {
                MeshAction::Get => Request::MeshGet,
                MeshAction::Put { file } => Request::MeshPut { file },
            };
            return mesh(control, request);
        }
        CtlCommand::History { control } => return mesh(control, Request::History),
        CtlCommand::Rollback { control, version } => {
            return mesh(control, Request::Rollback { version });
        }
        CtlCommand::Token {
            control,
            namespace,
            workload,
        } => {
            return mesh(
                control,
                Request::Token {
                    namespace,
                    workload,
                },
            );
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(tap(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn tap(args: TapArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (key, value) in [
        ("listener", &args.listener),
        ("route", &args.route),
        ("cluster", &args.cluster),
        ("method", &args.method),
        ("path_prefix", &args.path_prefix),
        ("status", &args.status),
    ] {
        if let Some(v) = value {
            query.push(format!("{key}={}", encode(v)));
        }
    }
    if let Some(n) = args.limit {
        query.push(format!("limit={n}"));
    }
    let path = if query.is_empty() {
        "/tap".to_owned()
    } else {
        format!("/tap?{}", query.join("&"))
    };
    let stream = tokio::net::TcpStream::connect(&args.admin)
        .await
        .with_context(|| format!("connecting to the admin API at {}", args.admin))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::get(&path).header("host", &args.admin);
    if let Some(file) = &args.token_file {
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        request = request.header("authorization", format!("Bearer {}", token.trim()));
    }
    let response = sender
        .send_request(request.body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "the admin API answered {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("5xx"), "5xx");
        assert_eq!(super::encode("/a b&c"), "%2Fa%20b%26c");
    }
}
