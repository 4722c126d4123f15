//! A mesh of real processes: `ringmesh control` with its state directory,
//! sidecars joined with `ringmesh run --control`, `ringmesh ctl` against
//! the control plane, and a raw HTTPS client for its API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::proxy::{Proxy, binary};

/// A port free right now on `ip` (bound and released).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A control plane and the directory its state lives in (kept across
/// restarts of the process).
pub struct ControlPlane {
    pub process: Option<Proxy>,
    pub state: tempfile::TempDir,
    pub addr: SocketAddr,
    pub mesh_file: PathBuf,
}

impl ControlPlane {
    /// Starts `ringmesh control` with `mesh` as its mesh file.
    pub fn start(mesh: &str) -> ControlPlane {
        let state = tempfile::tempdir().expect("state dir");
        let mesh_file = state.path().join("mesh.yaml");
        std::fs::write(&mesh_file, mesh).expect("mesh file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let mut cp = ControlPlane {
            process: None,
            state,
            addr,
            mesh_file,
        };
        cp.restart();
        cp
    }

    /// (Re)starts the process on the same address and state.
    pub fn restart(&mut self) {
        let args: Vec<String> = vec![
            "control".into(),
            "-c".into(),
            self.mesh_file.display().to_string(),
            "--listen".into(),
            self.addr.to_string(),
            "--state-dir".into(),
            self.state.path().join("cp").display().to_string(),
        ];
        let dir = tempfile::tempdir().expect("dir");
        self.process = Some(
            Proxy::launch(&args, dir, "control plane listening").unwrap_or_else(|e| panic!("{e}")),
        );
    }

    /// Kills the process (SIGKILL: nothing is flushed on the way out).
    pub fn kill(&mut self) {
        self.process = None;
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn ca(&self) -> PathBuf {
        self.state.path().join("cp/ca.pem")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("cp/admin.token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    fn control_args(&self) -> Vec<String> {
        vec![
            "--control".into(),
            self.url(),
            "--ca".into(),
            self.ca().display().to_string(),
            "--token-file".into(),
            self.state
                .path()
                .join("cp/admin.token")
                .display()
                .to_string(),
        ]
    }

    /// Runs `ringmesh ctl SUBCOMMAND ARGS --control ... --ca ... --token-file ...`.
    pub fn ctl(&self, subcommand: &[&str], args: &[&str]) -> Output {
        Command::new(binary())
            .arg("ctl")
            .args(subcommand)
            .args(self.control_args())
            .args(args)
            .output()
            .expect("ringmesh ctl")
    }

    /// A bootstrap token for `namespace/workload`, in a file.
    pub fn token_file(&self, namespace: &str, workload: &str) -> PathBuf {
        let out = self.ctl(
            &["token"],
            &["--namespace", namespace, "--workload", workload],
        );
        assert!(
            out.status.success(),
            "ctl token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self
            .state
            .path()
            .join(format!("{namespace}-{workload}.token"));
        std::fs::write(&path, &out.stdout).expect("token file");
        path
    }

    /// `GET /proxies`.
    pub fn proxies(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["status"], &["--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(text.trim())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The status row of `node`.
    pub fn proxy(&self, node: &str) -> Option<serde_json::Value> {
        self.proxies().into_iter().find(|p| p["node"] == node)
    }

    /// Polls until `pred` holds for the proxies' rows; returns how long it
    /// took, or panics with the last rows.
    pub fn wait_proxies(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let rows = self.proxies();
            if pred(&rows) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "proxies did not reach the expected state in {timeout:?}: {}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until exactly `nodes` are listed and all SYNCED.
    pub fn wait_synced(&self, nodes: &[&str]) -> Duration {
        self.wait_proxies(Duration::from_secs(20), |rows| {
            rows.len() == nodes.len()
                && nodes.iter().all(|n| {
                    rows.iter()
                        .any(|r| r["node"] == *n && r["state"] == "SYNCED")
                })
        })
    }

    /// An HTTPS request to the control API: (status, body). `identity` is
    /// a key+certificate PEM file presented as client certificate.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        identity: Option<&Path>,
        body: &str,
    ) -> (u16, String) {
        https(self.addr, &self.ca(), identity, method, path, bearer, body)
    }
}

/// A sidecar's settings.
pub struct Join<'a> {
    pub node: &'a str,
    pub workload: &'a str,
    pub version: Option<&'a str>,
    pub app_port: u16,
    /// IP of the outbound listener (distinct per proxy when TCP services
    /// are called: their listeners bind OUTBOUND_IP:<service port>).
    pub outbound_ip: &'a str,
    pub token: PathBuf,
}

/// A joined proxy and its state directory (kept across restarts).
pub struct Sidecar {
    pub process: Proxy,
    pub state: PathBuf,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The `run` arguments of a sidecar.
pub fn join_args(
    cp: &ControlPlane,
    j: &Join<'_>,
    state: &Path,
    inbound: SocketAddr,
    outbound: SocketAddr,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--control".into(),
        cp.url(),
        "--ca".into(),
        cp.ca().display().to_string(),
        "--token-file".into(),
        j.token.display().to_string(),
        "--node".into(),
        j.node.into(),
        "--workload".into(),
        j.workload.into(),
        "--app-port".into(),
        j.app_port.to_string(),
        "--inbound".into(),
        inbound.to_string(),
        "--outbound".into(),
        outbound.to_string(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
        state.display().to_string(),
        "--workers".into(),
        "1".into(),
    ];
    if let Some(v) = j.version {
        args.extend(["--workload-version".into(), v.into()]);
    }
    args
}

impl Sidecar {
    /// Joins and waits for the admin API (the identity is issued by then).
    pub fn join(cp: &ControlPlane, j: &Join<'_>) -> Sidecar {
        Self::try_join(cp, j).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_join(cp: &ControlPlane, j: &Join<'_>) -> Result<Sidecar, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = dir.path().join("state");
        let inbound: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .map_err(|_| "addr")?;
        let outbound: SocketAddr = format!("{}:{}", j.outbound_ip, free_port(j.outbound_ip))
            .parse()
            .map_err(|_| "addr")?;
        let args = join_args(cp, j, &state, inbound, outbound);
        let process = Proxy::launch(
            &args,
            tempfile::tempdir().map_err(|e| e.to_string())?,
            "admin API listening",
        )?;
        Ok(Sidecar {
            process,
            state,
            inbound,
            outbound,
            _dir: dir,
        })
    }

    /// Its key and certificate file.
    pub fn identity(&self) -> PathBuf {
        self.state.join("identity.pem")
    }

    /// The SPIFFE ID and expiry (Unix seconds) of its certificate.
    pub fn certificate(&self) -> (String, i64) {
        let pem = std::fs::read(self.identity()).expect("identity");
        let chain = ringmesh_core::tls::parse_certs(&pem).expect("certs");
        (
            ringmesh_core::tls::spiffe_id(&chain[0]).unwrap_or_default(),
            ringmesh_core::tls::not_after(&chain[0]).unwrap_or_default(),
        )
    }

    /// GET `path` through the outbound listener with `Host: host`:
    /// (status, body).
    pub fn call(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut c = super::http::connect(self.outbound);
        let mut all = vec![("Host", host)];
        all.extend_from_slice(headers);
        match super::http::request(&mut c, "GET", path, &all, b"") {
            Ok(r) => (r.status, r.text()),
            Err(e) => (0, e.to_string()),
        }
    }
}

/// Accepts any server certificate: for tests where only the server's
/// check of the client matters.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config trusting `ca` (any server when None), presenting
/// `identity` (key and chain in one PEM file) when given.
pub fn tls_client(ca: Option<&Path>, identity: Option<&Path>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("ca") {
                roots.add(c.expect("ca cert")).expect("root");
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
    };
    let config = match identity {
        Some(path) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(path)
                .expect("identity")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(path).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One HTTP/1.1 request over TLS (`Connection: close`): (status, body);
/// status 0 with the error when the connection or handshake failed.
pub fn https(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<&Path>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    https_with(addr, Some(ca), identity, method, path, bearer, body)
}

/// [`https`] trusting `ca`, or any server when None.
pub fn https_with(
    addr: SocketAddr,
    ca: Option<&Path>,
    identity: Option<&Path>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    let run = || -> std::io::Result<(u16, String)> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let conn = rustls::ClientConnection::new(
            tls_client(ca, identity),
            ServerName::try_from("localhost").expect("name"),
        )
        .map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = bearer {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        s.flush()?;
        let mut out = Vec::new();
        // A close_notify-less close is an error to rustls: keep what came.
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    run().unwrap_or_else(|e| (0, e.to_string()))
}
