//! Where the desired state is kept: a numbered history of mesh documents.
//! [`Store`] is the seam; [`FileStore`] (one JSON file per version, written
//! atomically with fsync) is the embedded default. A mesh that outgrows one
//! control-plane host keeps its desired state in the Kubernetes API server
//! instead (deploy/README.md), read by several replicas; no replicated
//! store of our own is built.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use ringmesh_control::mesh::durable::write_atomically;

/// Versions kept in the history (older ones are pruned).
pub const HISTORY: usize = 100;

/// A stored version of the desired state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Its number, from 1.
    pub version: u64,
    /// When it was stored, Unix seconds.
    pub time: i64,
    /// Who or what made it (`mesh.yaml`, `PUT /mesh`, `rollback to 3`...).
    pub source: String,
    /// The document, as written.
    pub text: String,
}

/// A store failure.
#[derive(Debug, Error)]
#[error("state store `{path}`: {message}")]
pub struct StoreError {
    /// File or directory.
    pub path: String,
    /// What.
    pub message: String,
}

/// Durable, numbered desired state.
pub trait Store: Send + Sync {
    /// The latest version, if any.
    fn current(&self) -> Result<Option<StoredVersion>, StoreError>;
    /// Version `version`, if still kept.
    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError>;
    /// Stores `text` as the next version; returns it.
    fn commit(&self, text: &str, source: &str) -> Result<StoredVersion, StoreError>;
    /// Every kept version without its text, oldest first.
    fn history(&self) -> Result<Vec<StoredVersion>, StoreError>;
    /// A small named value (e.g. the hash of the last seeded mesh.yaml).
    fn marker(&self, name: &str) -> Option<String>;
    /// Sets a marker.
    fn set_marker(&self, name: &str, value: &str) -> Result<(), StoreError>;
}

/// The file store: `DIR/history/NNNNNNNN.json`.
pub struct FileStore {
    dir: PathBuf,
    history: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl FileStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let history = dir.join("history");
        std::fs::create_dir_all(&history).map_err(|e| err(&history, e))?;
        Ok(FileStore {
            dir: dir.to_owned(),
            history,
        })
    }

    fn versions(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.history).map_err(|e| err(&self.history, e))? {
            let entry = entry.map_err(|e| err(&self.history, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn path_of(&self, version: u64) -> PathBuf {
        self.history.join(format!("{version:08}.json"))
    }

    fn read(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        let path = self.path_of(version);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&path, e)),
        }
    }
}

impl Store for FileStore {
    fn current(&self) -> Result<Option<StoredVersion>, StoreError> {
        match self.versions()?.last() {
            Some(v) => self.read(*v),
            None => Ok(None),
        }
    }

    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        self.read(version)
    }

    fn commit(&self, text: &str, source: &str) -> Result<StoredVersion, StoreError> {
        let versions = self.versions()?;
        let version = versions.last().copied().unwrap_or(0) + 1;
        let stored = StoredVersion {
            version,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            source: source.to_owned(),
            text: text.to_owned(),
        };
        let path = self.path_of(version);
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| err(&path, e))?;
        write_atomically(&path, &json, 0o600).map_err(|e| err(&path, e))?;
        let excess = (versions.len() + 1).saturating_sub(HISTORY);
        for old in versions.iter().take(excess) {
            let _ = std::fs::remove_file(self.path_of(*old));
        }
        Ok(stored)
    }

    fn history(&self) -> Result<Vec<StoredVersion>, StoreError> {
        let mut out = Vec::new();
        for v in self.versions()? {
            if let Some(mut s) = self.read(v)? {
                s.text.clear();
                out.push(s);
            }
        }
        Ok(out)
    }

    fn marker(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn set_marker(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        write_atomically(&path, value.as_bytes(), 0o600).map_err(|e| err(&path, e))
    }
}

/// FNV-1a: a change detector for documents (not a security hash).
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_kept_and_pruned() {
        let dir = std::env::temp_dir().join(format!("ringmesh-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir).expect("open");
        assert!(store.current().expect("current").is_none());
        for i in 1..=HISTORY as u64 + 5 {
            let v = store.commit(&format!("doc {i}"), "test").expect("commit");
            assert_eq!(v.version, i);
        }
        let reopened = FileStore::open(&dir).expect("open");
        let current = reopened.current().expect("current").expect("some");
        assert_eq!((current.version, current.text.as_str()), (105, "doc 105"));
        let history = reopened.history().expect("history");
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].version, 6);
        assert!(reopened.get(1).expect("get").is_none());
        assert_eq!(reopened.get(50).expect("get").expect("kept").text, "doc 50");
        reopened.set_marker("seed", "abc").expect("marker");
        assert_eq!(reopened.marker("seed").as_deref(), Some("abc"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
