//! Endpoint discovery: keeping clusters' endpoint lists current from DNS,
//! from a watched file, or from the admin API.
//!
//! Discovery runs on the control thread. Each source writes the endpoint
//! list it found into [`Discovered`]; when a list changes, the running
//! document is compiled again with the new lists and applied like any
//! reload (workers switch snapshot; endpoint health is per address and
//! carries over). A source that fails keeps its last good list.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::decode::{ConfigError, ConfigErrors};
use crate::model::{ClusterDoc, DiscoveryDoc, Document, EndpointDoc, parse_endpoint_list};
use crate::proxy::{Proxy, ReloadError};

/// One endpoint found by discovery (or resolved from the config), before
/// compilation attaches its health state.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Address.
    pub addr: SocketAddr,
    /// The host name it was resolved from, if any.
    pub hostname: Option<Arc<str>>,
    /// Weight, 1-1000.
    pub weight: u32,
    /// Labels.
    pub metadata: Vec<(String, String)>,
}

/// What discovery holds for one cluster.
#[derive(Debug, Clone)]
pub struct DiscoveryState {
    /// The source's identity (type and settings); a changed source starts
    /// over.
    pub source: String,
    /// The last good list (`None` before the first success).
    pub endpoints: Option<Vec<Found>>,
    /// When the list last changed.
    pub updated: Option<SystemTime>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Lists applied.
    pub updates: u64,
    /// Failed attempts (resolution errors, unreadable or invalid files).
    pub errors: u64,
}

/// Every cluster's discovered endpoints, by cluster name.
#[derive(Debug, Default)]
pub struct Discovered {
    map: Mutex<BTreeMap<String, DiscoveryState>>,
}

impl Discovered {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DiscoveryState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current lists, for compilation.
    pub fn lists(&self) -> HashMap<String, Vec<Found>> {
        self.lock()
            .iter()
            .filter_map(|(k, v)| v.endpoints.clone().map(|e| (k.clone(), e)))
            .collect()
    }

    /// The state of cluster `name`.
    pub fn state(&self, name: &str) -> Option<DiscoveryState> {
        self.lock().get(name).cloned()
    }

    /// Every cluster's state.
    pub fn states(&self) -> Vec<(String, DiscoveryState)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records a successful lookup from `source`; true when the list changed.
    pub fn record(&self, cluster: &str, source: &str, endpoints: Vec<Found>) -> bool {
        let mut map = self.lock();
        let state = map
            .entry(cluster.to_owned())
            .or_insert_with(|| DiscoveryState::new(source));
        if state.source != source {
            *state = DiscoveryState::new(source);
        }
        state.last_error = None;
        if state.endpoints.as_ref() == Some(&endpoints) {
            return false;
        }
        state.endpoints = Some(endpoints);
        state.updated = Some(SystemTime::now());
        state.updates += 1;
        true
    }

    /// Records a failed lookup; the last good list stays.
    pub fn record_error(&self, cluster: &str, source: &str, error: String) {
        let mut map = self.lock();
        let state = map
            .entry(cluster.to_owned())
            .or_insert_with(|| DiscoveryState::new(source));
        if state.source != source {
            *state = DiscoveryState::new(source);
        }
        state.errors += 1;
        state.last_error = Some(error);
    }

    /// Whether `cluster` already has a list from `source`.
    pub fn has(&self, cluster: &str, source: &str) -> bool {
        self.lock()
            .get(cluster)
            .is_some_and(|s| s.source == source && s.endpoints.is_some())
    }

    /// Forgets clusters that no longer use a dynamic source, or whose
    /// source changed.
    pub fn retain(&self, doc: &Document) {
        let wanted: HashMap<&str, String> = doc
            .clusters
            .iter()
            .filter(|c| {
                !matches!(
                    c.discovery,
                    DiscoveryDoc::Static | DiscoveryDoc::OriginalDestination
                )
            })
            .map(|c| (c.name.as_str(), source_key(c)))
            .collect();
        self.lock()
            .retain(|name, state| wanted.get(name.as_str()) == Some(&state.source));
    }
}

impl DiscoveryState {
    fn new(source: &str) -> Self {
        DiscoveryState {
            source: source.to_owned(),
            endpoints: None,
            updated: None,
            last_error: None,
            updates: 0,
            errors: 0,
        }
    }
}

/// A cluster's source identity: its discovery settings, and for DNS the
/// names it resolves.
pub fn source_key(c: &ClusterDoc) -> String {
    let endpoints = match c.discovery {
        DiscoveryDoc::Dns { .. } => serde_json::to_string(&c.endpoints).unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "{}{endpoints}",
        serde_json::to_string(&c.discovery).unwrap_or_default()
    )
}

/// Resolves endpoints as written with the system resolver (blocking
/// `getaddrinfo`): IP literals as they are, names to every address.
pub fn resolve_blocking(endpoints: &[EndpointDoc]) -> Result<Vec<Found>, String> {
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        if let Ok(ip) = e.host.parse::<std::net::IpAddr>() {
            out.push(found(e, SocketAddr::new(ip, e.port), None));
            continue;
        }
        let hostname: Arc<str> = Arc::from(e.host.as_str());
        let addrs = (e.host.as_str(), e.port)
            .to_socket_addrs()
            .map_err(|err| format!("cannot resolve host `{}`: {err}", e.host))?;
        let before = out.len();
        for addr in addrs {
            if !out[before..].iter().any(|f: &Found| f.addr == addr) {
                out.push(found(e, addr, Some(hostname.clone())));
            }
        }
        if out.len() == before {
            return Err(format!("host `{}` resolved to no address", e.host));
        }
    }
    Ok(out)
}

fn found(e: &EndpointDoc, addr: SocketAddr, hostname: Option<Arc<str>>) -> Found {
    Found {
        addr,
        hostname,
        weight: e.weight,
        metadata: e.metadata.clone(),
    }
}

/// Reads and parses an endpoints file (at most
/// [`crate::limits::MAX_FILE_BYTES`]), resolving any host names in it.
pub fn read_endpoints_file(path: &Path) -> Result<Vec<Found>, String> {
    let text = crate::limits::read_text_file(path).map_err(|e| e.to_string())?;
    let docs =
        parse_endpoint_list(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    resolve_blocking(&docs)
}

/// A DNS resolver for one cluster's settings.
pub struct Dns {
    resolver: hickory_resolver::TokioResolver,
}

impl Dns {
    /// The system's resolver (/etc/resolv.conf), or the one at `server`.
    pub fn new(server: Option<SocketAddr>) -> Result<Dns, String> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut builder = match server {
            None => hickory_resolver::TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        // We schedule re-resolution ourselves from the TTL; a cached answer
        // would hide changes until it expired anyway.
        builder.options_mut().cache_size = 0;
        builder.options_mut().timeout = Duration::from_secs(2);
        builder.options_mut().attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Resolves every endpoint; returns them and the shortest TTL seen.
    pub async fn resolve(
        &self,
        endpoints: &[EndpointDoc],
    ) -> Result<(Vec<Found>, Option<Duration>), String> {
        let mut out = Vec::with_capacity(endpoints.len());
        let mut ttl: Option<Duration> = None;
        for e in endpoints {
            if let Ok(ip) = e.host.parse::<std::net::IpAddr>() {
                out.push(found(e, SocketAddr::new(ip, e.port), None));
                continue;
            }
            // A trailing dot stops search-domain expansion: names in the
            // config are taken as written.
            let name = if e.host.ends_with('.') {
                e.host.clone()
            } else {
                format!("{}.", e.host)
            };
            let lookup = self
                .resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|err| format!("cannot resolve `{}`: {err}", e.host))?;
            let left = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            ttl = Some(ttl.map_or(left, |t| t.min(left)));
            let hostname: Arc<str> = Arc::from(e.host.as_str());
            let before = out.len();
            for ip in lookup.iter() {
                let addr = SocketAddr::new(ip, e.port);
                if !out[before..].iter().any(|f: &Found| f.addr == addr) {
                    out.push(found(e, addr, Some(hostname.clone())));
                }
            }
            if out.len() == before {
                return Err(format!("`{}` has no address records", e.host));
            }
        }
        // A stable order: a reordered answer is not a change.
        out.sort_by_key(|f| f.addr);
        Ok((out, ttl))
    }
}

/// Gets a first list for every DNS and file cluster whose source has none
/// yet, before the document is compiled. An unreadable or invalid endpoints
/// file is a config error (at `clusters[i].discovery`); a DNS failure is
/// not: the cluster starts empty and the resolver keeps trying, as Envoy's
/// DNS clusters do.
pub async fn prime_discovery(
    discovered: &Arc<Discovered>,
    file: &str,
    doc: &Document,
) -> Result<(), ReloadError> {
    let mut errors = Vec::new();
    for (i, c) in doc.clusters.iter().enumerate() {
        let key = source_key(c);
        if discovered.has(&c.name, &key) {
            continue;
        }
        match &c.discovery {
            DiscoveryDoc::File { path, .. } => {
                let path = path.clone();
                let result = tokio::task::spawn_blocking(move || read_endpoints_file(&path))
                    .await
                    .unwrap_or_else(|e| Err(format!("file task failed: {e}")));
                match result {
                    Ok(list) => {
                        discovered.record(&c.name, &key, list);
                    }
                    Err(msg) => errors.push(ConfigError {
                        file: file.to_owned(),
                        line: c.name_origin.mark.line,
                        column: c.name_origin.mark.col,
                        path: format!("clusters[{i}].discovery.path"),
                        message: format!("endpoints file: {msg}"),
                    }),
                }
            }
            DiscoveryDoc::Dns { resolver, .. } => {
                let result = match Dns::new(*resolver) {
                    Ok(dns) => {
                        match tokio::time::timeout(PRIME_TIMEOUT, dns.resolve(&c.endpoints)).await {
                            Ok(r) => r.map(|(list, _)| list),
                            Err(_) => Err(format!("no answer within {PRIME_TIMEOUT:?}")),
                        }
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(list) => {
                        discovered.record(&c.name, &key, list);
                    }
                    Err(msg) => {
                        tracing::warn!(cluster = %c.name, error = %msg, "DNS discovery failed; the cluster starts without endpoints and keeps trying");
                        discovered.record_error(&c.name, &key, msg);
                    }
                }
            }
            DiscoveryDoc::Static | DiscoveryDoc::Api | DiscoveryDoc::OriginalDestination => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::Invalid(ConfigErrors(errors)))
    }
}

/// Time the first resolution of a DNS cluster may take before the
/// config is applied without its endpoints.
const PRIME_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one background task per DNS and file cluster of the running
/// config, restarting them when their settings change.
pub async fn supervise(proxy: Arc<Proxy>) {
    let mut tasks: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut seen_version = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticker.tick().await;
        if proxy.is_draining() {
            return;
        }
        let applied = proxy.applied();
        if applied.version == seen_version {
            continue;
        }
        seen_version = applied.version;
        let mut next = HashMap::new();
        for c in &applied.document.clusters {
            let key = source_key(c);
            if let Some((old_key, handle)) = tasks.remove(&c.name) {
                if old_key == key {
                    next.insert(c.name.clone(), (old_key, handle));
                    continue;
                }
                handle.abort();
            }
            let task = match &c.discovery {
                DiscoveryDoc::Dns {
                    refresh,
                    respect_ttl,
                    resolver,
                } => tokio::spawn(watch_dns(
                    proxy.clone(),
                    c.clone(),
                    key.clone(),
                    (*refresh, *respect_ttl, *resolver),
                )),
                DiscoveryDoc::File { path, interval } => tokio::spawn(watch_file(
                    proxy.clone(),
                    c.name.clone(),
                    key.clone(),
                    path.clone(),
                    *interval,
                )),
                DiscoveryDoc::Static | DiscoveryDoc::Api | DiscoveryDoc::OriginalDestination => {
                    continue;
                }
            };
            next.insert(c.name.clone(), (key, task));
        }
        for (_, (_, handle)) in tasks.drain() {
            handle.abort();
        }
        tasks = next;
    }
}

/// Re-resolves a DNS cluster's names on its refresh schedule.
async fn watch_dns(
    proxy: Arc<Proxy>,
    cluster: ClusterDoc,
    key: String,
    (refresh, respect_ttl, resolver): (Duration, bool, Option<SocketAddr>),
) {
    let dns = match Dns::new(resolver) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(cluster = %cluster.name, error = %e, "DNS discovery cannot start");
            proxy.discovered.record_error(&cluster.name, &key, e);
            return;
        }
    };
    // Ask at once: the answer's TTL sets the schedule (the priming lookup
    // before the config was applied does not hand its TTL over); an
    // unchanged answer changes nothing.
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        match dns.resolve(&cluster.endpoints).await {
            Ok((list, ttl)) => {
                wait = next_refresh(refresh, respect_ttl, ttl);
                let n = list.len();
                if proxy.discovered.record(&cluster.name, &key, list) {
                    tracing::info!(cluster = %cluster.name, endpoints = n, "DNS answer changed");
                    let _ = proxy.refresh_endpoints(&cluster.name).await;
                }
            }
            Err(msg) => {
                wait = refresh;
                tracing::warn!(cluster = %cluster.name, error = %msg, "DNS re-resolution failed; keeping the last good endpoints");
                proxy.discovered.record_error(&cluster.name, &key, msg);
            }
        }
    }
}

/// Polls an endpoints file and applies its list when it changes.
async fn watch_file(
    proxy: Arc<Proxy>,
    cluster: String,
    key: String,
    path: PathBuf,
    interval: Duration,
) {
    let mut seen: Option<(SystemTime, u64, u64)> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = stamp(&path);
        if now.is_some() && now == seen {
            continue;
        }
        seen = now;
        let read = path.clone();
        let result = tokio::task::spawn_blocking(move || read_endpoints_file(&read))
            .await
            .unwrap_or_else(|e| Err(format!("file task failed: {e}")));
        match result {
            Ok(list) => {
                let n = list.len();
                if proxy.discovered.record(&cluster, &key, list) {
                    tracing::info!(cluster = %cluster, endpoints = n, file = %path.display(), "endpoints file changed");
                    let _ = proxy.refresh_endpoints(&cluster).await;
                }
            }
            Err(msg) => {
                tracing::warn!(cluster = %cluster, file = %path.display(), error = %msg, "endpoints file cannot be used; keeping the last good endpoints");
                proxy.discovered.record_error(&cluster, &key, msg);
            }
        }
    }
}

/// A file's identity for change detection: modification time, size, inode.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Shortest time between two resolutions of one cluster, whatever the TTL.
pub const MIN_DNS_REFRESH: Duration = Duration::from_millis(500);

/// When to resolve again after a success: `refresh`, or sooner when the
/// answer's TTL runs out first (not sooner than [`MIN_DNS_REFRESH`]).
pub fn next_refresh(refresh: Duration, respect_ttl: bool, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(ttl) if respect_ttl => ttl.clamp(MIN_DNS_REFRESH, refresh.max(MIN_DNS_REFRESH)),
        _ => refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(s(5), true, Some(s(2))), s(2));
        assert_eq!(next_refresh(s(5), true, Some(s(300))), s(5));
        assert_eq!(next_refresh(s(5), true, Some(s(0))), MIN_DNS_REFRESH);
        assert_eq!(next_refresh(s(5), false, Some(s(2))), s(5));
        assert_eq!(next_refresh(s(5), true, None), s(5));
    }

    #[test]
    fn a_failure_keeps_the_last_good_list() {
        let d = Discovered::default();
        let list = vec![Found {
            addr: "127.0.0.1:1".parse().unwrap(),
            hostname: None,
            weight: 1,
            metadata: Vec::new(),
        }];
        assert!(d.record("c", "dns", list.clone()));
        assert!(!d.record("c", "dns", list.clone()), "same list: no change");
        d.record_error("c", "dns", "SERVFAIL".into());
        let s = d.state("c").unwrap();
        assert_eq!(s.endpoints, Some(list));
        assert_eq!((s.updates, s.errors), (1, 1));
        assert_eq!(s.last_error.as_deref(), Some("SERVFAIL"));
        // A different source starts over.
        d.record_error("c", "file", "missing".into());
        assert_eq!(d.state("c").unwrap().endpoints, None);
    }

    #[test]
    fn endpoints_files_are_bounded_and_errors_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("ringmesh-discovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(crate::limits::MAX_FILE_BYTES as u64 + 10)
            .unwrap();
        assert!(
            read_endpoints_file(&big)
                .unwrap_err()
                .contains("larger than 16 MiB")
        );
        let missing = read_endpoints_file(&dir.join("missing.yaml")).unwrap_err();
        assert!(missing.starts_with("cannot read"), "{missing}");
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "- 127.0.0.1:1\n- nope\n").unwrap();
        assert!(
            read_endpoints_file(&bad)
                .unwrap_err()
                .contains("endpoints[1]")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endpoint_lists_parse_as_a_list_or_a_mapping() {
        let a = parse_endpoint_list(
            "f",
            "- 127.0.0.1:1\n- { address: 127.0.0.1:2, weight: 3, metadata: { version: v2 } }\n",
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].metadata, vec![("version".to_owned(), "v2".to_owned())]);
        let b = parse_endpoint_list("f", "{\"endpoints\": [\"127.0.0.1:1\"]}").unwrap();
        assert_eq!(b.len(), 1);
        // Nothing at all is a mistake (a truncated file, a lost body);
        // `[]` is the way to say "no endpoints".
        for empty in ["", "\n", "# only a comment\n"] {
            let err = parse_endpoint_list("f", empty).unwrap_err();
            assert!(err.to_string().contains("send `[]`"), "{err}");
        }
        assert!(parse_endpoint_list("f", "[]").unwrap().is_empty());
        let err = parse_endpoint_list("f", "- 127.0.0.1:99999\n").unwrap_err();
        assert_eq!(err.0[0].path, "endpoints[0]");
    }
}
