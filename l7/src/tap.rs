//! Live request records for `GET /tap` (Linkerd's `viz tap`): while a
//! tap is open, each finished request that matches its filter is copied
//! into the tap's bounded queue. A slow reader only loses records (counted
//! in its own stream); a worker never waits, and with no tap open the cost
//! is one relaxed load per request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Records a tap may hold before dropping.
pub const QUEUE: usize = 1024;

/// What a tap wants to see; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    /// Listener name.
    pub listener: Option<String>,
    /// Route name.
    pub route: Option<String>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Status: an exact code, or a class (`5`: 5xx).
    pub status: Option<StatusFilter>,
}

/// A status condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// This code.
    Code(u16),
    /// This class (the hundreds digit: 5 for 5xx).
    Class(u16),
}

impl StatusFilter {
    /// Parses `503` or `5xx`.
    pub fn parse(text: &str) -> Option<StatusFilter> {
        match text.as_bytes() {
            [d, b'x', b'x'] if (b'1'..=b'5').contains(d) => {
                Some(StatusFilter::Class(u16::from(d - b'0')))
            }
            _ => text
                .parse()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .map(StatusFilter::Code),
        }
    }

    fn holds(self, status: u16) -> bool {
        match self {
            StatusFilter::Code(c) => status == c,
            StatusFilter::Class(c) => status / 100 == c,
        }
    }
}

/// One finished request, as a tap shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TapEvent {
    /// When it ended, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub listener: String,
    pub route: String,
    pub cluster: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// 0: nothing was answered.
    pub status: u16,
    pub duration_ms: f64,
    pub flags: String,
    pub upstream: String,
    pub attempts: u32,
    /// The client's address.
    pub peer: String,
    /// The client's SPIFFE ID (mTLS), if any.
    pub identity: String,
    pub request_id: String,
    pub trace_id: String,
}

/// What the filter needs of a request before its record is built.
#[derive(Debug, Clone, Copy)]
pub struct TapView<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub cluster: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
}

impl TapFilter {
    /// Whether a request matches.
    pub fn matches(&self, v: &TapView<'_>) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.listener, v.listener)
            && is(&self.route, v.route)
            && is(&self.cluster, v.cluster)
            && is(&self.method, v.method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| v.path.starts_with(p))
            && self.status.is_none_or(|s| s.holds(v.status))
    }
}

/// One open tap.
#[derive(Debug)]
pub struct Tap {
    filter: TapFilter,
    tx: tokio::sync::mpsc::Sender<TapEvent>,
    /// Records dropped because the reader was slow.
    pub dropped: AtomicU64,
}

/// Every open tap of the process.
#[derive(Debug, Default)]
pub struct TapHub {
    active: AtomicUsize,
    taps: Mutex<Vec<Arc<Tap>>>,
}

fn lock(m: &Mutex<Vec<Arc<Tap>>>) -> MutexGuard<'_, Vec<Arc<Tap>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open tap's handle: records arrive on `events`; dropping it closes
/// the tap.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<TapHub>,
    /// The tap (its drop counter).
    pub tap: Arc<Tap>,
    /// The records.
    pub events: tokio::sync::mpsc::Receiver<TapEvent>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut taps = lock(&self.hub.taps);
        taps.retain(|t| !Arc::ptr_eq(t, &self.tap));
        self.hub.active.store(taps.len(), Ordering::Relaxed);
    }
}

impl TapHub {
    /// Opens a tap with `filter`.
    pub fn subscribe(self: &Arc<Self>, filter: TapFilter) -> Subscription {
        let (tx, events) = tokio::sync::mpsc::channel(QUEUE);
        let tap = Arc::new(Tap {
            filter,
            tx,
            dropped: AtomicU64::new(0),
        });
        let mut taps = lock(&self.taps);
        taps.push(tap.clone());
        self.active.store(taps.len(), Ordering::Relaxed);
        Subscription {
            hub: self.clone(),
            tap,
            events,
        }
    }

    /// Taps open now.
    pub fn open(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether any tap is open (the per-request check).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Offers a finished request to every open tap whose filter matches;
    /// `event` builds its record, once, only if one does.
    pub fn publish(&self, view: &TapView<'_>, event: impl FnOnce() -> TapEvent) {
        let taps = lock(&self.taps);
        let mut built: Option<TapEvent> = None;
        let mut event = Some(event);
        for tap in taps.iter().filter(|t| t.filter.matches(view)) {
            let record = match &built {
                Some(e) => e.clone(),
                None => {
                    let Some(make) = event.take() else { break };
                    let e = make();
                    built = Some(e.clone());
                    e
                }
            };
            if tap.tx.try_send(record).is_err() {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(route: &str, status: u16) -> TapView<'_> {
        TapView {
            listener: "web",
            route,
            cluster: "app",
            method: "GET",
            path: "/api/items",
            status,
        }
    }

    fn event() -> TapEvent {
        TapEvent {
            unix_ms: 1,
            listener: "web".into(),
            route: "r".into(),
            cluster: "app".into(),
            method: "GET".into(),
            authority: "a".into(),
            path: "/".into(),
            status: 200,
            duration_ms: 1.0,
            flags: "-".into(),
            upstream: "-".into(),
            attempts: 1,
            peer: "127.0.0.1".into(),
            identity: "-".into(),
            request_id: "-".into(),
            trace_id: "-".into(),
        }
    }

    #[test]
    fn filters_hold_only_for_matching_requests() {
        let f = TapFilter {
            route: Some("api".into()),
            status: StatusFilter::parse("5xx"),
            path_prefix: Some("/api".into()),
            ..TapFilter::default()
        };
        assert!(f.matches(&view("api", 503)));
        assert!(!f.matches(&view("api", 200)));
        assert!(!f.matches(&view("web", 503)));
        assert_eq!(StatusFilter::parse("404"), Some(StatusFilter::Code(404)));
        assert_eq!(StatusFilter::parse("6xx"), None);
        assert_eq!(StatusFilter::parse("99"), None);
    }

    #[test]
    fn a_slow_reader_loses_records_and_a_closed_tap_costs_nothing() {
        let hub = Arc::new(TapHub::default());
        assert!(!hub.is_active());
        let mut sub = hub.subscribe(TapFilter::default());
        assert!(hub.is_active());
        for _ in 0..QUEUE + 10 {
            hub.publish(&view("r", 200), event);
        }
        assert_eq!(sub.tap.dropped.load(Ordering::Relaxed), 10);
        assert_eq!(sub.events.try_recv().map(|e| e.status), Ok(200));
        drop(sub);
        assert!(!hub.is_active());
    }
}
