//! Compiling a validated [`Document`] into the data plane's [`Snapshot`]:
//! resolve endpoint host names, attach the long-lived stats objects, build
//! per-core balancers. Resolution failures are config errors with positions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ringmesh_core::balance::RoundRobin;
use ringmesh_core::{Cluster, Endpoint, ListenerConfig, Snapshot, StatsRegistry};

use crate::decode::{ConfigErrors, Decoder};
use crate::model::Document;

/// Builds snapshot `version` of `doc` for an engine with `workers` cores.
/// Host names are resolved now (blocking `getaddrinfo`): call this off the
/// data plane.
pub fn compile(
    file: &str,
    doc: &Document,
    version: u64,
    stats: &StatsRegistry,
    workers: usize,
) -> Result<Snapshot, ConfigErrors> {
    let mut d = Decoder::new(file);
    let mut clusters: HashMap<&str, Arc<Cluster>> = HashMap::new();
    let mut ordered = Vec::with_capacity(doc.clusters.len());
    for c in &doc.clusters {
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in &c.endpoints {
            if let Ok(ip) = e.host.parse::<IpAddr>() {
                endpoints.push(Endpoint {
                    addr: SocketAddr::new(ip, e.port),
                    hostname: None,
                });
                continue;
            }
            let hostname: Arc<str> = Arc::from(e.host.as_str());
            match (e.host.as_str(), e.port).to_socket_addrs() {
                Ok(addrs) => {
                    let mut seen = Vec::new();
                    for addr in addrs {
                        if !seen.contains(&addr) {
                            seen.push(addr);
                            endpoints.push(Endpoint {
                                addr,
                                hostname: Some(hostname.clone()),
                            });
                        }
                    }
                    if seen.is_empty() {
                        d.error(
                            e.origin.mark,
                            &e.origin.path,
                            format!("host `{}` resolved to no address", e.host),
                        );
                    }
                }
                Err(err) => d.error(
                    e.origin.mark,
                    &e.origin.path,
                    format!("cannot resolve host `{}`: {err}", e.host),
                ),
            }
        }
        let cluster = Arc::new(Cluster {
            name: Arc::from(c.name.as_str()),
            endpoints,
            connect_timeout: c.connect_timeout,
            connect_attempts: c.connect_attempts,
            balancer: RoundRobin::new(workers),
            stats: stats.cluster(&c.name),
        });
        clusters.insert(c.name.as_str(), cluster.clone());
        ordered.push(cluster);
    }
    let mut listeners = Vec::with_capacity(doc.listeners.len());
    for l in &doc.listeners {
        // Validation guarantees the reference; stay defensive anyway.
        let Some(cluster) = clusters.get(l.cluster.as_str()) else {
            d.error(
                l.cluster_origin.mark,
                &l.cluster_origin.path,
                format!("unknown cluster `{}`", l.cluster),
            );
            continue;
        };
        listeners.push(Arc::new(ListenerConfig {
            name: Arc::from(l.name.as_str()),
            listen: l.listen,
            cluster: cluster.clone(),
            max_connections: l.max_connections,
            idle_timeout: l.idle_timeout,
            access_log: l.access_log,
            stats: stats.listener(&l.name),
        }));
    }
    d.finish(Snapshot {
        version,
        listeners,
        clusters: ordered,
    })
}
