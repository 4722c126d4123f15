//! Kubernetes: `ringmesh inject` and the manifests in `deploy/kubernetes/`.
//!
//! The injected demo (`example-app.yaml` through the real binary) and every
//! file of `deploy/kubernetes/` pass the Kubernetes 1.30 OpenAPI schemas in
//! strict mode (unknown fields refused), checked by the `kubernetes-validate`
//! Python package (PyPI, schemas shipped with it, offline; `.ci/run`
//! installs it; without it that test says SKIPPED). The output is also read
//! back with the proxy's own YAML parser and checked field by field: each
//! Deployment has the sidecar, its bootstrap and the capture init
//! container, nothing else changed, and other documents are byte for byte
//! what was read. Injecting twice changes nothing; bad input exits 1 with
//! the document and line and writes nothing to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ringmesh_control::yaml::{self, Node};
use serde_json::{Value, json};

/// The demo `ringmesh inject` is run on.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn example_app() -> PathBuf {
    deploy_dir().join("example-app.yaml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `ringmesh inject ARGS`, with `stdin` as standard input.
fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmesh inject");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("ringmesh inject output")
}

/// Injects `args` and expects success; (stdout, stderr).
fn injected(args: &[&str], stdin: &str) -> (String, String) {
    let out = inject(args, stdin);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    (stdout, stderr)
}

/// The documents of a stream, split as `ringmesh inject` and kubectl split
/// them (on `---` lines), blank ones dropped.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    docs
}

/// A document read with the proxy's own parser, as JSON: quoted scalars
/// are strings, plain ones integers, booleans or strings (all these files
/// use).
fn json_of(doc: &str) -> Value {
    fn convert(node: &Node) -> Value {
        match &node.value {
            yaml::Value::Null => Value::Null,
            yaml::Value::Scalar { text, plain: false } => json!(text),
            yaml::Value::Scalar { text, plain: true } => match text.as_str() {
                "true" => json!(true),
                "false" => json!(false),
                t => t.parse::<i64>().map_or_else(|_| json!(t), |n| json!(n)),
            },
            yaml::Value::Seq(items) => Value::Array(items.iter().map(convert).collect()),
            yaml::Value::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| match &k.value {
                        yaml::Value::Scalar { text, .. } => (text.clone(), convert(v)),
                        other => panic!("key {other:?}"),
                    })
                    .collect(),
            ),
        }
    }
    let node = yaml::parse(doc)
        .unwrap_or_else(|e| panic!("not YAML: {e:?}\n{doc}"))
        .unwrap_or_else(|| panic!("empty document:\n{doc}"));
    convert(&node)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The value after `flag` in an argument list.
fn arg<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == flag).map(|w| w[1])
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn default_image() -> String {
    format!("ghcr.io/ringmesh/ringmesh:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn the_injected_demo_and_the_control_plane_pass_the_kubernetes_1_30_schemas_strictly() {
    let importable = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        eprintln!("SKIPPED: kubernetes-validate not installed (pip install kubernetes-validate)");
        return;
    }
    let validate = |path: &Path| {
        let out = Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "-k",
                "1.30.0",
                "--strict",
                "--quiet",
            ])
            .arg(path)
            .output()
            .expect("run kubernetes_validate");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A kind it has no schema for is only a WARN with exit 0: refused
        // here, or a misspelt apiVersion would pass unchecked.
        (out.status.success() && report.trim().is_empty(), report)
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let (output, _) = injected(&[example_app().to_str().expect("path")], "");
    let injected_path = dir.path().join("injected.yaml");
    std::fs::write(&injected_path, &output).expect("write");
    let mut files = vec![injected_path];
    let mut listed: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .collect();
    listed.sort();
    assert!(
        listed
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "yaml")),
        "deploy/kubernetes/ holds only manifests: {listed:?}"
    );
    files.extend(listed);
    for path in &files {
        let (ok, report) = validate(path);
        assert!(ok, "{}:\n{report}", path.display());
    }

    // The validator refuses what it should, so passing means something: an
    // unknown field in the sidecar and a port that is not a number.
    for (from, to) in [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: true\n            readOnlyRootFs: true",
        ),
        ("containerPort: 15000", "containerPort: \"admin\""),
    ] {
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, output.replacen(from, to, 1)).expect("write");
        let (ok, report) = validate(&broken);
        assert!(!ok, "{to} was accepted:\n{report}");
    }
}

#[test]
fn every_demo_deployment_gets_the_sidecar_its_bootstrap_and_the_capture_init_container() {
    let input = read(&example_app());
    let (output, notes) = injected(&[example_app().to_str().expect("path")], "");
    let (before, after) = (documents(&input), documents(&output));
    assert_eq!(
        before.len(),
        after.len(),
        "one document out per document in"
    );

    let mut deployments = 0;
    for (original, doc) in before.iter().zip(&after) {
        let (original_json, out) = (json_of(original), json_of(doc));
        if original_json["kind"] != "Deployment" {
            assert_eq!(doc, original, "other documents pass through byte for byte");
            continue;
        }
        deployments += 1;
        let name = out["metadata"]["name"].as_str().expect("name").to_owned();
        let template = &out["spec"]["template"];
        let pod = &template["spec"];
        let labels = &original_json["spec"]["template"]["metadata"]["labels"];
        let app_container = &original_json["spec"]["template"]["spec"]["containers"][0];

        assert_eq!(
            template["metadata"]["annotations"]["ringmesh.io/injected"], "true",
            "{name}"
        );

        // The sidecar comes first, with the arguments of `ringmesh run`.
        let proxy = &pod["containers"][0];
        assert_eq!(proxy["name"], "ringmesh-proxy", "{name}");
        assert_eq!(proxy["image"], json!(default_image()), "{name}");
        let args = strings(&proxy["args"]);
        assert_eq!(args.first(), Some(&"run"), "{name}: {args:?}");
        for (flag, want) in [
            ("--control", "https://ringmesh-control.ringmesh.svc:15010"),
            ("--node", "$(POD_NAME)"),
            ("--namespace", "$(POD_NAMESPACE)"),
            ("--workload", labels["app"].as_str().expect("app label")),
            (
                "--workload-version",
                labels["version"].as_str().expect("version label"),
            ),
            (
                "--app-port",
                &app_container["ports"][0]["containerPort"].to_string(),
            ),
            ("--inbound", "0.0.0.0:15006"),
            ("--advertise", "$(POD_IP):15006"),
            ("--outbound", "127.0.0.1:15001"),
        ] {
            assert_eq!(arg(&args, flag), Some(want), "{name}: {flag} in {args:?}");
        }
        assert!(args.contains(&"--capture"), "{name}: {args:?}");

        // $(POD_NAME) and friends come from the downward API.
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
        ] {
            let env = named(&proxy["env"], var).unwrap_or_else(|| panic!("{name}: env {var}"));
            assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
        }

        // Readiness is the admin API's /ready on 15000, kept out of capture.
        assert_eq!(
            proxy["readinessProbe"]["httpGet"],
            json!({ "path": "/ready", "port": 15000 }),
            "{name}"
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337, "{name}");
        assert_eq!(
            proxy["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );

        // The files named in the arguments are in the mounted volumes: the
        // workload's token Secret, the CA ConfigMap, an emptyDir for state.
        let mount_of = |volume: &str| -> String {
            let m = named(&proxy["volumeMounts"], volume)
                .unwrap_or_else(|| panic!("{name}: mount of {volume}"));
            m["mountPath"].as_str().expect("mountPath").to_owned()
        };
        let volume = |volume: &str| {
            named(&pod["volumes"], volume)
                .unwrap_or_else(|| panic!("{name}: volume {volume}"))
                .clone()
        };
        let workload = labels["app"].as_str().expect("app");
        assert_eq!(
            volume("ringmesh-token")["secret"]["secretName"],
            json!(format!("ringmesh-token-{workload}"))
        );
        assert_eq!(volume("ringmesh-ca")["configMap"]["name"], "ringmesh-ca");
        assert!(volume("ringmesh-state")["emptyDir"].is_object(), "{name}");
        assert_eq!(
            arg(&args, "--token-file"),
            Some(format!("{}/token", mount_of("ringmesh-token")).as_str())
        );
        assert_eq!(
            arg(&args, "--ca"),
            Some(format!("{}/ca.pem", mount_of("ringmesh-ca")).as_str())
        );
        assert_eq!(
            arg(&args, "--state-dir"),
            Some(mount_of("ringmesh-state").as_str())
        );
        for container in pod["containers"]
            .as_array()
            .into_iter()
            .chain(pod["initContainers"].as_array())
            .flatten()
        {
            for m in container["volumeMounts"].as_array().into_iter().flatten() {
                let v = m["name"].as_str().expect("mount name");
                assert!(
                    named(&pod["volumes"], v).is_some(),
                    "{name}: {v} mounted, not declared"
                );
            }
        }

        // The init container installs the capture with NET_ADMIN.
        let init = named(&pod["initContainers"], "ringmesh-init")
            .unwrap_or_else(|| panic!("{name}: ringmesh-init"));
        let caps = strings(&init["securityContext"]["capabilities"]["add"]);
        assert!(
            caps.contains(&"NET_ADMIN") && caps.contains(&"NET_RAW"),
            "{caps:?}"
        );
        let command = strings(&init["command"]);
        let script = command.last().copied().unwrap_or_default();
        assert_eq!(command[..2], ["sh", "-c"], "{name}");
        for rule in [
            "-j REDIRECT --to-ports 15006",
            "-j REDIRECT --to-ports 15001",
            "-m owner --uid-owner 1337 -j RETURN",
            "-o lo -j RETURN",
        ] {
            assert!(
                script.contains(rule),
                "{name}: `{rule}` missing from\n{script}"
            );
        }
        let skipped = named(&init["env"], "RINGMESH_SKIP_INBOUND_PORTS").expect("skip env");
        assert_eq!(skipped["value"], "15000 15006", "{name}");

        // Take the injected parts away: what is left is the input.
        let mut stripped = out.clone();
        let t = &mut stripped["spec"]["template"];
        let annotations = t["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations");
        annotations.remove("ringmesh.io/injected");
        annotations.remove("kubectl.kubernetes.io/default-container");
        if annotations.is_empty() {
            t["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("annotations");
        }
        let spec = t["spec"].as_object_mut().expect("pod spec");
        for (list, injected) in [
            ("containers", &["ringmesh-proxy"][..]),
            ("initContainers", &["ringmesh-init"][..]),
            (
                "volumes",
                &[
                    "ringmesh-token",
                    "ringmesh-ca",
                    "ringmesh-state",
                    "ringmesh-bootstrap",
                ][..],
            ),
        ] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                items.retain(|c| !injected.iter().any(|n| c["name"] == *n));
                if items.is_empty() {
                    spec.remove(list);
                }
            }
        }
        assert_eq!(
            stripped, original_json,
            "{name}: only the injection changed"
        );
        assert!(
            notes.contains(&format!("Deployment `{name}`: injected")),
            "{notes}"
        );
    }
    assert_eq!(
        deployments, 4,
        "product, review-v1, review-v2, recommendation"
    );
}

#[test]
fn the_demo_workloads_are_the_services_of_the_control_planes_mesh_yaml() {
    let control_plane: Vec<Value> = documents(&read(&deploy_dir().join("control-plane.yaml")))
        .iter()
        .map(|d| json_of(d))
        .collect();
    let find = |kind: &str, name: &str| {
        control_plane
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in control-plane.yaml"))
    };
    let text = find("ConfigMap", "ringmesh-mesh")["data"]["mesh.yaml"]
        .as_str()
        .expect("mesh.yaml in the ConfigMap");
    let mesh = ringmesh_control::mesh::load_mesh("ringmesh-mesh/mesh.yaml", text)
        .unwrap_or_else(|e| panic!("the example mesh.yaml is refused:\n{e}"));

    // The control plane runs the image inject defaults to, at the address
    // inject's --control defaults to.
    let deployment = find("Deployment", "ringmesh-control");
    let control = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(control["image"], json!(default_image()));
    let args = strings(&control["args"]);
    assert_eq!(arg(&args, "--listen"), Some("0.0.0.0:15010"));
    assert!(
        args.windows(2)
            .any(|w| w == ["--server-name", "ringmesh-control.ringmesh.svc"]),
        "{args:?}"
    );
    let service = find("Service", "ringmesh-control");
    assert_eq!(service["metadata"]["namespace"], "ringmesh");
    assert_eq!(service["spec"]["ports"][0]["port"], 15010);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");

    let (output, _) = injected(&[example_app().to_str().expect("path")], "");
    let mut meshed = Vec::new();
    for doc in documents(&output).iter().map(|d| json_of(d)) {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let args = strings(&doc["spec"]["template"]["spec"]["containers"][0]["args"]);
        let namespace = doc["metadata"]["namespace"].as_str().expect("namespace");
        let workload = arg(&args, "--workload").expect("--workload");
        let port: u16 = arg(&args, "--app-port")
            .and_then(|p| p.parse().ok())
            .expect("--app-port");
        let version = arg(&args, "--workload-version").expect("--workload-version");
        let service = mesh
            .services
            .iter()
            .find(|s| s.namespace == namespace && s.workload == workload)
            .unwrap_or_else(|| panic!("no service for {namespace}/{workload} in mesh.yaml"));
        assert_eq!(
            service.port, port,
            "{workload}: the app port is the service's"
        );
        assert!(
            service.versions.is_empty() || service.versions.iter().any(|v| v == version),
            "{workload} {version} not among {:?}",
            service.versions
        );
        meshed.push(workload.to_owned());
    }
    meshed.dedup();
    assert_eq!(meshed, ["product", "review", "recommendation"]);
}

#[test]
fn injecting_twice_changes_nothing_and_says_why() {
    let (once, _) = injected(&[example_app().to_str().expect("path")], "");
    let (twice, notes) = injected(&["-"], &once);
    assert_eq!(twice, once);
    assert_eq!(
        notes
            .matches("already has the ringmesh-proxy container; left as is")
            .count(),
        4,
        "{notes}"
    );
}

#[test]
fn standard_input_is_read_like_a_file() {
    let (from_file, _) = injected(&[example_app().to_str().expect("path")], "");
    let (from_stdin, _) = injected(&["-"], &read(&example_app()));
    assert_eq!(from_stdin, from_file);
}

const ONE: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers:
        - name: web
          image: web:1
          ports: [{ containerPort: 8080 }]
";

#[test]
fn opted_out_and_unsupported_workloads_pass_through_with_a_note() {
    let disabled = ONE.replace(
        "metadata: { name: web }",
        "metadata: { name: web, annotations: { ringmesh.io/inject: disabled } }",
    );
    let (out, notes) = injected(&["-"], &disabled);
    assert_eq!(out, disabled);
    assert!(
        notes.contains("ringmesh.io/inject: disabled; left as is"),
        "{notes}"
    );

    let host = ONE.replace(
        "      containers:",
        "      hostNetwork: true\n      containers:",
    );
    let (out, notes) = injected(&["-"], &host);
    assert_eq!(out, host);
    assert!(notes.contains("hostNetwork"), "{notes}");

    let old = ONE.replace("apps/v1", "apps/v1beta1");
    let (out, notes) = injected(&["-"], &old);
    assert_eq!(out, old);
    assert!(notes.contains("only apps/v1 is injected"), "{notes}");
}

#[test]
fn statefulsets_daemonsets_and_kubectl_lists_are_injected_too() {
    let stateful = ONE.replace("Deployment", "StatefulSet");
    let daemon = ONE.replace("Deployment", "DaemonSet");
    let input = format!("{stateful}---\n{daemon}");
    let (out, _) = injected(&["-"], &input);
    for doc in documents(&out).iter().map(|d| json_of(d)) {
        assert_eq!(
            doc["spec"]["template"]["spec"]["containers"][0]["name"], "ringmesh-proxy",
            "{}",
            doc["kind"]
        );
    }
    // `kubectl get deploy -o yaml` prints a List.
    let item = ONE
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>();
    let list = format!("apiVersion: v1\nkind: List\nitems:\n  - \n{item}");
    let (out, notes) = injected(&["-"], &list);
    let list = json_of(&out);
    assert_eq!(
        list["items"][0]["spec"]["template"]["spec"]["containers"][0]["name"],
        "ringmesh-proxy"
    );
    assert!(
        notes.contains("items[0]: Deployment `web`: injected"),
        "{notes}"
    );
}

#[test]
fn flags_and_annotations_shape_the_injection() {
    let annotated = ONE.replace(
        "metadata: { labels: { app: web } }",
        "metadata:\n      labels: { app: web }\n      annotations: { ringmesh.io/skip-inbound-ports: \"9090, 9091\", ringmesh.io/skip-outbound-ports: \"5432\" }",
    );
    let (out, _) = injected(
        &[
            "--control",
            "https://mesh.example:443",
            "--image",
            "registry.example/ringmesh:dev",
            "--app-port",
            "8081",
            "-",
        ],
        &annotated,
    );
    let pod = json_of(&out)["spec"]["template"]["spec"].clone();
    let proxy = &pod["containers"][0];
    let args = strings(&proxy["args"]);
    assert_eq!(arg(&args, "--control"), Some("https://mesh.example:443"));
    assert_eq!(arg(&args, "--app-port"), Some("8081"));
    assert_eq!(arg(&args, "--workload-version"), None, "no version label");
    assert_eq!(proxy["image"], "registry.example/ringmesh:dev");
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], "registry.example/ringmesh:dev");
    assert_eq!(
        named(&init["env"], "RINGMESH_SKIP_INBOUND_PORTS").expect("env")["value"],
        "15000 15006 9090 9091"
    );
    assert_eq!(
        named(&init["env"], "RINGMESH_SKIP_OUTBOUND_PORTS").expect("env")["value"],
        "5432"
    );
}

#[test]
fn a_rewritten_manifest_means_what_kubectl_would_have_read() {
    // kubectl reads YAML 1.1: 0644 is octal (420) and `yes` is true. The
    // rewritten document writes the values, not the spellings.
    let input = ONE.replace(
        "          ports: [{ containerPort: 8080 }]\n",
        "          ports: [{ containerPort: 8080 }]\n          tty: yes\n      volumes: [{ name: cfg, configMap: { name: cfg, defaultMode: 0644 } }]\n",
    );
    let (out, _) = injected(&["-"], &input);
    let pod = json_of(&out)["spec"]["template"]["spec"].clone();
    assert_eq!(
        named(&pod["volumes"], "cfg").expect("cfg")["configMap"]["defaultMode"],
        420
    );
    assert_eq!(named(&pod["containers"], "web").expect("web")["tty"], true);
}

/// `ringmesh inject` on `input` fails: exit 1, nothing on stdout, and a
/// message containing each of `wanted`.
fn refused(args: &[&str], input: &str, wanted: &[&str]) {
    let out = inject(args, input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "`{w}` missing from: {stderr}");
    }
}

#[test]
fn malformed_input_exits_1_naming_the_document_and_line() {
    let service = "apiVersion: v1\nkind: Service\nmetadata: { name: s }\n";
    refused(
        &["-"],
        &format!("{service}---\nkind: [unclosed\n"),
        // The parser notices the missing `]` at the end of the input.
        &["<stdin>: document 2 (line 6): not YAML"],
    );
    refused(
        &["-"],
        &format!("{service}---\n{}", ONE.replace("      containers:\n        - name: web\n          image: web:1\n          ports: [{ containerPort: 8080 }]\n", "      containers: []\n")),
        &["document 2 (line 5): Deployment `web`: no containers"],
    );
    refused(
        &["-"],
        "just some words\n",
        &["document 1 (line 1): not a Kubernetes object"],
    );
    refused(
        &["-"],
        "a: 1\na: 2\n",
        &["document 1 (line 2): duplicate key `a`"],
    );
    refused(
        &["-"],
        &ONE.replace("          ports: [{ containerPort: 8080 }]\n", ""),
        &["container `web` declares no containerPort: pass --app-port"],
    );
    refused(
        &["-"],
        &ONE.replace(
            "metadata: { labels: { app: web } }",
            "metadata: { labels: { app: web }, annotations: { ringmesh.io/skip-inbound-ports: \"80; reboot\" } }",
        ),
        &["annotation ringmesh.io/skip-inbound-ports: `80;` is not a port number"],
    );
    refused(
        &["-"],
        &ONE.replace("labels: { app: web }", "labels: { app: Web_App }"),
        &["cannot name the Secret `ringmesh-token-Web_App`"],
    );
    refused(
        &["/nonexistent/manifests.yaml"],
        "",
        &["reading /nonexistent/manifests.yaml"],
    );
    refused(
        &["--control", "http://plain:15010", "-"],
        ONE,
        &["the control plane serves HTTPS only"],
    );
}
