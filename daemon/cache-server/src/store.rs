//! `store` — artifacts in an `object_store` (a local directory, or S3 by
//! URL), each beside its provenance, never overwritten; an in-memory index
//! of sizes and last reads (built in the background at start-up, so
//! start-up never waits on a listing) that drives eviction by age and by
//! total size (least recently read first), and whose last-read times are
//! kept in `_vx/access.json` across restarts.
//!
//! The read path is kept short: the few fields a download answers with
//! (size, tag, duration) are remembered in the index the first time an
//! artifact's provenance is read, so a repeated download parses no JSON,
//! and its last-read time is noted under the same lock; a local directory's
//! files are read directly (one blocking call for a small artifact, 1 MiB
//! chunks for a large one) rather than through `object_store`'s 8 KiB
//! reader, which stays in use for S3.
//!
//! Layout under the store's root: `v1/<namespace>/<team>/<hash>` (the
//! artifact's bytes as uploaded) and `v1/<namespace>/<team>/<hash>.meta.json`
//! ([`Meta`]), and `_vx/access.json`. The REAPI side's objects
//! (`reapi/cas/…` blobs and `reapi/ac/…` entries, see [`crate::reapi`]) are
//! in the same index and under the same policy: the REAPI code notes their
//! writes and reads ([`Store::note_written`], [`Store::note_read`]), and
//! eviction removes them like artifacts, least recently used first.
//! Never: overwrites an artifact (`PutMode::Create`), or deletes anything
//! outside `v1/` and `reapi/`.

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
#[derive(Debug, Clone)]
struct Item {
    size: u64,
    created_ms: u64,
    last_read_ms: u64,
    /// What a download answers with, once the provenance has been read.
    found: Option<Found>,
}

/// What a lookup tells a download: the artifact's size, the client's
/// duration and signature tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub size: u64,
    pub duration_ms: u64,
    pub tag: Option<Arc<str>>,
}

impl Found {
    fn of(m: &Meta) -> Found {
        Found {
            size: m.size,
            duration_ms: m.duration_ms,
            tag: m.tag.as_deref().map(Arc::from),
        }
    }
}

/// An artifact's bytes, ready to send.
pub enum Content {
    /// Small enough to have been read in one go.
    Whole(Bytes),
    /// Streamed (`len` bytes).
    Stream(futures::stream::BoxStream<'static, std::io::Result<Bytes>>),
}

/// Artifacts up to this size are read in one blocking call.
const WHOLE_READ: u64 = 1 << 20;
/// The chunk size of a streamed local file.
const STREAM_CHUNK: usize = 1 << 20;

/// Eviction settings.
#[derive(Debug, Clone, Copy)]
pub struct Eviction {
    pub max_bytes: Option<u64>,
    pub ttl: Option<Duration>,
    pub interval: Duration,
}

pub struct Store {
    pub os: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory: read directly.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
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
        Store::build(os, None)
    }

    /// A store over a local directory (its reads bypass `object_store`).
    pub fn local(fs: object_store::local::LocalFileSystem) -> Store {
        let fs = Arc::new(fs);
        Store::build(fs.clone(), Some(fs))
    }

    fn build(
        os: Arc<dyn ObjectStore>,
        local: Option<Arc<object_store::local::LocalFileSystem>>,
    ) -> Store {
        Store {
            os,
            local,
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

    /// What a download needs to know about an artifact, `None` when it
    /// does not exist. Answered from the index once the artifact's
    /// provenance has been read; `touch` notes a read (LRU eviction) under
    /// the same lock.
    pub async fn lookup(
        &self,
        artifact: &str,
        touch: bool,
    ) -> Result<Option<Found>, object_store::Error> {
        if let Ok(mut idx) = self.index.lock()
            && let Some(i) = idx.get_mut(artifact)
            && let Some(f) = &i.found
        {
            let f = f.clone();
            if touch {
                i.last_read_ms = now_ms();
                self.dirty.store(true, Ordering::Relaxed);
            }
            return Ok(Some(f));
        }
        // Not indexed yet (or written by another server on a shared
        // store): the provenance decides, and is remembered.
        let Some(m) = self.meta(artifact).await? else {
            return Ok(None);
        };
        let f = Found::of(&m);
        if let Ok(mut idx) = self.index.lock() {
            let now = now_ms();
            let i = idx.entry(artifact.to_string()).or_insert(Item {
                size: m.size,
                created_ms: m.created_ms,
                last_read_ms: m.created_ms,
                found: None,
            });
            i.found = Some(f.clone());
            if touch {
                i.last_read_ms = now;
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
        Ok(Some(f))
    }

    /// Notes an object just written outside [`Store::create`] (a REAPI
    /// blob or ActionCache entry): counted for eviction from now, as read
    /// now.
    pub fn note_written(&self, path: &str, size: u64) {
        let now = now_ms();
        if let Ok(mut idx) = self.index.lock() {
            idx.insert(
                path.to_string(),
                Item {
                    size,
                    created_ms: now,
                    last_read_ms: now,
                    found: None,
                },
            );
        }
        self.dirty.store(true, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// Notes a read (or a use that counts as one, such as a CAS existence
    /// check) of an object outside `v1/`: the least recently used go first.
    /// An object the index does not hold yet (listing still running, or
    /// written by another server on a shared store) is added with what the
    /// caller learnt from the store.
    pub fn note_read(&self, path: &str, size: u64, created_ms: u64) {
        let now = now_ms();
        if let Ok(mut idx) = self.index.lock() {
            let i = idx.entry(path.to_string()).or_insert(Item {
                size,
                created_ms,
                last_read_ms: now,
                found: None,
            });
            i.last_read_ms = now;
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Forgets an indexed object that turned out to be gone.
    pub fn forget(&self, artifact: &str) {
        if let Ok(mut idx) = self.index.lock() {
            idx.remove(artifact);
        }
    }

    /// The artifact's bytes and their length, `None` when it does not
    /// exist.
    pub async fn read(
        &self,
        artifact: &str,
    ) -> Result<Option<(u64, Content)>, object_store::Error> {
        let got = match &self.local {
            Some(fs) => read_local(fs.path_to_filesystem(&Path::from(artifact))?).await,
            None => match self.os.get(&Path::from(artifact)).await {
                Ok(r) => {
                    let size = r.meta.size;
                    let s = r.into_stream().map(|c| c.map_err(std::io::Error::other));
                    Ok(Some((size, Content::Stream(s.boxed()))))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        };
        if let Ok(None) = got {
            self.forget(artifact);
        }
        got
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
                    found: Some(Found::of(meta)),
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
        let v1 = Path::from("v1");
        let reapi = Path::from("reapi");
        let mut list = self.os.list(Some(&v1)).chain(self.os.list(Some(&reapi)));
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
                    found: None,
                },
            );
        }
        if let Ok(mut idx) = self.index.lock() {
            for (k, v) in found {
                // Looked up before the listing finished: keep what it
                // learnt, and the later of the two last reads.
                let i = idx.entry(k).or_insert_with(|| v.clone());
                i.last_read_ms = i.last_read_ms.max(v.last_read_ms);
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
                if k.starts_with("v1/") {
                    let _ = self.os.delete(&meta_path(&k)).await;
                }
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

/// Reads a local file: whole when small, else streamed in large chunks.
async fn read_local(
    path: std::path::PathBuf,
) -> Result<Option<(u64, Content)>, object_store::Error> {
    use std::io::Read;
    use tokio::io::AsyncReadExt;
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        if len <= WHOLE_READ {
            let mut buf = Vec::with_capacity(len as usize);
            (&mut f).take(WHOLE_READ).read_to_end(&mut buf)?;
            return Ok((buf.len() as u64, Ok(Bytes::from(buf))));
        }
        Ok((len, Err(f)))
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "local",
        source: Box::new(e),
    })?;
    match opened {
        Ok((len, Ok(b))) => Ok(Some((len, Content::Whole(b)))),
        Ok((len, Err(f))) => {
            let f = tokio::fs::File::from_std(f);
            let s = tokio_util::io::ReaderStream::with_capacity(f.take(len), STREAM_CHUNK);
            Ok(Some((len, Content::Stream(s.boxed()))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(object_store::Error::Generic {
            store: "local",
            source: Box::new(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &Store, path: &str, len: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(s.os.put(&Path::from(path), vec![7u8; len].into()))
            .unwrap();
        s.note_written(path, len as u64);
        std::thread::sleep(Duration::from_millis(5));
    }

    // REAPI blobs and ActionCache entries are counted and evicted with the
    // artifacts, least recently used first; a use (`note_read`) keeps one.
    #[test]
    fn reapi_objects_are_evicted_least_recently_used_first() {
        let s = Store::new(Arc::new(object_store::memory::InMemory::new()));
        put(&s, "reapi/cas/aa/aa01", 400);
        put(&s, "reapi/ac/default/_/bb02", 100);
        put(&s, "reapi/cas/cc/cc03", 400);
        s.note_read("reapi/cas/aa/aa01", 400, 0);
        assert_eq!(s.totals(), (900, 3));
        let ev = Eviction {
            max_bytes: Some(600),
            ttl: None,
            interval: Duration::from_secs(60),
        };
        // Nothing is evicted before the start-up listing is done.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(s.evict(&ev)), (0, 0));
        s.loaded.store(true, Ordering::Relaxed);
        let v: Vec<String> = s.victims(&ev).into_iter().map(|(k, _)| k).collect();
        assert_eq!(v, ["reapi/ac/default/_/bb02", "reapi/cas/cc/cc03"]);
        assert_eq!(rt.block_on(s.evict(&ev)), (2, 500));
        assert_eq!(s.totals(), (400, 1));
        let gone = rt.block_on(s.os.head(&Path::from("reapi/cas/cc/cc03")));
        assert!(matches!(gone, Err(object_store::Error::NotFound { .. })));
        assert!(
            rt.block_on(s.os.head(&Path::from("reapi/cas/aa/aa01")))
                .is_ok()
        );
    }

    // The start-up listing indexes `reapi/` objects too; a TTL removes
    // them by age like artifacts.
    #[test]
    fn the_listing_indexes_reapi_objects_and_the_ttl_removes_them() {
        let os = Arc::new(object_store::memory::InMemory::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            for (p, n) in [
                ("reapi/cas/dd/dd04", 10usize),
                ("reapi/ac/main/_/ee05", 20),
                ("v1/default/_/ff06", 30),
                ("elsewhere/x", 40),
            ] {
                os.put(&Path::from(p), vec![1u8; n].into()).await.unwrap();
            }
        });
        let s = Store::new(os);
        rt.block_on(s.load()).unwrap();
        assert_eq!(s.totals(), (60, 3), "v1/ and reapi/ only");
        std::thread::sleep(Duration::from_millis(30));
        let ev = Eviction {
            max_bytes: None,
            ttl: Some(Duration::from_millis(10)),
            interval: Duration::from_secs(60),
        };
        assert_eq!(rt.block_on(s.evict(&ev)), (3, 60));
        assert_eq!(s.totals(), (0, 0));
    }
}
