//! `ringmesh ctl status|config|mesh|history|rollback|token`: talk to the
//! control plane's API over TLS with the admin token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ringmesh_control::mesh::channel::{Channel, Endpoint, error_message};
use ringmesh_control::mesh::protocol::{ProxyStatus, SyncState};

/// Where the control plane is and how to authenticate to it.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// The control plane.
    #[arg(long, value_name = "URL", default_value = "https://localhost:15010")]
    control: String,
    /// The mesh CA bundle (the control plane's state-dir/ca.pem).
    #[arg(long, value_name = "FILE", default_value = "ringmesh-control/ca.pem")]
    ca: PathBuf,
    /// The admin token file (the control plane's state-dir/admin.token).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "ringmesh-control/admin.token"
    )]
    token_file: PathBuf,
}

/// What to ask the control plane.
#[derive(Debug)]
pub enum Request {
    /// One line per proxy; exit 1 unless all are SYNCED.
    Status { json: bool },
    /// What a proxy was sent.
    Config { node: String },
    /// The desired state.
    MeshGet,
    /// Replace the desired state with a file.
    MeshPut { file: PathBuf },
    /// Stored versions.
    History,
    /// Make an old version current.
    Rollback { version: u64 },
    /// A bootstrap token.
    Token { namespace: String, workload: String },
}

struct Client {
    channel: Channel,
    token: String,
}

impl Client {
    fn new(args: &ControlArgs) -> anyhow::Result<Client> {
        let endpoint = Endpoint::parse(&args.control)?;
        let token = std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading the admin token {}", args.token_file.display()))?;
        Ok(Client {
            channel: Channel::new(endpoint, args.ca.clone(), None),
            token: token.trim().to_owned(),
        })
    }

    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<bytes::Bytes> {
        let (status, body) = self
            .channel
            .call(
                method,
                path,
                body,
                Some(&self.token),
                Duration::from_secs(30),
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!(
                "the control plane answered {status}: {}",
                error_message(&body)
            );
        }
        Ok(body)
    }
}

fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..120_000 => format!("{}s", ms / 1000),
        _ => format!("{}m", ms / 60_000),
    }
}

fn expiry(unix: Option<i64>) -> String {
    let Some(t) = unix else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let left = t - now;
    if left <= 0 {
        "EXPIRED".into()
    } else if left < 7200 {
        format!("in {}m", (left + 30) / 60)
    } else {
        format!("in {}h", (left + 1800) / 3600)
    }
}

/// `text` with control characters (from proxies: node names, NACK
/// errors) shown escaped, so a proxy cannot write to the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Renders `ctl status`.
pub fn status_table(proxies: &[ProxyStatus]) -> String {
    let mut rows = vec![[
        "NODE".to_owned(),
        "WORKLOAD".into(),
        "VERSION".into(),
        "ACKED".into(),
        "STATE".into(),
        "CERT EXPIRES".into(),
        "LAST SEEN".into(),
    ]];
    for p in proxies {
        let mut state = p.state.as_str().to_owned();
        if let Some(e) = &p.error {
            state.push_str(": ");
            state.push_str(e);
        }
        rows.push([
            printable(&p.node),
            printable(&format!("{}/{}", p.namespace, p.workload)),
            printable(p.version.as_deref().unwrap_or("-")),
            printable(p.acked.as_deref().unwrap_or("-")),
            printable(&state),
            expiry(p.certificate_expiry),
            ago(p.last_seen_ms),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i < 6 {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// Runs one request against the control plane.
pub fn run(args: ControlArgs, request: Request) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut c = Client::new(&args)?;
        use hyper::Method;
        match request {
            Request::Status { json } => {
                let body = c.call(Method::GET, "/proxies", Vec::new()).await?;
                let proxies: Vec<ProxyStatus> =
                    serde_json::from_slice(&body).context("reading /proxies")?;
                if json {
                    println!("{}", String::from_utf8_lossy(&body));
                } else {
                    print!("{}", status_table(&proxies));
                }
                let all_synced = proxies.iter().all(|p| p.state == SyncState::Synced);
                return Ok(if all_synced {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Request::Config { node } => {
                let body = c
                    .call(Method::GET, &format!("/proxies/{node}/config"), Vec::new())
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Request::MeshGet => {
                let body = c.call(Method::GET, "/mesh", Vec::new()).await?;
                print!("{}", String::from_utf8_lossy(&body));
            }
            Request::MeshPut { file } => {
                let text =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let body = c.call(Method::PUT, "/mesh", text).await?;
                println!("{}", String::from_utf8_lossy(&body));
            }
            Request::History => {
                let body = c.call(Method::GET, "/mesh/history", Vec::new()).await?;
                let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                println!("VERSION  STORED     SOURCE");
                for v in list {
                    let age = (now - v["time"].as_i64().unwrap_or(now)).max(0) as u64;
                    println!(
                        "{:<8} {:<10} {}",
                        v["version"],
                        format!("{} ago", ago(age * 1000)),
                        printable(v["source"].as_str().unwrap_or_default())
                    );
                }
            }
            Request::Rollback { version } => {
                let body = c
                    .call(
                        Method::POST,
                        &format!("/mesh/rollback/{version}"),
                        Vec::new(),
                    )
                    .await?;
                println!("{}", String::from_utf8_lossy(&body));
            }
            Request::Token {
                namespace,
                workload,
            } => {
                let req = serde_json::json!({ "namespace": namespace, "workload": workload });
                let body = c
                    .call(Method::POST, "/tokens", serde_json::to_vec(&req)?)
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
