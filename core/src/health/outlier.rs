//! Outlier detection with Envoy's semantics and defaults.
//!
//! Consecutive-failure detectors run inline, on the worker that saw the
//! failure: the shared per-endpoint streak is bumped and, at the threshold,
//! the endpoint is ejected at once for every core. Success-rate and
//! failure-percentage detectors run in the periodic sweep on the health
//! thread, which also returns ejected endpoints when their time is up and
//! lowers the ejection multiplier of endpoints that stayed healthy.
//!
//! For TCP every failure is local-origin (connect refused or timed out, TLS
//! handshake failed, reset by the endpoint). As in Envoy, unless
//! `split_external_local_origin_errors` is set those count as server
//! errors, feeding `consecutive_5xx`, `consecutive_gateway_failure` and the
//! success rate; with it set they feed `consecutive_local_origin_failure`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ClusterHealth, EJECTED, EndpointHealth, Outcome, lock, now_ms};

/// The detector behind an ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
    /// `success_rate_*`.
    SuccessRate,
    /// `failure_percentage_*`.
    FailurePercentage,
}

impl Detector {
    /// Every detector, in index order.
    pub const ALL: [Detector; 5] = [
        Detector::Consecutive5xx,
        Detector::ConsecutiveGatewayFailure,
        Detector::ConsecutiveLocalOriginFailure,
        Detector::SuccessRate,
        Detector::FailurePercentage,
    ];

    /// The metric label and API value (Envoy's stat suffixes).
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Consecutive5xx => "consecutive_5xx",
            Detector::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Detector::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Detector::SuccessRate => "success_rate",
            Detector::FailurePercentage => "failure_percentage",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(i: u8) -> Option<Detector> {
        Detector::ALL.get(usize::from(i)).copied()
    }
}

/// A cluster's outlier-detection settings. Defaults are Envoy's.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive server errors (for TCP: any failure) before ejection.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (for TCP: any failure) before ejection.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures, when split from server errors.
    pub consecutive_local_origin_failure: u32,
    /// Count local-origin failures apart from server errors.
    pub split_external_local_origin_errors: bool,
    /// How often the sweep runs.
    pub interval: Duration,
    /// Ejection time = base x ejections in a row.
    pub base_ejection_time: Duration,
    /// Cap on the ejection time (at least `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// Random extra ejection time, up to this.
    pub max_ejection_time_jitter: Duration,
    /// Share of endpoints that may be ejected at once (at least one may).
    pub max_ejection_percent: u32,
    /// Percent chance that a detected outlier is ejected, per detector.
    pub enforcing_consecutive_5xx: u32,
    /// See `enforcing_consecutive_5xx`.
    pub enforcing_consecutive_gateway_failure: u32,
    /// See `enforcing_consecutive_5xx`.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// See `enforcing_consecutive_5xx`.
    pub enforcing_success_rate: u32,
    /// See `enforcing_consecutive_5xx`.
    pub enforcing_failure_percentage: u32,
    /// Endpoints with enough volume needed for the success-rate check.
    pub success_rate_minimum_hosts: u32,
    /// Attempts in one interval for an endpoint to count.
    pub success_rate_request_volume: u32,
    /// Ejected below mean - factor/1000 x stdev.
    pub success_rate_stdev_factor: u32,
    /// Ejected at or above this failure percentage.
    pub failure_percentage_threshold: u32,
    /// Endpoints with enough volume needed for the failure-percentage check.
    pub failure_percentage_minimum_hosts: u32,
    /// Attempts in one interval for an endpoint to count.
    pub failure_percentage_request_volume: u32,
    /// A passing active health check returns an ejected endpoint.
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_failure_percentage: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}

impl OutlierDetection {
    /// The consecutive detectors a local-origin failure feeds, with their
    /// thresholds and enforcement.
    fn consecutive_detectors(&self) -> [(Detector, u32, u32); 2] {
        if self.split_external_local_origin_errors {
            [
                (
                    Detector::ConsecutiveLocalOriginFailure,
                    self.consecutive_local_origin_failure,
                    self.enforcing_consecutive_local_origin_failure,
                ),
                // Unused slot: a zero threshold never fires.
                (Detector::ConsecutiveLocalOriginFailure, 0, 0),
            ]
        } else {
            [
                (
                    Detector::Consecutive5xx,
                    self.consecutive_5xx,
                    self.enforcing_consecutive_5xx,
                ),
                (
                    Detector::ConsecutiveGatewayFailure,
                    self.consecutive_gateway_failure,
                    self.enforcing_consecutive_gateway_failure,
                ),
            ]
        }
    }

    fn enforcing(&self, detector: Detector) -> u32 {
        match detector {
            Detector::Consecutive5xx => self.enforcing_consecutive_5xx,
            Detector::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            Detector::ConsecutiveLocalOriginFailure => {
                self.enforcing_consecutive_local_origin_failure
            }
            Detector::SuccessRate => self.enforcing_success_rate,
            Detector::FailurePercentage => self.enforcing_failure_percentage,
        }
    }
}

/// Records the outcome of one attempt on `core`. Called on the hot path:
/// a success touches only the core's own counter unless a failure streak
/// is open.
#[inline]
pub(crate) fn record(
    cluster: &ClusterHealth,
    endpoint: &EndpointHealth,
    config: Option<&OutlierDetection>,
    core: usize,
    outcome: Outcome,
) {
    let stats = endpoint.cores.get(core);
    match outcome {
        Outcome::Success => {
            stats.successes.inc();
            for streak in endpoint.consecutive() {
                if streak.load(Ordering::Relaxed) != 0 {
                    streak.store(0, Ordering::Relaxed);
                }
            }
        }
        Outcome::ServerError { gateway } => {
            stats.failures.inc();
            let Some(config) = config else { return };
            // A 5xx feeds consecutive_5xx; a gateway error (502/503/504) also
            // feeds consecutive_gateway_failure, which any other 5xx resets
            // (Envoy's detector).
            let gateway_slot = &endpoint.consecutive()[Detector::ConsecutiveGatewayFailure.index()];
            if !gateway && gateway_slot.load(Ordering::Relaxed) != 0 {
                gateway_slot.store(0, Ordering::Relaxed);
            }
            let detectors = [
                (Detector::Consecutive5xx, config.consecutive_5xx, true),
                (
                    Detector::ConsecutiveGatewayFailure,
                    config.consecutive_gateway_failure,
                    gateway,
                ),
            ];
            for (detector, threshold, counts) in detectors {
                if !counts || threshold == 0 {
                    continue;
                }
                let slot = &endpoint.consecutive()[detector.index()];
                let streak = slot.fetch_add(1, Ordering::Relaxed) + 1;
                if streak == threshold {
                    eject(cluster, endpoint, config, detector, core as u64);
                }
            }
        }
        Outcome::LocalOriginFailure => {
            stats.failures.inc();
            let Some(config) = config else { return };
            for (detector, threshold, _) in config.consecutive_detectors() {
                if threshold == 0 {
                    continue;
                }
                let slot = &endpoint.consecutive()[detector.index().min(2)];
                let streak = slot.fetch_add(1, Ordering::Relaxed) + 1;
                if streak == threshold {
                    eject(cluster, endpoint, config, detector, core as u64);
                }
            }
        }
    }
}

/// Ejects `endpoint` if the detector is enforcing and `max_ejection_percent`
/// allows it. `salt` varies the enforcement draw.
pub(crate) fn eject(
    cluster: &ClusterHealth,
    endpoint: &EndpointHealth,
    config: &OutlierDetection,
    detector: Detector,
    salt: u64,
) -> bool {
    let counters = &cluster.outlier;
    counters.detected[detector.index()].fetch_add(1, Ordering::Relaxed);
    let enforcing = config.enforcing(detector);
    if enforcing < 100 && (mix(now_ms() ^ salt.rotate_left(17)) % 100) as u32 >= enforcing {
        return false;
    }
    let _decision = lock(&cluster.ejection);
    if endpoint.is_ejected() {
        return false;
    }
    let (ejected, total) = {
        let members = lock(&cluster.members);
        let ejected = members.iter().filter(|e| e.is_ejected()).count();
        (ejected, members.len())
    };
    // Envoy's rule: refused once the ejected share has reached the limit,
    // so one endpoint can always be ejected (unless the limit is 0).
    if ejected as u64 * 100 >= u64::from(config.max_ejection_percent) * total as u64 {
        counters.overflow.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.addr, detector = detector.as_str(),
            ejected, total, max_ejection_percent = config.max_ejection_percent,
            "outlier not ejected: max_ejection_percent reached");
        return false;
    }
    let times = endpoint.multiplier.fetch_add(1, Ordering::Relaxed) + 1;
    let cap = config.max_ejection_time.max(config.base_ejection_time);
    let mut duration = config.base_ejection_time.saturating_mul(times).min(cap);
    let jitter_ms = config.max_ejection_time_jitter.as_millis() as u64;
    if jitter_ms > 0 {
        duration += Duration::from_millis(mix(now_ms() ^ salt) % (jitter_ms + 1));
    }
    endpoint
        .ejected_until_ms
        .store(now_ms() + duration.as_millis() as u64, Ordering::Relaxed);
    endpoint
        .ejected_by
        .store(detector.index() as u8, Ordering::Relaxed);
    endpoint.ejections.fetch_add(1, Ordering::Relaxed);
    endpoint.set_flag(EJECTED, true);
    counters.enforced[detector.index()].fetch_add(1, Ordering::Relaxed);
    cluster.recount();
    tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.addr, detector = detector.as_str(),
        ejection_ms = duration.as_millis() as u64, times_ejected = times, "endpoint ejected");
    true
}

/// Returns an ejected endpoint to rotation and clears its streaks.
pub(crate) fn uneject(cluster: &ClusterHealth, endpoint: &EndpointHealth, why: &str) {
    let _decision = lock(&cluster.ejection);
    if endpoint.set_flag(EJECTED, false) {
        for s in endpoint.consecutive() {
            s.store(0, Ordering::Relaxed);
        }
        endpoint.ejected_until_ms.store(0, Ordering::Relaxed);
        cluster.recount();
        tracing::info!(cluster = %cluster.name, endpoint = %endpoint.addr, why, "endpoint returned to rotation");
    }
}

/// Returns endpoints whose ejection time is over. Runs often (every tick of
/// the health thread) so they return on time.
pub(crate) fn uneject_due(cluster: &ClusterHealth) {
    let now = now_ms();
    for e in cluster.members() {
        if e.is_ejected() && e.ejected_until_ms.load(Ordering::Relaxed) <= now {
            uneject(cluster, &e, "ejection time elapsed");
        }
    }
}

/// The interval analysis: success-rate and failure-percentage detection
/// over the attempts since the previous sweep, and the multiplier decay of
/// endpoints that stayed in rotation.
pub(crate) fn sweep(cluster: &ClusterHealth, config: &OutlierDetection) {
    let members = cluster.members();
    // Attempts of each member during this interval.
    let volumes: Vec<(u64, u64)> = members
        .iter()
        .map(|e| {
            let (s, f) = e.outcome_sums();
            let mut last = lock(&e.last_sweep);
            let delta = (s.wrapping_sub(last.0), f.wrapping_sub(last.1));
            *last = (s, f);
            delta
        })
        .collect();
    for e in &members {
        if !e.is_ejected() {
            let m = e.multiplier.load(Ordering::Relaxed);
            if m > 0 {
                e.multiplier.store(m - 1, Ordering::Relaxed);
            }
        }
    }
    for (i, rate) in success_rate_outliers(&volumes, config) {
        tracing::debug!(cluster = %cluster.name, endpoint = %members[i].addr, success_rate = rate, "success-rate outlier");
        eject(
            cluster,
            &members[i],
            config,
            Detector::SuccessRate,
            i as u64,
        );
    }
    for i in failure_percentage_outliers(&volumes, config) {
        eject(
            cluster,
            &members[i],
            config,
            Detector::FailurePercentage,
            i as u64,
        );
    }
}

/// Indices (with their success rate, %) below mean - factor x stdev among
/// endpoints with at least `success_rate_request_volume` attempts, when at
/// least `success_rate_minimum_hosts` have that many.
pub(crate) fn success_rate_outliers(
    volumes: &[(u64, u64)],
    config: &OutlierDetection,
) -> Vec<(usize, f64)> {
    let rated: Vec<(usize, f64)> = volumes
        .iter()
        .enumerate()
        .filter(|(_, (s, f))| s + f >= u64::from(config.success_rate_request_volume.max(1)))
        .map(|(i, (s, f))| (i, 100.0 * *s as f64 / (s + f) as f64))
        .collect();
    if rated.is_empty() || rated.len() < config.success_rate_minimum_hosts as usize {
        return Vec::new();
    }
    let n = rated.len() as f64;
    let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - f64::from(config.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
    rated.into_iter().filter(|(_, r)| *r < threshold).collect()
}

/// Indices whose failure percentage is at least the threshold, among
/// endpoints with enough volume, when enough endpoints have it.
pub(crate) fn failure_percentage_outliers(
    volumes: &[(u64, u64)],
    config: &OutlierDetection,
) -> Vec<usize> {
    let rated: Vec<(usize, f64)> = volumes
        .iter()
        .enumerate()
        .filter(|(_, (s, f))| s + f >= u64::from(config.failure_percentage_request_volume.max(1)))
        .map(|(i, (s, f))| (i, 100.0 * *f as f64 / (s + f) as f64))
        .collect();
    if rated.is_empty() || rated.len() < config.failure_percentage_minimum_hosts as usize {
        return Vec::new();
    }
    rated
        .into_iter()
        .filter(|(_, p)| *p >= f64::from(config.failure_percentage_threshold))
        .map(|(i, _)| i)
        .collect()
}

/// A cheap 64-bit mixer (splitmix64's finaliser) for enforcement draws and
/// jitter; quality matters little here.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ClusterHealth;
    use std::net::SocketAddr;

    fn cluster(n: u16) -> (ClusterHealth, Vec<std::sync::Arc<EndpointHealth>>) {
        let c = ClusterHealth::new("c", 2);
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let m = c.set_members(&addrs);
        (c, m)
    }

    fn fail(c: &ClusterHealth, e: &EndpointHealth, cfg: &OutlierDetection, n: u32) {
        for i in 0..n {
            record(
                c,
                e,
                Some(cfg),
                (i % 2) as usize,
                Outcome::LocalOriginFailure,
            );
        }
    }

    #[test]
    fn consecutive_failures_eject_at_the_threshold_on_any_core() {
        let (c, m) = cluster(2);
        let cfg = OutlierDetection {
            max_ejection_percent: 50,
            ..Default::default()
        };
        fail(&c, &m[0], &cfg, 4);
        assert!(m[0].is_available());
        fail(&c, &m[0], &cfg, 1);
        assert!(m[0].is_ejected());
        assert_eq!(c.membership(), (1, 2));
        assert_eq!(
            c.outlier.enforced[Detector::Consecutive5xx.index()].load(Ordering::Relaxed),
            1
        );
        // The gateway detector saw it too, but does not enforce by default.
        assert_eq!(
            c.outlier.detected[Detector::ConsecutiveGatewayFailure.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let (c, m) = cluster(2);
        let cfg = OutlierDetection::default();
        fail(&c, &m[0], &cfg, 4);
        record(&c, &m[0], Some(&cfg), 0, Outcome::Success);
        fail(&c, &m[0], &cfg, 4);
        assert!(m[0].is_available());
    }

    #[test]
    fn max_ejection_percent_allows_one_then_overflows() {
        let (c, m) = cluster(3);
        let cfg = OutlierDetection::default(); // 10%
        for e in &m {
            fail(&c, e, &cfg, 5);
        }
        assert_eq!(c.ejected_count(), 1);
        assert_eq!(c.outlier.overflow.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ejection_time_grows_with_the_multiplier_and_is_capped() {
        let (c, m) = cluster(1);
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(75),
            ..Default::default()
        };
        let mut remaining = Vec::new();
        for _ in 0..3 {
            fail(&c, &m[0], &cfg, 5);
            remaining.push(m[0].view().ejection_remaining.unwrap().as_secs_f64());
            uneject(&c, &m[0], "test");
        }
        assert!((29.0..=30.0).contains(&remaining[0]), "{remaining:?}");
        assert!((59.0..=60.0).contains(&remaining[1]), "{remaining:?}");
        assert!((74.0..=75.0).contains(&remaining[2]), "{remaining:?}");
    }

    #[test]
    fn split_local_origin_errors_feed_their_own_detector() {
        let (c, m) = cluster(2);
        let cfg = OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 3,
            max_ejection_percent: 100,
            ..Default::default()
        };
        fail(&c, &m[0], &cfg, 3);
        assert_eq!(
            m[0].view().ejected_by,
            Some(Detector::ConsecutiveLocalOriginFailure)
        );
        assert_eq!(
            c.outlier.detected[Detector::Consecutive5xx.index()].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn success_rate_finds_the_failing_endpoint_among_healthy_ones() {
        let cfg = OutlierDetection::default();
        // Five endpoints at ~100%, one at 70%.
        let mut v = vec![(200, 0), (199, 1), (200, 0), (198, 2), (200, 0)];
        v.push((140, 60));
        let out = success_rate_outliers(&v, &cfg);
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5]);
        // Too little volume or too few hosts: no verdict.
        assert!(success_rate_outliers(&v[..4], &cfg).is_empty());
        let low: Vec<_> = v.iter().map(|(s, f)| (s / 10, f / 10)).collect();
        assert!(success_rate_outliers(&low, &cfg).is_empty());
    }

    #[test]
    fn failure_percentage_uses_an_absolute_threshold() {
        let cfg = OutlierDetection::default();
        let v = vec![(60, 0), (60, 0), (60, 0), (60, 0), (5, 55), (40, 40)];
        assert_eq!(failure_percentage_outliers(&v, &cfg), [4]);
    }

    #[test]
    fn sweep_decays_the_multiplier_of_healthy_endpoints() {
        let (c, m) = cluster(1);
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            ..Default::default()
        };
        fail(&c, &m[0], &cfg, 5);
        uneject(&c, &m[0], "test");
        assert_eq!(m[0].multiplier.load(Ordering::Relaxed), 1);
        sweep(&c, &cfg);
        assert_eq!(m[0].multiplier.load(Ordering::Relaxed), 0);
    }
}
