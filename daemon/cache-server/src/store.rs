//! `store` — artifacts in an `object_store` (a local directory, or S3 by
//! URL), each beside its provenance, never overwritten; an in-memory index
//! of sizes and last reads (built in the background at start-up, so
//! start-up never waits on a listing) that drives eviction by age and by
//! total size (least recently read first), and whose last-read times are
//! kept in `_vx/access.json` across restarts.
//!
//! Layout under the store's root: `v1/<namespace>/<team>/<hash>` (the
//! artifact's bytes as uploaded) and `v1/<namespace>/<team>/<hash>.meta.json`
//! ([`Meta`]), and `_vx/access.json`.
//! Never: overwrites an artifact (`PutMode::Create`), or deletes anything
//! outside `v1/`.

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What is kept beside an artifact: who wrote it, when, and what the
/// client said about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// The token's name.
    pub writer: String,
    pub namespace: String,
    /// Unix ms.
    pub created_ms: u64,
    /// The client's `x-artifact-duration` (ms).
    #[serde(default)]
    pub duration_ms: u64,
    /// The client's `x-artifact-client-ci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    /// The client's `x-artifact-tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `turbo` or `nx`.
    pub api: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One artifact in the index.
#[derive(Debug, Clone, Copy)]
struct Item {
    size: u64,
    created_ms: u64,
    last_read_ms: u64,
}

/// Eviction settings.
#[derive(Debug, Clone, Copy)]
pub struct Eviction {
    pub max_bytes: Option<u64>,
    pub ttl: Option<Duration>,
    pub interval: Duration,
}

pub struct Store {
    pub os: Arc<dyn ObjectStore>,
    index: Mutex<HashMap<String, Item>>,
    /// Last reads not yet persisted.
    dirty: AtomicBool,
    /// The start-up listing is done (eviction waits for it).
    pub loaded: AtomicBool,
    pub kick: tokio::sync::Notify,
}

pub fn artifact_path(ns: &str, team: &str, hash: &str) -> String {
    format!("v1/{ns}/{team}/{hash}")
}

fn meta_path(artifact: &str) -> Path {
    Path::from(format!("{artifact}.meta.json"))
}

const ACCESS: &str = "_vx/access.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("exists")]
    Exists,
    #[error(transparent)]
    Os(#[from] object_store::Error),
}

impl Store {
    pub fn new(os: Arc<dyn ObjectStore>) -> Store {
        Store {
            os,
            index: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            kick: tokio::sync::Notify::new(),
        }
    }

    /// Totals for `/metrics`.
    pub fn totals(&self) -> (u64, u64) {
        self.index
            .lock()
            .map(|m| (m.values().map(|i| i.size).sum(), m.len() as u64))
            .unwrap_or((0, 0))
    }

    /// The artifact's metadata, `None` when it does not exist.
    pub async fn meta(&self, artifact: &str) -> Result<Option<Meta>, object_store::Error> {
        match self.os.get(&meta_path(artifact)).await {
            Ok(r) => {
                let b = r.bytes().await?;
                Ok(serde_json::from_slice(&b).ok())
            }
            Err(object_store::Error::NotFound { .. }) => {
                // An artifact written without its meta (a crash between the
                // two writes) still exists.
                match self.os.head(&Path::from(artifact)).await {
                    Ok(h) => Ok(Some(Meta {
                        size: h.size,
                        writer: "?".into(),
                        namespace: String::new(),
                        created_ms: h.last_modified.timestamp_millis().max(0) as u64,
                        duration_ms: 0,
                        ci: None,
                        tag: None,
                        user_agent: None,
                        api: String::new(),
                    })),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the artifact's bytes for streaming.
    pub async fn open(
        &self,
        artifact: &str,
    ) -> Result<Option<object_store::GetResult>, object_store::Error> {
        match self.os.get(&Path::from(artifact)).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Notes a read (for LRU eviction).
    pub fn touch(&self, artifact: &str) {
        if let Ok(mut m) = self.index.lock()
            && let Some(i) = m.get_mut(artifact)
        {
            i.last_read_ms = now_ms();
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Stores a new artifact and its meta; [`StoreError::Exists`] when one
    /// is there already (never overwritten).
    pub async fn create(
        &self,
        artifact: &str,
        chunks: Vec<Bytes>,
        meta: &Meta,
    ) -> Result<(), StoreError> {
        let payload: PutPayload = chunks.into_iter().collect();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.os.put_opts(&Path::from(artifact), payload, opts).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Err(StoreError::Exists),
            Err(e) => return Err(e.into()),
        }
        let m = serde_json::to_vec(meta).unwrap_or_default();
        self.os.put(&meta_path(artifact), m.into()).await?;
        let now = now_ms();
        if let Ok(mut idx) = self.index.lock() {
            idx.insert(
                artifact.to_string(),
                Item {
                    size: meta.size,
                    created_ms: meta.created_ms,
                    last_read_ms: now,
                },
            );
        }
        self.dirty.store(true, Ordering::Relaxed);
        self.kick.notify_one();
        Ok(())
    }

    /// Builds the index from a listing and the persisted last reads (in
    /// the background at start-up).
    pub async fn load(&self) -> Result<(), object_store::Error> {
        let access: HashMap<String, u64> = match self.os.get(&Path::from(ACCESS)).await {
            Ok(r) => serde_json::from_slice(&r.bytes().await?).unwrap_or_default(),
            Err(object_store::Error::NotFound { .. }) => HashMap::new(),
            Err(e) => return Err(e),
        };
        let mut list = self.os.list(Some(&Path::from("v1")));
        let mut found = HashMap::new();
        while let Some(o) = list.next().await {
            let o = o?;
            let p = o.location.to_string();
            if p.ends_with(".meta.json") {
                continue;
            }
            let created = o.last_modified.timestamp_millis().max(0) as u64;
            let last_read = access.get(&p).copied().unwrap_or(created);
            found.insert(
                p,
                Item {
                    size: o.size,
                    created_ms: created,
                    last_read_ms: last_read,
                },
            );
        }
        if let Ok(mut idx) = self.index.lock() {
            for (k, v) in found {
                idx.entry(k).or_insert(v);
            }
        }
        self.loaded.store(true, Ordering::Relaxed);
        self.kick.notify_one();
        Ok(())
    }

    /// Persists the last reads when they changed.
    pub async fn save_access(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let map: HashMap<String, u64> = match self.index.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.last_read_ms)).collect(),
            Err(_) => return,
        };
        let body = serde_json::to_vec(&map).unwrap_or_default();
        if let Err(e) = self.os.put(&Path::from(ACCESS), body.into()).await {
            self.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "could not save last-read times");
        }
    }

    /// What eviction removes now: everything older than the TTL, then the
    /// least recently read until the total fits.
    fn victims(&self, ev: &Eviction) -> Vec<(String, u64)> {
        let Ok(idx) = self.index.lock() else {
            return Vec::new();
        };
        let now = now_ms();
        let mut out = Vec::new();
        let mut rest: Vec<(&String, &Item)> = Vec::new();
        for (k, i) in idx.iter() {
            match ev.ttl {
                Some(ttl) if now.saturating_sub(i.created_ms) > ttl.as_millis() as u64 => {
                    out.push((k.clone(), i.size))
                }
                _ => rest.push((k, i)),
            }
        }
        if let Some(max) = ev.max_bytes {
            let mut total: u64 = rest.iter().map(|(_, i)| i.size).sum();
            rest.sort_by_key(|(k, i)| (i.last_read_ms, i.created_ms, (*k).clone()));
            for (k, i) in rest {
                if total <= max {
                    break;
                }
                total -= i.size;
                out.push((k.clone(), i.size));
            }
        }
        out
    }

    /// One eviction pass; returns (artifacts, bytes) removed.
    pub async fn evict(&self, ev: &Eviction) -> (u64, u64) {
        if !self.loaded.load(Ordering::Relaxed) {
            return (0, 0);
        }
        let (mut n, mut bytes) = (0, 0);
        for (k, size) in self.victims(ev) {
            let removed = match self.os.delete(&Path::from(k.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
                Err(e) => {
                    tracing::warn!(artifact = %k, error = %e, "eviction could not delete");
                    false
                }
            };
            if removed {
                let _ = self.os.delete(&meta_path(&k)).await;
                if let Ok(mut idx) = self.index.lock() {
                    idx.remove(&k);
                }
                self.dirty.store(true, Ordering::Relaxed);
                tracing::info!(artifact = %k, size, "evicted");
                n += 1;
                bytes += size;
            }
        }
        (n, bytes)
    }
}
