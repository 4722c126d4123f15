//! Who may use the admin API, decided per request before any handler runs.
//!
//! The admin API can replace the running config and stop the proxy, so it
//! must not be usable by a web page the operator happens to have open, nor
//! by anyone on the network:
//!
//! - **Host allowlist** (DNS rebinding): a page on `evil.example` whose name
//!   later resolves to 127.0.0.1 sends `Host: evil.example`. Allowed are
//!   loopback names (`localhost`, `*.localhost`) and addresses, the admin's
//!   own bound address (any IP literal when bound to `0.0.0.0`/`[::]`: an IP
//!   literal cannot be rebound), and `admin.allowed_hosts`.
//! - **No cross-site mutation** (CSRF): a browser sends a "simple" POST or
//!   PUT to any origin without asking first. Requests that change state
//!   (every method but GET, HEAD and OPTIONS) are refused when they carry a
//!   foreign `Origin` (another host or port, or `null`) or `Sec-Fetch-Site`
//!   other than `same-origin`/`none`, and must declare a JSON or YAML
//!   `Content-Type`, which no simple request can.
//! - **Bearer token** (`admin.token_file`): when set, every request but
//!   `/live` and `/ready` (probes) needs `Authorization: Bearer <token>`,
//!   compared in constant time.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Method, header};

/// The admin API's request policy.
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    /// Where the admin API is bound.
    pub bound: SocketAddr,
    /// Further host names accepted in `Host` and `Origin` (lowercase).
    pub allowed_hosts: Vec<String>,
    /// The bearer token, when one is required.
    pub token: Option<Vec<u8>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is not one of the admin API's names.
    Host,
    /// A state-changing request from another origin.
    Origin,
    /// A state-changing request without a JSON or YAML body type.
    ContentType,
    /// No or wrong bearer token.
    Unauthorized,
}

impl Refusal {
    /// Every reason, in metric order.
    pub const ALL: [Refusal; 4] = [
        Refusal::Host,
        Refusal::Origin,
        Refusal::ContentType,
        Refusal::Unauthorized,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::ContentType => "content_type",
            Refusal::Unauthorized => "unauthorized",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Host => {
                "Host is not an address or name of this admin API (DNS rebinding protection); add the name to admin.allowed_hosts"
            }
            Refusal::Origin => {
                "cross-origin requests may not change the proxy (Origin or Sec-Fetch-Site names another site)"
            }
            Refusal::ContentType => {
                "requests that change the proxy need Content-Type: application/json or application/yaml"
            }
            Refusal::Unauthorized => "missing or wrong bearer token (Authorization: Bearer ...)",
        }
    }
}

impl AdminPolicy {
    /// Checks one request.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().map_err(|_| Refusal::Host)?;
            let (name, _) = split_authority(host).ok_or(Refusal::Host)?;
            if !self.allows_host(&name) {
                return Err(Refusal::Host);
            }
        }
        if let Some(token) = &self.token {
            if !matches!(path, "/live" | "/ready") && !bearer_matches(headers, token) {
                return Err(Refusal::Unauthorized);
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            if !matches!(site.as_bytes(), b"same-origin" | b"none") {
                return Err(Refusal::Origin);
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| Refusal::Origin)?;
            if !self.is_own_origin(origin) {
                return Err(Refusal::Origin);
            }
        }
        let json_or_yaml = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v.split(';').next().unwrap_or("").trim();
                [
                    "application/json",
                    "application/yaml",
                    "application/x-yaml",
                    "text/yaml",
                    "text/x-yaml",
                ]
                .iter()
                .any(|t| essence.eq_ignore_ascii_case(t))
            })
            .unwrap_or(false);
        if !json_or_yaml {
            return Err(Refusal::ContentType);
        }
        Ok(())
    }

    fn allows_host(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.bound.ip() || self.bound.ip().is_unspecified();
        }
        name == "localhost" || name.ends_with(".localhost") || self.allowed_hosts.contains(&name)
    }

    /// `scheme://host[:port]` naming this admin API (its host and port).
    fn is_own_origin(&self, origin: &str) -> bool {
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false; // `null`, or a scheme no page of ours has
        };
        let default_port = if origin.starts_with("https") { 443 } else { 80 };
        match split_authority(authority) {
            Some((name, port)) => {
                self.allows_host(&name) && port.unwrap_or(default_port) == self.bound.port()
            }
            None => false,
        }
    }
}

/// `host[:port]` or `[v6][:port]` into the host and the port.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((authority.to_owned(), None)),
    }
}

fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(given) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token)
}

/// Equality whose time depends only on the lengths, not on where the first
/// difference is (a token must not be guessable byte by byte by timing).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bound: &str, token: Option<&str>) -> AdminPolicy {
        AdminPolicy {
            bound: bound.parse().unwrap(),
            allowed_hosts: vec!["admin.internal".into()],
            token: token.map(|t| t.as_bytes().to_vec()),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const YAML: (&str, &str) = ("content-type", "application/yaml");

    #[test]
    fn reads_from_loopback_names_are_allowed() {
        let p = policy("127.0.0.1:9901", None);
        for host in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST",
            "app.localhost",
            "[::1]:9901",
            "admin.internal",
        ] {
            assert_eq!(
                p.check(&Method::GET, "/config", &headers(&[("host", host)])),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(p.check(&Method::GET, "/config", &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn a_rebound_name_is_refused() {
        let p = policy("127.0.0.1:9901", None);
        for host in [
            "evil.example:9901",
            "localhost.evil.example",
            "10.0.0.1:9901",
            "a:b:c",
        ] {
            assert_eq!(
                p.check(&Method::GET, "/config", &headers(&[("host", host)])),
                Err(Refusal::Host),
                "{host}"
            );
        }
    }

    #[test]
    fn an_unspecified_bind_accepts_any_ip_literal_but_not_names() {
        let p = policy("0.0.0.0:9901", Some("0123456789abcdef"));
        let auth = ("authorization", "Bearer 0123456789abcdef");
        let ok = headers(&[("host", "10.1.2.3:9901"), auth]);
        assert_eq!(p.check(&Method::GET, "/metrics", &ok), Ok(()));
        let named = headers(&[("host", "evil.example"), auth]);
        assert_eq!(
            p.check(&Method::GET, "/metrics", &named),
            Err(Refusal::Host)
        );
    }

    #[test]
    fn a_cross_origin_simple_request_cannot_drain() {
        let p = policy("127.0.0.1:9901", None);
        // What a browser sends for a no-preflight form POST from a page.
        let simple = headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(
            p.check(&Method::POST, "/drain", &simple),
            Err(Refusal::Origin)
        );
        let fetch_metadata = headers(&[("sec-fetch-site", "cross-site"), YAML]);
        assert_eq!(
            p.check(&Method::POST, "/drain", &fetch_metadata),
            Err(Refusal::Origin)
        );
        // Another port on localhost is another origin too.
        let other_port = headers(&[("origin", "http://localhost:3000"), YAML]);
        assert_eq!(
            p.check(&Method::PUT, "/config", &other_port),
            Err(Refusal::Origin)
        );
        let null = headers(&[("origin", "null"), YAML]);
        assert_eq!(
            p.check(&Method::PUT, "/config", &null),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn mutations_need_a_json_or_yaml_body_type() {
        let p = policy("127.0.0.1:9901", None);
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let h = headers(&[("content-type", bad)]);
            assert_eq!(
                p.check(&Method::PUT, "/config", &h),
                Err(Refusal::ContentType)
            );
        }
        assert_eq!(
            p.check(&Method::POST, "/drain", &HeaderMap::new()),
            Err(Refusal::ContentType)
        );
        for good in [
            "application/json",
            "application/yaml; charset=utf-8",
            "text/yaml",
        ] {
            let h = headers(&[("content-type", good)]);
            assert_eq!(p.check(&Method::PUT, "/config", &h), Ok(()), "{good}");
        }
        // The admin API's own pages (a future dashboard) are same-origin.
        let same = headers(&[
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
            YAML,
        ]);
        assert_eq!(p.check(&Method::POST, "/drain", &same), Ok(()));
    }

    #[test]
    fn a_token_is_required_except_for_probes() {
        let p = policy("127.0.0.1:9901", Some("s3cret-s3cret-s3cret"));
        assert_eq!(
            p.check(&Method::GET, "/config", &HeaderMap::new()),
            Err(Refusal::Unauthorized)
        );
        let wrong = headers(&[("authorization", "Bearer s3cret-s3cret-s3creT")]);
        assert_eq!(
            p.check(&Method::GET, "/config", &wrong),
            Err(Refusal::Unauthorized)
        );
        let right = headers(&[("authorization", "Bearer s3cret-s3cret-s3cret")]);
        assert_eq!(p.check(&Method::GET, "/config", &right), Ok(()));
        assert_eq!(p.check(&Method::GET, "/ready", &HeaderMap::new()), Ok(()));
        assert_eq!(p.check(&Method::GET, "/live", &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn token_comparison_checks_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
