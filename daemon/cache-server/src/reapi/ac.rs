//! `ac` — the ActionCache: encoded `ActionResult`s under
//! `reapi/ac/<namespace>/<instance>/<action sha256>`. An update needs a
//! `write` token, goes to its namespace, and is taken only when the Action
//! and every blob the result names are already in the CAS (so a hit never
//! points at missing bytes) and no link target is absolute; the first
//! result stored stays (a later update gets the stored one back). A lookup
//! goes through the namespaces the token reads, in order, and skips an
//! entry whose blobs have gone (evicted: REAPI allows `NOT_FOUND` then, and
//! the client runs the action again), the files inside its output
//! directories' trees included; a hit counts as a use of the entry and of
//! every blob it names, so eviction (least recently used first) keeps a
//! result and its outputs together.
//!
//! Never: overwrites an entry, or lets a write reach a namespace other
//! than the token's own.

use super::{Reapi, instance_dir, store_failed};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use tonic::{Request, Response, Status};
use vx_reapi::prost::Message;
use vx_reapi::re::action_cache_server::ActionCache;
use vx_reapi::re::{ActionResult, Digest, GetActionResultRequest, Tree, UpdateActionResultRequest};

fn entry_path(ns: &str, instance: &str, d: &Digest) -> Path {
    Path::from(format!("reapi/ac/{ns}/{instance}/{}", d.hash))
}

/// Every blob an action result names.
fn referenced(r: &ActionResult) -> Vec<Digest> {
    let mut v: Vec<Digest> = r
        .output_files
        .iter()
        .filter_map(|f| f.digest.clone())
        .collect();
    v.extend(
        r.output_directories
            .iter()
            .filter_map(|d| d.tree_digest.clone()),
    );
    v.extend(r.stdout_digest.clone());
    v.extend(r.stderr_digest.clone());
    v
}

fn action_digest(d: Option<Digest>) -> Result<Digest, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument("no action_digest"))?;
    vx_reapi::valid(&d).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(d)
}

/// The largest output-directory `Tree` whose files a lookup checks; a
/// larger tree's own blob is checked but not its files.
pub const TREE_CHECK_MAX: i64 = 16 << 20;

impl Reapi {
    /// An entry, with its size and modification time (unix ms).
    async fn load(&self, p: &Path) -> Result<Option<(ActionResult, u64, u64)>, Status> {
        let (b, created) = match self.os.get(p).await {
            Ok(r) => {
                let created = super::cas::created_ms(r.meta.last_modified.timestamp_millis());
                (r.bytes().await.map_err(store_failed)?, created)
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.app.store.forget(p.as_ref());
                return Ok(None);
            }
            Err(e) => return Err(store_failed(e)),
        };
        let size = b.len() as u64;
        match ActionResult::decode(b) {
            Ok(r) => Ok(Some((r, size, created))),
            Err(e) => {
                tracing::warn!(entry = %p, error = %e, "a stored ActionResult does not decode; skipped");
                Ok(None)
            }
        }
    }

    /// Whether every blob `res` names is in the CAS, the files inside its
    /// output directories' trees included (trees up to
    /// [`TREE_CHECK_MAX`]); each blob found counts as used (eviction).
    async fn complete(&self, res: &ActionResult) -> Result<bool, Status> {
        if !self.missing(&referenced(res)).await?.is_empty() {
            return Ok(false);
        }
        for od in &res.output_directories {
            let Some(td) = &od.tree_digest else { continue };
            if td.size_bytes > TREE_CHECK_MAX {
                continue;
            }
            let Some(b) = self.read_blob(td).await? else {
                return Ok(false);
            };
            let Ok(tree) = Tree::decode(b) else {
                tracing::warn!(tree = %td.hash, "an output directory's Tree does not decode; a miss");
                return Ok(false);
            };
            let files: Vec<Digest> = tree
                .root
                .iter()
                .chain(&tree.children)
                .flat_map(|d| d.files.iter().filter_map(|f| f.digest.clone()))
                .collect();
            if !self.missing(&files).await?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Reapi {
    async fn get_action_result_call(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let g = self.grant(&request)?;
        let r = request.into_inner();
        let inst = instance_dir(&r.instance_name)?;
        let d = action_digest(r.action_digest)?;
        for ns in &g.reads {
            let p = entry_path(ns, &inst, &d);
            let Some((res, size, created)) = self.load(&p).await? else {
                continue;
            };
            if !self.complete(&res).await? {
                tracing::info!(action = %d.hash, namespace = %ns, "an ActionCache entry names blobs no longer in the CAS (evicted?); a miss");
                continue;
            }
            self.app.store.note_read(p.as_ref(), size, created);
            self.bytes("ActionCache", "GetActionResult", 0, size);
            return Ok(Response::new(res));
        }
        Err(Status::not_found("no result for this action"))
    }

    async fn update_action_result_call(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let g = self.writer(&request)?;
        let r = request.into_inner();
        let inst = instance_dir(&r.instance_name)?;
        let d = action_digest(r.action_digest)?;
        let res = r
            .action_result
            .ok_or_else(|| Status::invalid_argument("no action_result"))?;
        // The Action first, then every blob the result names.
        if !self.has(&d).await? {
            return Err(Status::failed_precondition(format!(
                "the action {} is not in the CAS: upload the Action (and its Command) before its result",
                d.hash
            )));
        }
        let refs = referenced(&res);
        for x in &refs {
            vx_reapi::valid(x).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let gone = self.missing(&refs).await?;
        if let Some(x) = gone.first() {
            return Err(Status::failed_precondition(format!(
                "{} blob(s) the result names are not in the CAS (first: {}/{})",
                gone.len(),
                x.hash,
                x.size_bytes
            )));
        }
        // The deprecated link lists count too (older clients fill them).
        #[allow(deprecated)]
        let links = res
            .output_symlinks
            .iter()
            .chain(&res.output_file_symlinks)
            .chain(&res.output_directory_symlinks);
        for l in links {
            if l.target.starts_with('/') {
                return Err(Status::invalid_argument(format!(
                    "the link {} has an absolute target (this server disallows them)",
                    l.path
                )));
            }
        }
        let p = entry_path(&g.namespace, &inst, &d);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let encoded = res.encode_to_vec();
        let len = encoded.len() as u64;
        match self.os.put_opts(&p, encoded.into(), opts).await {
            Ok(_) => {
                self.app.store.note_written(p.as_ref(), len);
                self.bytes("ActionCache", "UpdateActionResult", len, 0);
                tracing::info!(token = %g.name, namespace = %g.namespace, action = %d.hash, "action result stored");
                Ok(Response::new(res))
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Never overwritten: the stored result is the answer.
                match self.load(&p).await? {
                    Some((old, _, _)) => Ok(Response::new(old)),
                    None => Ok(Response::new(res)),
                }
            }
            Err(e) => Err(store_failed(e)),
        }
    }
}

#[tonic::async_trait]
impl ActionCache for Reapi {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let r = self.get_action_result_call(request).await;
        self.counted("ActionCache", "GetActionResult", r)
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let r = self.update_action_result_call(request).await;
        self.counted("ActionCache", "UpdateActionResult", r)
    }
}
