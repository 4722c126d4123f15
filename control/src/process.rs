//! The proxy process's own resource use, read from /proc at scrape time.

use std::fs;

/// Process figures for the `process_*` metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads the current process's figures; fields that cannot be read stay 0.
pub fn read() -> ProcessStats {
    let mut out = ProcessStats::default();
    // SAFETY: sysconf has no preconditions.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let page = page.max(1) as u64;
    let ticks = ticks.max(1) as f64;
    if let Ok(statm) = fs::read_to_string("/proc/self/statm") {
        let mut it = statm
            .split_whitespace()
            .filter_map(|v| v.parse::<u64>().ok());
        out.virtual_bytes = it.next().unwrap_or(0) * page;
        out.resident_bytes = it.next().unwrap_or(0) * page;
    }
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name, which may hold spaces.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state); utime=14, stime=15, starttime=22.
            let field = |n: usize| {
                f.get(n - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
            let boot = fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("btime ")
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                })
                .unwrap_or(0);
            out.start_time_seconds = boot as f64 + field(22) as f64 / ticks;
        }
    }
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        out.open_fds = dir.count() as u64;
    }
    out
}
