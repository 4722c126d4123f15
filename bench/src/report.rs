//! Turning a merged run into output: a table for people, JSON for
//! machines, an HdrHistogram percentile distribution (`.hgrm`, the format
//! wrk2 prints and the HdrHistogram plotters read), and an SVG plot of
//! latency by percentile.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::runner::{LoadSpec, Workload};
use crate::stats::{ErrorCounts, ErrorKind, ThreadRecord};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `http-keepalive`, `http-churn`, `tcp-rr` or `tcp-stream`.
    pub workload: String,
    /// Target address.
    pub target: String,
    /// Generator threads.
    pub threads: usize,
    /// Connections.
    pub connections: usize,
    /// Measured seconds (warmup excluded).
    pub duration_secs: f64,
    /// Open-loop target rate, if any.
    pub rate: Option<f64>,
    /// Successful requests (round trips) in the window.
    pub requests: u64,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    /// Payload bytes written in the window (tcp-stream).
    pub bytes_sent: u64,
    /// Payload bytes read in the window (tcp-stream).
    pub bytes_received: u64,
    /// Payload throughput in Gbit/s (tcp-stream).
    pub gbit_per_sec: f64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Latency of successful requests (none for tcp-stream).
    pub latency_ms: Option<Latency>,
    /// The merged histogram (µs), for `.hgrm` and SVG output.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl Report {
    pub(crate) fn new(spec: &LoadSpec, threads: usize, r: ThreadRecord) -> Report {
        let secs = spec.duration.as_secs_f64();
        let h = &r.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        let latency_ms = (!h.is_empty()).then(|| Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        });
        Report {
            workload: spec.workload.name().into(),
            target: spec.target.to_string(),
            threads,
            connections: spec.connections,
            duration_secs: secs,
            rate: spec.rate,
            requests: r.requests,
            requests_per_sec: r.requests as f64 / secs,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            gbit_per_sec: if matches!(spec.workload, Workload::TcpStream { .. }) {
                (r.bytes_sent + r.bytes_received) as f64 * 8.0 / secs / 1e9
            } else {
                0.0
            },
            errors: r.errors,
            latency_ms,
            histogram: r.latency,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} -> {}: {} thread(s), {} connection(s), {:.1}s measured{}",
            self.workload,
            self.target,
            self.threads,
            self.connections,
            self.duration_secs,
            self.rate
                .map(|r| format!(", open loop at {r:.0} req/s"))
                .unwrap_or_default()
        );
        if self.workload == "tcp-stream" {
            let _ = writeln!(
                s,
                "  throughput   {:.2} Gbit/s ({} bytes sent, {} received)",
                self.gbit_per_sec, self.bytes_sent, self.bytes_received
            );
        } else {
            let _ = writeln!(
                s,
                "  throughput   {:.0} req/s ({} ok)",
                self.requests_per_sec, self.requests
            );
        }
        if let Some(l) = &self.latency_ms {
            let _ = writeln!(
                s,
                "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        let _ = write!(s, "  errors       {}", self.errors.total());
        if self.errors.total() > 0 {
            let parts: Vec<String> = ErrorKind::ALL
                .iter()
                .filter(|k| self.errors.get(**k) > 0)
                .map(|k| format!("{} {}", k.as_str(), self.errors.get(*k)))
                .collect();
            let _ = write!(s, " ({})", parts.join(", "));
        }
        s.push('\n');
        s
    }

    /// The HdrHistogram percentile distribution, values in milliseconds.
    pub fn hgrm(&self) -> String {
        hgrm(&self.histogram)
    }

    /// An SVG plot of latency (ms) by percentile on the usual
    /// 1/(1-percentile) log axis.
    pub fn svg(&self, title: &str) -> String {
        svg(&self.histogram, title)
    }
}

/// Formats a µs histogram as an HdrHistogram `.hgrm` file (values in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        return s;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:>12.3} {q:>14.12} {total:>10}",);
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    // Sub-buckets per bucket, as HdrHistogram defines them for the precision.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

/// Plots a µs histogram: x = percentile (log of 1/(1-p), 0% to 99.999%),
/// y = latency in ms (linear).
pub fn svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, hgt, left, right, top, bottom) = (800.0, 450.0, 70.0, 20.0, 40.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = hgt - top - bottom;
    let max_x = 5.0; // log10(1/(1-0.99999))
    let max_ms = (h.max() as f64 / 1000.0).max(0.001) * 1.05;
    let x = |q: f64| left + (-(1.0 - q.min(0.99999)).log10()).min(max_x) / max_x * plot_w;
    let y = |ms: f64| top + plot_h - ms / max_ms * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{0}" stroke="black"/>"#,
        top + plot_h,
        left + plot_w
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let px = left + i as f64 / max_x * plot_w;
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{0}" stroke="#ddd"/><text x="{px}" y="{1}" text-anchor="middle">{label}</text>"##,
            top + plot_h,
            top + plot_h + 18.0
        );
    }
    for i in 0..=4 {
        let ms = max_ms * i as f64 / 4.0;
        let py = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py}" x2="{0}" y2="{py}" stroke="#eee"/><text x="{1}" y="{2}" text-anchor="end">{ms:.2}</text>"##,
            left + plot_w,
            left - 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (ms)</text>"#,
        left + plot_w / 2.0,
        hgt - 10.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    if !h.is_empty() {
        let mut points = String::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            if q > 0.99999 {
                break;
            }
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                x(q),
                y(v.value_iterated_to() as f64 / 1000.0)
            );
        }
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{points}"/>"##
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.saturating_record(us);
        }
        h
    }

    #[test]
    fn hgrm_has_the_header_rows_and_footer_plotters_expect() {
        let text = hgrm(&sample());
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        let rows: Vec<Vec<f64>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 10);
        assert!(
            rows.windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]),
            "monotonic"
        );
        assert_eq!(rows.last().unwrap()[2], 10_000.0);
        // The max is the highest value equivalent to 10 ms at 3 digits.
        assert!(text.contains("#[Max     =       10.0"), "{text}");
        assert!(text.contains("Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn svg_is_a_document_with_one_curve() {
        let doc = svg(&sample(), "a < b");
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert!(doc.contains("a &lt; b"));
    }
}
