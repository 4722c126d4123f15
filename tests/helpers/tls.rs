//! A throwaway PKI made with `ringmesh cert`, and a rustls client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::proxy::binary;

/// A CA in a temp dir, and the certificates issued from it.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A new CA, plus a server certificate for `localhost` at `server.pem`/`.key`.
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.cert(&["ca", "--dir"], &[pki.dir.path().to_str().unwrap()]);
        pki.issue("server", &["--dns", "localhost"]);
        pki
    }

    fn cert(&self, args: &[&str], more: &[&str]) {
        let out = Command::new(binary())
            .arg("cert")
            .args(args)
            .args(more)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ringmesh cert failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Issues `<name>.pem`/`.key` with extra `ringmesh cert issue` flags.
    pub fn issue(&self, name: &str, flags: &[&str]) {
        let out = self.path(name);
        let ca_dir = self.dir.path().to_str().unwrap().to_owned();
        let mut args = vec!["issue", "--ca-dir", &ca_dir, "--out"];
        let out = out.to_str().unwrap().to_owned();
        args.push(&out);
        self.cert(&args, flags);
    }

    /// Path without extension of certificate `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A listener `tls:` block using `server.pem`, optionally requiring
    /// client certificates from this CA.
    pub fn listener_tls(&self, mutual: bool) -> String {
        let mut s = format!(
            "tls: {{ cert: \"{}\", key: \"{}\"",
            self.file("server.pem"),
            self.file("server.key")
        );
        if mutual {
            s.push_str(&format!(", client_ca: \"{}\"", self.file("ca.pem")));
        }
        s.push_str(" }");
        s
    }
}

/// Which TLS versions a client offers.
#[derive(Clone, Copy)]
pub enum Versions {
    Both,
    Only12,
    Only13,
}

/// A TLS client config trusting `ca_pem`, presenting `client` (`name`.pem
/// and `.key` under `dir`) when given.
pub fn client_config(
    ca_pem: &Path,
    client: Option<&Path>,
    versions: Versions,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Only12 => &[&rustls::version::TLS12],
        Versions::Only13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(v)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(base) => {
            let pem = PathBuf::from(format!("{}.pem", base.display()));
            let key = PathBuf::from(format!("{}.key", base.display()));
            let chain: Vec<_> = CertificateDer::pem_file_iter(&pem)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A TLS client connection to `addr` for server name `localhost`.
pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Client {
    let tcp = super::tcp::connect(addr);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Writes `msg` and reads the same number of bytes back.
pub fn roundtrip(c: &mut Client, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    c.write_all(msg)?;
    c.flush()?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)?;
    Ok(back)
}
