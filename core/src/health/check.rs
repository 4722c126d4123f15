//! Active health checks: TCP connect, or an HTTP/1.1 GET whose status must
//! be one of the expected ones. One checker per endpoint per process runs
//! on the health thread; its verdict is shared by every core.
//!
//! An endpoint starts in rotation (unchecked). `unhealthy_threshold`
//! failures in a row take it out; `healthy_threshold` passes in a row bring
//! it back (and, by default, end an outlier ejection early).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::forward::Duplex;
use crate::runtime::{self, BufResult};
use crate::tls::ClientTls;

use super::outlier::{OutlierDetection, mix, uneject};
use super::{ClusterHealth, EndpointHealth, now_ms};

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// The endpoint accepts a TCP connection (and completes the cluster's
    /// TLS handshake, when the cluster has TLS).
    Tcp,
    /// `GET path` answers with a status in `expected_statuses`.
    Http {
        /// Request path.
        path: String,
        /// Host header; the endpoint's address when `None`.
        host: Option<String>,
        /// Accepted statuses, as inclusive ranges.
        expected_statuses: Vec<(u16, u16)>,
    },
}

/// A cluster's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What to check.
    pub kind: HealthCheckKind,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Up to this much is added to each interval at random, so checks of
    /// many endpoints spread out.
    pub interval_jitter: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Passes in a row that return a failing endpoint.
    pub healthy_threshold: u32,
    /// Failures in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
    /// The cluster's `send_proxy_protocol`: its endpoints expect a header
    /// first, so checks open with one naming no client (v2 `LOCAL`, v1
    /// the check connection's own addresses), as HAProxy's
    /// `check-send-proxy` does.
    pub send_proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// Longest status line and headers read from a check response.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Runs checks of one endpoint forever (until the task is dropped).
pub(crate) async fn run_checker(
    cluster: Arc<ClusterHealth>,
    endpoint: Arc<EndpointHealth>,
    check: HealthCheck,
    tls: Option<Arc<ClientTls>>,
    outlier: Option<OutlierDetection>,
) {
    let mut salt = mix(endpoint.addr.port() as u64 ^ now_ms());
    // Start at a random point of the first interval: a reload that adds
    // many endpoints does not check them all at the same instant.
    let jitter = |salt: &mut u64, max: Duration| {
        *salt = mix(*salt);
        Duration::from_millis(*salt % (max.as_millis() as u64 + 1))
    };
    runtime::sleep(jitter(
        &mut salt,
        check.interval.min(Duration::from_secs(1)),
    ))
    .await;
    loop {
        let result =
            runtime::timeout(check.timeout, probe(&endpoint, &check, tls.as_deref())).await;
        let passed = match result {
            Some(Ok(())) => true,
            Some(Err(ProbeError::Local(e))) => {
                // This host is out of descriptors or ports: the endpoint
                // did nothing wrong, so the check gives no verdict.
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "health check could not run: out of a local resource");
                runtime::sleep(check.interval).await;
                continue;
            }
            Some(Err(ProbeError::Failed(reason))) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, reason, "health check failed");
                false
            }
            None => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, "health check timed out");
                false
            }
        };
        apply_result(&cluster, &endpoint, &check, outlier.as_ref(), passed);
        runtime::sleep(check.interval + jitter(&mut salt, check.interval_jitter)).await;
    }
}

/// Updates the endpoint's streaks and state with one check result.
pub(crate) fn apply_result(
    cluster: &ClusterHealth,
    endpoint: &EndpointHealth,
    check: &HealthCheck,
    outlier: Option<&OutlierDetection>,
    passed: bool,
) {
    endpoint.checked.store(true, Ordering::Relaxed);
    let (ok, bad) = &endpoint.check_streak;
    if passed {
        endpoint.checks_passed.fetch_add(1, Ordering::Relaxed);
        cluster.checks.0.fetch_add(1, Ordering::Relaxed);
        bad.store(0, Ordering::Relaxed);
        let streak = ok.fetch_add(1, Ordering::Relaxed) + 1;
        if endpoint.check_failed()
            && streak >= check.healthy_threshold
            && cluster.set_check_failed(endpoint, false)
        {
            tracing::info!(cluster = %cluster.name, endpoint = %endpoint.addr, "health check passing: endpoint back in rotation");
        }
        if endpoint.is_ejected()
            && outlier.is_some_and(|o| o.successful_active_health_check_uneject_host)
        {
            uneject(cluster, endpoint, "active health check passed");
        }
    } else {
        endpoint.checks_failed.fetch_add(1, Ordering::Relaxed);
        cluster.checks.1.fetch_add(1, Ordering::Relaxed);
        ok.store(0, Ordering::Relaxed);
        let streak = bad.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= check.unhealthy_threshold && cluster.set_check_failed(endpoint, true) {
            tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.addr, failures = streak, "health check failing: endpoint out of rotation");
        }
    }
}

/// Why a check did not pass.
enum ProbeError {
    /// This host ran out of descriptors, buffers or ports: no verdict.
    Local(std::io::Error),
    /// The endpoint failed the check.
    Failed(String),
}

/// One check.
async fn probe(
    endpoint: &EndpointHealth,
    check: &HealthCheck,
    tls: Option<&ClientTls>,
) -> Result<(), ProbeError> {
    let tcp = runtime::connect(endpoint.addr).await.map_err(|e| {
        match crate::local_resource::ResourceKind::of(&e) {
            Some(_) => ProbeError::Local(e),
            None => ProbeError::Failed(format!("connect: {e}")),
        }
    })?;
    if let Some(version) = check.send_proxy_protocol {
        crate::connect::send_proxy_header(&tcp, endpoint.addr, version, None)
            .await
            .map_err(|e| ProbeError::Failed(format!("PROXY protocol header: {e}")))?;
    }
    probe_on(tcp, endpoint, check, tls)
        .await
        .map_err(ProbeError::Failed)
}

/// The check's exchange on a fresh connection; `Err` says why it failed.
async fn probe_on(
    tcp: runtime::TcpStream,
    endpoint: &EndpointHealth,
    check: &HealthCheck,
    tls: Option<&ClientTls>,
) -> Result<(), String> {
    let HealthCheckKind::Http {
        path,
        host,
        expected_statuses,
    } = &check.kind
    else {
        return match tls {
            Some(tls) => crate::connect::secure_with(tcp, endpoint.addr, tls)
                .await
                .map(drop)
                .map_err(|e| format!("TLS handshake: {e}")),
            None => Ok(()),
        };
    };
    let stream = match tls {
        Some(tls) => crate::connect::secure_with(tcp, endpoint.addr, tls)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?,
        None => crate::stream::Stream::Plain(tcp),
    };
    let host = host.clone().unwrap_or_else(|| endpoint.addr.to_string());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringmesh-health-check\r\nConnection: close\r\n\r\n"
    );
    let BufResult(res, _) = stream.write_all_from(request.into_bytes()).await;
    res.map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let BufResult(res, b) = stream.read_into(buf).await;
        buf = b;
        let n = res.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(status) = status_code(&head)? {
            return if expected_statuses
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status))
            {
                Ok(())
            } else {
                Err(format!("unexpected status {status}"))
            };
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err("no status line in the first 8 KiB".into());
        }
    }
}

/// The status of an HTTP/1.x response whose status line has arrived.
fn status_code(head: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = head.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&head[..end]).map_err(|_| "status line is not UTF-8")?;
    let mut parts = line.trim_end().splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code
            .parse::<u16>()
            .map(Some)
            .map_err(|_| format!("bad status line `{line}`")),
        _ => Err(format!("bad status line `{}`", line.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn status_lines_are_parsed_strictly() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Ok(Some(503)));
        assert_eq!(status_code(b"HTTP/1.1 20"), Ok(None));
        assert!(status_code(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_code(b"HTTP/1.1 2000 OK\r\n").is_err());
    }

    #[test]
    fn thresholds_take_out_and_return() {
        let c = ClusterHealth::new("c", 1);
        let m = c.set_members(&[SocketAddr::from(([127, 0, 0, 1], 1))]);
        let e = &m[0];
        let check = HealthCheck {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_secs(1),
            interval_jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            send_proxy_protocol: None,
        };
        apply_result(&c, e, &check, None, false);
        apply_result(&c, e, &check, None, false);
        assert!(e.is_available());
        apply_result(&c, e, &check, None, false);
        assert!(!e.is_available());
        apply_result(&c, e, &check, None, true);
        assert!(!e.is_available());
        apply_result(&c, e, &check, None, true);
        assert!(e.is_available());
        assert_eq!(c.check_totals(), (2, 3));
    }
}
