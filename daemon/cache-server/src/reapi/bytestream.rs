//! `bytestream` — ByteStream for blobs of any size: `Read` streams a blob
//! in [`vx_reapi::CHUNK`] pieces (a whole read is hashed on the way and
//! ends in `DATA_LOSS` if the stored bytes are no longer the digest);
//! `Write` spools an upload to a local file while hashing it, and stores it
//! in the CAS only when its size and SHA-256 are its digest's. An upload
//! cut off midway stays resumable: `QueryWriteStatus` tells how much is
//! committed and a new `Write` of the same resource name continues from
//! there (only by the token that started it).
//!
//! Compressed blobs (`compressed-blobs/zstd/…`, see [`super::compress`]):
//! a `Read` compresses on the way out (`read_offset` is an uncompressed
//! offset, `read_limit` must be 0); a `Write` decompresses on the way in,
//! bounded by the digest's size, and is verified like any upload; it does
//! not resume (a cut upload starts again at 0).
//!
//! Never: keeps more than [`MAX_PARTIALS`] partial uploads (an idle one is
//! dropped after [`IDLE`]), holds a blob in memory, or stores an upload
//! whose bytes are not its digest.

use super::cas::blob_path;
use super::compress::{Form, LEVEL, Unzstd, split_resource, window_log};
use super::{Reapi, instance_dir, store_failed};
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStoreExt, WriteMultipart};
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};
use vx_reapi::bs::byte_stream_server::ByteStream;
use vx_reapi::bs::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use vx_reapi::re::Digest;

/// The most partial uploads kept at once.
pub const MAX_PARTIALS: usize = 64;
/// How long an untouched partial upload is kept.
pub const IDLE: Duration = Duration::from_secs(3600);

/// A partial upload: its spool file, what is committed, the hash so far.
struct Partial {
    file: PathBuf,
    committed: u64,
    hasher: vx_reapi::Hasher,
    owner: String,
    touched: Instant,
}

/// One upload: its state (one stream at a time) and what is committed,
/// readable while a stream holds the state.
struct Upload {
    p: tokio::sync::Mutex<Partial>,
    committed: std::sync::atomic::AtomicU64,
}

type Slot = Arc<Upload>;

/// The partial uploads, by resource name (`uploads/{uuid}/blobs/{hash}/{size}`).
pub struct Uploads {
    dir: PathBuf,
    map: Mutex<HashMap<String, Slot>>,
    next: std::sync::atomic::AtomicU64,
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Uploads {
        Uploads {
            dir,
            map: Mutex::new(HashMap::new()),
            next: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Slot> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// The upload of `key`, made when new. Drops idle ones first.
    fn open(&self, key: &str, owner: &str) -> Result<Slot, Status> {
        let mut m = self
            .map
            .lock()
            .map_err(|_| Status::internal("upload table poisoned"))?;
        if let Some(s) = m.get(key) {
            return Ok(s.clone());
        }
        m.retain(|_, s| match s.p.try_lock() {
            Ok(p) if p.touched.elapsed() > IDLE => {
                let _ = std::fs::remove_file(&p.file);
                false
            }
            _ => true,
        });
        if m.len() >= MAX_PARTIALS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_PARTIALS} uploads are in progress; try again later"
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(super::store_failed)?;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = Arc::new(Upload {
            p: tokio::sync::Mutex::new(Partial {
                file: self.dir.join(format!("upload-{n}")),
                committed: 0,
                hasher: Default::default(),
                owner: owner.to_string(),
                touched: Instant::now(),
            }),
            committed: Default::default(),
        });
        m.insert(key.to_string(), s.clone());
        Ok(s)
    }

    fn forget(&self, key: &str, file: &std::path::Path) {
        let _ = std::fs::remove_file(file);
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
            // No upload left: no directory left (made again by the next).
            if m.is_empty() {
                let _ = std::fs::remove_dir(&self.dir);
            }
        }
    }
}

/// The key of an upload: what follows the instance, without trailing
/// metadata.
fn upload_key(uuid: &str, d: &Digest) -> String {
    format!("uploads/{uuid}/blobs/{}/{}", d.hash, d.size_bytes)
}

type ReadStream = Pin<Box<dyn futures::Stream<Item = Result<ReadResponse, Status>> + Send>>;

impl Reapi {
    /// Moves a complete spool file into the CAS.
    async fn commit(&self, d: &Digest, file: &std::path::Path) -> Result<(), Status> {
        if self.has(d).await? {
            return Ok(());
        }
        let up = self
            .os
            .put_multipart(&blob_path(&d.hash))
            .await
            .map_err(store_failed)?;
        let mut w = WriteMultipart::new(up);
        let mut f = tokio::fs::File::open(file).await.map_err(store_failed)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(store_failed)?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4).await.map_err(store_failed)?;
            w.write(&buf[..n]);
        }
        w.finish().await.map_err(store_failed)?;
        self.app
            .store
            .note_written(blob_path(&d.hash).as_ref(), d.size_bytes as u64);
        Ok(())
    }
}

impl Reapi {
    async fn read_call(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        self.grant(&request)?;
        let r = request.into_inner();
        let (name, form) = split_resource(&r.resource_name)?;
        let zstd = form == Form::Zstd;
        let res =
            vx_reapi::parse_resource(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if zstd && r.read_limit != 0 {
            return Err(Status::invalid_argument(
                "read_limit must be 0 for a compressed blob",
            ));
        }
        if res.upload.is_some() {
            return Err(Status::invalid_argument(
                "read a blobs/… resource, not an upload",
            ));
        }
        instance_dir(&res.instance)?;
        let d = res.digest;
        let size = d.size_bytes as u64;
        if r.read_offset < 0 || r.read_offset as u64 > size {
            return Err(Status::out_of_range("read_offset is past the blob"));
        }
        if r.read_limit < 0 {
            return Err(Status::invalid_argument("negative read_limit"));
        }
        let from = r.read_offset as u64;
        let to = match r.read_limit {
            0 => size,
            n => size.min(from.saturating_add(n as u64)),
        };
        let whole = from == 0 && to == size;
        if size == 0 {
            if d.hash != vx_reapi::EMPTY_SHA256 {
                return Err(Status::not_found("not in the CAS"));
            }
            self.app
                .metrics
                .reapi_call("ByteStream", "Read", tonic::Code::Ok);
            if zstd {
                // The empty blob compressed: one empty frame.
                let m = ReadResponse {
                    data: super::compress::compress(&[])?,
                };
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(m)]))));
            }
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        }
        let opts = GetOptions {
            range: (from < to).then_some(GetRange::Bounded(from..to)),
            ..Default::default()
        };
        let got = match self.os.get_opts(&blob_path(&d.hash), opts).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Status::not_found("not in the CAS"));
            }
            Err(e) => return Err(store_failed(e)),
        };
        if got.meta.size != size {
            return Err(Status::not_found("not in the CAS"));
        }
        self.app.store.note_read(
            got.meta.location.as_ref(),
            size,
            super::cas::created_ms(got.meta.last_modified.timestamp_millis()),
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ReadResponse, Status>>(4);
        let mut body = got.into_stream();
        let app = self.app.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let code = async {
                let mut h = vx_reapi::Hasher::default();
                // Compressed on the way out when asked (one zstd frame).
                let mut enc = match zstd {
                    true => match zstd::stream::write::Encoder::new(Vec::new(), LEVEL) {
                        Ok(e) => Some(e),
                        Err(e) => {
                            let st = store_failed(e);
                            let code = st.code();
                            let _ = tx.send(Err(st)).await;
                            return code;
                        }
                    },
                    false => None,
                };
                while let Some(part) = body.next().await {
                    let part = match part {
                        Ok(p) => p,
                        Err(e) => {
                            let st = store_failed(e);
                            let code = st.code();
                            let _ = tx.send(Err(st)).await;
                            return code;
                        }
                    };
                    if whole {
                        h.update(&part);
                    }
                    let part = match enc.as_mut() {
                        None => part,
                        Some(e) => {
                            if let Err(err) = std::io::Write::write_all(e, &part) {
                                let st = store_failed(err);
                                let code = st.code();
                                let _ = tx.send(Err(st)).await;
                                return code;
                            }
                            bytes::Bytes::from(std::mem::take(e.get_mut()))
                        }
                    };
                    for c in part.chunks(vx_reapi::CHUNK) {
                        let m = ReadResponse { data: c.to_vec() };
                        if tx.send(Ok(m)).await.is_err() {
                            return tonic::Code::Cancelled;
                        }
                        sent += c.len() as u64;
                    }
                }
                if let Some(e) = enc.take() {
                    match e.finish() {
                        Ok(rest) => {
                            for c in rest.chunks(vx_reapi::CHUNK) {
                                let m = ReadResponse { data: c.to_vec() };
                                if tx.send(Ok(m)).await.is_err() {
                                    return tonic::Code::Cancelled;
                                }
                                sent += c.len() as u64;
                            }
                        }
                        Err(err) => {
                            let st = store_failed(err);
                            let code = st.code();
                            let _ = tx.send(Err(st)).await;
                            return code;
                        }
                    }
                }
                if whole && !h.matches(&d) {
                    tracing::warn!(hash = %d.hash, "a stored blob is corrupt");
                    let _ = tx
                        .send(Err(Status::data_loss("the stored blob is corrupt")))
                        .await;
                    return tonic::Code::DataLoss;
                }
                tonic::Code::Ok
            }
            .await;
            app.metrics.reapi_call("ByteStream", "Read", code);
            app.metrics.reapi_bytes("ByteStream", "Read", 0, sent);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write_call(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let g = self.writer(&request)?;
        let mut s = request.into_inner();
        let Some(mut msg) = s.message().await? else {
            return Err(Status::invalid_argument("an empty write"));
        };
        let (name, form) = split_resource(&msg.resource_name)?;
        let res =
            vx_reapi::parse_resource(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(uuid) = res.upload.clone() else {
            return Err(Status::invalid_argument(
                "write to {instance}/uploads/{uuid}/blobs/{hash}/{size}",
            ));
        };
        instance_dir(&res.instance)?;
        let d = res.digest;
        let size = d.size_bytes as u64;
        if size > self.max_blob {
            return Err(Status::invalid_argument(format!(
                "the blob is larger than {} bytes",
                self.max_blob
            )));
        }
        if form == Form::Zstd {
            return self.write_zstd(&g.name, s, msg, &uuid, d).await;
        }
        if self.has(&d).await? {
            // Already there: done at once.
            return Ok(Response::new(WriteResponse {
                committed_size: d.size_bytes,
            }));
        }
        let key = upload_key(&uuid, &d);
        let slot = self.uploads.open(&key, &g.name)?;
        let Ok(mut p) = slot.p.try_lock() else {
            return Err(Status::aborted("another stream is writing this upload"));
        };
        if p.owner != g.name {
            return Err(Status::permission_denied(
                "this upload was started by another token",
            ));
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.file)
            .await
            .map_err(store_failed)?;
        loop {
            if !msg.resource_name.is_empty()
                && upload_key_of(&msg.resource_name) != Some(key.clone())
            {
                return Err(Status::invalid_argument(
                    "the resource name changed mid-stream",
                ));
            }
            if msg.write_offset < 0 || msg.write_offset as u64 != p.committed {
                if msg.write_offset == 0 {
                    // A fresh start of the same upload.
                    drop(f);
                    f = tokio::fs::File::create(&p.file)
                        .await
                        .map_err(store_failed)?;
                    p.committed = 0;
                    p.hasher = Default::default();
                    slot.committed
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                } else {
                    return Err(Status::invalid_argument(format!(
                        "write_offset {} but {} bytes are committed (QueryWriteStatus tells)",
                        msg.write_offset, p.committed
                    )));
                }
            }
            if p.committed + msg.data.len() as u64 > size {
                drop(f);
                self.uploads.forget(&key, &p.file);
                return Err(Status::invalid_argument(
                    "more bytes than the digest's size",
                ));
            }
            self.bytes("ByteStream", "Write", msg.data.len() as u64, 0);
            f.write_all(&msg.data).await.map_err(store_failed)?;
            p.hasher.update(&msg.data);
            p.committed += msg.data.len() as u64;
            p.touched = Instant::now();
            slot.committed
                .store(p.committed, std::sync::atomic::Ordering::Relaxed);
            if msg.finish_write {
                break;
            }
            msg = match s.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    f.flush().await.map_err(store_failed)?;
                    return Err(Status::invalid_argument(format!(
                        "the stream ended at {} of {size} bytes without finish_write (resumable)",
                        p.committed
                    )));
                }
                Err(e) => {
                    let _ = f.flush().await;
                    return Err(e);
                }
            };
        }
        f.flush().await.map_err(store_failed)?;
        drop(f);
        let file = p.file.clone();
        if p.committed != size || !p.hasher.clone().matches(&d) {
            self.uploads.forget(&key, &file);
            tracing::warn!(token = %g.name, hash = %d.hash, "upload refused: its bytes are not its digest");
            return Err(Status::invalid_argument(format!(
                "the uploaded bytes do not hash to {}/{size}",
                d.hash
            )));
        }
        let r = self.commit(&d, &file).await;
        self.uploads.forget(&key, &file);
        r?;
        Ok(Response::new(WriteResponse {
            committed_size: d.size_bytes,
        }))
    }

    async fn query_write_status_call(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        self.grant(&request)?;
        let r = request.into_inner();
        let (name, form) = split_resource(&r.resource_name)?;
        let res =
            vx_reapi::parse_resource(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        instance_dir(&res.instance)?;
        let d = res.digest;
        if self.has(&d).await? {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: d.size_bytes,
                complete: true,
            }));
        }
        let Some(uuid) = res.upload else {
            return Err(Status::not_found("no such upload"));
        };
        let key = match form {
            Form::Zstd => zstd_key(&uuid, &d),
            Form::Identity => upload_key(&uuid, &d),
        };
        match self.uploads.get(&key) {
            Some(slot) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: slot.committed.load(std::sync::atomic::Ordering::Relaxed) as i64,
                complete: false,
            })),
            None => Err(Status::not_found("no such upload")),
        }
    }
}

#[tonic::async_trait]
impl ByteStream for Reapi {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        // A stream started is counted when it ends (see `read_call`).
        match self.read_call(request).await {
            Ok(s) => Ok(s),
            Err(st) => self.counted("ByteStream", "Read", Err(st)),
        }
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let r = self.write_call(request).await;
        self.counted("ByteStream", "Write", r)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let r = self.query_write_status_call(request).await;
        self.counted("ByteStream", "QueryWriteStatus", r)
    }
}

/// The upload key of a full resource name.
fn upload_key_of(name: &str) -> Option<String> {
    let (name, form) = split_resource(name).ok()?;
    let r = vx_reapi::parse_resource(&name).ok()?;
    Some(match form {
        Form::Identity => upload_key(&r.upload?, &r.digest),
        Form::Zstd => zstd_key(&r.upload?, &r.digest),
    })
}

/// The key of a compressed upload (apart from the uncompressed ones).
fn zstd_key(uuid: &str, d: &Digest) -> String {
    format!("zstd:{}", upload_key(uuid, d))
}

impl Reapi {
    /// A `compressed-blobs/zstd/` upload: decompressed as it streams in
    /// (never past the digest's size), spooled, verified, stored. Offsets
    /// are REAPI's: the first message's `write_offset` is an uncompressed
    /// offset (0: these uploads do not resume), later ones add the
    /// compressed bytes sent so far. The decoder's window is taken from the
    /// upload memory budget while the stream lasts.
    async fn write_zstd(
        &self,
        owner: &str,
        mut s: Streaming<WriteRequest>,
        first: WriteRequest,
        uuid: &str,
        d: Digest,
    ) -> Result<Response<WriteResponse>, Status> {
        if self.has(&d).await? {
            // Already there: `-1` for a compressed upload.
            return Ok(Response::new(WriteResponse { committed_size: -1 }));
        }
        if first.write_offset != 0 {
            return Err(Status::invalid_argument(
                "a compressed upload starts at write_offset 0 (it does not resume)",
            ));
        }
        let key = zstd_key(uuid, &d);
        let slot = self.uploads.open(&key, owner)?;
        let Ok(p) = slot.p.try_lock() else {
            return Err(Status::aborted("another stream is writing this upload"));
        };
        if p.owner != owner {
            return Err(Status::permission_denied(
                "this upload was started by another token",
            ));
        }
        let file = p.file.clone();
        let window_mib = ((1u64 << window_log(d.size_bytes as u64)) >> 20).max(1);
        let permits = window_mib.min(self.app.upload_budget_mib as u64) as u32;
        let _memory = self
            .app
            .upload_budget
            .acquire_many(permits)
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let r = self.spool_zstd(&mut s, first, &key, &slot, &file, &d).await;
        let r = match r {
            Ok(received) => self.commit(&d, &file).await.map(|()| received),
            Err(e) => Err(e),
        };
        drop(p);
        self.uploads.forget(&key, &file);
        let received = r?;
        Ok(Response::new(WriteResponse {
            committed_size: received,
        }))
    }

    /// Decompresses the stream into `file`; the compressed bytes received.
    async fn spool_zstd(
        &self,
        s: &mut Streaming<WriteRequest>,
        mut msg: WriteRequest,
        key: &str,
        slot: &Slot,
        file: &std::path::Path,
        d: &Digest,
    ) -> Result<i64, Status> {
        let size = d.size_bytes as u64;
        let mut f = tokio::fs::File::create(file).await.map_err(store_failed)?;
        let mut u = Unzstd::new(size).map_err(store_failed)?;
        let mut h = vx_reapi::Hasher::default();
        let mut received: i64 = 0;
        loop {
            if !msg.resource_name.is_empty()
                && upload_key_of(&msg.resource_name).as_deref() != Some(key)
            {
                return Err(Status::invalid_argument(
                    "the resource name changed mid-stream",
                ));
            }
            if msg.write_offset != received {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} but {received} compressed bytes were sent",
                    msg.write_offset
                )));
            }
            received += msg.data.len() as i64;
            self.bytes("ByteStream", "Write", msg.data.len() as u64, 0);
            let mut pos = 0;
            while let Some(piece) = u.step(&msg.data, &mut pos)? {
                f.write_all(piece).await.map_err(store_failed)?;
                h.update(piece);
            }
            slot.committed
                .store(received as u64, std::sync::atomic::Ordering::Relaxed);
            if msg.finish_write {
                break;
            }
            msg = match s.message().await? {
                Some(m) => m,
                None => {
                    return Err(Status::invalid_argument(
                        "the stream ended without finish_write (a compressed upload starts again at 0)",
                    ));
                }
            };
        }
        f.flush().await.map_err(store_failed)?;
        if !u.complete() {
            return Err(Status::invalid_argument("the zstd stream is truncated"));
        }
        if !h.matches(d) {
            tracing::warn!(hash = %d.hash, "compressed upload refused: its bytes are not its digest");
            return Err(Status::invalid_argument(format!(
                "the uploaded bytes, decompressed, do not hash to {}/{size}",
                d.hash
            )));
        }
        Ok(received)
    }
}
