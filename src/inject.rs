//! `ringmesh inject`: Kubernetes manifests in, the same manifests out with
//! every workload meshed (Linkerd's `linkerd inject`, Istio's
//! `istioctl kube-inject`).
//!
//! Each `apps/v1` Deployment, StatefulSet and DaemonSet (also inside a
//! `kind: List`, as `kubectl get -o yaml` prints) gets, in its pod template:
//! - the sidecar `ringmesh-proxy` (`ringmesh run --control ... --capture`),
//!   named and addressed through the downward API, with its bootstrap: the
//!   workload's token from Secret `ringmesh-token-<workload>`, the mesh CA
//!   from ConfigMap `ringmesh-ca`, an emptyDir for its state;
//! - the init container `ringmesh-init`, which installs the iptables rules
//!   of [`CAPTURE_SCRIPT`] and writes the proxy's admin bootstrap;
//! - the annotation `ringmesh.io/injected: "true"`.
//!
//! Everything else passes through byte for byte: other kinds, workloads
//! already injected or marked `ringmesh.io/inject: disabled`, comments. A
//! rewritten document is emitted from JSON (keys sorted, as `kubectl get -o
//! yaml` prints them; its comments are lost).
//!
//! Reading: the input is split on `---` lines and each document parsed
//! with the proxy's own YAML parser ([`ringmesh_control::yaml`]); plain
//! scalars are then typed the way kubectl types them (go-yaml v2, YAML
//! 1.1: `yes` is true, `0644` is octal), so a rewritten manifest means what
//! kubectl would have sent. Not owned here: creating the Secrets and the CA
//! ConfigMap (`deploy/README.md`), or any call to the Kubernetes API.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use ringmesh_control::yaml::{self, Mark, Node};
use serde_json::{Map, Number, Value, json};

/// Where sidecars reach the control plane by default: the Service of
/// `deploy/kubernetes/control-plane.yaml`.
pub const DEFAULT_CONTROL: &str = "https://ringmesh-control.ringmesh.svc:15010";

/// The sidecar container's name (also how an injected pod is recognised).
const PROXY: &str = "ringmesh-proxy";
/// The init container's name.
const INIT: &str = "ringmesh-init";
/// Pod annotation set on injection.
const INJECTED: &str = "ringmesh.io/injected";
/// Annotation (workload or pod template) that opts a workload out.
const INJECT: &str = "ringmesh.io/inject";
/// Pod annotations adding ports that capture leaves alone (Linkerd's
/// `config.linkerd.io/skip-inbound-ports`): comma- or space-separated.
const SKIP_INBOUND: &str = "ringmesh.io/skip-inbound-ports";
const SKIP_OUTBOUND: &str = "ringmesh.io/skip-outbound-ports";
/// So that `kubectl logs` and `exec` pick the app, not the sidecar that
/// now comes first.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The sidecar's uid: the owner match in [`CAPTURE_SCRIPT`] exempts its
/// own connections from capture (Istio's 1337).
const PROXY_UID: u32 = 1337;
/// The proxy's admin API (`/ready`, `/live`, `/metrics`).
const ADMIN_PORT: u16 = 15000;
/// The inbound listener: mTLS from other sidecars, and captured inbound.
const INBOUND_PORT: u16 = 15006;
/// The outbound listener the app's captured connections are sent to.
const OUTBOUND_PORT: u16 = 15001;

/// Volumes, each mounted at its directory below.
const TOKEN_VOLUME: &str = "ringmesh-token";
const TOKEN_DIR: &str = "/var/run/ringmesh/token";
const CA_VOLUME: &str = "ringmesh-ca";
const CA_DIR: &str = "/var/run/ringmesh/ca";
const STATE_VOLUME: &str = "ringmesh-state";
const STATE_DIR: &str = "/var/lib/ringmesh";
const BOOTSTRAP_VOLUME: &str = "ringmesh-bootstrap";
const BOOTSTRAP_DIR: &str = "/var/run/ringmesh/bootstrap";

/// The ConfigMap holding the mesh CA bundle (key `ca.pem`), one per
/// namespace of meshed workloads.
const CA_CONFIGMAP: &str = "ringmesh-ca";
/// Prefix of each workload's bootstrap-token Secret (key `token`).
const TOKEN_SECRET_PREFIX: &str = "ringmesh-token-";

/// What `ringmesh-init` runs (`sh -c`, as root with NET_ADMIN and NET_RAW),
/// line by line:
///
/// 1. The admin bootstrap. Kubelet probes the pod IP, so the admin API must
///    listen on 0.0.0.0:15000, and a non-loopback admin API needs a token
///    (it can replace the config): a random one per pod, in a memory
///    emptyDir that only this container and the sidecar mount. `/ready`
///    and `/live` need no token, so probes work.
/// 2. Two nat chains, emptied if they exist (an init container can run
///    again in the same network namespace).
/// 3. Inbound (PREROUTING): every TCP connection to the pod is redirected
///    to the inbound listener on 15006, except the ports in
///    `RINGMESH_SKIP_INBOUND_PORTS`: 15000 (kubelet probes the admin API
///    directly), 15006 itself (sidecars connect to it by pod IP) and the
///    pod's `ringmesh.io/skip-inbound-ports`.
/// 4. Outbound (OUTPUT): the sidecar's own connections (uid 1337: to other
///    sidecars, to the control plane, to the app on 127.0.0.1) and loopback
///    traffic go out untouched; the app's other TCP connections, except to
///    `RINGMESH_SKIP_OUTBOUND_PORTS`, are redirected to the outbound
///    listener on 127.0.0.1:15001 (REDIRECT from OUTPUT maps to 127.0.0.1).
/// 5. The jumps into both chains, added once.
///
/// UDP (DNS) is never captured, nor is IPv6 (no ip6tables rules).
pub const CAPTURE_SCRIPT: &str = concat!(
    "set -eu\n",
    // 1.
    "umask 022\n",
    "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /var/run/ringmesh/bootstrap/admin.token\n",
    "printf 'admin:\\n  listen: \"0.0.0.0:15000\"\\n  token_file: /var/run/ringmesh/bootstrap/admin.token\\n' > /var/run/ringmesh/bootstrap/proxy.yaml\n",
    // 2.
    "for chain in RINGMESH_INBOUND RINGMESH_OUTPUT; do\n",
    "  iptables -t nat -N \"$chain\" 2>/dev/null || iptables -t nat -F \"$chain\"\n",
    "done\n",
    // 3.
    "for port in $RINGMESH_SKIP_INBOUND_PORTS; do\n",
    "  iptables -t nat -A RINGMESH_INBOUND -p tcp --dport \"$port\" -j RETURN\n",
    "done\n",
    "iptables -t nat -A RINGMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006\n",
    // 4.
    "iptables -t nat -A RINGMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
    "iptables -t nat -A RINGMESH_OUTPUT -o lo -j RETURN\n",
    "for port in $RINGMESH_SKIP_OUTBOUND_PORTS; do\n",
    "  iptables -t nat -A RINGMESH_OUTPUT -p tcp --dport \"$port\" -j RETURN\n",
    "done\n",
    "iptables -t nat -A RINGMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n",
    // 5.
    "iptables -t nat -C PREROUTING -p tcp -j RINGMESH_INBOUND 2>/dev/null || iptables -t nat -A PREROUTING -p tcp -j RINGMESH_INBOUND\n",
    "iptables -t nat -C OUTPUT -p tcp -j RINGMESH_OUTPUT 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j RINGMESH_OUTPUT\n",
);

/// The admin bootstrap [`CAPTURE_SCRIPT`] writes, given to the sidecar
/// with `-c` (with `--control`, only its admin settings are used).
const BOOTSTRAP_CONFIG: &str = "/var/run/ringmesh/bootstrap/proxy.yaml";

/// The whole input is read before anything is written (so a failure
/// leaves stdout empty); each document is further held to the parser's own
/// limit (16 MiB).
const MAX_INPUT_BYTES: u64 = 256 << 20;

/// `ringmesh inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The manifests (multi-document YAML), or `-` for standard input.
    #[arg(value_name = "FILE")]
    input: String,
    /// The control plane the sidecars join.
    #[arg(long, value_name = "URL", default_value = DEFAULT_CONTROL)]
    control: String,
    /// Image of the sidecar and the init container (default:
    /// ghcr.io/ringmesh/ringmesh:<this version>).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// The app's port, for every workload (default: each workload's first
    /// containerPort of its first container).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    app_port: Option<u16>,
}

/// The image `ringmesh inject` uses by default: this build's version.
pub fn default_image() -> String {
    format!("ghcr.io/ringmesh/ringmesh:{}", env!("CARGO_PKG_VERSION"))
}

/// Reads the input, injects, writes the result to stdout and the notes to
/// stderr. Nothing is written to stdout unless every document succeeded.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    if !args.control.starts_with("https://") {
        anyhow::bail!(
            "--control `{}`: the control plane serves HTTPS only (https://HOST:PORT)",
            ringmesh_control::limits::quote(&args.control)
        );
    }
    let image = args.image.unwrap_or_else(default_image);
    if image.trim().is_empty() {
        anyhow::bail!("--image is empty");
    }
    let settings = Settings {
        control: args.control,
        image,
        app_port: args.app_port,
    };
    let (source, text) = read_input(&args.input)?;
    let injected = inject(&text, &settings).with_context(|| source.clone())?;
    let mut stderr = std::io::stderr().lock();
    for note in &injected.notes {
        // Notes are advice; a closed stderr must not lose the manifests.
        let _ = writeln!(stderr, "ringmesh inject: {source}: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(injected.output.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

fn read_input(input: &str) -> anyhow::Result<(String, String)> {
    let (source, reader): (String, Box<dyn Read>) = if input == "-" {
        ("<stdin>".into(), Box::new(std::io::stdin().lock()))
    } else {
        let file = std::fs::File::open(PathBuf::from(input))
            .with_context(|| format!("reading {input}"))?;
        (input.to_owned(), Box::new(file))
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {source}"))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        anyhow::bail!("{source}: more than {} MiB of input", MAX_INPUT_BYTES >> 20);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source}: not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((source, text))
}

/// What every injected pod is given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--control`.
    pub control: String,
    /// Sidecar and init container image.
    pub image: String,
    /// `--app-port`, overriding each workload's first containerPort.
    pub app_port: Option<u16>,
}

/// The rewritten stream and what to tell the operator.
#[derive(Debug)]
pub struct Injected {
    /// The manifests, documents separated by `---`.
    pub output: String,
    /// One line per workload injected or left alone, and warnings.
    pub notes: Vec<String>,
}

/// Why a stream could not be injected: the document (counting from 1,
/// blank ones aside), its line in the input, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// Which document.
    pub document: usize,
    /// Line in the whole input.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {} (line {}): {}",
            self.document, self.line, self.message
        )
    }
}

impl std::error::Error for InjectError {}

/// One document of the stream as written.
struct Chunk<'a> {
    text: &'a str,
    /// Its first line in the input, from 1.
    line: usize,
}

/// Splits on lines that are exactly `---` (trailing blanks allowed); blank
/// documents are dropped.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            chunks.push(Chunk {
                text: &text[start..offset],
                line: start_line,
            });
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        text: &text[start..],
        line: start_line,
    });
    chunks.retain(|c| !c.text.trim().is_empty());
    chunks
}

/// Injects every workload of a multi-document stream.
pub fn inject(text: &str, settings: &Settings) -> Result<Injected, InjectError> {
    let mut output = String::new();
    let mut notes = Vec::new();
    for (index, chunk) in split_documents(text).iter().enumerate() {
        let document = index + 1;
        let error = |line: usize, message: String| InjectError {
            document,
            line: chunk.line + line.max(1) - 1,
            message,
        };
        let node = yaml::parse(chunk.text).map_err(|e| {
            error(
                e.mark.line,
                format!("not YAML: {} (column {})", e.message, e.mark.col),
            )
        })?;
        let mut rewritten = None;
        if let Some(node) = node {
            let mut value = to_json(&node).map_err(|e| error(e.mark.line, e.message))?;
            let mut own_notes = Vec::new();
            if inject_document(&mut value, settings, &mut own_notes)
                .map_err(|message| error(first_content_line(chunk.text), message))?
            {
                rewritten = Some(emit(&value));
            }
            let at = first_content_line(chunk.text) + chunk.line - 1;
            notes.extend(
                own_notes
                    .into_iter()
                    .map(|n| format!("document {document} (line {at}): {n}")),
            );
        }
        if !output.is_empty() {
            output.push_str("---\n");
        }
        match rewritten {
            Some(yaml) => output.push_str(&yaml),
            None => {
                output.push_str(chunk.text);
                if !chunk.text.ends_with('\n') {
                    output.push('\n');
                }
            }
        }
    }
    Ok(Injected { output, notes })
}

/// The first line of a document that is not blank or a comment (from 1).
fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
        .map_or(1, |i| i + 1)
}

/// The kinds whose pod template is injected.
const WORKLOADS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// Injects one document (or the items of a `kind: List`); true when it
/// changed.
fn inject_document(
    doc: &mut Value,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    let Some(obj) = doc.as_object() else {
        return Err(format!(
            "not a Kubernetes object (a mapping with apiVersion and kind), but {}",
            json_kind(doc)
        ));
    };
    let (Some(api_version), Some(kind)) = (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) else {
        return Err("not a Kubernetes object: apiVersion or kind is missing".into());
    };
    if kind == "List" {
        let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let mut item_notes = Vec::new();
            let result = inject_object(item, settings, &mut item_notes);
            notes.extend(item_notes.into_iter().map(|n| format!("items[{i}]: {n}")));
            changed |= result.map_err(|e| format!("items[{i}]: {e}"))?;
        }
        return Ok(changed);
    }
    if WORKLOADS.contains(&kind) && api_version != "apps/v1" {
        notes.push(format!(
            "{kind} with apiVersion {}: left as is (only apps/v1 is injected)",
            ringmesh_control::limits::quote(api_version)
        ));
        return Ok(false);
    }
    inject_object(doc, settings, notes)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Injects one object if it is an `apps/v1` workload that wants it; true
/// when it changed.
fn inject_object(
    obj: &mut Value,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != Some("apps/v1") || !WORKLOADS.contains(&kind) {
        return Ok(false);
    }
    let kind = kind.to_owned();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{kind} without metadata.name"))?
        .to_owned();
    let what = format!("{kind} `{}`", ringmesh_control::limits::quote(&name));
    let plan = match decide(obj, &name, settings).map_err(|e| format!("{what}: {e}"))? {
        Plan::Skip(reason) => {
            notes.push(format!("{what}: {reason}; left as is"));
            return Ok(false);
        }
        Plan::Inject(plan) => plan,
    };
    for warning in &plan.warnings {
        notes.push(format!("{what}: {warning}"));
    }
    apply(obj, &plan, settings).map_err(|e| format!("{what}: {e}"))?;
    notes.push(format!(
        "{what}: injected (workload {}, {}, app port {})",
        plan.workload,
        match &plan.version {
            Some(v) => format!("version {}", ringmesh_control::limits::quote(v)),
            None => "no version label".into(),
        },
        plan.app_port
    ));
    Ok(true)
}

/// What one workload's pod gets, decided before anything is changed.
struct InjectionPlan {
    workload: String,
    version: Option<String>,
    app_port: u16,
    skip_inbound: Vec<u16>,
    skip_outbound: Vec<u16>,
    /// The app's first container (for `kubectl logs`).
    first_container: String,
    warnings: Vec<String>,
}

enum Plan {
    Skip(String),
    Inject(InjectionPlan),
}

fn decide(obj: &Value, name: &str, settings: &Settings) -> Result<Plan, String> {
    let disabled = |pointer: &str| {
        obj.pointer(pointer)
            .and_then(|a| a.get(INJECT))
            .and_then(Value::as_str)
            == Some("disabled")
    };
    if disabled("/metadata/annotations") || disabled("/spec/template/metadata/annotations") {
        return Ok(Plan::Skip(format!("annotated {INJECT}: disabled")));
    }
    let pod = obj
        .pointer("/spec/template/spec")
        .and_then(Value::as_object)
        .ok_or("no pod template (spec.template.spec)")?;
    let containers = pod
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("no containers in spec.template.spec.containers")?;
    let init_containers = match pod.get("initContainers") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err("spec.template.spec.initContainers is not a list".into()),
    };
    let named = |list: &[Value], wanted: &str| {
        list.iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(wanted))
    };
    if named(containers, PROXY) || named(init_containers, PROXY) {
        return Ok(Plan::Skip(format!("already has the {PROXY} container")));
    }
    if named(init_containers, INIT) || named(containers, INIT) {
        return Err(format!(
            "has a {INIT} container but no {PROXY}: a partial injection; remove {INIT} and inject again"
        ));
    }
    if pod.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        // The capture rules would be installed in the node's network
        // namespace, redirecting the whole node's traffic.
        return Ok(Plan::Skip(
            "uses hostNetwork, where capture would redirect the node's own traffic".into(),
        ));
    }
    match pod.get("volumes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(volumes)) => {
            for v in volumes {
                let n = v.get("name").and_then(Value::as_str).unwrap_or_default();
                if [TOKEN_VOLUME, CA_VOLUME, STATE_VOLUME, BOOTSTRAP_VOLUME].contains(&n) {
                    return Err(format!("already has a volume named {n}"));
                }
            }
        }
        Some(_) => return Err("spec.template.spec.volumes is not a list".into()),
    }

    let labels = obj.pointer("/spec/template/metadata/labels");
    let label = |key: &str| -> Result<Option<String>, String> {
        match labels.and_then(|l| l.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "label `{key}` of the pod template is {}, not a string (quote it)",
                json_kind(other)
            )),
        }
    };
    let workload = label("app")?.unwrap_or_else(|| name.to_owned());
    let secret = format!("{TOKEN_SECRET_PREFIX}{workload}");
    if !is_dns_subdomain(&secret) {
        return Err(format!(
            "workload `{}` (the pod template's `app` label, else the name) cannot name the Secret `{}`: use lowercase letters, digits, '-' and '.'",
            ringmesh_control::limits::quote(&workload),
            ringmesh_control::limits::quote(&secret)
        ));
    }
    let version = label("version")?;
    let first = &containers[0];
    let first_container = first
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the first container has no name")?
        .to_owned();
    let app_port = match settings.app_port {
        Some(p) => p,
        None => first_container_port(first).ok_or_else(|| {
            format!(
                "container `{}` declares no containerPort: pass --app-port",
                ringmesh_control::limits::quote(&first_container)
            )
        })?,
    };
    let annotation = |key: &str| {
        obj.pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(key))
    };
    let mut skip_inbound = vec![ADMIN_PORT, INBOUND_PORT];
    skip_inbound.extend(ports_annotation(SKIP_INBOUND, annotation(SKIP_INBOUND))?);
    let skip_outbound = ports_annotation(SKIP_OUTBOUND, annotation(SKIP_OUTBOUND))?;
    let warnings = probe_warnings(containers, &skip_inbound);
    Ok(Plan::Inject(InjectionPlan {
        workload,
        version,
        app_port,
        skip_inbound,
        skip_outbound,
        first_container,
        warnings,
    }))
}

fn first_container_port(container: &Value) -> Option<u16> {
    container
        .get("ports")?
        .as_array()?
        .first()?
        .get("containerPort")?
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
}

/// A ports annotation: port numbers separated by commas or spaces. Only
/// digits reach the init container's shell.
fn ports_annotation(key: &str, value: Option<&Value>) -> Result<Vec<u16>, String> {
    let text = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "annotation {key} is {}, not a string (quote it)",
                json_kind(other)
            ));
        }
    };
    text.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!(
                        "annotation {key}: `{}` is not a port number (1-65535)",
                        ringmesh_control::limits::quote(p)
                    )
                })
        })
        .collect()
}

/// Kubelet probes the pod IP in plain text: a probe on a captured port
/// reaches the sidecar's mTLS inbound listener and fails.
fn probe_warnings(containers: &[Value], skipped: &[u16]) -> Vec<String> {
    let mut warnings = Vec::new();
    for c in containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                let Some(port) = c.get(probe).and_then(|p| p.get(handler)?.get("port")) else {
                    continue;
                };
                let number = match port {
                    Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                    Value::String(named) => c
                        .get("ports")
                        .and_then(Value::as_array)
                        .and_then(|ports| {
                            ports.iter().find(|p| {
                                p.get("name").and_then(Value::as_str) == Some(named.as_str())
                            })
                        })
                        .and_then(|p| p.get("containerPort")?.as_u64())
                        .and_then(|p| u16::try_from(p).ok()),
                    _ => None,
                };
                if let Some(port) = number.filter(|p| !skipped.contains(p)) {
                    warnings.push(format!(
                        "warning: container `{}` {probe} ({handler}) on port {port} will be captured and fail at the sidecar's mTLS inbound listener; add the port to the pod annotation {SKIP_INBOUND} or use an exec probe",
                        ringmesh_control::limits::quote(cname)
                    ));
                }
            }
        }
    }
    warnings
}

/// Adds the sidecar, the init container, the volumes and the annotations.
fn apply(obj: &mut Value, plan: &InjectionPlan, settings: &Settings) -> Result<(), String> {
    let template = obj
        .pointer_mut("/spec/template")
        .and_then(Value::as_object_mut)
        .ok_or("no pod template")?;
    let metadata = object_entry(template, "metadata")?;
    let annotations = object_entry(metadata, "annotations")?;
    annotations.insert(INJECTED.into(), json!("true"));
    annotations
        .entry(DEFAULT_CONTAINER)
        .or_insert_with(|| json!(plan.first_container));
    let pod = template
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or("no pod spec")?;
    list_entry(pod, "containers")?.insert(0, sidecar(plan, settings));
    // Last, so that the app's own init containers run before capture
    // exists (with it, their connections would go to a proxy not yet
    // running).
    list_entry(pod, "initContainers")?.push(init_container(plan, settings));
    list_entry(pod, "volumes")?.extend(volumes(&plan.workload));
    Ok(())
}

/// `map[key]` as a mapping, created when missing or null.
fn object_entry<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
) -> Result<&'m mut Map<String, Value>, String> {
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if entry.is_null() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` is not a mapping"))
}

/// `map[key]` as a list, created when missing or null.
fn list_entry<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
) -> Result<&'m mut Vec<Value>, String> {
    let entry = map.entry(key).or_insert_with(|| json!([]));
    if entry.is_null() {
        *entry = json!([]);
    }
    entry
        .as_array_mut()
        .ok_or_else(|| format!("`{key}` is not a list"))
}

/// The downward-API variables the sidecar's arguments use as `$(NAME)`.
fn pod_env() -> Value {
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    json!([
        { "name": "POD_NAME", "valueFrom": field("metadata.name") },
        { "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") },
        { "name": "POD_IP", "valueFrom": field("status.podIP") },
    ])
}

fn sidecar(plan: &InjectionPlan, settings: &Settings) -> Value {
    let mut args: Vec<String> = vec![
        "run".into(),
        "-c".into(),
        BOOTSTRAP_CONFIG.into(),
        "--control".into(),
        settings.control.clone(),
        // A pod's name is unique in its namespace while it lives; the
        // control plane's lease retires the names of pods that are gone.
        "--node".into(),
        "$(POD_NAME)".into(),
        "--workload".into(),
        plan.workload.clone(),
        "--namespace".into(),
        "$(POD_NAMESPACE)".into(),
    ];
    if let Some(v) = &plan.version {
        args.extend(["--workload-version".into(), v.clone()]);
    }
    args.extend([
        "--app-port".into(),
        plan.app_port.to_string(),
        "--inbound".into(),
        format!("0.0.0.0:{INBOUND_PORT}"),
        "--advertise".into(),
        format!("$(POD_IP):{INBOUND_PORT}"),
        "--outbound".into(),
        format!("127.0.0.1:{OUTBOUND_PORT}"),
        "--capture".into(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/token"),
        "--ca".into(),
        format!("{CA_DIR}/ca.pem"),
        "--state-dir".into(),
        STATE_DIR.into(),
    ]);
    let probe = |path: &str, period: u32| {
        json!({
            "httpGet": { "path": path, "port": ADMIN_PORT },
            "periodSeconds": period,
            "failureThreshold": 3,
        })
    };
    json!({
        "name": PROXY,
        "image": settings.image,
        "command": ["ringmesh"],
        "args": args,
        "env": pod_env(),
        "ports": [
            { "name": "ringmesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP" },
            { "name": "ringmesh-in", "containerPort": INBOUND_PORT, "protocol": "TCP" },
        ],
        "readinessProbe": probe("/ready", 5),
        "livenessProbe": probe("/live", 10),
        "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [
            { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true },
            { "name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true },
            { "name": STATE_VOLUME, "mountPath": STATE_DIR },
            { "name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": true },
        ],
    })
}

fn init_container(plan: &InjectionPlan, settings: &Settings) -> Value {
    let words = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    json!({
        "name": INIT,
        "image": settings.image,
        "command": ["sh", "-c", CAPTURE_SCRIPT],
        "env": [
            { "name": "RINGMESH_SKIP_INBOUND_PORTS", "value": words(&plan.skip_inbound) },
            { "name": "RINGMESH_SKIP_OUTBOUND_PORTS", "value": words(&plan.skip_outbound) },
        ],
        "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
        "securityContext": {
            // iptables needs root with NET_ADMIN (rules) and NET_RAW; the
            // pod's own runAsNonRoot, if any, is overridden for this
            // container only.
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
            // iptables takes its lock in /run/xtables.lock.
            "readOnlyRootFilesystem": false,
        },
        "volumeMounts": [
            { "name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR },
        ],
    })
}

fn volumes(workload: &str) -> Vec<Value> {
    vec![
        json!({
            "name": TOKEN_VOLUME,
            "secret": {
                "secretName": format!("{TOKEN_SECRET_PREFIX}{workload}"),
                "items": [{ "key": "token", "path": "token" }],
            },
        }),
        json!({
            "name": CA_VOLUME,
            "configMap": {
                "name": CA_CONFIGMAP,
                "items": [{ "key": "ca.pem", "path": "ca.pem" }],
            },
        }),
        // The key, certificate and last good config: kept across
        // container restarts, not across pods (a new pod bootstraps again).
        json!({ "name": STATE_VOLUME, "emptyDir": {} }),
        json!({ "name": BOOTSTRAP_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
    ]
}

// ---- YAML nodes to JSON, typed as kubectl types them ---------------------

/// A document that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// Where, in the document.
    pub mark: Mark,
    /// What.
    pub message: String,
}

/// Converts a parsed document to JSON: mappings need string keys (each at
/// most once), `<<` merges mappings in (explicit keys win, then the
/// earlier merged mapping), plain scalars are typed by [`plain_scalar`],
/// quoted and block scalars are strings.
pub fn to_json(node: &Node) -> Result<Value, ConvertError> {
    use yaml::Value as Y;
    let fail = |message: String| ConvertError {
        mark: node.mark,
        message,
    };
    match &node.value {
        Y::Null => Ok(Value::Null),
        Y::Scalar { text, plain: false } => Ok(Value::String(text.clone())),
        Y::Scalar { text, plain: true } => plain_scalar(text).map_err(fail),
        Y::Seq(items) => items
            .iter()
            .map(to_json)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Y::Map(entries) => {
            let mut map = Map::new();
            let mut merged = Vec::new();
            for (key, value) in entries.iter() {
                let key_text = match &key.value {
                    Y::Scalar { text, plain } => {
                        if *plain && text == "<<" {
                            merged.push(value);
                            continue;
                        }
                        text.clone()
                    }
                    _ => {
                        return Err(ConvertError {
                            mark: key.mark,
                            message: format!("a mapping key must be a string, not {}", key.kind()),
                        });
                    }
                };
                if map.contains_key(&key_text) {
                    return Err(ConvertError {
                        mark: key.mark,
                        message: format!(
                            "duplicate key `{}`",
                            ringmesh_control::limits::quote(&key_text)
                        ),
                    });
                }
                map.insert(key_text, to_json(value)?);
            }
            for source in merged {
                let sources: Vec<&Node> = match &source.value {
                    Y::Seq(items) => items.iter().collect(),
                    _ => vec![source],
                };
                for s in sources {
                    let Value::Object(m) = to_json(s)? else {
                        return Err(ConvertError {
                            mark: s.mark,
                            message: "`<<` merges mappings only".into(),
                        });
                    };
                    for (k, v) in m {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            Ok(Value::Object(map))
        }
    }
}

/// Types a plain scalar as go-yaml v2 does (kubectl's YAML reader):
/// YAML 1.1 booleans, integers in Go's base-0 syntax with `_` ignored
/// (`0644` octal, `0x1F`, `0b101`), floats of the form
/// `[-+]?[0-9]*\.?[0-9]+([eE][-+][0-9]+)?` or starting with `.`; anything
/// else (timestamps included) is a string. The null words were already
/// taken by the parser.
pub fn plain_scalar(text: &str) -> Result<Value, String> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false));
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" => {
            return Err(format!(
                "`{text}` has no JSON form (Kubernetes cannot take it either)"
            ));
        }
        _ => {}
    }
    let Some(&first) = text.as_bytes().first() else {
        return Ok(Value::Null);
    };
    if first == b'.' {
        return Ok(finite(text.parse().ok()).unwrap_or_else(|| Value::String(text.into())));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Ok(Value::String(text.into()));
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(n) = go_int(&plain) {
        return Ok(Value::Number(n));
    }
    if yaml11_float(&plain) {
        if let Some(v) = finite(plain.parse().ok()) {
            return Ok(v);
        }
    }
    Ok(Value::String(text.into()))
}

/// A finite float; integral ones as integers, as Go's JSON encoder writes
/// them (`8`, not `8.0`).
fn finite(f: Option<f64>) -> Option<Value> {
    let f = f.filter(|f| f.is_finite())?;
    if f.fract() == 0.0 && f.abs() < 1e15 {
        // In range by the check above: the cast is exact.
        return Some(Value::Number(Number::from(f as i64)));
    }
    Number::from_f64(f).map(Value::Number)
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`.
fn go_int(s: &str) -> Option<Number> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let prefixed = |p: [&str; 2]| {
        digits
            .strip_prefix(p[0])
            .or_else(|| digits.strip_prefix(p[1]))
    };
    let (radix, body) = if let Some(b) = prefixed(["0x", "0X"]) {
        (16, b)
    } else if let Some(b) = prefixed(["0o", "0O"]) {
        (8, b)
    } else if let Some(b) = prefixed(["0b", "0B"]) {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let v = 0i128 - i128::from(magnitude);
        i64::try_from(v).ok().map(Number::from)
    } else {
        Some(match i64::try_from(magnitude) {
            Ok(v) => Number::from(v),
            Err(_) => Number::from(magnitude),
        })
    }
}

/// go-yaml v2's float pattern `^[-+]?[0-9]*\.?[0-9]+([eE][-+][0-9]+)?$`:
/// digits, or digits, a dot and at least one digit; then an exponent with
/// its sign.
fn yaml11_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let whole = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else if whole == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if !matches!(b.get(i), Some(b'-' | b'+')) {
            return false;
        }
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

// ---- JSON to YAML: block style, strings double-quoted --------------------

/// Writes `value` as one YAML document: block mappings and sequences,
/// `{}`/`[]` for empty ones, strings always double-quoted (JSON escapes,
/// which YAML's double-quoted style shares), numbers, booleans and null
/// plain. Keys are plain when no YAML 1.1 reader could take them for
/// anything but a string.
pub fn emit(value: &Value) -> String {
    let mut out = String::new();
    if is_block(value) {
        block(&mut out, value, 0);
    } else {
        out.push_str(&flow_scalar(value));
        out.push('\n');
    }
    out
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// A non-empty mapping or sequence, each line at `indent`.
fn block(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&key(k));
                out.push(':');
                if is_block(v) {
                    out.push('\n');
                    block(out, v, indent + 2);
                } else {
                    out.push(' ');
                    out.push_str(&flow_scalar(v));
                    out.push('\n');
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                if is_block(item) {
                    // The item's first line goes after "- ", the rest stay
                    // indented under it.
                    let mut nested = String::new();
                    block(&mut nested, item, indent + 2);
                    out.push(' ');
                    out.push_str(&nested[indent + 2..]);
                } else {
                    out.push(' ');
                    out.push_str(&flow_scalar(item));
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&flow_scalar(other));
            out.push('\n');
        }
    }
}

fn flow_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n),
        Value::String(s) => quote(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A number as JSON writes it, with the exponent's sign that go-yaml
/// needs to read `1e+300` as a float (`1e300` would be a string).
fn number(n: &Number) -> String {
    let text = n.to_string();
    match text.find(['e', 'E']) {
        Some(at) if text[at + 1..].starts_with(|c: char| c.is_ascii_digit()) => {
            format!("{}+{}", &text[..=at], &text[at + 1..])
        }
        _ => text,
    }
}

fn key(k: &str) -> String {
    let safe = k.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if safe { k.to_owned() } else { quote(k) }
}

/// A double-quoted scalar with JSON escapes; besides the C0 controls, DEL,
/// the C1 controls and the Unicode line and paragraph separators are
/// escaped too (not printable, or line breaks, in YAML).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            control: DEFAULT_CONTROL.into(),
            image: "ringmesh:test".into(),
            app_port: None,
        }
    }

    fn parse(text: &str) -> Value {
        let node = yaml::parse(text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .unwrap_or_else(|| panic!("empty:\n{text}"));
        to_json(&node).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    #[test]
    fn plain_scalars_are_typed_as_kubectl_types_them() {
        let cases = [
            ("0644", json!(420)),
            ("0x1F", json!(31)),
            ("0o17", json!(15)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("-12", json!(-12)),
            ("08", json!(8)),
            ("1.5", json!(1.5)),
            (".5", json!(0.5)),
            ("1e+3", json!(1000)),
            ("1e3", json!("1e3")),
            ("yes", json!(true)),
            ("Off", json!(false)),
            ("y", json!(true)),
            ("2024-01-02", json!("2024-01-02")),
            ("1.2.3", json!("1.2.3")),
            ("100m", json!("100m")),
            ("18446744073709551615", json!(u64::MAX)),
            ("v1", json!("v1")),
        ];
        for (text, want) in cases {
            assert_eq!(plain_scalar(text), Ok(want.clone()), "{text}");
        }
        assert!(plain_scalar(".inf").is_err());
    }

    #[test]
    fn quoted_and_block_scalars_stay_strings() {
        let v = parse("a: \"0644\"\nb: 'yes'\nc: |\n  1\n");
        assert_eq!(v, json!({ "a": "0644", "b": "yes", "c": "1\n" }));
    }

    #[test]
    fn merge_keys_fill_in_and_explicit_keys_win() {
        let v = parse("base: &b { x: 1, y: 2 }\nother: { <<: *b, y: 3 }\n");
        assert_eq!(v["other"], json!({ "x": 1, "y": 3 }));
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_line() {
        let node = yaml::parse("a: 1\nb: 2\na: 3\n")
            .ok()
            .flatten()
            .expect("parses");
        let e = to_json(&node).expect_err("duplicate");
        assert_eq!(e.mark.line, 3);
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn emitted_yaml_reads_back_to_the_same_value() {
        let tricky = [
            "",
            "yes",
            "0644",
            "a: b",
            "- x",
            "#c",
            "multi\nline\n",
            "tab\there",
            "\u{85}nel",
            "\u{2028}",
            "\u{7f}",
            "\"q\"",
            "back\\slash",
            "ünïcödé 🦀",
            " lead",
            "trail ",
            "@x",
            "*alias",
            "&anchor",
            "!tag",
            "%",
            "{x}",
            "[1]",
            "null",
            "~",
            "---",
            "...",
        ];
        let mut map = Map::new();
        for (i, s) in tricky.iter().enumerate() {
            map.insert(format!("k{i}"), json!(s));
            map.insert((*s).to_owned(), json!(i));
        }
        let value = json!({
            "strings": map,
            "list": [1, -2, 1.5, true, false, null, "s", [], {}, [[1, 2], ["a"]], [{ "a": 1, "b": [1] }]],
            "on": { "y": "n", "80": 80, "app.kubernetes.io/name": "x" },
            "empty": {},
            "none": [],
        });
        let text = emit(&value);
        assert_eq!(parse(&text), value, "{text}");
        assert_eq!(emit(&parse(&text)), text);
    }

    #[test]
    fn the_capture_script_uses_the_ports_uid_and_paths_of_the_manifest() {
        for needle in [
            format!("--to-ports {INBOUND_PORT}\n"),
            format!("--to-ports {OUTBOUND_PORT}\n"),
            format!("--uid-owner {PROXY_UID} "),
            format!("listen: \"0.0.0.0:{ADMIN_PORT}\""),
            format!("> {BOOTSTRAP_CONFIG}\n"),
            format!("token_file: {BOOTSTRAP_DIR}/admin.token"),
        ] {
            assert!(CAPTURE_SCRIPT.contains(&needle), "{needle} missing");
        }
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: { name: review-v2 }
spec:
  selector: { matchLabels: { app: review } }
  template:
    metadata: { labels: { app: review, version: v2 } }
    spec:
      containers:
        - name: review
          image: review:2
          ports: [{ containerPort: 9081, name: http }]
          readinessProbe: { httpGet: { path: /health, port: http } }
";

    #[test]
    fn a_deployment_gets_sidecar_init_container_volumes_and_annotation() {
        let out = inject(DEPLOYMENT, &settings()).expect("injects");
        let v = parse(&out.output);
        let pod = &v["spec"]["template"];
        assert_eq!(pod["metadata"]["annotations"][INJECTED], "true");
        assert_eq!(pod["metadata"]["annotations"][DEFAULT_CONTAINER], "review");
        let proxy = &pod["spec"]["containers"][0];
        assert_eq!(proxy["name"], PROXY);
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for pair in [
            ["--workload", "review"],
            ["--workload-version", "v2"],
            ["--app-port", "9081"],
            ["--node", "$(POD_NAME)"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        assert_eq!(pod["spec"]["initContainers"][0]["name"], INIT);
        assert_eq!(
            pod["spec"]["volumes"][0]["secret"]["secretName"],
            "ringmesh-token-review"
        );
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("readinessProbe (httpGet) on port 9081")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn errors_name_the_document_and_its_line() {
        let text = format!(
            "{DEPLOYMENT}---\n# a comment\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: x }}\nspec: {{ template: {{ spec: {{ containers: [] }} }} }}\n"
        );
        let e = inject(&text, &settings()).expect_err("no containers");
        assert_eq!((e.document, e.line), (2, 16), "{e}");
        assert!(e.message.contains("no containers"), "{e}");
        let e = inject("a: [1\n", &settings()).expect_err("not YAML");
        assert_eq!(e.document, 1);
        assert!(e.message.starts_with("not YAML"), "{e}");
        let e = inject("just words\n", &settings()).expect_err("scalar");
        assert!(e.message.contains("not a Kubernetes object"), "{e}");
    }

    #[test]
    fn ports_annotations_take_only_port_numbers() {
        assert_eq!(
            ports_annotation("k", Some(&json!("8080, 9090 1"))),
            Ok(vec![8080, 9090, 1])
        );
        for bad in ["0", "70000", "80;reboot", "+80", "80-90"] {
            assert!(ports_annotation("k", Some(&json!(bad))).is_err(), "{bad}");
        }
    }
}
