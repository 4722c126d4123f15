//! The configuration document: what an operator writes, decoded and with
//! every default filled in. One file per resource; [`load`] runs the whole
//! pipeline from text to a validated [`Document`].

mod admin;
mod cluster;
mod listener;

use serde::Serialize;

pub use admin::AdminDoc;
pub use cluster::{ClusterDoc, EndpointDoc, LbPolicy};
pub use listener::{ListenerDoc, Protocol};

use crate::decode::{ConfigErrors, Decoder, Fields, list};
use crate::validate;
use crate::yaml::{self, Mark};

/// A whole configuration file.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    /// The admin API.
    pub admin: AdminDoc,
    /// Where traffic comes in.
    pub listeners: Vec<ListenerDoc>,
    /// Where traffic goes.
    pub clusters: Vec<ClusterDoc>,
}

/// A decoded value and where it was written, for errors found later
/// (cross-references, DNS resolution).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Position in the source.
    pub mark: Mark,
    /// Key path.
    pub path: String,
}

const TOP_KEYS: &[&str] = &["admin", "listeners", "clusters"];

/// Parses, decodes and validates `text`. `file` names the source in errors.
pub fn load(file: &str, text: &str) -> Result<Document, ConfigErrors> {
    let mut d = Decoder::new(file);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            d.error(e.mark, "", format!("YAML syntax error: {}", e.message));
            return d.finish(empty());
        }
    };
    let Some(root) = root else {
        d.error(Mark { line: 1, col: 1 }, "", "the configuration is empty");
        return d.finish(empty());
    };
    let Some(mut fields) = Fields::of(&mut d, &root, "") else {
        return d.finish(empty());
    };
    let admin = match fields.take("admin") {
        Some((node, path)) => AdminDoc::decode(&mut d, node, &path),
        None => Some(AdminDoc::default()),
    };
    let listeners = decode_list(&mut d, fields.take("listeners"), ListenerDoc::decode);
    let clusters = decode_list(&mut d, fields.take("clusters"), ClusterDoc::decode);
    fields.finish(&mut d, TOP_KEYS);
    let doc = Document {
        admin: admin.unwrap_or_default(),
        listeners,
        clusters,
    };
    validate::cross_references(&mut d, &doc);
    d.finish(doc)
}

fn empty() -> Document {
    Document {
        admin: AdminDoc::default(),
        listeners: Vec::new(),
        clusters: Vec::new(),
    }
}

fn decode_list<T>(
    d: &mut Decoder,
    field: Option<(&yaml::Node, String)>,
    decode: impl Fn(&mut Decoder, &yaml::Node, &str) -> Option<T>,
) -> Vec<T> {
    let Some((node, path)) = field else {
        return Vec::new();
    };
    let Some(items) = list(d, node, &path) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode(d, item, &format!("{path}[{i}]")))
        .collect()
}
