//! `ringmesh validate` and `ringmesh run` on bad configuration: a non-zero
//! exit and every error with file:line:col and the key path, at once.

mod helpers;

use std::process::Command;

use helpers::proxy::binary;

/// Runs `ringmesh validate` on `yaml`; returns (exit code, stderr, file path).
fn validate(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// Asserts that validation fails with an error `file:line:col: path: ...message...`.
fn assert_error(yaml: &str, line: usize, col: usize, path: &str, message: &str) {
    let (code, stderr, file) = validate(yaml);
    assert_eq!(code, 1, "validate must fail:\n{stderr}");
    let prefix = format!("{file}:{line}:{col}: {path}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(message)),
        "expected `{prefix}...{message}...` in:\n{stderr}"
    );
}

const GOOD: &str = "\
admin:
  listen: 127.0.0.1:9901
listeners:
  - name: db
    listen: 127.0.0.1:15432
    cluster: pg
clusters:
  - name: pg
    endpoints: [127.0.0.1:5432, \"localhost:5433\"]
    connect_timeout: 250ms
";

#[test]
fn a_valid_config_passes() {
    let (code, stderr, _) = validate(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unknown_keys_are_errors() {
    let yaml = GOOD.replace("    cluster: pg\n", "    cluster: pg\n    clutser: pg\n");
    assert_error(&yaml, 7, 5, "listeners[0].clutser", "unknown key `clutser`");
    assert_error(
        "admin: {}\nlistners: []\n",
        2,
        1,
        "listners",
        "unknown key `listners`",
    );
}

#[test]
fn bad_addresses_are_errors() {
    let yaml = GOOD.replace("127.0.0.1:15432", "127.0.0.1:70000");
    assert_error(
        &yaml,
        5,
        13,
        "listeners[0].listen",
        "invalid listen address",
    );
    let yaml = GOOD.replace("127.0.0.1:5432,", "nope:port,");
    assert_error(
        &yaml,
        9,
        17,
        "clusters[0].endpoints[0]",
        "invalid endpoint `nope:port`",
    );
    let yaml = GOOD.replace("listen: 127.0.0.1:9901", "listen: localhost");
    assert_error(&yaml, 2, 11, "admin.listen", "invalid listen address");
}

#[test]
fn duplicate_names_and_addresses_are_errors() {
    let yaml = GOOD.replace(
        "clusters:",
        "  - name: db\n    listen: 127.0.0.1:15432\n    cluster: pg\nclusters:",
    );
    assert_error(
        &yaml,
        7,
        5,
        "listeners[1].name",
        "duplicate listener name `db` (first defined at line 4)",
    );
    assert_error(
        &yaml,
        8,
        13,
        "listeners[1].listen",
        "already used by the listener at line 5",
    );
    let yaml = format!("{GOOD}  - name: pg\n    endpoints: []\n");
    assert_error(
        &yaml,
        11,
        11,
        "clusters[1].name",
        "duplicate cluster name `pg`",
    );
}

#[test]
fn dangling_cluster_references_are_errors() {
    let yaml = GOOD.replace("cluster: pg", "cluster: postgres");
    assert_error(
        &yaml,
        6,
        14,
        "listeners[0].cluster",
        "unknown cluster `postgres` (defined clusters: pg)",
    );
}

#[test]
fn bad_durations_are_errors() {
    let yaml = GOOD.replace("250ms", "250");
    assert_error(
        &yaml,
        10,
        22,
        "clusters[0].connect_timeout",
        "invalid duration `250`",
    );
    let yaml = GOOD.replace("250ms", "2d");
    assert_error(&yaml, 10, 22, "clusters[0].connect_timeout", "out of range");
}

#[test]
fn out_of_range_numbers_are_errors() {
    let yaml = GOOD.replace(
        "    cluster: pg\n",
        "    cluster: pg\n    max_connections: 0\n",
    );
    assert_error(
        &yaml,
        7,
        22,
        "listeners[0].max_connections",
        "0 is out of range: must be between 1 and 10000000",
    );
    let yaml = GOOD.replace("250ms\n", "250ms\n    connect_attempts: many\n");
    assert_error(
        &yaml,
        11,
        23,
        "clusters[0].connect_attempts",
        "expected an integer",
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let (code, stderr, file) = validate("listeners:\n  - name: [unclosed\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{file}:")) && stderr.contains("YAML syntax error"),
        "{stderr}"
    );
}

#[test]
fn keys_that_do_not_apply_are_refused_not_ignored() {
    let yaml = GOOD.replace(
        "250ms\n",
        "250ms\n    circuit_breakers: { max_retries: -1 }\n",
    );
    assert_error(
        &yaml,
        11,
        38,
        "clusters[0].circuit_breakers.max_retries",
        "",
    );
    // HTTP keys on a TCP listener say what they need.
    let yaml = GOOD.replace("    cluster: pg\n", "    cluster: pg\n    timeout: 2s\n");
    assert_error(&yaml, 7, 14, "listeners[0].timeout", "HTTP listeners only");
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "\
listeners:
  - name: a
    listen: 1.2.3.4
    cluster: missing
    idle_timeout: soon
    extra: 1
clusters:
  - name: c
    endpoints: [\"x:0\"]
    connect_attempts: 99
";
    let (code, stderr, _) = validate(yaml);
    assert_eq!(code, 1);
    for path in [
        "listeners[0].listen",
        "listeners[0].cluster",
        "listeners[0].idle_timeout",
        "listeners[0].extra",
        "clusters[0].endpoints[0]",
        "clusters[0].connect_attempts",
    ] {
        assert!(
            stderr.contains(&format!(": {path}: ")),
            "missing {path} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("6 error(s)"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_with_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, GOOD.replace("cluster: pg", "cluster: nope")).unwrap();
    let out = Command::new(binary())
        .args(["run", "--io-engine", "epoll", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:6:14: listeners[0].cluster: ", path.display())),
        "{stderr}"
    );
}

#[test]
fn unresolvable_host_names_are_errors() {
    let yaml = GOOD.replace("localhost:5433", "no-such-host.invalid:5433");
    assert_error(
        &yaml,
        9,
        33,
        "clusters[0].endpoints[1]",
        "cannot resolve host `no-such-host.invalid`",
    );
}
