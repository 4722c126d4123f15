//! The control plane's own metrics (`GET /metrics`, admin token): the
//! proxies by sync state, what was pushed and answered, certificates
//! issued and refused, changes to the desired state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ringmesh_control::mesh::protocol::SyncState;
use ringmesh_control::prometheus::Exposition;

use crate::Plane;

/// Counters of the control plane (single process, few events: plain
/// atomics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Pushes sent to watches.
    pub pushes: AtomicU64,
    /// Pushes ACKed.
    pub acks: AtomicU64,
    /// Pushes NACKed.
    pub nacks: AtomicU64,
    /// Watches refused (identity, version, node limit).
    pub watches_refused: AtomicU64,
    /// Workload certificates issued.
    pub certificates_issued: AtomicU64,
    /// Certificate requests refused (no or bad credentials, another
    /// identity, a bad CSR).
    pub certificates_refused: AtomicU64,
    /// Desired-state changes stored.
    pub updates_applied: AtomicU64,
    /// Desired-state changes refused.
    pub updates_rejected: AtomicU64,
}

/// Renders the exposition.
pub fn render(plane: &Plane) -> String {
    let c = &plane.counters;
    let mut o = Exposition::default();
    o.header(
        "ringmesh_control_desired_version",
        "gauge",
        "Stored version of the desired state in force.",
    );
    o.sample(
        "ringmesh_control_desired_version",
        &[],
        plane.registry.desired().version,
    );
    let rows = plane.registry.status();
    o.header(
        "ringmesh_control_proxies",
        "gauge",
        "Proxies known, by sync state (synced, stale, nack, not_connected).",
    );
    for (state, label) in [
        (SyncState::Synced, "synced"),
        (SyncState::Stale, "stale"),
        (SyncState::Nack, "nack"),
        (SyncState::NotConnected, "not_connected"),
    ] {
        let n = rows.iter().filter(|r| r.state == state).count();
        o.sample("ringmesh_control_proxies", &[("state", label)], n);
    }
    o.header(
        "ringmesh_control_pushes_total",
        "counter",
        "Configs sent to proxies' watches.",
    );
    o.sample("ringmesh_control_pushes_total", &[], c.pushes.load(Relaxed));
    o.header(
        "ringmesh_control_push_answers_total",
        "counter",
        "Proxies' answers to pushes, by result (ack, nack).",
    );
    o.sample(
        "ringmesh_control_push_answers_total",
        &[("result", "ack")],
        c.acks.load(Relaxed),
    );
    o.sample(
        "ringmesh_control_push_answers_total",
        &[("result", "nack")],
        c.nacks.load(Relaxed),
    );
    o.header(
        "ringmesh_control_watches_refused_total",
        "counter",
        "Watch polls refused (another identity, an undeclared version, too many nodes).",
    );
    o.sample(
        "ringmesh_control_watches_refused_total",
        &[],
        c.watches_refused.load(Relaxed),
    );
    o.header(
        "ringmesh_control_certificates_total",
        "counter",
        "Workload certificate requests, by result (issued, refused).",
    );
    o.sample(
        "ringmesh_control_certificates_total",
        &[("result", "issued")],
        c.certificates_issued.load(Relaxed),
    );
    o.sample(
        "ringmesh_control_certificates_total",
        &[("result", "refused")],
        c.certificates_refused.load(Relaxed),
    );
    o.header(
        "ringmesh_control_updates_total",
        "counter",
        "Changes to the desired state, by result (applied, rejected).",
    );
    o.sample(
        "ringmesh_control_updates_total",
        &[("result", "applied")],
        c.updates_applied.load(Relaxed),
    );
    o.sample(
        "ringmesh_control_updates_total",
        &[("result", "rejected")],
        c.updates_rejected.load(Relaxed),
    );
    o.finish()
}
