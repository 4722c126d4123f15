//! Where a request goes. Today a listener has one route that takes every
//! request to the listener's `cluster`; the route table (matches, splits,
//! rewrites) slots in here, and the request flow in `server.rs` already asks
//! this module for a route per request.

use std::sync::Arc;
use std::time::Duration;

use ringmesh_core::Cluster;

use crate::metrics::{RouteStats, UpstreamStats};

/// Where a routed request goes, with the upstream's HTTP settings.
#[derive(Debug)]
pub struct Target {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The cluster's HTTP statistics.
    pub stats: Arc<UpstreamStats>,
    /// The cluster's connection pool settings.
    pub pool: crate::pool::PoolSettings,
}

/// One route of an HTTP listener.
#[derive(Debug)]
pub struct Route {
    /// Name (metric label `route`, access-log field); its index when unnamed.
    pub name: Arc<str>,
    /// Where matching requests go.
    pub target: Target,
    /// From the whole request received to the whole response head (504,
    /// flag `UT`). Envoy's route timeout, default 15 s.
    pub timeout: Duration,
    /// Requests of this listener to this cluster.
    pub stats: Arc<RouteStats>,
}

/// A listener's routes, first match wins.
#[derive(Debug)]
pub struct RouteTable {
    /// The routes in order.
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route for a request. Every request matches the first (and
    /// only) route until route matching arrives.
    #[inline]
    pub fn route(&self) -> Option<&Route> {
        self.routes.first()
    }
}
