//! The real-peer fixtures of the HTTP/2 and gRPC tests (`helpers/grpc.rs`,
//! `helpers/grpc_peer.py`, `helpers/h2_abuse.py`), proved against each other
//! with no proxy in between: every client scenario against the grpcio
//! server gives the outcome the proxy tests will expect of a proxy that is
//! not there, and the abuse scripts run their course against the gRPC C
//! core. Without python3, grpcio and h2 each test says SKIPPED.

mod helpers;

use helpers::grpc::{self, GrpcServer};
use helpers::tls::Pki;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

macro_rules! need_peers {
    () => {
        if !grpc::available() {
            eprintln!("SKIPPED: {}", grpc::MISSING);
            return;
        }
    };
}

fn assert_ok(out: &Value) {
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["code"], "OK", "{out}");
}

/// Polls the server's Stats until `check` holds (the server notices a
/// cancelled or expired call within 10 ms of the client).
fn stats_until(server: &GrpcServer, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.stats();
        if check(&stats) || Instant::now() >= deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unary_echoes_with_metadata_authority_and_deadline() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["unary"]);
    assert_ok(&out);
    assert_eq!(out["reply_prefix"], "alpha:hello");
    assert_eq!(out["reply_len"], 11);
    assert_eq!(out["trailing_metadata"]["x-served-by"], "alpha");
    assert_eq!(out["initial_metadata"], json!({}));
    // Deadline 10 s by default, sent as grpc-timeout.
    let left: u64 = out["trailing_metadata"]["x-deadline-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5_000..=10_000).contains(&left), "{out}");

    let out = grpc::client(
        server.addr,
        &[
            "--authority",
            "echo.test:8080",
            "--timeout",
            "0",
            "--header",
            "x-route=blue",
            "unary",
            "--size",
            "1000",
            "--echo",
            "v1",
        ],
    );
    assert_ok(&out);
    assert_eq!(out["reply_len"], 1006);
    assert_eq!(out["intact"], true);
    assert_eq!(out["initial_metadata"]["x-echo"], "v1");
    assert_eq!(out["trailing_metadata"]["x-echo-trailer"], "v1");
    assert_eq!(out["trailing_metadata"]["x-authority"], "echo.test:8080");
    assert!(
        out["trailing_metadata"].get("x-deadline-ms").is_none(),
        "no deadline: {out}"
    );
}

#[test]
fn streams_each_way_and_bidi_in_lockstep() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["server-stream", "50", "1000"]);
    assert_ok(&out);
    assert_eq!(
        (&out["messages"], &out["bytes"]),
        (&json!(50), &json!(50_000))
    );
    assert_eq!(out["intact"], true);
    assert_eq!(out["trailing_metadata"]["x-served-by"], "alpha");

    let out = grpc::client(server.addr, &["client-stream", "20", "333"]);
    assert_ok(&out);
    assert_eq!(out["reply"], "20:6660");

    let out = grpc::client(server.addr, &["bidi", "100", "64"]);
    assert_ok(&out);
    assert_eq!(out["messages"], 100);
    assert_eq!(out["all_equal"], true);

    let out = grpc::client(server.addr, &["bidi", "0", "0"]);
    assert_ok(&out);
    assert_eq!(out["messages"], 0);
}

#[test]
fn sixteen_mib_each_way() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["big", "16777216"]);
    assert_ok(&out);
    assert_eq!(out["intact"], true);
    assert_eq!(out["reply_len"], 16_777_216 + "alpha:".len());
}

#[test]
fn deadline_and_cancellation_reach_the_server() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["deadline", "200", "5000"]);
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], "DEADLINE_EXCEEDED", "{out}");
    let elapsed = out["elapsed_ms"].as_u64().unwrap();
    assert!((150..3000).contains(&elapsed), "{out}");
    let stats = stats_until(&server, |s| s["expired_sleeps"] == 1);
    assert_eq!(stats["expired_sleeps"], 1, "{stats}");
    assert_eq!(stats["cancelled_sleeps"], 1, "{stats}");

    let out = grpc::client(server.addr, &["cancel", "5000", "200"]);
    assert_eq!(out["code"], "CANCELLED", "{out}");
    assert_eq!(out["cancelled"], true, "{out}");
    assert_eq!(out["server_cancelled"], true, "{out}");
    let stats = server.stats();
    assert_eq!(stats["cancelled_sleeps"], 2, "{stats}");
    assert_eq!(stats["expired_sleeps"], 1, "{stats}");
    assert_eq!(stats["calls"]["Sleep"], 2, "{stats}");
}

#[test]
fn fail_is_a_trailers_only_status() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["fail", "14", "try later"]);
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], "UNAVAILABLE");
    assert_eq!(out["details"], "try later");
    assert_eq!(out["trailing_metadata"]["x-served-by"], "alpha");
    let out = grpc::client(server.addr, &["fail", "8", "too much"]);
    assert_eq!(out["code"], "RESOURCE_EXHAUSTED", "{out}");

    // On the wire: one HEADERS (status 200 with grpc-status), no DATA, no
    // trailers block.
    let out = grpc::abuse(
        server.addr,
        &[
            "ok",
            "--grpc",
            "--path",
            "/ringmesh.test.Echo/Fail",
            "--message",
            "14:try later",
        ],
    );
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["headers"]["grpc-status"], "14", "{out}");
    assert_eq!(out["headers"]["grpc-message"], "try later", "{out}");
    assert_eq!(out["trailers"], json!({}), "{out}");
    assert_eq!(out["body_len"], 0, "{out}");
}

#[test]
fn flaky_fails_n_times_per_key_then_succeeds() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    for call in 1..=2 {
        let out = grpc::client(server.addr, &["flaky", "k", "2"]);
        assert_eq!(out["code"], "UNAVAILABLE", "call {call}: {out}");
        assert_eq!(out["reply"], Value::Null);
    }
    let out = grpc::client(server.addr, &["flaky", "k", "2"]);
    assert_ok(&out);
    assert_eq!(out["reply"], "ok:3");
    // Another key has its own count.
    let out = grpc::client(server.addr, &["flaky", "other", "0"]);
    assert_eq!(out["reply"], "ok:1", "{out}");

    let out = grpc::client(server.addr, &["stats"]);
    assert_ok(&out);
    assert_eq!(out["stats"]["flaky"], json!({"k": 3, "other": 1}));
    assert_eq!(out["stats"]["calls"]["Flaky"], 4);
    assert_eq!(out["stats"]["calls"]["Stats"], 1);
}

#[test]
fn many_concurrent_calls_on_one_channel() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    let out = grpc::client(server.addr, &["many", "200"]);
    assert_ok(&out);
    assert_eq!(out["ok_count"], 200);
    assert_eq!(out["codes"], json!({"OK": 200}));
    assert_eq!(out["served_by"], json!({"alpha": 200}));
}

#[test]
fn unreachable_and_killed_servers_are_unavailable() {
    need_peers!();
    let mut server = GrpcServer::start("alpha");
    let addr = server.addr;
    assert_ok(&grpc::client(addr, &["unary"]));
    server.kill();
    let out = grpc::client(addr, &["unary"]);
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    let out = grpc::abuse(addr, &["ok"]);
    assert!(out["error"].as_str().unwrap().contains("refused"), "{out}");
}

#[test]
fn tls_server() {
    need_peers!();
    let pki = Pki::new();
    let server = GrpcServer::start_tls("secure", &pki.path("server.pem"), &pki.path("server.key"));
    let ca = pki.file("ca.pem");
    let out = grpc::client(
        server.addr,
        &["--tls-ca", &ca, "--tls-server-name", "localhost", "unary"],
    );
    assert_ok(&out);
    assert_eq!(out["reply_prefix"], "secure:hello");
    // A plaintext client gets nowhere.
    let out = grpc::client(server.addr, &["unary"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    // The abuse client speaks TLS with ALPN h2.
    let out = grpc::abuse(server.addr, &["--tls", "ok", "--grpc"]);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["grpc_status"], 0, "{out}");
    assert_eq!(out["trailers"]["x-served-by"], "secure", "{out}");
}

#[test]
fn abuse_scripts_run_their_course() {
    need_peers!();
    let server = GrpcServer::start("alpha");
    // A GET is not gRPC: the C core resets the stream.
    let out = grpc::abuse(server.addr, &["ok"]);
    assert_eq!(out["ok"], false, "{out}");
    assert!(out["reset"].is_string(), "{out}");
    let out = grpc::abuse(server.addr, &["ok", "--grpc", "--authority", "a.test"]);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["trailers"]["x-authority"], "a.test", "{out}");

    // The C core (1.85) takes 2,000 rapid resets without a GOAWAY; the
    // fields are there either way.
    let out = grpc::abuse(
        server.addr,
        &["rapid-reset", "--streams", "2000", "--linger-ms", "200"],
    );
    let sent = out["sent"].as_u64().unwrap();
    assert!(
        sent == 2000 || out["goaway"] == true || out["closed"] == true,
        "{out}"
    );
    assert!(
        out["goaway"].is_boolean() && out["closed"].is_boolean(),
        "{out}"
    );
    assert!(out["elapsed_ms"].is_u64(), "{out}");

    // 100 KiB of header block: answered RESOURCE_EXHAUSTED (a trailers-only
    // response, then RST_STREAM), the connection kept.
    let out = grpc::abuse(
        server.addr,
        &[
            "continuation-flood",
            "--frames",
            "100",
            "--path",
            "/ringmesh.test.Echo/Unary",
        ],
    );
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["headers"]["grpc-status"], "8", "{out}");
    assert_eq!(out["goaway"], false, "{out}");

    // Other connections are unaffected.
    assert_eq!(grpc::abuse(server.addr, &["ok", "--grpc"])["ok"], true);
    assert_ok(&grpc::client(server.addr, &["unary"]));
}
