//! `exec` — remote execution of one task through the REAPI Execution
//! service: the capability check, the job's Command and Action (salted
//! with the vx key), the input root uploaded as far as the CAS lacks it,
//! `Execute` and its stream of long-running operations (re-attached with
//! `WaitExecution` after a broken stream, never submitted again unless the
//! server no longer knows the operation), best-effort `CancelOperation`,
//! and the result's outputs, trees and logs downloaded and checked.
//!
//! Never: sends an environment value the job does not carry, waits past
//! the action's timeout plus [`MARGIN`], trusts a blob it did not hash, or
//! reads more than [`crate::Limits`] allow.

use crate::rpc::{Blob, Conn, failed, key};
use crate::tree::{self, Entry, Source};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::{Code, Status, Streaming};
use vx_reapi::lro::operations_client::OperationsClient;
use vx_reapi::lro::{CancelOperationRequest, Operation, operation};
use vx_reapi::prost::Message;
use vx_reapi::re::execution_client::ExecutionClient;
use vx_reapi::re::{
    Action, Command, Digest, ExecuteRequest, ExecuteResponse, Platform, Tree, WaitExecutionRequest,
    command, digest_function, platform,
};
use vx_reapi::re::{ExecuteOperationMetadata, execution_stage};
use vxd::cache::remote::{Artifact, ArtifactBody, ArtifactFile, Executed, RemoteError, RemoteJob};

/// Changes when the mapping of a job to an Action changes.
pub const SALT: &[u8] = b"vx-reapi-exec-v1";

/// How long past the action's timeout a run waits for the server.
pub const MARGIN: Duration = Duration::from_secs(60);

/// The bound of a job without a timeout.
pub const NO_TIMEOUT_BOUND: Duration = Duration::from_secs(3600);

/// How many times a broken operation stream is re-attached.
const REATTACH: u32 = 5;

/// How often the run's cancellation is looked at.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A file's identity on disk, for the digest memo.
type FileId = (PathBuf, u64, i64, u64);

/// SHA-256 digests of input files, remembered by path, size, mtime and
/// inode (bounded: cleared when full).
#[derive(Default)]
pub struct DigestMemo(Mutex<HashMap<FileId, Digest>>);

const MEMO_MAX: usize = 200_000;

impl DigestMemo {
    /// The digest of the file at `p` (hashed when not remembered).
    pub fn digest(&self, p: &Path) -> Result<Digest, String> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !md.is_file() {
            return Err(format!("{} is not a regular file", p.display()));
        }
        let id = (
            p.to_path_buf(),
            md.len(),
            md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            md.ino(),
        );
        if let Some(d) = self.0.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(d);
        }
        let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut h = vx_reapi::Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            use std::io::Read;
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let d = h.digest();
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(id, d.clone());
        }
        Ok(d)
    }
}

/// The Command and Action of `job` over the input root `root`: encoded,
/// with their digests.
pub fn job_messages(job: &RemoteJob, root: &Digest) -> ((Digest, Vec<u8>), (Digest, Vec<u8>)) {
    let mut env: Vec<command::EnvironmentVariable> = job
        .env
        .iter()
        .map(|(k, v)| command::EnvironmentVariable {
            name: k.clone(),
            value: v.clone(),
        })
        .collect();
    env.sort_by(|a, b| a.name.cmp(&b.name));
    env.dedup_by(|a, b| a.name == b.name);
    let mut props: Vec<platform::Property> = job
        .platform
        .iter()
        .map(|(k, v)| platform::Property {
            name: k.clone(),
            value: v.clone(),
        })
        .collect();
    props.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    let plat = (!props.is_empty()).then_some(Platform { properties: props });
    let mut outs = job.output_paths.clone();
    outs.sort();
    outs.dedup();
    #[allow(deprecated)]
    let cmd = Command {
        arguments: job.arguments.clone(),
        environment_variables: env,
        output_paths: outs,
        working_directory: job.working_directory.clone(),
        // Older servers read the platform from the Command.
        platform: plat.clone(),
        ..Default::default()
    };
    let cmd = vx_reapi::digest_of_message(&cmd);
    let mut salt = SALT.to_vec();
    salt.push(0);
    salt.extend_from_slice(job.key.as_bytes());
    let action = Action {
        command_digest: Some(cmd.0.clone()),
        input_root_digest: Some(root.clone()),
        timeout: job.timeout.map(|t| vx_reapi::PbDuration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        }),
        salt,
        platform: plat,
        ..Default::default()
    };
    (vx_reapi::digest_of_message(&action), cmd)
}

/// How a pass over an operation stream ended.
enum Pass {
    Done(Operation),
    /// Queued longer than the job's queue timeout (no worker took it).
    Unplaced,
    /// The stream ended or broke before `done` (the status, when it broke).
    Broken(Option<Status>),
    Cancelled,
    OutOfTime,
}

impl Conn {
    fn exec_client(&self) -> ExecutionClient<crate::rpc::Ch> {
        ExecutionClient::with_interceptor(self.ch.clone(), self.auth.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Whether the server executes actions with SHA-256 digests.
    pub fn can_execute(&self) -> Result<(), String> {
        let caps = self.rt.block_on(self.caps()).map_err(|e| e.to_string())?;
        if !caps.answered {
            return Err(
                "it does not answer GetCapabilities, so it has no execution capability vx can see"
                    .into(),
            );
        }
        if !caps.exec_enabled {
            return Err(
                "it has no execution capability (execution_capabilities.exec_enabled is not set): a cache-only server"
                    .into(),
            );
        }
        if !caps.exec_sha256 {
            return Err("it does not execute actions keyed by SHA-256".into());
        }
        Ok(())
    }

    pub fn execute(
        &self,
        job: &RemoteJob,
        cancelled: &(dyn Fn() -> bool + Sync),
        memo: &DigestMemo,
    ) -> Result<Executed, RemoteError> {
        self.rt.block_on(self.execute_async(job, cancelled, memo))
    }

    async fn execute_async(
        &self,
        job: &RemoteJob,
        cancelled: &(dyn Fn() -> bool + Sync),
        memo: &DigestMemo,
    ) -> Result<Executed, RemoteError> {
        let caps = self.caps().await?;
        // 1. The input root, the Command and the Action.
        let root = tree::input_root(&job.inputs, &job.working_directory, |p| memo.digest(p))
            .map_err(|e| RemoteError::Refused(format!("its inputs: {e}")))?;
        let (action, cmd) = job_messages(job, &root.digest);
        // 2. Into the CAS, as far as it lacks them.
        let mut blobs: BTreeMap<(String, i64), (Digest, Blob<'_>)> = root
            .blobs
            .iter()
            .map(|(k, (d, s))| {
                let b = match s {
                    Source::Bytes(b) => Blob::Mem(b),
                    Source::File(p) => Blob::File(p),
                };
                (k.clone(), (d.clone(), b))
            })
            .collect();
        for (d, b) in [&action, &cmd] {
            blobs.insert(key(d), (d.clone(), Blob::Mem(b)));
        }
        if cancelled() {
            return Err(RemoteError::Cancelled);
        }
        self.upload_missing(&blobs, caps).await?;
        drop(blobs);
        // 3. Execute, re-attaching after a broken stream.
        let bound = job.timeout.unwrap_or(NO_TIMEOUT_BOUND) + MARGIN + self.timeout;
        let deadline = Instant::now() + bound;
        let req = ExecuteRequest {
            instance_name: self.instance.clone(),
            skip_cache_lookup: false,
            action_digest: Some(action.0.clone()),
            digest_function: digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        let mut name: Option<String> = None;
        let queued_since: Cell<Option<Instant>> = Cell::new(None);
        let mut broken = 0u32;
        let mut resubmitted = false;
        let op = loop {
            let pass = self
                .pass(
                    &req,
                    &mut name,
                    cancelled,
                    deadline,
                    &queued_since,
                    job.queue_timeout,
                )
                .await;
            match pass {
                Pass::Done(op) => break op,
                Pass::Cancelled => {
                    self.cancel(name.as_deref()).await;
                    return Err(RemoteError::Cancelled);
                }
                Pass::Unplaced => {
                    self.cancel(name.as_deref()).await;
                    return Err(RemoteError::Unavailable(format!(
                        "no worker took the action within {} s (is there a worker for its platform {:?}?)",
                        job.queue_timeout.as_secs(),
                        job.platform
                    )));
                }
                Pass::OutOfTime => {
                    self.cancel(name.as_deref()).await;
                    return Err(RemoteError::Unavailable(format!(
                        "no result from Execute within {} s",
                        bound.as_secs()
                    )));
                }
                Pass::Broken(st) => {
                    let code = st.as_ref().map(|s| s.code());
                    match (&name, code) {
                        // Never got an operation: the server refused the request.
                        (None, Some(_)) => {
                            return Err(failed("Execute", st.expect("some"), false));
                        }
                        // The server no longer knows the operation: submit again, once.
                        (Some(_), Some(Code::NotFound)) if !resubmitted => {
                            resubmitted = true;
                            name = None;
                            continue;
                        }
                        (Some(_), Some(Code::NotFound)) => {
                            return Err(failed("WaitExecution", st.expect("some"), false));
                        }
                        _ => {}
                    }
                    broken += 1;
                    if broken > REATTACH {
                        let why = st
                            .map(|s| format!("{:?}: {}", s.code(), s.message()))
                            .unwrap_or_else(|| "the stream ended before the result".into());
                        return Err(RemoteError::Unavailable(format!(
                            "the operation stream broke {broken} times ({why})"
                        )));
                    }
                    tracing::debug!(?name, broken, "operation stream broke; re-attaching");
                    let wait =
                        Duration::from_millis(200u64 << broken.min(5)).min(Duration::from_secs(5));
                    tokio::time::sleep(wait).await;
                }
            }
        };
        // 4. The result.
        let resp = match op.result {
            Some(operation::Result::Response(any)) => ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| {
                    RemoteError::Refused(format!("the ExecuteResponse does not decode: {e}"))
                })?,
            Some(operation::Result::Error(st)) => {
                let st = Status::new(Code::from_i32(st.code), st.message);
                return Err(exec_status("the operation failed", st));
            }
            None => {
                return Err(RemoteError::Refused(
                    "the operation is done without a result".into(),
                ));
            }
        };
        let mut timed_out = false;
        if let Some(st) = &resp.status
            && st.code != 0
        {
            if st.code == Code::DeadlineExceeded as i32 {
                timed_out = true;
            } else {
                let st = Status::new(Code::from_i32(st.code), st.message.clone());
                return Err(exec_status("Execute", st));
            }
        }
        let Some(ar) = resp.result else {
            if timed_out {
                return Ok(Executed {
                    exit_code: -1,
                    timed_out,
                    ..Default::default()
                });
            }
            return Err(RemoteError::Refused(
                "the ExecuteResponse has no result".into(),
            ));
        };
        let mut ex = self.result_of(&ar, caps).await?;
        ex.timed_out = timed_out;
        ex.cached = resp.cached_result;
        Ok(ex)
    }

    /// One pass over an operation stream: `Execute` (no name yet) or
    /// `WaitExecution` (re-attach to `name`).
    async fn pass(
        &self,
        req: &ExecuteRequest,
        name: &mut Option<String>,
        cancelled: &(dyn Fn() -> bool + Sync),
        deadline: Instant,
        queued_since: &Cell<Option<Instant>>,
        queue_timeout: Duration,
    ) -> Pass {
        let consume = async {
            let mut c = self.exec_client();
            let s: Result<tonic::Response<Streaming<Operation>>, Status> = match name.clone() {
                None => c.execute(req.clone()).await,
                Some(n) => c.wait_execution(WaitExecutionRequest { name: n }).await,
            };
            let mut s = match s {
                Ok(s) => s.into_inner(),
                Err(st) => return Pass::Broken(Some(st)),
            };
            loop {
                match s.message().await {
                    Ok(Some(op)) => {
                        if !op.name.is_empty() {
                            *name = Some(op.name.clone());
                        }
                        match stage_of(&op) {
                            Some(execution_stage::Value::Queued)
                                if queued_since.get().is_none() =>
                            {
                                queued_since.set(Some(Instant::now()));
                            }
                            Some(
                                execution_stage::Value::Executing
                                | execution_stage::Value::Completed,
                            ) => queued_since.set(None),
                            _ => {}
                        }
                        if op.done {
                            return Pass::Done(op);
                        }
                    }
                    Ok(None) => return Pass::Broken(None),
                    Err(st) => return Pass::Broken(Some(st)),
                }
            }
        };
        let cancel = async {
            loop {
                if cancelled() {
                    return;
                }
                tokio::time::sleep(CANCEL_POLL).await;
            }
        };
        let unplaced = async {
            loop {
                tokio::time::sleep(CANCEL_POLL).await;
                if queued_since
                    .get()
                    .is_some_and(|t| t.elapsed() > queue_timeout)
                {
                    return;
                }
            }
        };
        tokio::select! {
            p = consume => p,
            _ = cancel => Pass::Cancelled,
            _ = unplaced => Pass::Unplaced,
            _ = tokio::time::sleep_until(deadline.into()) => Pass::OutOfTime,
        }
    }

    /// Asks the server to cancel an operation (best effort: it may not
    /// implement `Operations`; then the operation is just dropped).
    async fn cancel(&self, name: Option<&str>) {
        let Some(name) = name else { return };
        let mut c = OperationsClient::with_interceptor(self.ch.clone(), self.auth.clone());
        let req = CancelOperationRequest {
            name: name.to_string(),
        };
        let r = tokio::time::timeout(Duration::from_secs(5), c.cancel_operation(req)).await;
        tracing::debug!(
            name,
            ok = matches!(r, Ok(Ok(_))),
            "asked to cancel a remote operation"
        );
    }

    /// An executed action's result: its outputs (files, trees, links) and
    /// logs downloaded and checked.
    #[allow(deprecated)]
    async fn result_of(
        &self,
        ar: &vx_reapi::re::ActionResult,
        caps: crate::rpc::Caps,
    ) -> Result<Executed, RemoteError> {
        let refused = |e: String| RemoteError::Refused(e);
        let mut entries: Vec<Entry> = Vec::new();
        for f in &ar.output_files {
            entries.push(
                tree::file_entry(
                    f.path.clone(),
                    f.digest.as_ref(),
                    f.is_executable,
                    f.node_properties.as_ref(),
                )
                .map_err(refused)?,
            );
        }
        for l in ar
            .output_symlinks
            .iter()
            .chain(&ar.output_file_symlinks)
            .chain(&ar.output_directory_symlinks)
        {
            entries.push(Entry::Link {
                path: l.path.clone(),
                target: l.target.clone(),
            });
        }
        // Output directories: their Trees first.
        let trees: Vec<Digest> = ar
            .output_directories
            .iter()
            .map(|d| {
                d.tree_digest
                    .clone()
                    .ok_or_else(|| refused(format!("output directory {:?} has no tree", d.path)))
            })
            .collect::<Result<_, _>>()?;
        if !trees.is_empty() {
            let mut total = 0u64;
            for t in &trees {
                vx_reapi::valid(t).map_err(|e| refused(e.to_string()))?;
                total = total.saturating_add(t.size_bytes as u64);
            }
            if total > self.limits.max_total {
                return Err(refused(format!(
                    "the output trees hold {total} bytes (at most {})",
                    self.limits.max_total
                )));
            }
            let got = self
                .download(&trees, caps)
                .await?
                .ok_or_else(|| refused("an output tree is not in the CAS".into()))?;
            for (d, t) in ar.output_directories.iter().zip(&trees) {
                let bytes = got.get(&key(t)).map(Vec::as_slice).unwrap_or_default();
                let tree = Tree::decode(bytes).map_err(|e| {
                    refused(format!("output tree {:?} does not decode: {e}", d.path))
                })?;
                entries.extend(
                    tree::flatten(&d.path, &tree, self.limits.max_entries).map_err(refused)?,
                );
                if entries.len() > self.limits.max_entries {
                    break;
                }
            }
        }
        if entries.len() > self.limits.max_entries {
            return Err(refused(format!(
                "the result has {} outputs (at most {})",
                entries.len(),
                self.limits.max_entries
            )));
        }
        // Every blob: output files and the logs not inlined.
        let mut want: Vec<Digest> = Vec::new();
        let mut total = 0u64;
        for e in &entries {
            if let Entry::File { digest, .. } = e {
                total = total.saturating_add(digest.size_bytes as u64);
                want.push(digest.clone());
            }
        }
        let log_digest = |raw: &[u8], d: &Option<Digest>| -> Result<Option<Digest>, RemoteError> {
            match d {
                Some(d) if raw.is_empty() && d.size_bytes > 0 => {
                    vx_reapi::valid(d).map_err(|e| refused(e.to_string()))?;
                    Ok(Some(d.clone()))
                }
                _ => Ok(None),
            }
        };
        let out_d = log_digest(&ar.stdout_raw, &ar.stdout_digest)?;
        let err_d = log_digest(&ar.stderr_raw, &ar.stderr_digest)?;
        for d in out_d.iter().chain(&err_d) {
            total = total.saturating_add(d.size_bytes as u64);
            want.push(d.clone());
        }
        if total > self.limits.max_total {
            return Err(refused(format!(
                "the result holds {total} bytes (at most {})",
                self.limits.max_total
            )));
        }
        let blobs = self
            .download(&want, caps)
            .await?
            .ok_or_else(|| refused("a blob of the result is not in the CAS".into()))?;
        let take = |d: &Digest| blobs.get(&key(d)).cloned().unwrap_or_default();
        let mut files = Vec::with_capacity(entries.len());
        for e in entries {
            files.push(match e {
                Entry::File {
                    path,
                    digest,
                    executable,
                    mode,
                } => ArtifactFile {
                    path,
                    mode: mode.unwrap_or(if executable { 0o755 } else { 0o644 }),
                    body: ArtifactBody::File(take(&digest)),
                },
                Entry::Link { path, target } => ArtifactFile {
                    path,
                    mode: 0o777,
                    body: ArtifactBody::Symlink(target),
                },
            });
        }
        let stdout = match &out_d {
            Some(d) => take(d),
            None => ar.stdout_raw.clone(),
        };
        let stderr = match &err_d {
            Some(d) => take(d),
            None => ar.stderr_raw.clone(),
        };
        let meta = ar.execution_metadata.as_ref();
        let duration_ms = crate::rpc::executed_ms(meta);
        Ok(Executed {
            exit_code: ar.exit_code,
            timed_out: false,
            stdout,
            stderr,
            outputs: Artifact {
                files,
                log: Vec::new(),
                duration_ms,
            },
            cached: false,
            worker: meta.map(|m| m.worker.clone()).filter(|w| !w.is_empty()),
        })
    }
}

/// The stage an operation's metadata reports, when it carries
/// `ExecuteOperationMetadata`.
fn stage_of(op: &Operation) -> Option<execution_stage::Value> {
    let any = op.metadata.as_ref()?;
    if !any.type_url.ends_with("ExecuteOperationMetadata") {
        return None;
    }
    let m = ExecuteOperationMetadata::decode(any.value.as_slice()).ok()?;
    execution_stage::Value::try_from(m.stage).ok()
}

/// A failed execution's status as the engine's error: a request the
/// server refuses (bad arguments, missing inputs, a platform no worker
/// has) is this task's problem; anything else is the server's.
fn exec_status(what: &str, st: Status) -> RemoteError {
    let detail = format!("{what}: {:?}: {}", st.code(), st.message());
    match st.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            RemoteError::Refused(detail)
        }
        _ => RemoteError::Unavailable(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: &str) -> RemoteJob {
        RemoteJob {
            key: key.into(),
            task: "app#build".into(),
            arguments: vec!["sh".into(), "-c".into(), "make".into()],
            working_directory: "packages/app".into(),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            inputs: vec![],
            output_paths: vec!["dist".into(), "build".into(), "dist".into()],
            timeout: Some(Duration::from_millis(1500)),
            platform: vec![("OSFamily".into(), "linux".into())],
            queue_timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn messages_follow_the_job_and_the_key() {
        let root = vx_reapi::digest_of(b"root");
        let (a, c) = job_messages(&job(&"a".repeat(64)), &root);
        let (a2, _) = job_messages(&job(&"a".repeat(64)), &root);
        assert_eq!(a, a2, "deterministic");
        let (b, _) = job_messages(&job(&"b".repeat(64)), &root);
        assert_ne!(a.0, b.0, "the key is in the salt");
        let action = Action::decode(a.1.as_slice()).unwrap();
        assert_eq!(action.command_digest.as_ref(), Some(&c.0));
        assert_eq!(action.input_root_digest.as_ref(), Some(&root));
        assert_eq!(
            action.timeout,
            Some(vx_reapi::PbDuration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let plat = action.platform.unwrap();
        assert_eq!(plat.properties[0].name, "OSFamily");
        let cmd = Command::decode(c.1.as_slice()).unwrap();
        assert_eq!(cmd.arguments, ["sh", "-c", "make"]);
        assert_eq!(cmd.working_directory, "packages/app");
        let env: Vec<_> = cmd
            .environment_variables
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "2")], "sorted by name");
        assert_eq!(cmd.output_paths, ["build", "dist"], "sorted, unique");
        // Without a timeout or platform: none in the Action.
        let mut j = job("k");
        j.timeout = None;
        j.platform.clear();
        let (a, _) = job_messages(&j, &root);
        let action = Action::decode(a.1.as_slice()).unwrap();
        assert!(action.timeout.is_none() && action.platform.is_none());
    }

    #[test]
    fn digest_memo_hashes_files() {
        let d = tempfile_dir();
        let p = d.join("f");
        std::fs::write(&p, b"abc").unwrap();
        let memo = DigestMemo::default();
        assert_eq!(memo.digest(&p).unwrap(), vx_reapi::digest_of(b"abc"));
        assert_eq!(memo.digest(&p).unwrap(), vx_reapi::digest_of(b"abc"));
        std::fs::write(&p, b"abcd").unwrap();
        assert_eq!(memo.digest(&p).unwrap(), vx_reapi::digest_of(b"abcd"));
        assert!(memo.digest(&d).is_err(), "a directory");
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vx-reapi-memo-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
