//! `ringmesh bench compare --quick`: a seconds-long smoke run of the proxy
//! matrix through the real binary. Peers that are not installed are
//! skipped and said so; direct and ringmesh always run.

mod helpers;

use std::process::Command;

use helpers::proxy::binary;

#[test]
fn quick_compare_prints_a_table_of_ratios() {
    let out = Command::new(binary())
        .args(["bench", "compare", "--quick", "--workloads", "tcp-rr,http"])
        .output()
        .expect("run compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| Tcp") || l.starts_with("| Http"))
        .collect();
    for (workload, path) in [
        ("TcpRr", "direct"),
        ("TcpRr", "ringmesh"),
        ("Http", "direct"),
        ("Http", "ringmesh |"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| {workload} | {path}")))
            .unwrap_or_else(|| panic!("no {workload}/{path} row in:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // Throughput was measured and nothing failed.
        assert!(
            cells[3].ends_with("req/s") && !cells[3].starts_with("0 "),
            "{row}"
        );
        assert_eq!(cells.last().copied(), Some(""), "{row}");
        assert_eq!(cells[cells.len() - 2], "0", "errors in {row}");
    }
    let ringmesh = rows
        .iter()
        .find(|r| r.starts_with("| TcpRr | ringmesh"))
        .unwrap();
    assert!(
        ringmesh.contains("µs/req"),
        "proxy CPU per request missing: {ringmesh}"
    );
    assert!(
        ringmesh.contains("x |"),
        "ratio vs direct missing: {ringmesh}"
    );
    for peer in ["Haproxy", "Nginx"] {
        let measured = rows.iter().any(|r| {
            r.contains(if peer == "Haproxy" {
                "HAProxy"
            } else {
                "nginx"
            })
        });
        let skipped = stdout.contains(&format!("note: {peer} skipped"));
        assert!(
            measured || skipped,
            "{peer} neither measured nor reported as skipped:\n{stdout}"
        );
    }
}
