//! `ac` — the ActionCache: encoded `ActionResult`s under
//! `reapi/ac/<namespace>/<instance>/<action sha256>`. An update needs a
//! `write` token, goes to its namespace, and is taken only when the Action
//! and every blob the result names are already in the CAS (so a hit never
//! points at missing bytes) and no link target is absolute; the first
//! result stored stays (a later update gets the stored one back). A lookup
//! goes through the namespaces the token reads, in order, and skips an
//! entry whose blobs have gone.
//!
//! Never: overwrites an entry, or lets a write reach a namespace other
//! than the token's own.

use super::{Reapi, instance_dir, store_failed};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use tonic::{Request, Response, Status};
use vx_reapi::prost::Message;
use vx_reapi::re::action_cache_server::ActionCache;
use vx_reapi::re::{ActionResult, Digest, GetActionResultRequest, UpdateActionResultRequest};

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

impl Reapi {
    async fn load(&self, p: &Path) -> Result<Option<ActionResult>, Status> {
        let b = match self.os.get(p).await {
            Ok(r) => r.bytes().await.map_err(store_failed)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_failed(e)),
        };
        match ActionResult::decode(b) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(entry = %p, error = %e, "a stored ActionResult does not decode; skipped");
                Ok(None)
            }
        }
    }
}

#[tonic::async_trait]
impl ActionCache for Reapi {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let g = self.grant(&request)?;
        let r = request.into_inner();
        let inst = instance_dir(&r.instance_name)?;
        let d = action_digest(r.action_digest)?;
        for ns in &g.reads {
            let Some(res) = self.load(&entry_path(ns, &inst, &d)).await? else {
                continue;
            };
            let gone = self.missing(&referenced(&res)).await?;
            if !gone.is_empty() {
                tracing::info!(action = %d.hash, namespace = %ns, missing = gone.len(), "an ActionCache entry names missing blobs; a miss");
                continue;
            }
            return Ok(Response::new(res));
        }
        Err(Status::not_found("no result for this action"))
    }

    async fn update_action_result(
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
        match self.os.put_opts(&p, res.encode_to_vec().into(), opts).await {
            Ok(_) => {
                tracing::info!(token = %g.name, namespace = %g.namespace, action = %d.hash, "action result stored");
                Ok(Response::new(res))
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Never overwritten: the stored result is the answer.
                match self.load(&p).await? {
                    Some(old) => Ok(Response::new(old)),
                    None => Ok(Response::new(res)),
                }
            }
            Err(e) => Err(store_failed(e)),
        }
    }
}
