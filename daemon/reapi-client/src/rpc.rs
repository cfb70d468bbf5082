//! `rpc` — one connection to a REAPI server and the calls a cache entry
//! needs: capabilities (once), `GetActionResult` and the blob downloads
//! behind a hit, `FindMissingBlobs`, the uploads and `UpdateActionResult`
//! behind a store. Its own small tokio runtime drives tonic; the engine's
//! blocking threads wait on it.
//!
//! Never: trusts a blob it did not hash, reads past [`Limits`], sends a
//! blob over the batch limit in a batch, or updates the ActionCache before
//! every blob the result names (and the Action itself) is in the CAS.

use crate::action::TaskAction;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use vx_reapi::bs::byte_stream_client::ByteStreamClient;
use vx_reapi::bs::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use vx_reapi::re::action_cache_client::ActionCacheClient;
use vx_reapi::re::batch_update_blobs_request;
use vx_reapi::re::capabilities_client::CapabilitiesClient;
use vx_reapi::re::content_addressable_storage_client::ContentAddressableStorageClient;
use vx_reapi::re::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, ExecutedActionMetadata,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, NodeProperties,
    OutputFile, OutputSymlink, UpdateActionResultRequest, digest_function,
};
use vxd::cache::remote::{Artifact, ArtifactBody, ArtifactFile, RemoteError, RemoteSettings};

/// Size caps of one download.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes of one result (outputs and log).
    pub max_total: u64,
    /// The most output files and links of one result.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total: 2 << 30,
            max_entries: 200_000,
        }
    }
}

/// The metadata every call carries (bearer token, configured headers).
#[derive(Clone)]
pub(crate) struct Auth(std::sync::Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl Interceptor for Auth {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        for (k, v) in self.0.iter() {
            r.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(r)
    }
}

pub(crate) type Ch = InterceptedService<Channel, Auth>;

/// What the server said it supports (asked once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// The most blob bytes in one batch call.
    pub(crate) batch: u64,
    update_enabled: bool,
    /// Whether it executes actions (`execution_capabilities.exec_enabled`).
    pub(crate) exec_enabled: bool,
    /// Whether it executes actions keyed by SHA-256.
    pub(crate) exec_sha256: bool,
    /// Whether it answered `GetCapabilities` at all.
    pub(crate) answered: bool,
}

/// Where an uploaded blob's bytes are.
pub(crate) enum Blob<'a> {
    Mem(&'a [u8]),
    /// A file, read when the server lacks it and checked against its digest.
    File(&'a std::path::Path),
}

pub struct Conn {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) ch: Channel,
    pub(crate) auth: Auth,
    pub(crate) instance: String,
    pub(crate) timeout: Duration,
    pub(crate) limits: Limits,
    caps: OnceCell<Caps>,
    /// Where the server is, for messages.
    pub(crate) at: String,
}

fn read_pem(what: &str, p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// A status as the engine's error (`write`: a refusal stops uploads).
pub(crate) fn failed(what: &str, st: Status, write: bool) -> RemoteError {
    let msg = st.message();
    let detail = if msg.is_empty() {
        format!("{what}: {:?}", st.code())
    } else {
        format!("{what}: {:?}: {msg}", st.code())
    };
    match st.code() {
        Code::PermissionDenied if write => {
            RemoteError::WriteDenied(format!("{detail} (the token may not write)"))
        }
        Code::Unauthenticated => {
            RemoteError::Unavailable(format!("{detail} (is the token right?)"))
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::DataLoss => {
            RemoteError::Refused(detail)
        }
        _ => RemoteError::Unavailable(detail),
    }
}

/// How long a result's execution took by its metadata (0 when not sent).
pub(crate) fn executed_ms(meta: Option<&vx_reapi::re::ExecutedActionMetadata>) -> u64 {
    meta.and_then(|m| {
        let (a, b) = (
            m.execution_start_timestamp.as_ref()?,
            m.execution_completed_timestamp.as_ref()?,
        );
        let ms = (b.seconds - a.seconds) * 1000 + i64::from(b.nanos - a.nanos) / 1_000_000;
        u64::try_from(ms).ok()
    })
    .unwrap_or(0)
}

pub(crate) fn key(d: &Digest) -> (String, i64) {
    (d.hash.clone(), d.size_bytes)
}

/// A fresh upload id (a random-looking UUID from the clock, the process
/// and a counter: unique per upload, which is all the server needs).
fn upload_id() -> String {
    use sha2::Digest as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = sha2::Sha256::digest(
        format!(
            "{t}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    let x = vx_reapi::hex(&h[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

impl Conn {
    pub fn new(s: &RemoteSettings, limits: Limits) -> Result<Conn, String> {
        let r = s.reapi.clone().unwrap_or_default();
        let (uri, tls) = crate::endpoint_uri(&s.url)?;
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("{}: {e}", s.url))?
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .user_agent(concat!("vx/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| e.to_string())?;
        if tls {
            let mut cfg = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &r.tls_ca_cert {
                cfg = cfg.ca_certificate(Certificate::from_pem(read_pem("tls ca_cert", ca)?));
            }
            if let (Some(c), Some(k)) = (&r.tls_client_cert, &r.tls_client_key) {
                cfg = cfg.identity(Identity::from_pem(
                    read_pem("tls client_cert", c)?,
                    read_pem("tls client_key", k)?,
                ));
            }
            if let Some(d) = &r.tls_domain_name {
                cfg = cfg.domain_name(d.clone());
            }
            ep = ep.tls_config(cfg).map_err(|e| format!("TLS: {e}"))?;
        }
        let mut md = Vec::new();
        if let Some(t) = &s.token {
            let v = AsciiMetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| "the token is not printable ASCII".to_string())?;
            md.push((AsciiMetadataKey::from_static("authorization"), v));
        }
        for (k, v) in &r.headers {
            let k = AsciiMetadataKey::from_bytes(k.as_bytes())
                .map_err(|_| format!("{k:?} is not a gRPC metadata name"))?;
            let v = AsciiMetadataValue::try_from(v.as_str())
                .map_err(|_| format!("the value of header {k:?} is not printable ASCII"))?;
            md.push((k, v));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vx-reapi")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the REAPI client's runtime: {e}"))?;
        let ch = {
            let _g = rt.enter();
            ep.connect_lazy()
        };
        Ok(Conn {
            rt,
            ch,
            auth: Auth(std::sync::Arc::new(md)),
            instance: r.instance_name,
            timeout: s.timeout,
            limits,
            caps: OnceCell::new(),
            at: s.url.clone(),
        })
    }

    /// Runs a call on this client's runtime, bounded by the timeout.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{what} timed out after {} ms ({})",
                self.timeout.as_millis(),
                self.at
            ))),
        }
    }

    fn ac(&self) -> ActionCacheClient<Ch> {
        ActionCacheClient::with_interceptor(self.ch.clone(), self.auth.clone())
            .max_decoding_message_size(64 << 20)
    }

    fn cas(&self) -> ContentAddressableStorageClient<Ch> {
        ContentAddressableStorageClient::with_interceptor(self.ch.clone(), self.auth.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    fn bytestream(&self) -> ByteStreamClient<Ch> {
        ByteStreamClient::with_interceptor(self.ch.clone(), self.auth.clone())
            .max_decoding_message_size(4 << 20)
    }

    pub(crate) async fn caps(&self) -> Result<Caps, RemoteError> {
        self.caps
            .get_or_try_init(|| async {
                let mut c =
                    CapabilitiesClient::with_interceptor(self.ch.clone(), self.auth.clone());
                let req = GetCapabilitiesRequest {
                    instance_name: self.instance.clone(),
                };
                let cap = match self
                    .bounded("GetCapabilities", c.get_capabilities(req))
                    .await
                {
                    Ok(r) => r.into_inner(),
                    // A server without the Capabilities service: REAPI's defaults.
                    Err(st) if st.code() == Code::Unimplemented => {
                        return Ok(Caps {
                            batch: vx_reapi::MAX_BATCH_BYTES,
                            update_enabled: true,
                            exec_enabled: false,
                            exec_sha256: false,
                            answered: false,
                        });
                    }
                    Err(st) => return Err(failed("GetCapabilities", st, false)),
                };
                let Some(cc) = cap.cache_capabilities else {
                    return Err(RemoteError::Unavailable(
                        "the server has no cache (no cache_capabilities)".into(),
                    ));
                };
                let sha = digest_function::Value::Sha256 as i32;
                if !cc.digest_functions.is_empty() && !cc.digest_functions.contains(&sha) {
                    return Err(RemoteError::Unavailable(
                        "the server does not take SHA-256 digests".into(),
                    ));
                }
                let batch = match cc.max_batch_total_size_bytes {
                    n if n > 0 => (n as u64).min(vx_reapi::MAX_BATCH_BYTES),
                    _ => vx_reapi::MAX_BATCH_BYTES,
                };
                let update_enabled = cc
                    .action_cache_update_capabilities
                    .map(|u| u.update_enabled)
                    .unwrap_or(false);
                let (exec_enabled, exec_sha256) = match &cap.execution_capabilities {
                    Some(e) => (
                        e.exec_enabled,
                        e.digest_function == sha
                            || e.digest_functions.contains(&sha)
                            // Unset: REAPI's default for older servers.
                            || (e.digest_function == 0 && e.digest_functions.is_empty()),
                    ),
                    None => (false, false),
                };
                Ok(Caps {
                    batch,
                    update_enabled,
                    exec_enabled,
                    exec_sha256,
                    answered: true,
                })
            })
            .await
            .copied()
    }

    // ---------------------------------------------------------------- get

    pub fn get(&self, ta: &TaskAction) -> Result<Option<Artifact>, RemoteError> {
        self.rt.block_on(self.get_async(ta))
    }

    // The deprecated link list is read too (older servers and clients fill it).
    #[allow(deprecated)]
    async fn get_async(&self, ta: &TaskAction) -> Result<Option<Artifact>, RemoteError> {
        let caps = self.caps().await?;
        let req = GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(ta.digest.clone()),
            inline_stdout: true,
            ..Default::default()
        };
        let ar = match self
            .bounded("GetActionResult", self.ac().get_action_result(req))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(st) if st.code() == Code::NotFound => return Ok(None),
            Err(st) => return Err(failed("GetActionResult", st, false)),
        };
        if ar.exit_code != 0 {
            return Ok(None);
        }
        if !ar.output_directories.is_empty() || !ar.output_directory_symlinks.is_empty() {
            return Err(RemoteError::Refused(
                "the ActionCache entry has output directories, which vx never stores".into(),
            ));
        }
        let entries =
            ar.output_files.len() + ar.output_symlinks.len() + ar.output_file_symlinks.len();
        if entries > self.limits.max_entries {
            return Err(RemoteError::Refused(format!(
                "the result has {entries} outputs (at most {})",
                self.limits.max_entries
            )));
        }
        // What to download: every output file and the log.
        let mut want: Vec<Digest> = Vec::new();
        let mut total: u64 = 0;
        for f in &ar.output_files {
            let d = f.digest.clone().ok_or_else(|| {
                RemoteError::Refused(format!("output {:?} has no digest", f.path))
            })?;
            vx_reapi::valid(&d).map_err(|e| RemoteError::Refused(e.to_string()))?;
            total = total.saturating_add(d.size_bytes as u64);
            want.push(d);
        }
        let log_digest = ar
            .stdout_digest
            .clone()
            .filter(|_| ar.stdout_raw.is_empty());
        if let Some(d) = &log_digest {
            vx_reapi::valid(d).map_err(|e| RemoteError::Refused(e.to_string()))?;
            total = total.saturating_add(d.size_bytes as u64);
            want.push(d.clone());
        }
        if total > self.limits.max_total {
            return Err(RemoteError::Refused(format!(
                "the result holds {total} bytes (at most {})",
                self.limits.max_total
            )));
        }
        let Some(mut blobs) = self.download(&want, caps).await? else {
            return Ok(None);
        };
        // Each blob moves into the artifact at its last use (copied before).
        let mut uses: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for d in &want {
            *uses.entry(key(d)).or_default() += 1;
        }
        let mut take = |d: &Digest| {
            let k = key(d);
            let n = uses.get_mut(&k).map(|n| {
                *n -= 1;
                *n
            });
            match n {
                Some(0) => blobs.remove(&k).unwrap_or_default(),
                _ => blobs.get(&k).cloned().unwrap_or_default(),
            }
        };
        let mut files = Vec::with_capacity(entries);
        for f in &ar.output_files {
            let d = f.digest.as_ref().expect("checked above");
            let mode = f
                .node_properties
                .as_ref()
                .and_then(|p| p.unix_mode.as_ref())
                .map(|m| m.value & 0o7777)
                .unwrap_or(if f.is_executable { 0o755 } else { 0o644 });
            files.push(ArtifactFile {
                path: f.path.clone(),
                mode,
                body: ArtifactBody::File(take(d)),
            });
        }
        for l in ar.output_symlinks.iter().chain(&ar.output_file_symlinks) {
            files.push(ArtifactFile {
                path: l.path.clone(),
                mode: 0o777,
                body: ArtifactBody::Symlink(l.target.clone()),
            });
        }
        let log = match &log_digest {
            Some(d) => take(d),
            None => ar.stdout_raw.clone(),
        };
        blobs.clear();
        let duration_ms = executed_ms(ar.execution_metadata.as_ref());
        Ok(Some(Artifact {
            files,
            log,
            duration_ms,
        }))
    }

    /// The blobs of `want`, each checked against its digest. `None`: one is
    /// not in the CAS (the entry outlived its blobs: a miss).
    pub(crate) async fn download(
        &self,
        want: &[Digest],
        caps: Caps,
    ) -> Result<Option<BTreeMap<(String, i64), Vec<u8>>>, RemoteError> {
        let mut out = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut small: Vec<Digest> = Vec::new();
        let mut small_bytes = 0u64;
        for d in want {
            if !seen.insert(key(d)) {
                continue;
            }
            if d.size_bytes == 0 {
                out.insert(key(d), Vec::new());
                continue;
            }
            let n = d.size_bytes as u64;
            if n > caps.batch {
                match self.read_stream(d).await? {
                    Some(b) => {
                        out.insert(key(d), b);
                    }
                    None => return Ok(None),
                }
                continue;
            }
            if small_bytes + n > caps.batch {
                if !self
                    .read_batch(std::mem::take(&mut small), &mut out)
                    .await?
                {
                    return Ok(None);
                }
                small_bytes = 0;
            }
            small_bytes += n;
            small.push(d.clone());
        }
        if !small.is_empty() && !self.read_batch(small, &mut out).await? {
            return Ok(None);
        }
        Ok(Some(out))
    }

    async fn read_batch(
        &self,
        digests: Vec<Digest>,
        out: &mut BTreeMap<(String, i64), Vec<u8>>,
    ) -> Result<bool, RemoteError> {
        let req = BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.clone(),
            ..Default::default()
        };
        let resp = self
            .bounded("BatchReadBlobs", self.cas().batch_read_blobs(req))
            .await
            .map_err(|st| failed("BatchReadBlobs", st, false))?
            .into_inner();
        let mut got = HashSet::new();
        for r in resp.responses {
            let Some(d) = r.digest else { continue };
            let code = r.status.as_ref().map(|s| s.code).unwrap_or(0);
            if code == Code::NotFound as i32 {
                return Ok(false);
            }
            if code != 0 {
                return Err(RemoteError::Unavailable(format!(
                    "BatchReadBlobs: {}: code {code}: {}",
                    d.hash,
                    r.status.map(|s| s.message).unwrap_or_default()
                )));
            }
            vx_reapi::check(&d, &r.data)
                .map_err(|e| RemoteError::Refused(format!("the CAS sent a corrupt blob: {e}")))?;
            got.insert(key(&d));
            out.insert(key(&d), r.data);
        }
        if digests.iter().any(|d| !got.contains(&key(d))) {
            return Err(RemoteError::Unavailable(
                "BatchReadBlobs left out a blob it was asked for".into(),
            ));
        }
        Ok(true)
    }

    /// A blob through ByteStream `Read`, checked. `None`: not found.
    async fn read_stream(&self, d: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        let req = ReadRequest {
            resource_name: vx_reapi::read_resource(&self.instance, d),
            read_offset: 0,
            read_limit: 0,
        };
        let what = "ByteStream.Read";
        let body = self
            .bounded(what, async {
                let mut s = self.bytestream().read(req).await?.into_inner();
                let mut buf = Vec::with_capacity(d.size_bytes as usize);
                while let Some(m) = s.message().await? {
                    if (buf.len() + m.data.len()) as i64 > d.size_bytes {
                        return Err(Status::data_loss("the stream is longer than the blob"));
                    }
                    buf.extend_from_slice(&m.data);
                }
                Ok(buf)
            })
            .await;
        let body = match body {
            Ok(b) => b,
            Err(st) if st.code() == Code::NotFound => return Ok(None),
            Err(st) => return Err(failed(what, st, false)),
        };
        vx_reapi::check(d, &body)
            .map_err(|e| RemoteError::Refused(format!("the CAS sent a corrupt blob: {e}")))?;
        Ok(Some(body))
    }

    // ---------------------------------------------------------------- put

    pub fn put(&self, ta: &TaskAction, a: &Artifact) -> Result<(), RemoteError> {
        self.rt.block_on(self.put_async(ta, a))
    }

    async fn put_async(&self, ta: &TaskAction, a: &Artifact) -> Result<(), RemoteError> {
        let caps = self.caps().await?;
        if !caps.update_enabled {
            return Err(RemoteError::WriteDenied(
                "the server does not take ActionCache updates from this client (update_enabled is false)"
                    .into(),
            ));
        }
        // Every blob the result names, and the Action with its Command.
        let mut blobs: BTreeMap<(String, i64), (Digest, &[u8])> = BTreeMap::new();
        for (d, b) in [&ta.action, &ta.command, &ta.input_root] {
            blobs.insert(key(d), (d.clone(), b.as_slice()));
        }
        let mut result = ActionResult::default();
        for f in &a.files {
            match &f.body {
                ArtifactBody::File(bytes) => {
                    let d = vx_reapi::digest_of(bytes);
                    blobs.insert(key(&d), (d.clone(), bytes.as_slice()));
                    result.output_files.push(OutputFile {
                        path: f.path.clone(),
                        digest: Some(d),
                        is_executable: f.mode & 0o111 != 0,
                        node_properties: Some(NodeProperties {
                            unix_mode: Some(vx_reapi::UInt32Value {
                                value: f.mode & 0o7777,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
                ArtifactBody::Symlink(t) => result.output_symlinks.push(OutputSymlink {
                    path: f.path.clone(),
                    target: t.clone(),
                    ..Default::default()
                }),
            }
        }
        if !a.log.is_empty() {
            let d = vx_reapi::digest_of(&a.log);
            blobs.insert(key(&d), (d.clone(), a.log.as_slice()));
            // Never `stdout_raw` on upload: strict servers refuse it.
            result.stdout_digest = Some(d);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let end = vx_reapi::timestamp(now);
        let start = vx_reapi::timestamp(now.saturating_sub(Duration::from_millis(a.duration_ms)));
        result.execution_metadata = Some(ExecutedActionMetadata {
            worker: "vx".into(),
            execution_start_timestamp: Some(start),
            execution_completed_timestamp: Some(end),
            ..Default::default()
        });
        let blobs = blobs
            .into_iter()
            .map(|(k, (d, b))| (k, (d, Blob::Mem(b))))
            .collect();
        self.upload_missing(&blobs, caps).await?;
        // 3. Only now the result.
        let req = UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(ta.digest.clone()),
            action_result: Some(result),
            ..Default::default()
        };
        self.bounded("UpdateActionResult", self.ac().update_action_result(req))
            .await
            .map_err(|st| failed("UpdateActionResult", st, true))?;
        Ok(())
    }

    /// Uploads what the CAS lacks of `blobs`: `FindMissingBlobs` first,
    /// then small blobs in batches up to the server's limit, large ones by
    /// ByteStream. A file is read now and must still hash to its digest.
    pub(crate) async fn upload_missing(
        &self,
        blobs: &BTreeMap<(String, i64), (Digest, Blob<'_>)>,
        caps: Caps,
    ) -> Result<(), RemoteError> {
        // 1. What the CAS lacks.
        let all: Vec<Digest> = blobs.values().map(|(d, _)| d.clone()).collect();
        let mut missing = Vec::new();
        for chunk in all.chunks(10_000) {
            let req = FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: chunk.to_vec(),
                ..Default::default()
            };
            let r = self
                .bounded("FindMissingBlobs", self.cas().find_missing_blobs(req))
                .await
                .map_err(|st| failed("FindMissingBlobs", st, true))?;
            missing.extend(r.into_inner().missing_blob_digests);
        }
        // 2. Upload it: small blobs in batches, large ones by ByteStream.
        let mut batch: Vec<batch_update_blobs_request::Request> = Vec::new();
        let mut batch_bytes = 0u64;
        for d in missing {
            let Some((d, src)) = blobs.get(&key(&d)) else {
                continue;
            };
            let owned;
            let bytes: &[u8] = match src {
                Blob::Mem(b) => b,
                Blob::File(p) => {
                    owned = std::fs::read(p).map_err(|e| {
                        RemoteError::Refused(format!("cannot read {}: {e}", p.display()))
                    })?;
                    vx_reapi::check(d, &owned).map_err(|_| {
                        RemoteError::Refused(format!(
                            "{} changed while it was being sent",
                            p.display()
                        ))
                    })?;
                    &owned
                }
            };
            let n = bytes.len() as u64;
            if n > caps.batch {
                self.write_stream(d, bytes).await?;
                continue;
            }
            if batch_bytes + n > caps.batch {
                self.write_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += n;
            batch.push(batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data: bytes.to_vec(),
                ..Default::default()
            });
        }
        if !batch.is_empty() {
            self.write_batch(batch).await?;
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<(), RemoteError> {
        let req = BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests,
            ..Default::default()
        };
        let resp = self
            .bounded("BatchUpdateBlobs", self.cas().batch_update_blobs(req))
            .await
            .map_err(|st| failed("BatchUpdateBlobs", st, true))?
            .into_inner();
        for r in resp.responses {
            let st = r.status.unwrap_or_default();
            if st.code != 0 {
                let h = r.digest.map(|d| d.hash).unwrap_or_default();
                let st = Status::new(Code::from_i32(st.code), st.message);
                return Err(failed(&format!("BatchUpdateBlobs ({h})"), st, true));
            }
        }
        Ok(())
    }

    /// A blob through ByteStream `Write` in [`vx_reapi::CHUNK`] pieces; a
    /// broken stream is resumed once from what the server committed.
    async fn write_stream(&self, d: &Digest, bytes: &[u8]) -> Result<(), RemoteError> {
        let name = vx_reapi::write_resource(&self.instance, &upload_id(), d);
        let what = "ByteStream.Write";
        let mut from = 0usize;
        for attempt in 0..2 {
            let reqs: Vec<WriteRequest> = {
                let mut v = Vec::new();
                let mut off = from;
                loop {
                    let end = (off + vx_reapi::CHUNK).min(bytes.len());
                    v.push(WriteRequest {
                        resource_name: if v.is_empty() {
                            name.clone()
                        } else {
                            String::new()
                        },
                        write_offset: off as i64,
                        finish_write: end == bytes.len(),
                        data: bytes[off..end].to_vec(),
                    });
                    off = end;
                    if off == bytes.len() {
                        break;
                    }
                }
                v
            };
            let r = self
                .bounded(what, self.bytestream().write(tokio_stream::iter(reqs)))
                .await;
            match r {
                Ok(resp) => {
                    let c = resp.into_inner().committed_size;
                    if c == d.size_bytes || c == -1 {
                        return Ok(());
                    }
                    return Err(RemoteError::Unavailable(format!(
                        "{what}: the server committed {c} of {} bytes",
                        d.size_bytes
                    )));
                }
                Err(st)
                    if attempt == 0
                        && matches!(
                            st.code(),
                            Code::Unavailable | Code::Aborted | Code::Internal | Code::Unknown
                        ) =>
                {
                    // Resume from what the server has.
                    let q = QueryWriteStatusRequest {
                        resource_name: name.clone(),
                    };
                    match self
                        .bounded("QueryWriteStatus", self.bytestream().query_write_status(q))
                        .await
                    {
                        Ok(s) => {
                            let s = s.into_inner();
                            if s.complete {
                                return Ok(());
                            }
                            from = usize::try_from(s.committed_size)
                                .unwrap_or(0)
                                .min(bytes.len());
                        }
                        Err(_) => from = 0,
                    }
                }
                Err(st) => return Err(failed(what, st, true)),
            }
        }
        Err(RemoteError::Unavailable(format!(
            "{what}: the upload of {} failed twice",
            d.hash
        )))
    }
}
