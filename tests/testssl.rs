//! CI tier: testssl.sh (Debian's `testssl.sh`, installed by .ci/run)
//! against a TLS listener must find nothing of HIGH or CRITICAL severity in
//! what the proxy controls (protocols, ciphers, their order, renegotiation,
//! known attacks). Skipped, loudly, where testssl is not installed.

mod helpers;

use std::process::Command;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::EchoServer;
use helpers::tls::Pki;

/// Findings about the certificate's issuer, not about the proxy: the
/// development CA of `ringmesh cert` runs no CRL or OCSP service.
const ISSUER_FINDINGS: &[&str] = &["cert_revocation"];

#[test]
fn testssl_finds_nothing_high_or_critical() {
    if Command::new("testssl").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: testssl (apt-get install testssl.sh) is not installed; .ci/run installs it"
        );
        return;
    }
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = Proxy::start(
        "uring",
        &one_listener("tls", &[echo.addr], &pki.listener_tls(false), ""),
    );
    let port = proxy.listener("tls").port();
    let report = pki.path("testssl.json");
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--severity",
            "HIGH",
            "--add-ca",
        ])
        .arg(pki.path("ca.pem"))
        .arg("--jsonfile")
        .arg(&report)
        .arg(format!("localhost:{port}"))
        .output()
        .expect("run testssl");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no testssl report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .filter(|f| !ISSUER_FINDINGS.contains(&f["id"].as_str().unwrap_or("")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings:\n{}", bad.join("\n"));
}
