//! Running the proxy: load the config, start the engine, serve the admin
//! API, react to signals, reload, and drain before exit.
//!
//! Everything here runs on one control thread (a tokio current-thread
//! runtime), never on a data-plane core. Reloads are serialised: each one
//! validates, compiles (resolving host names off the data plane), binds new
//! sockets, then swaps every worker to the new snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ringmesh_core::{
    Engine, EngineError, EngineOptions, IoEngine, IoEngineChoice, Snapshot, StatsRegistry,
};
use ringmesh_l7::metrics::HttpStatsRegistry;
use thiserror::Error;
use tokio::sync::{Mutex, Notify};

use crate::compile::{Registries, compile};
use crate::decode::{ConfigError, ConfigErrors};
use crate::discovery::{Discovered, prime_discovery};
use crate::model::{Document, load};
use ringmesh_core::health::HealthRegistry;

/// How to run the proxy (from the command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The YAML config file; SIGHUP re-reads it. With `mesh`, a bootstrap
    /// (its admin settings stay; the rest comes from the control plane).
    pub config_path: Option<PathBuf>,
    /// Join a mesh: the config and certificate come from its control plane.
    pub mesh: Option<crate::mesh::JoinOptions>,
    /// The admin API's address when there is no config file (mesh mode).
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads; default one per usable CPU.
    pub workers: Option<usize>,
    /// I/O driver choice.
    pub io_engine: IoEngineChoice,
    /// How long a drain waits for connections before exiting anyway.
    pub drain_timeout: Duration,
    /// How often certificate, key and bundle files are checked for changes.
    pub cert_watch_interval: Duration,
    /// Serve binary upgrades on this Unix socket (see [`crate::handover`]).
    pub upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the process serving upgrades
    /// on this Unix socket, then serve upgrades there.
    pub upgrade_from: Option<PathBuf>,
}

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum RunError {
    /// The config file could not be read (missing, over the size limit,
    /// not text).
    #[error(transparent)]
    Read(#[from] crate::limits::ReadError),
    /// The config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The data plane could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The admin API could not start.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Admin {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// The control thread's runtime could not start.
    #[error("control runtime: {0}")]
    Runtime(std::io::Error),
    /// The proxy cannot join its mesh.
    #[error("joining the mesh: {0}")]
    Join(#[from] crate::mesh::JoinError),
    /// A binary upgrade could not take the running process's sockets.
    #[error("upgrade: {0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
}

/// Why a new config was not applied. The running config is untouched.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The config is invalid (or cannot be bound); every error is listed.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The request body could not be read (too large, too slow, not text).
    #[error(transparent)]
    Body(#[from] crate::admin::body::BodyError),
    /// The proxy is draining.
    #[error("the proxy is draining; configuration changes are refused")]
    Draining,
    /// Something outside the config went wrong.
    #[error("{0}")]
    Internal(String),
    /// The proxy takes its config from a control plane.
    #[error(
        "this proxy takes its configuration from the control plane (ringmesh run --control); change the mesh's desired state instead"
    )]
    Managed,
}

/// Why `PUT /clusters/{name}/endpoints` was refused.
#[derive(Debug, Error)]
pub enum EndpointsError {
    /// No such cluster in the running config.
    #[error("no cluster named `{0}`")]
    UnknownCluster(String),
    /// The cluster's endpoints come from elsewhere.
    #[error(
        "cluster `{cluster}` gets its endpoints from `{discovery}` discovery; set `discovery: api` to manage them through this API"
    )]
    NotApi {
        /// Cluster.
        cluster: String,
        /// Its discovery type.
        discovery: &'static str,
    },
    /// The list is invalid, or applying it failed.
    #[error(transparent)]
    Reload(ReloadError),
}

/// The config that is running.
pub struct Applied {
    /// Its version (1 at startup, +1 per applied reload).
    pub version: u64,
    /// The document, with defaults filled in.
    pub document: Document,
    /// What the data plane runs.
    pub snapshot: Arc<Snapshot>,
    /// Where it came from (`file`, or `PUT /config`).
    pub source: String,
}

/// State shared by the admin API, the signal handlers and the drain.
pub struct Proxy {
    pub(crate) engine: Mutex<Engine>,
    /// Per-core statistics of the data plane.
    pub stats: Arc<StatsRegistry>,
    /// Endpoint health of every cluster.
    pub health: Arc<HealthRegistry>,
    /// Endpoint lists from discovery (DNS, files, the admin API).
    pub discovered: Arc<Discovered>,
    /// Per-core HTTP statistics (l7).
    pub http: Arc<HttpStatsRegistry>,
    /// Worker count.
    pub workers: usize,
    /// I/O driver in use.
    pub io_engine: IoEngine,
    /// Whether the kernel offers kTLS (probed once at startup).
    pub ktls_available: bool,
    /// The descriptor limit and the data plane's share of it.
    pub fd_share: Option<ringmesh_core::fd_share::FdShare>,
    applied: ArcSwap<Applied>,
    /// The span exporter's settings, from the running config.
    export: Arc<arc_swap::ArcSwapOption<crate::otlp::ExportSettings>>,
    /// Held through a whole reload, parse included: one large document is
    /// parsed at a time, however many arrive at once.
    reload_lock: Mutex<()>,
    config_path: Option<PathBuf>,
    /// Joined to a mesh: only its control plane changes the config.
    managed: bool,
    /// Joined to a mesh: the watch's state, for `/metrics`.
    pub mesh_status: Option<Arc<crate::mesh::watch::WatchStatus>>,
    /// Whether a real config runs (a joined proxy starts on a bootstrap
    /// with no listener until its first push: not ready before).
    configured: AtomicBool,
    admin: crate::model::AdminDoc,
    pub(crate) draining: AtomicBool,
    drain_requested: Notify,
    /// A new process took the sockets over (binary upgrade): this one
    /// drains without telling systemd or the mesh that the service stops.
    pub(crate) handed_over: AtomicBool,
    /// A duplicate of the admin API's listening socket, for the next
    /// process of a binary upgrade, with its bound address.
    /// Dropped once handed over: the old process must not keep the
    /// address listening (connections would queue there unserved).
    pub(crate) admin_socket: std::sync::Mutex<Option<(SocketAddr, std::net::TcpListener)>>,
    reloads_applied: AtomicU64,
    reloads_rejected: AtomicU64,
}

impl Proxy {
    /// The running config.
    pub fn applied(&self) -> Arc<Applied> {
        self.applied.load_full()
    }

    /// Whether the proxy serves a real config (see `configured`).
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Asks the proxy to drain and exit.
    pub fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// `(applied, rejected)` reload counts.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_rejected.load(Ordering::Relaxed),
        )
    }

    fn registries(&self) -> SharedRegistries {
        (
            self.stats.clone(),
            self.health.clone(),
            self.discovered.clone(),
            self.http.clone(),
        )
    }

    /// Listeners and the addresses they are bound to.
    pub async fn listeners(&self) -> Vec<ringmesh_core::BoundListener> {
        self.engine.lock().await.listeners()
    }

    /// Validates `text` and, when valid, makes it the running config.
    /// Returns the new version. Parsing and compiling run off the control
    /// thread, so the admin API keeps answering meanwhile.
    pub async fn reload(&self, source: &str, text: String) -> Result<u64, ReloadError> {
        match self.try_reload(source, text).await {
            Ok(version) => {
                self.reloads_applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(version, source, "configuration applied");
                Ok(version)
            }
            Err(e) => Err(self.reject(source, e)),
        }
    }

    /// Counts and logs a config from `source` that will not be applied
    /// (invalid, unreadable, too large, or arriving during a drain), and
    /// returns its error.
    pub fn reject(&self, source: &str, error: ReloadError) -> ReloadError {
        self.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source, errors = %error, "configuration rejected; the running one is kept");
        error
    }

    async fn try_reload(&self, source: &str, text: String) -> Result<u64, ReloadError> {
        if self.is_draining() {
            return Err(ReloadError::Draining);
        }
        if self.managed {
            return Err(ReloadError::Managed);
        }
        let _one_at_a_time = self.reload_lock.lock().await;
        let owned_source = source.to_owned();
        let document = tokio::task::spawn_blocking(move || load(&owned_source, &text))
            .await
            .map_err(|e| ReloadError::Internal(format!("parse task failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        if document.admin != self.admin {
            let o = &document.admin.listen_origin;
            return Err(ReloadError::Invalid(ConfigErrors(vec![ConfigError {
                file: source.to_owned(),
                line: o.mark.line.max(1),
                column: o.mark.col.max(1),
                path: "admin".into(),
                message: format!(
                    "the admin settings cannot change while running (running: listen {}, token_file {}, allow_remote {}); restart to change them",
                    self.admin.listen,
                    self.admin
                        .token_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none".into()),
                    self.admin.allow_remote
                ),
            }])));
        }
        self.apply_document(source, document).await
    }

    /// Applies a config pushed by the control plane: loaded like a file,
    /// its mesh file names made local by `localize`, the admin settings
    /// kept as they run. Returns the new local version.
    pub async fn apply_pushed(
        &self,
        version: &str,
        text: String,
        localize: impl FnOnce(&mut Document),
    ) -> Result<u64, ReloadError> {
        if self.is_draining() {
            return Err(ReloadError::Draining);
        }
        let source = format!("<control plane push {version}>");
        let _one_at_a_time = self.reload_lock.lock().await;
        let owned_source = source.clone();
        let result = async {
            let mut document = tokio::task::spawn_blocking(move || load(&owned_source, &text))
                .await
                .map_err(|e| ReloadError::Internal(format!("parse task failed: {e}")))?
                .map_err(ReloadError::Invalid)?;
            localize(&mut document);
            document.admin = self.admin.clone();
            self.apply_document(&source, document).await
        }
        .await;
        if result.is_ok() {
            self.configured.store(true, Ordering::Relaxed);
        }
        let counter = match &result {
            Ok(_) => &self.reloads_applied,
            Err(_) => &self.reloads_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Compiles `document` (re-reading every certificate file) and makes it
    /// the running config.
    async fn apply_document(&self, source: &str, document: Document) -> Result<u64, ReloadError> {
        let mut engine = self.engine.lock().await;
        let version = self.applied.load().version + 1;
        prime_discovery(&self.discovered, source, &document).await?;
        let snapshot =
            compile_off_thread(source, &document, version, &self.registries(), self.workers)
                .await?;
        apply(&mut engine, &document, source, snapshot.clone()).await?;
        self.discovered.retain(&document);
        self.export
            .store(crate::compile::export_settings(&document).map(Arc::new));
        self.applied.store(Arc::new(Applied {
            version,
            document,
            snapshot,
            source: source.to_owned(),
        }));
        Ok(version)
    }

    /// Re-applies the running document because certificate material
    /// changed on disk. New handshakes use the new material; established
    /// connections keep their sessions. A broken file is rejected and the
    /// running material stays.
    pub async fn rotate_certificates(&self) -> Result<u64, ReloadError> {
        let result = self.reapply("certificate rotation").await;
        match &result {
            Ok(version) => tracing::info!(version, "certificates reloaded"),
            Err(e) => {
                tracing::error!(errors = %e, "certificate files changed but cannot be used; the running ones are kept")
            }
        }
        result
    }

    /// Re-applies the running document with what discovery found now.
    pub async fn refresh_endpoints(&self, cluster: &str) -> Result<u64, ReloadError> {
        let result = self.reapply("endpoint discovery").await;
        match &result {
            Ok(version) => tracing::info!(cluster, version, "cluster endpoints updated"),
            Err(e) => {
                tracing::error!(cluster, errors = %e, "new endpoints cannot be applied; the running ones are kept")
            }
        }
        result
    }

    /// Replaces the endpoints of cluster `name` (which must have
    /// `discovery: api`) with the list in `text` (`PUT
    /// /clusters/{name}/endpoints`). Returns the config version running
    /// afterwards.
    pub async fn set_endpoints(
        &self,
        name: &str,
        text: Result<String, crate::admin::body::BodyError>,
    ) -> Result<u64, EndpointsError> {
        let applied = self.applied();
        let Some(cluster) = applied.document.clusters.iter().find(|c| c.name == name) else {
            return Err(EndpointsError::UnknownCluster(
                crate::limits::quote(name).into_owned(),
            ));
        };
        if cluster.discovery != crate::model::DiscoveryDoc::Api {
            return Err(EndpointsError::NotApi {
                cluster: name.to_owned(),
                discovery: cluster.discovery.kind(),
            });
        }
        let key = crate::discovery::source_key(cluster);
        // Every refused list counts as a discovery error of the cluster.
        let refuse = |e: ReloadError| {
            self.discovered.record_error(name, &key, e.to_string());
            tracing::warn!(cluster = name, errors = %e, "endpoint list rejected; the running endpoints are kept");
            EndpointsError::Reload(e)
        };
        let text = text.map_err(|e| refuse(ReloadError::Body(e)))?;
        let source = format!("<PUT /clusters/{name}/endpoints>");
        let parse_source = source.clone();
        let list = tokio::task::spawn_blocking(move || {
            let docs = crate::model::parse_endpoint_list(&parse_source, &text)
                .map_err(ReloadError::Invalid)?;
            crate::discovery::resolve_blocking(&docs).map_err(|message| {
                ReloadError::Invalid(ConfigErrors(vec![ConfigError {
                    file: parse_source.clone(),
                    line: 1,
                    column: 1,
                    path: "endpoints".into(),
                    message,
                }]))
            })
        })
        .await
        .map_err(|e| refuse(ReloadError::Internal(e.to_string())))?
        .map_err(refuse)?;
        if !self.discovered.record(name, &key, list) {
            return Ok(applied.version);
        }
        self.refresh_endpoints(name)
            .await
            .map_err(EndpointsError::Reload)
    }

    /// Compiles and applies the running document again (files re-read,
    /// discovered endpoints taken as they are now).
    async fn reapply(&self, why: &str) -> Result<u64, ReloadError> {
        if self.is_draining() {
            return Err(ReloadError::Draining);
        }
        // Under the reload lock, and the document read once it is held: a
        // rotation racing a reload must not re-apply the older document.
        let _one_at_a_time = self.reload_lock.lock().await;
        let document = self.applied.load().document.clone();
        let result = self.apply_document(why, document).await;
        let counter = match &result {
            Ok(_) => &self.reloads_applied,
            Err(_) => &self.reloads_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Re-reads the config file (SIGHUP).
    pub async fn reload_file(&self) -> Result<u64, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(self.reject("SIGHUP", ReloadError::Managed));
        };
        let source = path.display().to_string();
        match crate::limits::read_text_file(path) {
            Ok(text) => self.reload(&source, text).await,
            Err(e) => Err(self.reject(&source, ReloadError::Internal(e.to_string()))),
        }
    }

    /// Stops accepting, waits for open connections to finish (at most
    /// `timeout`), and returns how many were still open.
    async fn drain(&self, timeout: Duration) -> u64 {
        self.draining.store(true, Ordering::Relaxed);
        self.engine.lock().await.stop_accepting().await;
        let deadline = Instant::now() + timeout;
        let open = self.stats.active_connections();
        tracing::info!(open_connections = open, timeout = ?timeout, "draining: listeners closed, waiting for connections to finish");
        loop {
            let open = self.stats.active_connections();
            if open == 0 {
                tracing::info!("drained: no connections left");
                return 0;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    open_connections = open,
                    "drain timeout reached; exiting with connections still open"
                );
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The long-lived state snapshots take their counters and health from.
type SharedRegistries = (
    Arc<StatsRegistry>,
    Arc<HealthRegistry>,
    Arc<Discovered>,
    Arc<HttpStatsRegistry>,
);

async fn compile_off_thread(
    source: &str,
    document: &Document,
    version: u64,
    registries: &SharedRegistries,
    workers: usize,
) -> Result<Arc<Snapshot>, ReloadError> {
    let (source, document, (stats, health, discovered, http)) =
        (source.to_owned(), document.clone(), registries.clone());
    tokio::task::spawn_blocking(move || {
        let discovered = discovered.lists();
        let registries = Registries {
            http: &http,
            stats: &stats,
            health: &health,
            discovered: &discovered,
        };
        compile(&source, &document, version, registries, workers)
    })
    .await
    .map_err(|e| ReloadError::Internal(format!("compile task failed: {e}")))?
    .map(Arc::new)
    .map_err(ReloadError::Invalid)
}

/// Applies a snapshot; a bind failure becomes a config error at the
/// listener's `listen` key.
async fn apply(
    engine: &mut Engine,
    document: &Document,
    source: &str,
    snapshot: Arc<Snapshot>,
) -> Result<(), ReloadError> {
    match engine.apply(snapshot).await {
        Ok(()) => Ok(()),
        Err(EngineError::Bind(bind)) => {
            let name = match &bind {
                ringmesh_core::BindError::InUse { name, .. }
                | ringmesh_core::BindError::Io { name, .. } => name.clone(),
            };
            let listener = document.listeners.iter().find(|l| *l.name == *name);
            let (line, column, path) = listener
                .map(|l| {
                    (
                        l.listen_origin.mark.line,
                        l.listen_origin.mark.col,
                        l.listen_origin.path.clone(),
                    )
                })
                .unwrap_or_default();
            Err(ReloadError::Invalid(ConfigErrors(vec![ConfigError {
                file: source.to_owned(),
                line,
                column,
                path,
                message: bind.to_string(),
            }])))
        }
        Err(EngineError::Draining) => Err(ReloadError::Draining),
        Err(e) => Err(ReloadError::Internal(e.to_string())),
    }
}

/// Checks that `document` compiles as `ringmesh run` would compile it:
/// host names resolve, certificate files load, endpoints files parse, DNS
/// clusters' names resolve (`ringmesh validate`).
pub fn check(source: &str, document: &Document) -> Result<(), ConfigErrors> {
    let internal = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: source.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message,
        }])
    };
    admin_token(source, &document.admin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let discovered = Arc::new(Discovered::default());
        let registries = (
            Arc::new(StatsRegistry::new(1)),
            Arc::new(HealthRegistry::new(1)),
            discovered.clone(),
            Arc::new(HttpStatsRegistry::new(1)),
        );
        let to_errors = |e: ReloadError| match e {
            ReloadError::Invalid(errs) => errs,
            other => internal(other.to_string()),
        };
        prime_discovery(&discovered, source, document)
            .await
            .map_err(to_errors)?;
        for (name, state) in discovered.states() {
            if let Some(e) = state.last_error {
                tracing::warn!(cluster = %name, error = %e, "DNS discovery cannot resolve yet");
            }
        }
        compile_off_thread(source, document, 1, &registries, 1)
            .await
            .map(drop)
            .map_err(to_errors)
    })
}

/// Reads the admin API's bearer token, if `admin.token_file` names one; a
/// problem is a config error at that key.
fn admin_token(
    source: &str,
    admin: &crate::model::AdminDoc,
) -> Result<Option<Vec<u8>>, ConfigErrors> {
    let Some(path) = &admin.token_file else {
        return Ok(None);
    };
    crate::model::read_token(path).map(Some).map_err(|message| {
        ConfigErrors(vec![ConfigError {
            file: source.to_owned(),
            line: admin.token_origin.mark.line.max(1),
            column: admin.token_origin.mark.col.max(1),
            path: admin.token_origin.path.clone(),
            message: format!("`{}`: {message}", path.display()),
        }])
    })
}

/// Runs the proxy until it has drained. Returns when it is time to exit 0.
pub fn run(options: RunOptions) -> Result<(), RunError> {
    // Resolved now: once an upgrade replaces the file, /proc/self/exe names
    // the old, deleted one; SIGUSR2 starts whatever is at this path then.
    let exe = std::env::current_exe().ok();
    let (source, text) = match &options.config_path {
        Some(path) => (
            path.display().to_string(),
            crate::limits::read_text_file(path)?,
        ),
        None => {
            let admin = options
                .admin_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 15000)));
            (
                "<bootstrap>".to_owned(),
                format!("admin: {{ listen: \"{admin}\" }}\n"),
            )
        }
    };
    let mut document = load(&source, &text).map_err(RunError::Config)?;
    drop(text);
    let token = admin_token(&source, &document.admin).map_err(RunError::Config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ringmesh-control")
        .build()
        .map_err(RunError::Runtime)?;
    let mut started_with_cache = None;
    let mesh = match options.mesh.clone() {
        None => None,
        Some(join) => {
            let client = crate::mesh::MeshClient::new(join)?;
            runtime.block_on(client.ensure_identity())?;
            // The last good config, when kept, serves at once: a proxy
            // restarted while the control plane is away still forwards.
            if let Some(cached) = client.cached_config() {
                match load("<cached control plane config>", &cached.config) {
                    Ok(mut doc) => {
                        client.localize(&mut doc);
                        doc.admin = document.admin.clone();
                        tracing::info!(version = %cached.version, "starting with the last configuration from the control plane");
                        document = doc;
                        started_with_cache = Some(cached);
                    }
                    Err(e) => {
                        tracing::warn!(errors = %e, "the kept configuration is unusable; waiting for the control plane")
                    }
                }
            }
            Some(client)
        }
    };
    // An upgrade takes the running process's sockets before anything
    // else: from here on, any failure is reported to it (it keeps serving).
    let mut inherited = match &options.upgrade_from {
        Some(path) => Some(crate::handover::take_over(path)?),
        None => None,
    };
    let result = serve(
        options,
        exe,
        source,
        document,
        token,
        runtime,
        mesh,
        started_with_cache,
        &mut inherited,
    );
    if let (Err(e), Some(inherited)) = (&result, inherited) {
        inherited.answer.failed(&e.to_string());
    }
    result
}

/// `run` once the config is loaded (and, on an upgrade, the sockets taken).
#[allow(clippy::too_many_arguments)]
fn serve(
    options: RunOptions,
    exe: Option<PathBuf>,
    source: String,
    document: Document,
    token: Option<Vec<u8>>,
    runtime: tokio::runtime::Runtime,
    mesh: Option<crate::mesh::MeshClient>,
    mut started_with_cache: Option<crate::mesh::client::CachedConfig>,
    inherited: &mut Option<crate::handover::Inherited>,
) -> Result<(), RunError> {
    let fd_share = ringmesh_core::fd_share::reserve(crate::admin::server::RESERVED_DESCRIPTORS);
    tracing::info!(
        limit = fd_share.limit,
        data_plane_ceiling = fd_share.ceiling,
        "file descriptors: the data plane stops below the ceiling; the rest is kept for the admin API and reloads"
    );
    let mut engine = Engine::start(&EngineOptions {
        workers: options.workers,
        io_engine: options.io_engine,
        pin_workers: true,
    })?;
    if let Some(inherited) = inherited.as_mut() {
        for refused in engine.inherit(std::mem::take(&mut inherited.listeners)) {
            tracing::warn!(reason = %refused, "upgrade: an inherited socket is unusable and was closed");
        }
    }
    if let Some(reason) = engine.fallback_reason() {
        tracing::warn!(reason, "io_uring is unavailable; falling back to epoll");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        workers = engine.workers(),
        io_engine = %engine.io_engine(),
        "ringmesh starting"
    );
    let ktls = ringmesh_core::tls::ktls::support().clone();
    match &ktls {
        ringmesh_core::tls::ktls::KtlsSupport::Available => tracing::info!(
            "kTLS is available: terminated TLS sessions are handed to the kernel after the handshake (listener tls.ktls: false keeps them in userspace)"
        ),
        ringmesh_core::tls::ktls::KtlsSupport::Unavailable(reason) => {
            tracing::info!(reason = %reason, "kTLS unavailable: TLS runs in userspace (rustls)")
        }
    }
    runtime.block_on(async move {
        let stats = engine.stats().clone();
        let health = engine.health().clone();
        let workers = engine.workers();
        let mut engine = engine;
        let discovered = Arc::new(Discovered::default());
        let startup_error = |e: ReloadError| match e {
            ReloadError::Invalid(errs) => RunError::Config(errs),
            other => RunError::Engine(EngineError::Worker {
                core: 0,
                message: other.to_string(),
            }),
        };
        prime_discovery(&discovered, &source, &document)
            .await
            .map_err(startup_error)?;
        let http = Arc::new(HttpStatsRegistry::new(workers));
        let registries = (
            stats.clone(),
            health.clone(),
            discovered.clone(),
            http.clone(),
        );
        let snapshot = compile_off_thread(&source, &document, 1, &registries, workers)
            .await
            .map_err(startup_error)?;
        // Every step that can fail comes before the first apply: once the
        // workers accept (on an upgrade, from the inherited sockets), a
        // failure would reset the connections they took.
        let admin_listen = document.admin.listen;
        let admin_error = |source| RunError::Admin {
            addr: admin_listen,
            source,
        };
        // An upgrade keeps the admin API's socket when the address is the
        // same (port 0: whatever the old process was given).
        let inherited_admin = inherited
            .as_mut()
            .and_then(|i| i.admin.take())
            .filter(|(bound, _)| {
                *bound == admin_listen
                    || (admin_listen.port() == 0 && bound.ip() == admin_listen.ip())
            })
            .map(|(_, socket)| socket);
        let admin_std = match inherited_admin {
            Some(socket) => socket,
            None => std::net::TcpListener::bind(admin_listen).map_err(admin_error)?,
        };
        admin_std.set_nonblocking(true).map_err(admin_error)?;
        let admin_keep = admin_std.try_clone().map_err(admin_error)?;
        let admin_socket = tokio::net::TcpListener::from_std(admin_std).map_err(admin_error)?;
        let admin_addr = admin_socket.local_addr().unwrap_or(admin_listen);
        engine.apply(snapshot.clone()).await?;
        for l in engine.listeners() {
            tracing::info!(listener = %l.name, addr = %l.bound, "listening");
        }
        let policy = crate::admin::guard::AdminPolicy {
            bound: admin_addr,
            allowed_hosts: document.admin.allowed_hosts.clone(),
            token,
        };
        if document.admin.is_open_to_the_network() {
            tracing::warn!(addr = %admin_addr, "THE ADMIN API IS OPEN TO THE NETWORK WITHOUT A TOKEN (admin.allow_remote: true): anyone who can reach it can replace the config or stop the proxy; set admin.token_file");
        }
        let admin = document.admin.clone();
        // Spans leave on a thread of their own, never a worker's.
        let export = Arc::new(arc_swap::ArcSwapOption::new(
            crate::compile::export_settings(&document).map(Arc::new),
        ));
        if let Err(e) = crate::otlp::spawn(http.spans(), export.clone()) {
            tracing::error!(error = %e, "the OTLP exporter thread could not start; spans will be dropped");
        }
        let proxy = Arc::new(Proxy {
            export,
            ktls_available: ktls.is_available(),
            fd_share: Some(fd_share),
            reload_lock: Mutex::new(()),
            io_engine: engine.io_engine(),
            workers,
            stats,
            health,
            discovered,
            http,
            engine: Mutex::new(engine),
            applied: ArcSwap::from_pointee(Applied {
                version: 1,
                document,
                snapshot,
                source: source.clone(),
            }),
            config_path: if mesh.is_some() {
                None
            } else {
                options.config_path.clone()
            },
            managed: mesh.is_some(),
            mesh_status: mesh.as_ref().map(|c| c.status.clone()),
            configured: AtomicBool::new(mesh.is_none() || started_with_cache.is_some()),
            admin,
            draining: AtomicBool::new(false),
            drain_requested: Notify::new(),
            handed_over: AtomicBool::new(false),
            admin_socket: std::sync::Mutex::new(Some((admin_addr, admin_keep))),
            reloads_applied: AtomicU64::new(1),
            reloads_rejected: AtomicU64::new(0),
        });
        // Signal handlers exist before anyone is told the proxy is up: a
        // SIGHUP or SIGTERM arriving earlier would take the default action
        // (terminate).
        let signals = Signals::install();
        let admin_task = tokio::spawn(crate::admin::serve(admin_socket, proxy.clone(), policy));
        tokio::spawn(reload_on_sighup(proxy.clone(), signals.hup));
        tracing::info!(addr = %admin_addr, "admin API listening");
        // Serving: an upgrade's old process may stop now. Then this one
        // serves upgrades in turn, on the same path unless told otherwise.
        if let Some(inherited) = inherited.take() {
            let old_pid = inherited.answer.old_pid;
            // A blocking wait for the old process's ack (it stops accepting
            // first): off this thread, so the admin API serves meanwhile.
            let answer = inherited.answer;
            let acked = tokio::task::spawn_blocking(move || {
                answer.ready(crate::handover::READY_TIMEOUT)
            })
            .await;
            match acked.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                Ok(()) => tracing::info!(addr = %admin_addr, old_pid, "upgrade complete: serving on the inherited sockets; the old process drains"),
                Err(e) => tracing::warn!(error = %e, old_pid, "upgrade: the old process did not confirm it stopped accepting; serving anyway"),
            }
        }
        let upgrade_socket = options.upgrade_socket.clone().or(options.upgrade_from.clone());
        let mut successor = None;
        if let Some(path) = upgrade_socket {
            match crate::upgrade::listen(&path) {
                Ok(listener) => {
                    tracing::info!(socket = %path.display(), "serving binary upgrades (ringmesh run --upgrade-from, or SIGUSR2)");
                    tokio::spawn(crate::handover::serve_upgrades(proxy.clone(), listener, admin_task.abort_handle()));
                    successor = exe.map(|program| crate::handover::Successor::of_this_process(program, path));
                }
                Err(e) => tracing::error!(socket = %path.display(), error = %e, "cannot serve binary upgrades"),
            }
        }
        tokio::spawn(crate::handover::upgrade_on_sigusr2(successor, signals.usr2));
        crate::systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        tokio::spawn(watch_certificates(
            proxy.clone(),
            options.cert_watch_interval,
        ));
        tokio::spawn(crate::discovery::supervise(proxy.clone()));
        let watch = mesh.as_ref().map(|client| {
            tokio::spawn(client.clone().renew_forever(proxy.clone()));
            tokio::spawn(
                client
                    .clone()
                    .watch_forever(proxy.clone(), started_with_cache.take(), admin_addr),
            )
        });
        wait_for_drain_request(&proxy, signals.term, signals.int).await;
        let handed_over = proxy.handed_over.load(Ordering::Relaxed);
        if !handed_over {
            crate::systemd::notify("STOPPING=1");
        }
        if let (Some(client), Some(watch)) = (&mesh, watch) {
            // Leave first: callers stop picking this instance while its
            // open connections finish. The watch stops before, so that no
            // poll in flight registers the instance again.
            proxy.draining.store(true, Ordering::Relaxed);
            watch.abort();
            let _ = watch.await;
            // After an upgrade the new process is this instance.
            if !handed_over {
                client.leave().await;
            }
        }
        proxy.drain(options.drain_timeout).await;
        Ok(())
    })
}

/// The process's signal streams, registered together at startup.
struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    /// Registered with the others, before readiness is reported: a SIGUSR2
    /// (`systemctl reload`) must never take the default action (terminate).
    usr2: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let get = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(signal = name, error = %e, "cannot install the signal handler");
                None
            }
        };
        Signals {
            hup: get(SignalKind::hangup(), "SIGHUP"),
            usr2: get(SignalKind::user_defined2(), "SIGUSR2"),
            term: get(SignalKind::terminate(), "SIGTERM"),
            int: get(SignalKind::interrupt(), "SIGINT"),
        }
    }
}

async fn reload_on_sighup(proxy: Arc<Proxy>, hup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hup) = hup else {
        tracing::warn!("no SIGHUP handler; reload through PUT /config");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: re-reading the configuration file");
        let _ = proxy.reload_file().await;
    }
}

async fn wait_for_drain_request(
    proxy: &Proxy,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
) {
    let (Some(mut term), Some(mut int)) = (term, int) else {
        tracing::warn!("cannot install SIGTERM/SIGINT handlers; drain through POST /drain");
        proxy.drain_requested.notified().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = proxy.drain_requested.notified() => {
            if proxy.handed_over.load(Ordering::Relaxed) {
                tracing::info!("upgrade: draining")
            } else {
                tracing::info!("POST /drain: draining")
            }
        }
    }
}

/// A file's identity for change detection: modification time, size, inode.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Polls the running config's certificate files and rotates on change.
/// Polling (not inotify) also sees Kubernetes' symlink swaps of mounted
/// secrets, and costs a few `stat` calls per interval on the control thread.
async fn watch_certificates(proxy: Arc<Proxy>, interval: Duration) {
    let mut seen: std::collections::BTreeMap<String, Stamp> = std::collections::BTreeMap::new();
    let mut seen_version = 0;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(50)));
    loop {
        ticker.tick().await;
        if proxy.is_draining() {
            return;
        }
        let applied = proxy.applied();
        let files = applied.document.tls_files();
        let now: std::collections::BTreeMap<String, Stamp> =
            files.iter().map(|f| (f.clone(), stamp(f))).collect();
        // A reload we did not cause (PUT /config, SIGHUP) re-read every
        // file already: take the current state as the new baseline.
        if applied.version != seen_version {
            seen = now;
            seen_version = applied.version;
            continue;
        }
        if now != seen {
            let changed: Vec<&String> = now
                .iter()
                .filter(|(k, v)| seen.get(*k) != Some(v))
                .map(|(k, _)| k)
                .collect();
            tracing::info!(files = ?changed, "certificate files changed");
            seen = now;
            if let Ok(v) = proxy.rotate_certificates().await {
                seen_version = v;
            }
        }
    }
}
