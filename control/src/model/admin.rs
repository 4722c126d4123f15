//! `admin:`: where the admin API listens.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

use super::Origin;
use crate::decode::{Decoder, Fields, listen_addr};
use crate::yaml::Node;

/// The admin API's settings.
#[derive(Debug, Clone, Serialize)]
pub struct AdminDoc {
    /// Address of the admin API. Default `127.0.0.1:9901` (loopback only:
    /// the API can change the running config).
    pub listen: SocketAddr,
    #[serde(skip)]
    pub(crate) listen_origin: Origin,
}

impl Default for AdminDoc {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9901)),
            listen_origin: Origin::default(),
        }
    }
}

impl AdminDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut doc = AdminDoc::default();
        if let Some((n, p)) = f.take("listen") {
            doc.listen = listen_addr(d, n, &p)?;
            doc.listen_origin = Origin {
                mark: n.mark,
                path: p,
            };
        }
        f.finish(d, &["listen"]);
        Some(doc)
    }
}
