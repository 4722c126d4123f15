//! Simulated proxies for the propagation benchmark (bench/mesh.sh): COUNT
//! watch clients on one tokio thread, each with its own TLS connection to
//! the control plane, registering as a distinct node of one workload (its
//! certificate is a real proxy's, from that proxy's state directory) and
//! ACKing every push at once without applying it.
//!
//! `cargo run --release -p ringmesh-plane --example watchers -- URL CA IDENTITY NAMESPACE WORKLOAD COUNT`

use std::path::PathBuf;
use std::time::Duration;

use ringmesh_control::mesh::channel::{Channel, Endpoint};
use ringmesh_control::mesh::protocol::{Push, Registration, WATCH_PATH, WatchRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, ca, identity, namespace, workload, count] = args.as_slice() else {
        return Err("usage: watchers URL CA IDENTITY NAMESPACE WORKLOAD COUNT".into());
    };
    let count: u16 = count.parse()?;
    let endpoint = Endpoint::parse(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..count {
            let mut channel = Channel::new(
                endpoint.clone(),
                PathBuf::from(ca),
                Some(PathBuf::from(identity)),
            );
            // Addresses nobody connects to: 127.1.x.y:15006.
            let address = format!("127.1.{}.{}:15006", i / 250, i % 250 + 1).parse()?;
            let mut request = WatchRequest {
                registration: Registration {
                    node: format!("sim-{workload}-{i}"),
                    namespace: namespace.clone(),
                    workload: workload.clone(),
                    version: None,
                    address,
                    inbound: address,
                    outbound: "127.0.0.1:15001".parse()?,
                    app_port: 8080,
                    capture: false,
                    admin: None,
                },
                applied: None,
                nonce: None,
                error: None,
                certificate_expiry: None,
            };
            tasks.push(tokio::spawn(async move {
                loop {
                    let answer: Result<Option<Push>, _> = channel
                        .post(WATCH_PATH, &request, None, Duration::from_secs(90))
                        .await;
                    match answer {
                        Ok(Some(push)) => {
                            request.applied = Some(push.version);
                            request.nonce = Some(push.nonce);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            eprintln!("watcher {i}: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }));
            // Joins spread a little, like a rollout.
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
