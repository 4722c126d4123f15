//! `admin:`: where the admin API listens and who may use it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Serialize;

use super::Origin;
use crate::decode::{Decoder, Fields, boolean, list_field, listen_addr, scalar};
use crate::yaml::Node;

/// The admin API's settings.
#[derive(Debug, Clone, Serialize)]
pub struct AdminDoc {
    /// Address of the admin API. Default `127.0.0.1:9901` (loopback only:
    /// the API can change the running config).
    pub listen: SocketAddr,
    /// A file holding the bearer token every request but `/live` and
    /// `/ready` must present (`Authorization: Bearer ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback address without a token (anyone who can reach
    /// it can change the running config). Default false: refused.
    pub allow_remote: bool,
    /// Host names, besides loopback names and addresses, accepted in the
    /// `Host` header (for example the name a remote admin is reached by).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    #[serde(skip)]
    pub(crate) listen_origin: Origin,
    #[serde(skip)]
    pub(crate) token_origin: Origin,
}

/// Equal settings, wherever they were written.
impl PartialEq for AdminDoc {
    fn eq(&self, other: &Self) -> bool {
        (
            self.listen,
            &self.token_file,
            self.allow_remote,
            &self.allowed_hosts,
        ) == (
            other.listen,
            &other.token_file,
            other.allow_remote,
            &other.allowed_hosts,
        )
    }
}

impl Default for AdminDoc {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9901)),
            token_file: None,
            allow_remote: false,
            allowed_hosts: Vec::new(),
            listen_origin: Origin::default(),
            token_origin: Origin::default(),
        }
    }
}

const KEYS: &[&str] = &["listen", "token_file", "allow_remote", "allowed_hosts"];

impl AdminDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut doc = AdminDoc::default();
        let mut ok = true;
        if let Some((n, p)) = f.take("listen") {
            match listen_addr(d, n, &p) {
                Some(a) => doc.listen = a,
                None => ok = false,
            }
            doc.listen_origin = Origin {
                mark: n.mark,
                path: p,
            };
        }
        if let Some((n, p)) = f.take("token_file") {
            match scalar(d, n, &p, "a file path") {
                Some(v) if !v.is_empty() => doc.token_file = Some(PathBuf::from(v)),
                _ => ok = false,
            }
            doc.token_origin = Origin {
                mark: n.mark,
                path: p,
            };
        }
        if let Some((n, p)) = f.take("allow_remote") {
            match boolean(d, n, &p) {
                Some(v) => doc.allow_remote = v,
                None => ok = false,
            }
        }
        doc.allowed_hosts = list_field(d, f.take("allowed_hosts"), |d, n, p| {
            let name = scalar(d, n, p, "a host name")?;
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !valid {
                d.error(
                    n.mark,
                    p,
                    format!("`{}` is not a host name", crate::limits::quote(name)),
                );
                return None;
            }
            Some(name.to_ascii_lowercase())
        });
        f.finish(d, KEYS);
        let remote = !doc.listen.ip().is_loopback();
        if ok && remote && doc.token_file.is_none() && !doc.allow_remote {
            d.error(
                doc.listen_origin.mark,
                &doc.listen_origin.path,
                format!(
                    "the admin API would listen on {}, which is not a loopback address: anyone who can reach it could replace the config or stop the proxy. Set admin.token_file to require a bearer token, or admin.allow_remote: true to accept the risk",
                    doc.listen
                ),
            );
        }
        ok.then_some(doc)
    }

    /// Whether the API is reachable from other hosts without a token.
    pub fn is_open_to_the_network(&self) -> bool {
        !self.listen.ip().is_loopback() && self.token_file.is_none()
    }
}

/// Longest token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Shortest token accepted: 16 characters (128 bits as hex is 32).
const MIN_TOKEN_CHARS: usize = 16;

/// Reads the bearer token named by `admin.token_file`: the file's text
/// without surrounding whitespace, at least 16 visible ASCII characters.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut raw = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read: {e}"))?;
    if raw.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!("larger than {MAX_TOKEN_BYTES} bytes"));
    }
    let token = raw.trim_ascii();
    if token.len() < MIN_TOKEN_CHARS || !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token must be at least {MIN_TOKEN_CHARS} visible ASCII characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(token.to_vec())
}
