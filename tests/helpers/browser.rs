//! Headless Chromium for the dashboards' tests (`.ci/run` installs
//! Debian's `chromium`; without it those tests say SKIPPED).

use std::process::Command;

/// The Chromium binary, if one is installed.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Loads `url` headless with `args` (e.g. `--dump-dom`, `--screenshot=F`),
/// letting its scripts run for 7 virtual seconds; returns stdout.
pub fn headless(browser: &str, args: &[&str], url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=7000",
            "--window-size=1400,1150",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
