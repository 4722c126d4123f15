//! The control plane and joined proxies, as real processes: one desired
//! state pushed to every proxy, ACK/NACK and `ctl status`, the mesh CA,
//! discovery with leases, static stability, and who may ask for what.

mod helpers;

use std::time::Duration;

use helpers::http::{Reply, Upstream};
use helpers::mesh::{ControlPlane, Join, Sidecar};

/// product calls review (v1 and v2, only product may call it) and
/// recommendation; review's traffic is split by version.
fn mesh(review_split: (u32, u32), lease: &str, lifetime: &str) -> String {
    format!(
        "\
mesh: {{ trust_domain: shop.local, lease: {lease}, certificate_lifetime: {lifetime} }}
services:
  - name: product
    port: 9080
    calls: [review, recommendation]
  - name: review
    port: 9081
    versions: [v1, v2]
    authz: {{ allow: [product] }}
    routes:
      - name: canary
        match: {{ headers: {{ x-canary: {{ exact: \"true\" }} }} }}
        cluster: review-v2
      - name: split
        split: [{{ cluster: review-v1, weight: {} }}, {{ cluster: review-v2, weight: {} }}]
  - name: recommendation
    port: 9082
",
        review_split.0, review_split.1
    )
}

/// `promtool check metrics` finds nothing (skipped without promtool).
fn promtool_clean(text: &str) {
    match helpers::admin::promtool_findings(text) {
        None => println!("SKIPPED: promtool not installed"),
        Some(findings) => assert!(findings.is_empty(), "promtool: {findings:?}\n{text}"),
    }
}

fn app(name: &'static str) -> Upstream {
    Upstream::start(move |_| Reply::ok(name))
}

struct Landscape {
    cp: ControlPlane,
    product: Sidecar,
    review1: Sidecar,
    review2: Sidecar,
    _apps: Vec<Upstream>,
}

fn landscape(mesh_text: &str) -> Landscape {
    let cp = ControlPlane::start(mesh_text);
    let (a_product, a_r1, a_r2) = (app("product"), app("review v1"), app("review v2"));
    let product_token = cp.token_file("default", "product");
    let review_token = cp.token_file("default", "review");
    let join = |node, workload, version, port: u16, token: &std::path::PathBuf| {
        Sidecar::join(
            &cp,
            &Join {
                node,
                workload,
                version,
                app_port: port,
                outbound_ip: "127.0.0.1",
                token: token.clone(),
            },
        )
    };
    let product = join(
        "product-1",
        "product",
        Some("v1"),
        a_product.addr.port(),
        &product_token,
    );
    let review1 = join(
        "review-1",
        "review",
        Some("v1"),
        a_r1.addr.port(),
        &review_token,
    );
    let review2 = join(
        "review-2",
        "review",
        Some("v2"),
        a_r2.addr.port(),
        &review_token,
    );
    cp.wait_synced(&["product-1", "review-1", "review-2"]);
    Landscape {
        cp,
        product,
        review1,
        review2,
        _apps: vec![a_product, a_r1, a_r2],
    }
}

#[test]
fn proxies_join_get_their_identity_and_config_and_every_change_is_acked() {
    let l = landscape(&mesh((100, 0), "30s", "1h"));
    // The certificate carries the workload's SPIFFE ID, from the mesh CA.
    let (id, not_after) = l.product.certificate();
    assert_eq!(id, "spiffe://shop.local/ns/default/sa/product");
    let left = not_after
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!((3500..=3700).contains(&left), "expires in {left}s");
    assert_eq!(
        l.review2.certificate().0,
        "spiffe://shop.local/ns/default/sa/review"
    );
    // The app calls review by name through its outbound listener: mTLS to
    // the review sidecars, split by version, header canary.
    for _ in 0..5 {
        assert_eq!(
            l.product.call("review", "/r/1", &[]),
            (200, "review v1".into())
        );
    }
    assert_eq!(
        l.product.call(
            "review.default.svc.cluster.local:9081",
            "/",
            &[("x-canary", "true")]
        ),
        (200, "review v2".into())
    );
    assert_eq!(l.product.call("nosuch", "/", &[]).0, 404);
    // `ctl status`: one line per proxy, exit 0 when all are SYNCED.
    let out = l.cp.ctl(&["status"], &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    for node in ["product-1", "review-1", "review-2"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_default();
        assert!(
            line.contains("SYNCED") && (line.contains("in 59m") || line.contains("in 60m")),
            "{line}"
        );
    }
    let before = l.cp.proxy("product-1").unwrap()["acked"].clone();
    // Metrics, on both sides, pass promtool's lint.
    let (status, cp_metrics) =
        l.cp.api("GET", "/metrics", Some(&l.cp.admin_token()), None, "");
    assert_eq!(status, 200, "{cp_metrics}");
    assert!(
        cp_metrics.contains("ringmesh_control_proxies{state=\"synced\"} 3"),
        "{cp_metrics}"
    );
    assert!(
        cp_metrics.contains("ringmesh_control_certificates_total{result=\"issued\"} 3"),
        "{cp_metrics}"
    );
    assert_eq!(l.cp.api("GET", "/metrics", None, None, "").0, 401);
    let proxy_metrics = l.product.process.metrics();
    assert!(
        proxy_metrics.contains("ringmesh_control_plane_connected 1"),
        "{proxy_metrics}"
    );
    assert!(
        helpers::admin::metric(
            &proxy_metrics,
            "ringmesh_control_plane_pushes_total",
            &[("result", "applied")]
        )
        .is_some_and(|v| v >= 1.0),
        "{proxy_metrics}"
    );
    for text in [&cp_metrics, &proxy_metrics] {
        promtool_clean(text);
    }

    // A change to the desired state reaches every proxy that it concerns,
    // and each ACKs the new version.
    let new_mesh = l.cp.state.path().join("v2.yaml");
    std::fs::write(&new_mesh, mesh((0, 100), "30s", "1h")).unwrap();
    let out = l.cp.ctl(&["mesh"], &["put", new_mesh.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = l.cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter().all(|r| r["state"] == "SYNCED")
            && rows
                .iter()
                .any(|r| r["node"] == "product-1" && r["acked"] != before)
    });
    let acked = l.cp.proxy("product-1").unwrap()["acked"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(acked.starts_with("2-"), "{acked}");
    eprintln!("change SYNCED everywhere in {took:?}");
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v2".into())
    );
    // What the proxy was sent.
    let out = l.cp.ctl(&["config"], &["product-1"]);
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["version"], acked.as_str());
    let routes = sent["config"]["listeners"][1]["routes"].as_array().unwrap();
    assert_eq!(routes[0]["name"], "review.canary");
    assert_eq!(routes[0]["match"]["host"][0], "review");
    // review's sidecar calls nothing it may not: product and
    // recommendation allow everyone, review allows product only.
    let out = l.cp.ctl(&["config"], &["review-1"]);
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clusters: Vec<&str> = sent["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["inbound-app", "product", "recommendation"]);

    // History and rollback: version 1 comes back as version 3.
    let out = l.cp.ctl(&["history"], &[]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert_eq!(history.lines().count(), 3, "{history}");
    let out = l.cp.ctl(&["rollback"], &["1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only product's config depends on review's routes: it alone moves to
    // version 3; the others stay SYNCED on what they run.
    l.cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter().all(|r| r["state"] == "SYNCED")
            && rows.iter().any(|r| {
                r["node"] == "product-1" && r["acked"].as_str().is_some_and(|a| a.starts_with("3-"))
            })
    });
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v1".into())
    );
    // A proxy's own config API is closed: the control plane owns it.
    let r = l.product.process.put_config("listeners: []\n");
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn an_invalid_change_is_refused_with_positions_and_nothing_changes() {
    let l = landscape(&mesh((100, 0), "30s", "1h"));
    let before = l.cp.proxies();
    let bad = l.cp.state.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "services:\n  - name: review\n    port: 9081\n    routes: [{ cluster: review-v7 }]\n",
    )
    .unwrap();
    let out = l.cp.ctl(&["mesh"], &["put", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<PUT /mesh>:2:5") && err.contains("unknown cluster `review-v7`"),
        "{err}"
    );
    let after = l.cp.proxies();
    assert_eq!(
        before
            .iter()
            .map(|r| r["acked"].clone())
            .collect::<Vec<_>>(),
        after.iter().map(|r| r["acked"].clone()).collect::<Vec<_>>()
    );
    // The trust domain names every certificate: it cannot change.
    std::fs::write(
        &bad,
        mesh((100, 0), "30s", "1h").replace("shop.local", "other.local"),
    )
    .unwrap();
    let out = l.cp.ctl(&["mesh"], &["put", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh.trust_domain") && err.contains("cannot change"),
        "{err}"
    );
    let out = l.cp.ctl(&["history"], &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // A joined proxy is ready (it runs its pushed config).
    assert_eq!(l.product.process.get("/ready").status, 200);
}

#[test]
fn a_push_one_proxy_cannot_apply_is_nacked_and_shown_while_the_others_are_synced() {
    // Callers of a TCP service get a listener on <outbound IP>:<port>; on
    // one proxy's IP that port is taken, so only that proxy refuses.
    let port = helpers::mesh::free_port("127.0.0.3");
    let base =
        "services:\n  - { name: web, port: 9080 }\n  - { name: api, port: 9081 }\n".to_owned();
    let cp = ControlPlane::start(&base);
    let web_app = app("web");
    let api_app = app("api");
    let (web_token, api_token) = (
        cp.token_file("default", "web"),
        cp.token_file("default", "api"),
    );
    let web = Sidecar::join(
        &cp,
        &Join {
            node: "web-1",
            workload: "web",
            version: None,
            app_port: web_app.addr.port(),
            outbound_ip: "127.0.0.2",
            token: web_token,
        },
    );
    let api = Sidecar::join(
        &cp,
        &Join {
            node: "api-1",
            workload: "api",
            version: None,
            app_port: api_app.addr.port(),
            outbound_ip: "127.0.0.3",
            token: api_token,
        },
    );
    cp.wait_synced(&["web-1", "api-1"]);
    let taken = std::net::TcpListener::bind(("127.0.0.3", port)).unwrap();
    let with_db = format!("{base}  - {{ name: db, port: {port}, protocol: tcp }}\n");
    let file = cp.state.path().join("db.yaml");
    std::fs::write(&file, with_db).unwrap();
    assert!(
        cp.ctl(&["mesh"], &["put", file.to_str().unwrap()])
            .status
            .success()
    );
    cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter()
            .any(|r| r["node"] == "api-1" && r["state"] == "NACK")
            && rows.iter().any(|r| {
                r["node"] == "web-1"
                    && r["state"] == "SYNCED"
                    && r["acked"].as_str().is_some_and(|a| a.starts_with("2-"))
            })
    });
    let row = cp.proxy("api-1").unwrap();
    assert!(
        row["error"].as_str().unwrap().contains(&port.to_string()),
        "{row}"
    );
    assert!(row["acked"].as_str().unwrap().starts_with("1-"), "{row}");
    // `ctl status` says so and exits 1: scriptable.
    let out = cp.ctl(&["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api-1") && l.contains("NACK")),
        "{table}"
    );
    // The refusing proxy keeps its last good config and serves with it.
    assert_eq!(api.call("web", "/", &[]), (200, "web".into()));
    assert_eq!(web.call("api", "/", &[]), (200, "api".into()));
    drop(taken);
}

#[test]
fn with_the_control_plane_down_traffic_flows_and_everything_resyncs_when_it_returns() {
    let mut l = landscape(&mesh((100, 0), "30s", "1h"));
    let version =
        l.cp.api("GET", "/mesh", Some(&l.cp.admin_token()), None, "");
    // Registrations are kept four times a second: a crash forgets at most
    // the last quarter second's.
    std::thread::sleep(Duration::from_millis(500));
    l.cp.kill();
    // Static stability: the mesh keeps serving on its last config.
    for _ in 0..20 {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into())
        );
    }
    // A new proxy cannot join (no certificate without the control plane).
    let token = l.cp.state.path().join("default-product.token");
    let joining = std::thread::spawn({
        let args = helpers::mesh::join_args(
            &l.cp,
            &Join {
                node: "product-2",
                workload: "product",
                version: Some("v1"),
                app_port: 1,
                outbound_ip: "127.0.0.1",
                token,
            },
            &l.cp.state.path().join("product-2"),
            format!("127.0.0.1:{}", helpers::mesh::free_port("127.0.0.1"))
                .parse()
                .unwrap(),
            format!("127.0.0.1:{}", helpers::mesh::free_port("127.0.0.1"))
                .parse()
                .unwrap(),
        );
        move || {
            helpers::proxy::Proxy::launch(
                &args,
                tempfile::tempdir().unwrap(),
                "admin API listening",
            )
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !joining.is_finished(),
        "a proxy joined without a control plane"
    );
    // A proxy restarted meanwhile serves from its kept config and identity.
    // (review-1 is restarted: same state directory.)
    // The control plane returns with no desired state lost; the waiting
    // proxy joins and the others resync.
    l.cp.restart();
    // The restarted control plane knows the instances from before (kept
    // registrations): proxies polling again get no config without them,
    // so traffic never fails while they reconnect.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into()),
            "{}\n{}",
            l.cp.process
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default(),
            l.product.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        l.cp.api("GET", "/mesh", Some(&l.cp.admin_token()), None, ""),
        version
    );
    let newcomer = joining
        .join()
        .unwrap()
        .expect("joined once the control plane returned");
    l.cp.wait_synced(&["product-1", "product-2", "review-1", "review-2"]);
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v1".into())
    );
    drop(newcomer);
    let _ = &l.review1;
}

#[test]
fn a_restarted_proxy_serves_its_kept_config_while_the_control_plane_is_away() {
    let mut l = landscape(&mesh((100, 0), "30s", "1h"));
    let state = l.product.state.clone();
    l.cp.kill();
    // Restart product's sidecar on the same state and addresses.
    let token = l.cp.state.path().join("default-product.token");
    let app_port = l._apps[0].addr.port();
    let (inbound, outbound) = (l.product.inbound, l.product.outbound);
    l.product.process.signal(libc::SIGKILL);
    assert!(
        l.product
            .process
            .wait_exit(Duration::from_secs(5))
            .is_some()
    );
    drop(std::mem::replace(
        &mut l.product.process,
        helpers::proxy::Proxy::launch(
            &helpers::mesh::join_args(
                &l.cp,
                &Join {
                    node: "product-1",
                    workload: "product",
                    version: Some("v1"),
                    app_port,
                    outbound_ip: "127.0.0.1",
                    token,
                },
                &state,
                inbound,
                outbound,
            ),
            tempfile::tempdir().unwrap(),
            "admin API listening",
        )
        .unwrap_or_else(|e| panic!("{e}")),
    ));
    let mut served = false;
    for _ in 0..100 {
        if l.product.call("review", "/", &[]) == (200, "review v1".into()) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "the restarted proxy does not serve its kept config");
    l.cp.restart();
    l.cp.wait_synced(&["product-1", "review-1", "review-2"]);
}

#[test]
fn a_dead_instance_leaves_the_endpoints_when_its_lease_expires_and_a_stopped_one_at_once() {
    let mut l = landscape(&mesh((100, 0), "2s", "1h"));
    let review2_addr = l.review2.inbound.to_string();
    let has_endpoint = |cp: &ControlPlane, addr: &str| {
        let out = cp.ctl(&["config"], &["product-1"]);
        String::from_utf8_lossy(&out.stdout).contains(addr)
    };
    assert!(has_endpoint(&l.cp, &review2_addr));
    // SIGKILL: no goodbye; the lease (2s) expires.
    l.review2.process.signal(libc::SIGKILL);
    let took = l.cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter()
            .any(|r| r["node"] == "review-2" && r["state"] == "NOT CONNECTED")
            && rows
                .iter()
                .any(|r| r["node"] == "product-1" && r["state"] == "SYNCED")
    });
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(!has_endpoint(&l.cp, &review2_addr));
    for _ in 0..10 {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into())
        );
    }
    assert_eq!(l.cp.ctl(&["status"], &[]).status.code(), Some(1));
    // SIGTERM: the instance leaves before draining; its row goes.
    let review1_addr = l.review1.inbound.to_string();
    l.review1.process.signal(libc::SIGTERM);
    l.cp.wait_proxies(Duration::from_secs(5), |rows| {
        !rows.iter().any(|r| r["node"] == "review-1")
    });
    assert!(!has_endpoint(&l.cp, &review1_addr));
    assert!(
        l.review1
            .process
            .wait_exit(Duration::from_secs(10))
            .is_some()
    );
}

#[test]
fn certificates_are_renewed_at_half_life_without_interrupting_traffic() {
    let l = landscape(&mesh((100, 0), "30s", "12s"));
    let (_, first) = l.review1.certificate();
    let start = std::time::Instant::now();
    let mut renewed = None;
    while start.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into())
        );
        let (id, expiry) = l.review1.certificate();
        if expiry > first {
            assert_eq!(id, "spiffe://shop.local/ns/default/sa/review");
            renewed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let renewed = renewed.expect("the certificate was not renewed");
    // Issued with 12s of life at most ~1s before the landscape was ready:
    // renewal is due at ~6s (10s allows for a loaded machine; expiry is 12s).
    assert!(
        renewed < Duration::from_secs(10),
        "renewed after {renewed:?}"
    );
    // New connections keep working with the new certificate.
    for _ in 0..5 {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into())
        );
    }
    let _ = &l.review2;
}

#[test]
fn the_authz_policy_lets_product_call_review_and_refuses_other_workloads() {
    let l = landscape(&mesh((100, 0), "30s", "1h"));
    let rec_app = app("recommendation");
    let token = l.cp.token_file("default", "recommendation");
    let rec = Sidecar::join(
        &l.cp,
        &Join {
            node: "rec-1",
            workload: "recommendation",
            version: None,
            app_port: rec_app.addr.port(),
            outbound_ip: "127.0.0.1",
            token,
        },
    );
    l.cp.wait_synced(&["product-1", "review-1", "review-2", "rec-1"]);
    // recommendation's sidecar does not even know review.
    assert_eq!(rec.call("review", "/", &[]).0, 404);
    // With recommendation's own mesh certificate, review's inbound refuses
    // the handshake; with product's it accepts.
    // A client presenting a workload certificate straight to review's
    // inbound listener (it does not check the server's name: sidecar
    // certificates carry SPIFFE IDs, not DNS names).
    let try_inbound = |identity: &std::path::Path| {
        helpers::mesh::https_with(
            l.review1.inbound,
            None,
            Some(identity),
            "GET",
            "/",
            None,
            "",
        )
    };
    let (status, err) = try_inbound(&rec.identity());
    assert_eq!(status, 0, "recommendation was let in: {err}");
    assert_eq!(
        try_inbound(&l.product.identity()),
        (200, "review v1".into())
    );
    // Without a certificate, nothing.
    let (status, _) =
        helpers::mesh::https_with(l.review1.inbound, None, None, "GET", "/", None, "");
    assert_eq!(status, 0);
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v1".into())
    );
}

#[test]
fn proxies_get_certificates_and_configuration_for_their_own_identity_only() {
    let l = landscape(&mesh((100, 0), "30s", "1h"));
    let admin = l.cp.admin_token();
    let product_token =
        std::fs::read_to_string(l.cp.state.path().join("default-product.token")).unwrap();
    let product_token = product_token.trim();
    // A bootstrap token for product cannot get review's certificate.
    let dir = tempfile::tempdir().unwrap();
    let mut args = helpers::mesh::join_args(
        &l.cp,
        &Join {
            node: "evil",
            workload: "review",
            version: None,
            app_port: 1,
            outbound_ip: "127.0.0.1",
            token: l.cp.state.path().join("default-product.token"),
        },
        &dir.path().join("state"),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    args.extend(["--log-format".into(), "json".into()]);
    let out = std::process::Command::new(helpers::proxy::binary())
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("own identity only"), "{err}");
    // A forged token is refused.
    let body = r#"{"namespace":"default","workload":"product","csr":"x"}"#;
    let (status, _) = l.cp.api(
        "POST",
        "/v1/certificate",
        Some("rmb1:default:product:00"),
        None,
        body,
    );
    assert_eq!(status, 401);
    // The watch needs the mesh certificate, and a certificate's own identity.
    let watch = |workload: &str| {
        format!(
            r#"{{"registration":{{"node":"x","namespace":"default","workload":"{workload}","address":"127.0.0.1:1","inbound":"127.0.0.1:1","outbound":"127.0.0.1:2","app_port":1}}}}"#
        )
    };
    let (status, _) = l.cp.api(
        "POST",
        "/v1/watch",
        Some(product_token),
        None,
        &watch("product"),
    );
    assert_eq!(status, 401);
    let (status, body) = l.cp.api(
        "POST",
        "/v1/watch",
        None,
        Some(&l.product.identity()),
        &watch("review"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("own identity only"), "{body}");
    // A node name used by another identity is not taken over: the caller
    // gets its own config under it, the real review-1 keeps its row.
    let (status, body) = l.cp.api(
        "POST",
        "/v1/watch",
        None,
        Some(&l.product.identity()),
        &watch("product").replace("\"node\":\"x\"", "\"node\":\"review-1\""),
    );
    assert_eq!(status, 200, "{body}");
    let push: serde_json::Value = serde_json::from_str(&body).unwrap();
    let config: serde_json::Value = serde_json::from_str(push["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["node"]["workload"], "product");
    l.cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter()
            .any(|r| r["node"] == "review-1" && r["workload"] == "review" && r["state"] == "SYNCED")
    });
    // A version the service does not declare cannot register.
    let (status, body) = l.cp.api(
        "POST",
        "/v1/watch",
        None,
        Some(&l.review1.identity()),
        &watch("review").replace("\"app_port\":1", "\"app_port\":1,\"version\":\"v9\""),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("declares versions [v1, v2]"), "{body}");
    // Operators' API: the admin token only.
    for token in [None, Some(product_token)] {
        let (status, _) = l.cp.api("GET", "/proxies", token, None, "");
        assert_eq!(status, 401);
        let (status, _) = l.cp.api(
            "PUT",
            "/mesh",
            token,
            Some(&l.product.identity()),
            "services: []",
        );
        assert_eq!(status, 401);
    }
    let (status, body) = l.cp.api("GET", "/proxies", Some(&admin), None, "");
    assert_eq!(status, 200, "{body}");
    // The API is TLS only.
    let plain = helpers::http::send_raw(l.cp.addr, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.map(|r| r.status).unwrap_or(0) == 0);
}

#[test]
fn one_service_is_updated_through_the_api_and_the_change_survives_a_restart() {
    let mut l = landscape(&mesh((100, 0), "30s", "1h"));
    let admin = l.cp.admin_token();
    let (status, body) = l.cp.api(
        "PUT",
        "/mesh/services/review",
        Some(&admin),
        None,
        "port: 9081\nversions: [v1, v2]\nauthz: { allow: [product] }\nroutes:\n  - split: [{ cluster: review-v1, weight: 0 }, { cluster: review-v2, weight: 100 }]\n",
    );
    assert_eq!(status, 200, "{body}");
    l.cp.wait_proxies(Duration::from_secs(10), |rows| {
        rows.iter().all(|r| r["state"] == "SYNCED")
            && rows.iter().any(|r| {
                r["node"] == "product-1" && r["acked"].as_str().is_some_and(|a| a.starts_with("2-"))
            })
    });
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v2".into())
    );
    let (status, body) = l.cp.api(
        "PUT",
        "/mesh/services/review",
        Some(&admin),
        None,
        "port: nope\n",
    );
    assert_eq!(status, 400, "{body}");
    l.cp.kill();
    l.cp.restart();
    let (_, text) = l.cp.api("GET", "/mesh", Some(&admin), None, "");
    assert!(text.contains("\"weight\": 100"), "{text}");
    l.cp.wait_synced(&["product-1", "review-1", "review-2"]);
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v2".into())
    );
    let (status, _) = l.cp.api(
        "DELETE",
        "/mesh/services/recommendation",
        Some(&admin),
        None,
        "",
    );
    assert_eq!(
        status, 400,
        "product calls recommendation: removing it must be refused"
    );
}

#[test]
fn a_failing_renewal_keeps_the_current_certificate_serving_until_the_control_plane_returns() {
    let mut l = landscape(&mesh((100, 0), "30s", "12s"));
    let (_, first) = l.review1.certificate();
    l.cp.kill();
    // Renewal is due about 6s after issue; it fails without the control
    // plane, and the proxy keeps serving with the certificate it has.
    let failed = l.review1.process.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "certificate renewal failed; serving with the current certificate"
    });
    assert!(failed.is_some(), "{}", l.review1.process.log_text());
    assert_eq!(l.review1.certificate().1, first);
    for _ in 0..5 {
        assert_eq!(
            l.product.call("review", "/", &[]),
            (200, "review v1".into())
        );
    }
    // Back before expiry: the next attempt renews.
    l.cp.restart();
    let start = std::time::Instant::now();
    while l.review1.certificate().1 == first {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not renewed after the control plane returned:\n{}",
            l.review1.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        l.product.call("review", "/", &[]),
        (200, "review v1".into())
    );
    let _ = &l.review2;
}
