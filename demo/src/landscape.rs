//! The demo's landscape: which processes run where, and the desired state
//! the control plane starts from (v1 of each service deployed, v2 declared
//! but not deployed).

use std::net::SocketAddr;

/// The control plane's address (away from the defaults, so a demo and a
/// mesh of one's own can run side by side).
pub const CONTROL: &str = "127.0.0.1:15710";
/// The mesh-wide dashboard (the control plane's).
pub const DASHBOARD: &str = "127.0.0.1:15711";
/// The ingress gateway, where a user (and the background load) calls.
pub const GATEWAY: &str = "127.0.0.1:8080";

/// One workload instance: its app and its sidecar.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Node name (`review-v1`).
    pub node: &'static str,
    /// Service and workload.
    pub service: &'static str,
    /// Version label.
    pub version: &'static str,
    /// Slot: decides its ports.
    pub slot: u16,
}

impl Instance {
    fn base(&self) -> u16 {
        15720 + self.slot * 10
    }

    /// Where its app listens.
    pub fn app(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base()))
    }

    /// Its sidecar's admin API (and dashboard).
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base() + 1))
    }

    /// Its sidecar's outbound listener.
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base() + 2))
    }

    /// Its sidecar's inbound (mTLS) listener.
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base() + 6))
    }
}

/// The v1 instances the demo starts with.
pub const V1: [Instance; 3] = [
    Instance {
        node: "product-v1",
        service: "product",
        version: "v1",
        slot: 0,
    },
    Instance {
        node: "recommendation-v1",
        service: "recommendation",
        version: "v1",
        slot: 1,
    },
    Instance {
        node: "review-v1",
        service: "review",
        version: "v1",
        slot: 2,
    },
];

/// The v2 instances `step deploy-v2` starts.
pub const V2: [Instance; 2] = [
    Instance {
        node: "recommendation-v2",
        service: "recommendation",
        version: "v2",
        slot: 3,
    },
    Instance {
        node: "review-v2",
        service: "review",
        version: "v2",
        slot: 4,
    },
];

/// The gateway's own sidecar (no app).
pub const GATEWAY_PROXY: Instance = Instance {
    node: "ingress-1",
    service: "ingress",
    version: "v1",
    slot: 5,
};

/// The services' part of the desired state with `review` and
/// `recommendation` routed as given (YAML route lists).
pub fn mesh(review_routes: &str, review_extra: &str, recommendation_routes: &str) -> String {
    format!(
        "\
# The demo's desired state (ringmesh demo): the talk's landscape.
mesh:
  trust_domain: demo.local
  lease: 10s
  tracing: {{ sampling: 100 }}
services:
  - name: product
    port: 9080
    versions: [v1]
    calls: [recommendation, review]
  - name: recommendation
    port: 9081
    versions: [v1, v2]
    authz: {{ allow: [product] }}
    routes: {recommendation_routes}
  - name: review
    port: 9082
    versions: [v1, v2]
    authz: {{ allow: [product] }}
    routes: {review_routes}
{review_extra}gateways:
  - name: ingress
    listen: {GATEWAY}
    routes:
      - name: product
        match: {{ path_prefix: /product }}
        cluster: product
"
    )
}

/// The state the demo starts from (and `step reset` returns to): every
/// call to v1.
pub fn initial_mesh() -> String {
    mesh(
        "[{ name: v1, cluster: review-v1 }]",
        "",
        "[{ name: v1, cluster: recommendation-v1 }]",
    )
}
