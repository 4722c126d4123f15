//! `ringmesh control`: the mesh's control plane.
//!
//! It holds the desired state ([`store`], validated by the proxy's own
//! model), derives each proxy's config from it and from the registered
//! instances ([`derive`], [`registry`]), pushes it over a long-poll watch
//! and records each ACK/NACK, and issues workload certificates from its
//! mesh CA ([`ca`]) to proxies that prove who they are ([`tokens`]). The
//! HTTP API ([`api`]) serves proxies and operators over TLS ([`server`]).

pub mod api;
pub mod ca;
pub mod dashboard;
pub mod derive;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod store;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringmesh_control::ConfigErrors;
use ringmesh_control::decode::ConfigError;
use ringmesh_control::mesh::desired::MeshDoc;
use ringmesh_control::mesh::load_mesh;
use ringmesh_control::mesh::protocol::Registration;
use thiserror::Error;

use crate::ca::MeshCa;
use crate::registry::{Desired, Registry};
use crate::store::{FileStore, Store, StoredVersion, fingerprint};
use crate::tokens::Secrets;

/// How to run the control plane (from the command line).
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The mesh document: applied as a new version when it changed since
    /// it was last applied from the file.
    pub mesh_file: Option<PathBuf>,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// State: history, CA, secrets.
    pub state_dir: PathBuf,
    /// Names in the control plane's server certificate (besides the
    /// listen IP).
    pub server_names: Vec<String>,
    /// Operators' token file (default: state-dir/admin.token, made on
    /// first start).
    pub admin_token_file: Option<PathBuf>,
    /// Where the mesh-wide dashboard listens (plain HTTP, read-only).
    pub dashboard: Option<SocketAddr>,
}

/// Why the control plane cannot start.
#[derive(Debug, Error)]
pub enum PlaneError {
    /// The mesh document is invalid.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// Something in the state directory.
    #[error("{0}")]
    State(String),
    /// The API could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
}

/// Why a change to the desired state was refused.
#[derive(Debug, Error)]
pub enum UpdateError {
    /// Invalid: every error.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The store failed.
    #[error("{0}")]
    Store(String),
    /// What the change names does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// The control plane's state.
pub struct Plane {
    /// The desired state's history.
    pub store: Box<dyn Store>,
    /// The mesh CA.
    pub ca: MeshCa,
    /// Tokens.
    pub secrets: Secrets,
    /// Proxies.
    pub registry: Registry,
    /// Changes to the desired state are applied one at a time.
    update_lock: tokio::sync::Mutex<()>,
    /// Where registrations are kept across restarts.
    registrations_file: PathBuf,
    /// Counters for `GET /metrics`.
    pub counters: std::sync::Arc<metrics::Counters>,
}

/// A derived config must load in the proxy: each service's workload is
/// derived against a stand-in instance and loaded by the proxy's own
/// loader, so a desired state no proxy could run is refused here.
///
/// The derived configs are merged into one document (listeners and
/// clusters once each by name) and loaded once: one load instead of one
/// per service keeps a change to a 100-service mesh at a few milliseconds.
/// Only when that fails is each service's config loaded on its own, to say
/// which one is wrong.
fn check_derivable(source: &str, mesh: &MeshDoc) -> Result<(), ConfigErrors> {
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let stand_in = |namespace: &str, workload: &str, version: Option<String>| Registration {
        node: format!("check-{workload}"),
        namespace: namespace.to_owned(),
        workload: workload.to_owned(),
        version,
        address: addr(1),
        inbound: addr(1),
        outbound: addr(2),
        app_port: 3,
        capture: false,
        admin: None,
    };
    let stand_ins: Vec<Registration> = mesh
        .services
        .iter()
        .map(|s| stand_in(&s.namespace, &s.workload, s.versions.first().cloned()))
        .chain(
            mesh.gateways
                .iter()
                .map(|g| stand_in(&g.namespace, &g.name, None)),
        )
        .collect();
    let refs: Vec<&Registration> = stand_ins.iter().collect();
    let index = derive::Instances::new(&refs);
    let derived: Vec<serde_json::Value> = stand_ins
        .iter()
        .map(|me| derive::derive_indexed(mesh, &index, me).config)
        .collect();
    // The merge gives every listener an address of its own; what only one
    // workload's config can get wrong is two of its listeners on one
    // address (two TCP services on one port that it calls).
    let addresses_unique = derived.iter().all(|c| {
        let mut seen = std::collections::HashSet::new();
        c["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|l| seen.insert(l["listen"].as_str().unwrap_or_default().to_owned()))
    });
    if addresses_unique
        && ringmesh_control::load("<derived>", &merged(&derived).to_string()).is_ok()
    {
        return Ok(());
    }
    let mut errors = Vec::new();
    let owners = mesh
        .services
        .iter()
        .map(|s| (s.position(), format!("services[{}]", s.name), &s.workload))
        .chain(
            mesh.gateways
                .iter()
                .map(|g| (g.position(), format!("gateways[{}]", g.name), &g.name)),
        );
    for ((position, path, workload), config) in owners.zip(&derived) {
        if let Err(e) = ringmesh_control::load("<derived>", &config.to_string()) {
            for inner in e.0 {
                errors.push(ConfigError {
                    file: source.to_owned(),
                    line: position.0,
                    column: position.1,
                    path: path.clone(),
                    message: format!(
                        "the config derived for workload `{workload}` is invalid: {}: {}",
                        inner.path, inner.message
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        // The merge itself failed where no single config does (e.g. two
        // TCP services on one port that no workload calls together).
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Stand-in configs merged into one: each inbound listener on a port of
/// its own, one outbound listener with every route once, every other
/// listener and cluster once by name.
fn merged(configs: &[serde_json::Value]) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut listeners: Vec<Value> = Vec::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut clusters: Vec<Value> = Vec::new();
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in configs.iter().enumerate() {
        for l in c["listeners"].as_array().into_iter().flatten() {
            match name(l).as_deref() {
                Some("inbound") => {
                    let mut l = l.clone();
                    l["name"] = json!(format!("inbound-{i}"));
                    l["listen"] = json!(format!("127.0.0.3:{}", 1 + i % 65_000));
                    listeners.push(l);
                }
                Some("outbound") => {
                    for r in l["routes"].as_array().into_iter().flatten() {
                        // Catch-alls of single configs would shadow the
                        // routes merged after them.
                        let catch_all =
                            matches!(name(r).as_deref(), Some("no-service" | "passthrough"));
                        if !catch_all && seen.insert(("route", name(r))) {
                            routes.push(r.clone());
                        }
                    }
                }
                Some("gateway") => {
                    let mut l = l.clone();
                    l["name"] = json!(format!("gateway-{i}"));
                    l["listen"] = json!(format!("127.0.0.5:{}", 1 + i % 65_000));
                    listeners.push(l);
                }
                other => {
                    if seen.insert(("listener", other.map(str::to_owned))) {
                        // Callers' TCP listeners may share a port across
                        // services no one calls together: the merge must not
                        // make them collide.
                        let mut l = l.clone();
                        l["listen"] = json!(format!("127.0.0.4:{}", 1 + listeners.len() % 65_000));
                        listeners.push(l);
                    }
                }
            }
        }
        for cl in c["clusters"].as_array().into_iter().flatten() {
            if seen.insert(("cluster", name(cl))) {
                clusters.push(cl.clone());
            }
        }
    }
    listeners.push(json!({
        "name": "outbound",
        "listen": "127.0.0.1:2",
        "protocol": "http",
        "mesh_role": "outbound",
        "routes": routes,
    }));
    json!({ "listeners": listeners, "clusters": clusters })
}

/// Loads and checks a mesh document.
pub fn validate(source: &str, text: &str) -> Result<MeshDoc, ConfigErrors> {
    let mesh = load_mesh(source, text)?;
    check_derivable(source, &mesh)?;
    Ok(mesh)
}

impl Plane {
    /// Writes the live registrations if they changed (called four times a
    /// second at most, and at shutdown; a crash forgets the last quarter
    /// second's, which re-register at their next poll): a restart restores them instead of pushing
    /// clusters emptied of every instance not yet reconnected.
    pub fn keep_registrations(&self) {
        let Some(list) = self.registry.take_dirty() else {
            return;
        };
        let written = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                ringmesh_control::mesh::durable::write_atomically(
                    &self.registrations_file,
                    &json,
                    0o600,
                )
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot keep the registrations; a restart would forget them");
        }
    }

    /// Validates `text`, stores it as the next version and pushes it.
    pub async fn update(&self, source: &str, text: &str) -> Result<StoredVersion, UpdateError> {
        let _one = self.update_lock.lock().await;
        let result = self.update_locked(source, text);
        self.count_update(&result);
        result
    }

    fn count_update<T>(&self, result: &Result<T, UpdateError>) {
        let counter = match result {
            Ok(_) => &self.counters.updates_applied,
            Err(_) => &self.counters.updates_rejected,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Like [`Plane::update`] with the text made by `build` from the state
    /// current under the update lock (per-service changes).
    pub async fn update_with(
        &self,
        source: &str,
        build: impl FnOnce(&MeshDoc) -> Result<String, UpdateError>,
    ) -> Result<StoredVersion, UpdateError> {
        let _one = self.update_lock.lock().await;
        let result =
            build(&self.registry.desired().mesh).and_then(|text| self.update_locked(source, &text));
        self.count_update(&result);
        result
    }

    fn update_locked(&self, source: &str, text: &str) -> Result<StoredVersion, UpdateError> {
        let mesh = validate(source, text).map_err(UpdateError::Invalid)?;
        let running = self.registry.desired();
        if mesh.mesh.trust_domain != running.mesh.mesh.trust_domain {
            // Every issued certificate and every proxy's expectations of its
            // peers name the trust domain: changing it would cut every
            // proxy off (a migration needs both domains trusted for a time).
            return Err(UpdateError::Invalid(ConfigErrors(vec![ConfigError {
                file: source.to_owned(),
                line: 1,
                column: 1,
                path: "mesh.trust_domain".into(),
                message: format!(
                    "the trust domain cannot change while the mesh runs (it is `{}`)",
                    running.mesh.mesh.trust_domain
                ),
            }])));
        }
        let stored = self
            .store
            .commit(text, source)
            .map_err(|e| UpdateError::Store(e.to_string()))?;
        tracing::info!(version = stored.version, source, "desired state updated");
        self.registry.set_desired(Desired {
            version: stored.version,
            mesh,
        });
        Ok(stored)
    }

    /// Makes stored version `version` current again, as a new version.
    pub async fn rollback(&self, version: u64) -> Result<Option<StoredVersion>, UpdateError> {
        let Some(old) = self
            .store
            .get(version)
            .map_err(|e| UpdateError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        self.update(&format!("rollback to {version}"), &old.text)
            .await
            .map(Some)
    }
}

/// Opens the state, applies the mesh file if it changed, and returns the
/// control plane ready to serve.
pub fn open(options: &ControlOptions) -> Result<Plane, PlaneError> {
    let state = |e: &dyn std::fmt::Display| PlaneError::State(e.to_string());
    std::fs::create_dir_all(&options.state_dir).map_err(|e| {
        PlaneError::State(format!(
            "state directory `{}`: {e}",
            options.state_dir.display()
        ))
    })?;
    let store = FileStore::open(&options.state_dir).map_err(|e| state(&e))?;
    let mut current = store.current().map_err(|e| state(&e))?;
    if let Some(path) = &options.mesh_file {
        let source = path.display().to_string();
        let text = ringmesh_control::limits::read_text_file(path).map_err(|e| state(&e))?;
        let print = fingerprint(&text);
        if store.marker("seeded").as_deref() != Some(print.as_str()) {
            validate(&source, &text).map_err(PlaneError::Invalid)?;
            let stored = store.commit(&text, &source).map_err(|e| state(&e))?;
            store.set_marker("seeded", &print).map_err(|e| state(&e))?;
            tracing::info!(version = stored.version, file = %source, "desired state from the mesh file");
            current = Some(stored);
        } else {
            tracing::info!(file = %source, "the mesh file is unchanged since it was applied; the stored desired state is current");
        }
    }
    let Some(current) = current else {
        return Err(PlaneError::State(
            "no desired state yet: start with -c mesh.yaml".into(),
        ));
    };
    let source = format!("<stored version {}>", current.version);
    let mesh = validate(&source, &current.text).map_err(PlaneError::Invalid)?;
    let ca = MeshCa::load_or_create(&options.state_dir, &mesh.mesh.trust_domain)
        .map_err(|e| state(&e))?;
    let secrets = Secrets::load_or_create(&options.state_dir, options.admin_token_file.as_deref())
        .map_err(|e| state(&e))?;
    tracing::info!(
        version = current.version,
        services = mesh.services.len(),
        "desired state loaded"
    );
    let registrations_file = options.state_dir.join("registrations.json");
    let registry = Registry::new(Desired {
        version: current.version,
        mesh,
    });
    if let Ok(bytes) = std::fs::read(&registrations_file) {
        match serde_json::from_slice::<Vec<Registration>>(&bytes) {
            Ok(list) => {
                tracing::info!(
                    instances = list.len(),
                    "registrations restored; each expires unless it polls within the lease"
                );
                registry.restore(list);
            }
            Err(e) => {
                tracing::warn!(error = %e, "kept registrations unreadable; starting without")
            }
        }
    }
    Ok(Plane {
        counters: registry.counters.clone(),
        registrations_file,
        store: Box::new(store),
        ca,
        secrets,
        registry,
        update_lock: tokio::sync::Mutex::new(()),
    })
}

/// Runs the control plane until SIGTERM or SIGINT.
pub fn run(options: ControlOptions) -> Result<(), PlaneError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ringmesh-control-plane")
        .build()
        .map_err(|e| PlaneError::State(format!("runtime: {e}")))?;
    runtime.block_on(async move {
        let plane = Arc::new(open(&options)?);
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| PlaneError::Listen {
                addr: options.listen,
                source,
            })?;
        let bound = listener.local_addr().unwrap_or(options.listen);
        let mut names = options.server_names.clone();
        if !bound.ip().is_unspecified() {
            names.push(bound.ip().to_string());
        }
        let tls = server::tls_config(&plane, &names).map_err(PlaneError::State)?;
        tracing::info!(addr = %bound, ca = %options.state_dir.join("ca.pem").display(), "control plane listening");
        let sweeper = plane.clone();
        tokio::spawn(async move {
            loop {
                let lease = sweeper.registry.lease();
                tokio::time::sleep((lease / 4).clamp(Duration::from_millis(100), Duration::from_millis(250))).await;
                sweeper.registry.expire();
                sweeper.keep_registrations();
            }
        });
        tokio::spawn(server::serve(listener, tls, plane.clone()));
        if let Some(addr) = options.dashboard {
            let socket = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| PlaneError::Listen { addr, source })?;
            tracing::info!(addr = %socket.local_addr().unwrap_or(addr), "mesh dashboard listening");
            tokio::spawn(dashboard::serve(socket, plane.clone()));
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| PlaneError::State(format!("signals: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| PlaneError::State(format!("signals: {e}")))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        plane.keep_registrations();
        tracing::info!("control plane stopping; proxies keep their configuration");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_no_proxy_could_run_is_refused_with_the_service_named() {
        let ok = "services:\n  - { name: app, port: 80, calls: [db1] }\n  - { name: db1, port: 5432, protocol: tcp }\n  - { name: db2, port: 5432, protocol: tcp }\n  - { name: web, port: 80, calls: [app] }\n";
        validate("mesh.yaml", ok).expect("app calls one of the two: valid");
        // app calling both TCP services on one port needs two listeners on
        // one address: its derived config cannot load.
        let bad = ok.replace("calls: [db1]", "calls: [db1, db2]");
        let errs = validate("mesh.yaml", &bad)
            .expect_err("invalid")
            .to_string();
        assert!(
            errs.contains("mesh.yaml:2:5") && errs.contains("workload `app`"),
            "{errs}"
        );
    }

    #[test]
    fn the_merged_check_accepts_what_every_single_config_accepts() {
        // Workloads calling nothing (a catch-all route each) and services
        // with routes of their own, merged into one document.
        let text = "services:\n  - { name: a, port: 80, calls: [] }\n  - { name: b, port: 80, routes: [{ name: r, match: { path_prefix: /x }, cluster: b }] }\n  - { name: c, port: 80, calls: [b] }\n";
        let mesh = load_mesh("m.yaml", text).expect("mesh");
        let stand_in = |w: &str| Registration {
            node: w.into(),
            namespace: "default".into(),
            workload: w.into(),
            version: None,
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            inbound: SocketAddr::from(([127, 0, 0, 1], 1)),
            outbound: SocketAddr::from(([127, 0, 0, 1], 2)),
            app_port: 3,
            capture: false,
            admin: None,
        };
        let regs: Vec<Registration> = ["a", "b", "c"].iter().map(|w| stand_in(w)).collect();
        let refs: Vec<&Registration> = regs.iter().collect();
        let configs: Vec<serde_json::Value> = regs
            .iter()
            .map(|r| derive::derive(&mesh, &refs, r))
            .collect();
        let doc = merged(&configs).to_string();
        ringmesh_control::load("merged", &doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
    }
}
