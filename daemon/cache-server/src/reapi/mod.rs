//! `reapi` — the Bazel Remote Execution API on the cache server's port,
//! beside the HTTP routes (gRPC is HTTP/2 on the same listener; axum routes
//! each service's path to its tonic server): `Capabilities`, `ActionCache`
//! ([`ac`]), `ContentAddressableStorage` ([`cas`]) and `ByteStream`
//! ([`bytestream`]), over the same object store and the same tokens.
//!
//! Rules, the same as the HTTP API's: every call needs a bearer token
//! (`authorization` metadata); writing anything (CAS blobs, uploads,
//! ActionCache entries) needs a `write` token; an ActionCache entry goes to
//! the token's namespace, is never overwritten (the first result stays),
//! and lookups go through the namespaces the token reads in order, so a
//! lower-trust namespace can never replace what a higher-trust one built
//! (the CREEP rule). CAS blobs are content-addressed and shared: every
//! write is hashed and refused unless its bytes are its digest.
//!
//! Every call is counted on `/metrics` by service, method and outcome (the
//! gRPC code it ended with; a `Read` when its stream ends), with the blob
//! bytes it moved ([`crate::metrics`]). Blobs and entries are in the
//! store's index, under the same eviction as the HTTP artifacts
//! ([`crate::store`]).
//!
//! Layout under the store's root: `reapi/cas/<hh>/<sha256>` (the blob) and
//! `reapi/ac/<namespace>/<instance>/<sha256>` (an encoded `ActionResult`;
//! instance `_` for the empty name).
//! Never: stores a blob it did not hash, serves a path built from unchecked
//! input (hashes, namespaces and instance segments are checked), or keeps
//! an unbounded number of partial uploads.

pub mod ac;
pub mod bytestream;
pub mod cas;
pub mod compress;

use crate::auth::{Grant, Role, valid_name};
use crate::http::App;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Status};
use vx_reapi::bs::byte_stream_server::ByteStreamServer;
use vx_reapi::re::action_cache_server::ActionCacheServer;
use vx_reapi::re::capabilities_server::CapabilitiesServer;
use vx_reapi::re::content_addressable_storage_server::ContentAddressableStorageServer;

/// The REAPI side of the server.
pub struct Reapi {
    pub app: Arc<App>,
    pub os: Arc<dyn ObjectStore>,
    /// The largest blob accepted (`--max-artifact-size`).
    pub max_blob: u64,
    /// Partial ByteStream uploads.
    pub uploads: bytestream::Uploads,
    /// Their directory.
    pub spool: PathBuf,
}

impl Reapi {
    /// Partial uploads go to a directory of this process's own under
    /// `spool_parent` (made by the first ByteStream upload; the caller
    /// removes [`Reapi::spool`] at exit). Nothing else under `spool_parent`
    /// is touched.
    pub fn new(app: Arc<App>, spool_parent: &std::path::Path) -> std::io::Result<Reapi> {
        if !spool_parent.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a directory",
            ));
        }
        let spool = spool_parent.join(format!("vx-cache-server-uploads-{}", std::process::id()));
        Ok(Reapi {
            os: app.store.os.clone(),
            max_blob: app.max_artifact,
            app,
            uploads: bytestream::Uploads::new(spool.clone()),
            spool,
        })
    }

    /// The grant of a call's bearer token.
    pub fn grant<T>(&self, r: &Request<T>) -> Result<Grant, Status> {
        let auth = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.app.tokens.check(auth).cloned().ok_or_else(|| {
            Status::unauthenticated("a valid bearer token is required (authorization: Bearer …)")
        })
    }

    /// The grant of a call that writes.
    pub fn writer<T>(&self, r: &Request<T>) -> Result<Grant, Status> {
        let g = self.grant(r)?;
        if g.role != Role::Write {
            return Err(Status::permission_denied(format!(
                "token {:?} may only read",
                g.name
            )));
        }
        Ok(g)
    }
}

impl Reapi {
    /// Counts a call's outcome (`/metrics`) and passes it on.
    pub fn counted<T>(
        &self,
        service: &'static str,
        method: &'static str,
        r: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(st) => st.code(),
        };
        self.app.metrics.reapi_call(service, method, code);
        r
    }

    /// Counts blob bytes a method took in and gave out (`/metrics`).
    pub fn bytes(&self, service: &'static str, method: &'static str, bytes_in: u64, out: u64) {
        self.app.metrics.reapi_bytes(service, method, bytes_in, out);
    }
}

/// An instance name as a path piece: `_` for the empty name, else its
/// `/`-separated segments, each a valid name (at most 8).
pub fn instance_dir(instance: &str) -> Result<String, Status> {
    if instance.is_empty() {
        return Ok("_".into());
    }
    let segs: Vec<&str> = instance.split('/').collect();
    if segs.len() > 8 || segs.iter().any(|s| !valid_name(s) || *s == "_") {
        return Err(Status::invalid_argument(format!(
            "instance name {instance:?}: segments of letters, digits, `.`, `_`, `-`"
        )));
    }
    Ok(segs.join("/"))
}

/// The routes of the four services, to merge into the HTTP router.
pub fn router(r: Arc<Reapi>) -> axum::Router {
    use tonic::server::NamedService;
    let limit = 4 << 20;
    let ac = ActionCacheServer::from_arc(r.clone()).max_decoding_message_size(limit);
    let cas = ContentAddressableStorageServer::from_arc(r.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit + (1 << 20));
    let bs = ByteStreamServer::from_arc(r.clone()).max_decoding_message_size(limit);
    let caps = CapabilitiesServer::from_arc(r);
    fn path<S: NamedService>(_: &S) -> String {
        format!("/{}/{{*rest}}", S::NAME)
    }
    axum::Router::new()
        .route_service(&path(&ac), ac)
        .route_service(&path(&cas), cas)
        .route_service(&path(&bs), bs)
        .route_service(&path(&caps), caps)
}

/// A store failure as a status (logged; never the store's own message to
/// the client, which may name paths).
pub fn store_failed(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "store failed (REAPI)");
    Status::unavailable("the store failed")
}
