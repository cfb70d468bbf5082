//! `cas` — the content-addressable storage: blobs under their SHA-256
//! (`reapi/cas/<hh>/<hash>`), shared by every namespace because a blob is
//! only stored when its bytes hash to its name. The `Capabilities` service
//! (SHA-256 only, the batch limit, whether the caller may update the
//! ActionCache) and `ContentAddressableStorage` (`FindMissingBlobs`,
//! `BatchUpdateBlobs`, `BatchReadBlobs`, `GetTree`).
//!
//! Never: stores bytes that are not their digest, serves a stored blob
//! whose bytes no longer are (it is reported missing), or answers a batch
//! larger than [`vx_reapi::MAX_BATCH_BYTES`].

use super::{Reapi, store_failed};
use bytes::Bytes;
use futures::{StreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use std::collections::VecDeque;
use std::pin::Pin;
use tonic::{Code, Request, Response, Status};
use vx_reapi::re::capabilities_server::Capabilities;
use vx_reapi::re::content_addressable_storage_server::ContentAddressableStorage;
use vx_reapi::re::{
    ActionCacheUpdateCapabilities, BatchReadBlobsRequest, BatchReadBlobsResponse,
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, CacheCapabilities, Digest, Directory,
    FindMissingBlobsRequest, FindMissingBlobsResponse, GetCapabilitiesRequest,
    GetChunkMappingRequest, GetChunkMappingResponse, GetTreeRequest, GetTreeResponse,
    RegisterChunkMappingRequest, RegisterChunkMappingResponse, ServerCapabilities,
    SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    batch_read_blobs_response, batch_update_blobs_response, compressor, digest_function,
    symlink_absolute_path_strategy,
};
use vx_reapi::rpc::Status as RpcStatus;
use vx_reapi::semver::SemVer;

/// Where a blob lives.
pub fn blob_path(hash: &str) -> Path {
    Path::from(format!("reapi/cas/{}/{hash}", &hash[..2]))
}

/// An object's modification time (`timestamp_millis`) as unix ms.
pub fn created_ms(t: i64) -> u64 {
    t.max(0) as u64
}

fn is_empty_blob(d: &Digest) -> bool {
    d.size_bytes == 0 && d.hash == vx_reapi::EMPTY_SHA256
}

fn rpc_status(code: Code, message: impl Into<String>) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

impl Reapi {
    /// Whether the CAS holds `d` (the empty blob always).
    pub async fn has(&self, d: &Digest) -> Result<bool, Status> {
        vx_reapi::valid(d).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if is_empty_blob(d) {
            return Ok(true);
        }
        let p = blob_path(&d.hash);
        match self.os.head(&p).await {
            Ok(m) if m.size as i64 == d.size_bytes => {
                // A blob a client was told exists is one it will count on:
                // a use, for eviction.
                self.app.store.note_read(
                    p.as_ref(),
                    m.size,
                    created_ms(m.last_modified.timestamp_millis()),
                );
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(object_store::Error::NotFound { .. }) => {
                self.app.store.forget(p.as_ref());
                Ok(false)
            }
            Err(e) => Err(store_failed(e)),
        }
    }

    /// Which of `ds` the CAS lacks (checked a few at a time).
    pub async fn missing(&self, ds: &[Digest]) -> Result<Vec<Digest>, Status> {
        let found: Vec<Result<(Digest, bool), Status>> = stream::iter(ds.iter().cloned())
            .map(|d| async move { self.has(&d).await.map(|h| (d, h)) })
            .buffered(16)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in found {
            let (d, h) = r?;
            if !h {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// A blob's bytes, checked; `None` when absent or no longer its digest.
    pub async fn read_blob(&self, d: &Digest) -> Result<Option<Bytes>, Status> {
        vx_reapi::valid(d).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if is_empty_blob(d) {
            return Ok(Some(Bytes::new()));
        }
        let p = blob_path(&d.hash);
        let (got, created) = match self.os.get(&p).await {
            Ok(r) => {
                let created = created_ms(r.meta.last_modified.timestamp_millis());
                (r.bytes().await.map_err(store_failed)?, created)
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.app.store.forget(p.as_ref());
                return Ok(None);
            }
            Err(e) => return Err(store_failed(e)),
        };
        if let Err(e) = vx_reapi::check(d, &got) {
            tracing::warn!(hash = %d.hash, error = %e, "a stored blob is corrupt; reported missing");
            return Ok(None);
        }
        self.app
            .store
            .note_read(p.as_ref(), got.len() as u64, created);
        Ok(Some(got))
    }

    /// Stores a blob after checking it is its digest (never overwrites).
    pub async fn write_blob(&self, d: &Digest, data: Bytes) -> Result<(), Status> {
        vx_reapi::check(d, &data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if data.len() as u64 > self.max_blob {
            return Err(Status::invalid_argument(format!(
                "the blob is larger than {} bytes",
                self.max_blob
            )));
        }
        if self.has(d).await? {
            return Ok(());
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let p = blob_path(&d.hash);
        let len = data.len() as u64;
        match self.os.put_opts(&p, data.into(), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
                self.app.store.note_written(p.as_ref(), len);
                Ok(())
            }
            Err(e) => Err(store_failed(e)),
        }
    }
}

impl Reapi {
    async fn get_capabilities_call(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let g = self.grant(&request)?;
        super::instance_dir(&request.get_ref().instance_name)?;
        let v = |major, minor| SemVer {
            major,
            minor,
            ..Default::default()
        };
        Ok(Response::new(ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: vec![digest_function::Value::Sha256 as i32],
                supported_compressors: vec![compressor::Value::Zstd as i32],
                supported_batch_update_compressors: vec![compressor::Value::Zstd as i32],
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: g.role == crate::auth::Role::Write,
                }),
                max_batch_total_size_bytes: vx_reapi::MAX_BATCH_BYTES as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Disallowed
                    as i32,
                ..Default::default()
            }),
            low_api_version: Some(v(2, 0)),
            high_api_version: Some(v(2, 2)),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Capabilities for Reapi {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let r = self.get_capabilities_call(request).await;
        self.counted("Capabilities", "GetCapabilities", r)
    }
}

type ChunkStream =
    Pin<Box<dyn futures::Stream<Item = Result<GetChunkMappingResponse, Status>> + Send>>;
type TreeStream = Pin<Box<dyn futures::Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

/// `GetTree`'s bounds: directories per page, and in one tree.
const TREE_PAGE: usize = 1000;
const TREE_MAX: usize = 100_000;

impl Reapi {
    async fn find_missing_blobs_call(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        self.grant(&request)?;
        let r = request.into_inner();
        super::instance_dir(&r.instance_name)?;
        let missing = self.missing(&r.blob_digests).await?;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs_call(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let g = self.writer(&request)?;
        let r = request.into_inner();
        super::instance_dir(&r.instance_name)?;
        let total: u64 = r.requests.iter().map(|q| q.data.len() as u64).sum();
        if total > vx_reapi::MAX_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "the batch holds {total} bytes (at most {}; use ByteStream)",
                vx_reapi::MAX_BATCH_BYTES
            )));
        }
        self.bytes("ContentAddressableStorage", "BatchUpdateBlobs", total, 0);
        // Compressed blobs: what they declare, once decompressed, is bounded
        // too (each at most the batch limit, all at most 16 times it).
        let declared: u64 = r
            .requests
            .iter()
            .filter(|q| q.compressor != 0)
            .map(|q| q.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64))
            .sum();
        if declared > 16 * vx_reapi::MAX_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "the batch's compressed blobs declare {declared} bytes (at most {}; use ByteStream)",
                16 * vx_reapi::MAX_BATCH_BYTES
            )));
        }
        let mut responses = Vec::with_capacity(r.requests.len());
        for q in r.requests {
            let d = q.digest.unwrap_or_default();
            let data = match compressor::Value::try_from(q.compressor) {
                Ok(compressor::Value::Identity) => Ok(Bytes::from(q.data)),
                Ok(compressor::Value::Zstd) if d.size_bytes as u64 > vx_reapi::MAX_BATCH_BYTES => {
                    Err(rpc_status(
                        Code::InvalidArgument,
                        "a compressed batch blob may be at most the batch limit once decompressed (use ByteStream)",
                    ))
                }
                Ok(compressor::Value::Zstd) => {
                    super::compress::decompress(&q.data, d.size_bytes.max(0) as u64)
                        .map(Bytes::from)
                        .map_err(|st| rpc_status(st.code(), st.message()))
                }
                _ => Err(rpc_status(
                    Code::InvalidArgument,
                    "compressor not supported (identity, zstd)",
                )),
            };
            let status = match data {
                Err(st) => st,
                Ok(data) => match self.write_blob(&d, data).await {
                    Ok(()) => rpc_status(Code::Ok, ""),
                    Err(st) => {
                        if st.code() == Code::InvalidArgument {
                            tracing::warn!(token = %g.name, hash = %d.hash, why = %st.message(), "blob refused");
                        }
                        rpc_status(st.code(), st.message())
                    }
                },
            };
            responses.push(batch_update_blobs_response::Response {
                digest: Some(d),
                status,
            });
        }
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs_call(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        self.grant(&request)?;
        let r = request.into_inner();
        super::instance_dir(&r.instance_name)?;
        let total: u64 = r.digests.iter().map(|d| d.size_bytes.max(0) as u64).sum();
        if total > vx_reapi::MAX_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "the batch asks for {total} bytes (at most {}; use ByteStream)",
                vx_reapi::MAX_BATCH_BYTES
            )));
        }
        let zstd = r
            .acceptable_compressors
            .contains(&(compressor::Value::Zstd as i32));
        let mut responses = Vec::with_capacity(r.digests.len());
        for d in r.digests {
            let (data, status) = match self.read_blob(&d).await {
                Ok(Some(b)) => (b.to_vec(), rpc_status(Code::Ok, "")),
                Ok(None) => (Vec::new(), rpc_status(Code::NotFound, "not in the CAS")),
                Err(st) => (Vec::new(), rpc_status(st.code(), st.message())),
            };
            // Compressed when the caller takes zstd and it is smaller.
            let (data, compressor) = match zstd && !data.is_empty() {
                true => match super::compress::compress(&data) {
                    Ok(z) if z.len() < data.len() => (z, compressor::Value::Zstd as i32),
                    _ => (data, 0),
                },
                false => (data, 0),
            };
            self.bytes(
                "ContentAddressableStorage",
                "BatchReadBlobs",
                0,
                data.len() as u64,
            );
            responses.push(batch_read_blobs_response::Response {
                digest: Some(d),
                data,
                status,
                compressor,
            });
        }
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    async fn get_tree_call(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<TreeStream>, Status> {
        self.grant(&request)?;
        let r = request.into_inner();
        super::instance_dir(&r.instance_name)?;
        let root = r
            .root_digest
            .ok_or_else(|| Status::invalid_argument("no root_digest"))?;
        let page = match r.page_size {
            n if n > 0 => (n as usize).min(TREE_PAGE),
            _ => TREE_PAGE,
        };
        let skip: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page_token"))?
        };
        // Breadth first from the root; every directory checked and decoded.
        let mut dirs: Vec<Directory> = Vec::new();
        let mut todo = VecDeque::from([root]);
        while let Some(d) = todo.pop_front() {
            if dirs.len() >= TREE_MAX {
                return Err(Status::resource_exhausted(format!(
                    "the tree has more than {TREE_MAX} directories"
                )));
            }
            let Some(b) = self.read_blob(&d).await? else {
                if dirs.is_empty() {
                    return Err(Status::not_found("the root directory is not in the CAS"));
                }
                continue;
            };
            let dir: Directory = vx_reapi::prost::Message::decode(b)
                .map_err(|_| Status::invalid_argument(format!("{} is not a Directory", d.hash)))?;
            todo.extend(dir.directories.iter().filter_map(|n| n.digest.clone()));
            dirs.push(dir);
        }
        let rest: Vec<Directory> = dirs.into_iter().skip(skip).collect();
        let n = rest.len();
        let mut pages = Vec::new();
        let mut it = rest.into_iter().peekable();
        let mut done = skip;
        while it.peek().is_some() || pages.is_empty() {
            let directories: Vec<Directory> = it.by_ref().take(page).collect();
            done += directories.len();
            let next = if done < skip + n {
                done.to_string()
            } else {
                String::new()
            };
            pages.push(Ok(GetTreeResponse {
                directories,
                next_page_token: next,
            }));
        }
        Ok(Response::new(Box::pin(stream::iter(pages))))
    }

    async fn split_blob_call(
        &self,
        _request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }

    async fn get_chunk_mapping_call(
        &self,
        _request: Request<GetChunkMappingRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }

    async fn splice_blob_call(
        &self,
        _request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("blob splicing is not supported"))
    }

    async fn register_chunk_mapping_call(
        &self,
        _request: Request<tonic::Streaming<RegisterChunkMappingRequest>>,
    ) -> Result<Response<RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("blob splicing is not supported"))
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for Reapi {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let r = self.find_missing_blobs_call(request).await;
        self.counted("ContentAddressableStorage", "FindMissingBlobs", r)
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let r = self.batch_update_blobs_call(request).await;
        self.counted("ContentAddressableStorage", "BatchUpdateBlobs", r)
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let r = self.batch_read_blobs_call(request).await;
        self.counted("ContentAddressableStorage", "BatchReadBlobs", r)
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let r = self.get_tree_call(request).await;
        self.counted("ContentAddressableStorage", "GetTree", r)
    }

    // Blob splitting (v2.12+): not offered (no capability advertises it).
    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        let r = self.split_blob_call(request).await;
        self.counted("ContentAddressableStorage", "SplitBlob", r)
    }

    type GetChunkMappingStream = ChunkStream;

    async fn get_chunk_mapping(
        &self,
        request: Request<GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        let r = self.get_chunk_mapping_call(request).await;
        self.counted("ContentAddressableStorage", "GetChunkMapping", r)
    }

    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        let r = self.splice_blob_call(request).await;
        self.counted("ContentAddressableStorage", "SpliceBlob", r)
    }

    async fn register_chunk_mapping(
        &self,
        request: Request<tonic::Streaming<RegisterChunkMappingRequest>>,
    ) -> Result<Response<RegisterChunkMappingResponse>, Status> {
        let r = self.register_chunk_mapping_call(request).await;
        self.counted("ContentAddressableStorage", "RegisterChunkMapping", r)
    }
}
