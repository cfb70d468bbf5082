//! `server` — the one MCP server: an rmcp [`ServerHandler`] whose tools
//! and resources call catalogue methods through the engine's router.
//!
//! Owns: the session's router connection (principal, event sink, a cancel
//! scope under the engine's), the request ids it uses on it, turning a
//! tool call's MCP cancellation into `$/cancel` of its catalogue request,
//! turning a run's events into MCP progress notifications, and keeping the
//! log tails of a run's failing tasks (failures are never cached, so the
//! run's own output is where their log is).
//!
//! Never: answers a query itself (see `tools`), blocks an async thread, or
//! lets one session's events reach another's.

use crate::tools;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vx_proto::catalogue::Method;
use vx_proto::{Id, RpcError, RunEvent, TaskStatus};
use vxd::server::Ctx;
use vxd::server::router::{Cancel, Conn, Principal, Sink};

/// The most bytes of a failing task's output a run keeps (its end).
pub const TAIL_BYTES: usize = 4 << 10;
/// The most failing tasks whose tails a run keeps.
pub const MAX_TAILS: usize = 20;

/// How a run is doing, for progress notifications.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub message: String,
}

/// One run request's state in the sink.
struct RunWatch {
    progress: watch::Sender<Progress>,
    /// The end of each running task's output (bounded per task).
    running: HashMap<String, VecDeque<u8>>,
    /// The tails of tasks that failed, in the order they failed.
    failed: Vec<(String, String)>,
}

/// The session's event sink: events of a `run.start` request go to its
/// [`RunWatch`]; anything else is dropped. Never blocks.
#[derive(Default)]
struct Events {
    runs: Mutex<HashMap<Id, RunWatch>>,
}

impl Sink for Events {
    fn event(&self, request: &Id, e: RunEvent) {
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        let Some(w) = runs.get_mut(request) else {
            return;
        };
        match e {
            RunEvent::RunStarted { tasks, .. } => {
                w.progress.send_modify(|p| p.total = tasks);
            }
            RunEvent::TaskOutput {
                id, line, replay, ..
            } if !replay => {
                let buf = w.running.entry(id).or_default();
                buf.extend(line.as_bytes());
                buf.push_back(b'\n');
                while buf.len() > TAIL_BYTES {
                    buf.pop_front();
                }
            }
            RunEvent::TaskFinished { result } => {
                let tail = w.running.remove(&result.id);
                if matches!(result.status, TaskStatus::Failed) && w.failed.len() < MAX_TAILS {
                    let bytes: Vec<u8> = tail.map(Vec::from).unwrap_or_default();
                    w.failed.push((result.id.clone(), tail_text(&bytes)));
                }
                let status = format!("{:?}", result.status).to_lowercase();
                w.progress.send_modify(|p| {
                    p.done += 1;
                    p.message = format!("{} {status}", result.id);
                });
            }
            _ => {}
        }
    }
}

/// A tail's text: invalid UTF-8 replaced, starting at a line when one
/// starts near the cut.
fn tail_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if bytes.len() >= TAIL_BYTES
        && let Some(i) = s.find('\n')
        && i < 200
    {
        return s[i + 1..].to_string();
    }
    s.into_owned()
}

/// What a finished run request leaves besides its summary.
pub struct RunExtras {
    /// `(task id, log tail)` of failed tasks.
    pub failed: Vec<(String, String)>,
}

/// The MCP server of one session (a `vx mcp` connection, or a Streamable
/// HTTP session). Cheap to clone.
#[derive(Clone)]
pub struct Vx {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Arc<Conn<Ctx>>,
    events: Arc<Events>,
    cwd: String,
    env: BTreeMap<String, String>,
    next: AtomicU64,
}

impl Vx {
    /// A session on `ctx` for the workspace at `cwd`; runs are keyed with
    /// `env`. `parent` is the scope whose cancellation stops its requests.
    pub fn new(
        ctx: Arc<Ctx>,
        principal: Principal,
        cwd: String,
        env: BTreeMap<String, String>,
        parent: Option<&Cancel>,
    ) -> Vx {
        let events = Arc::new(Events::default());
        let conn = vxd::server::the_router().connect(ctx, principal, events.clone(), parent, false);
        Vx {
            inner: Arc::new(Inner {
                conn,
                events,
                cwd,
                env,
                next: AtomicU64::new(1),
            }),
        }
    }

    pub fn cwd(&self) -> &str {
        &self.inner.cwd
    }

    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.inner.env
    }

    fn next_id(&self) -> Id {
        Id::Str(format!(
            "mcp-{}",
            self.inner.next.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Calls catalogue method `M`; an MCP cancellation (`ct`) becomes
    /// `$/cancel` of the request.
    pub async fn call<M: Method>(
        &self,
        params: M::Params,
        ct: &CancellationToken,
    ) -> Result<M::Result, RpcError> {
        let id = self.next_id();
        let v = self.call_raw(id, M::NAME, params, ct).await?;
        serde_json::from_value(v).map_err(|e| {
            RpcError::new(
                vx_proto::codes::INTERNAL_ERROR,
                format!("{}: unexpected answer: {e}", M::NAME),
            )
        })
    }

    async fn call_raw(
        &self,
        id: Id,
        method: &str,
        params: impl serde::Serialize,
        ct: &CancellationToken,
    ) -> Result<Value, RpcError> {
        let params = serde_json::to_value(params)
            .map_err(|e| RpcError::new(vx_proto::codes::INTERNAL_ERROR, e.to_string()))?;
        let conn = self.inner.conn.clone();
        let fut = vxd::server::the_router().call(&conn, id.clone(), method, params);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = ct.cancelled() => {
                conn.cancel_request(&id, libc::SIGTERM);
                fut.await
            }
        }
    }

    /// `run.start`, with progress notifications to `progress` (when the
    /// client asked for them) and the failing tasks' log tails.
    pub async fn run(
        &self,
        params: vx_proto::RunParams,
        ct: &CancellationToken,
        progress: Option<(ProgressToken, rmcp::Peer<RoleServer>)>,
    ) -> Result<(vx_proto::RunSummary, RunExtras), RpcError> {
        let id = self.next_id();
        let (tx, mut rx) = watch::channel(Progress::default());
        if let Ok(mut runs) = self.inner.events.runs.lock() {
            runs.insert(
                id.clone(),
                RunWatch {
                    progress: tx,
                    running: HashMap::new(),
                    failed: Vec::new(),
                },
            );
        }
        let notifier = progress.map(|(token, peer)| {
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let p = rx.borrow_and_update().clone();
                    let mut n = ProgressNotificationParam::new(token.clone(), p.done as f64)
                        .with_total(p.total as f64);
                    if !p.message.is_empty() {
                        n.message = Some(p.message);
                    }
                    if peer.notify_progress(n).await.is_err() {
                        break;
                    }
                    // At most about 20 notifications a second.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        let r = self
            .call_raw(id.clone(), vx_proto::catalogue::RunStart::NAME, params, ct)
            .await;
        // Dropping the watch drops the progress sender: the notifier ends.
        let failed = self
            .inner
            .events
            .runs
            .lock()
            .ok()
            .and_then(|mut runs| runs.remove(&id))
            .map(|w| w.failed)
            .unwrap_or_default();
        if let Some(n) = notifier {
            let _ = tokio::time::timeout(Duration::from_millis(200), n).await;
        }
        let summary: vx_proto::RunSummary = serde_json::from_value(r?).map_err(|e| {
            RpcError::new(
                vx_proto::codes::INTERNAL_ERROR,
                format!("run.start: unexpected answer: {e}"),
            )
        })?;
        Ok((summary, RunExtras { failed }))
    }

    /// Serves MCP over a byte stream until the client closes it or `stop`
    /// is cancelled; then cancels the session's requests (their tasks get
    /// SIGTERM) and waits a bounded time for them to wind down.
    pub async fn serve<R, W>(self, reader: R, writer: W, stop: CancellationToken)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let conn = self.inner.conn.clone();
        match self
            .serve_with_ct((reader, writer), stop.child_token())
            .await
        {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => tracing::info!("an MCP session ended before it started: {e}"),
        }
        conn.cancel_all(libc::SIGTERM);
        let limit = Duration::from_secs(5) + conn.grace();
        let start = tokio::time::Instant::now();
        while conn.in_flight() > 0 && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The client's name for the history (`mcp:<name>`): printable, no
/// spaces or slashes, at most 64 characters.
pub fn client_label(info: Option<Implementation>) -> String {
    let name: String = info
        .map(|i| i.name)
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "mcp:unknown".into()
    } else {
        format!("mcp:{name}")
    }
}

const INSTRUCTIONS: &str = "vx is this workspace's task runner; these tools read the live vx daemon (the same state and cache as `vx run`) and run tasks. Tasks are named `project#task` (a bare `task` means that task in every project that has it). Start with list_projects, then task_graph to see what a run would do (and what would come from the cache), run_tasks to run, and task_log / why_rerun / explain_task to find out why something failed or re-ran. Answers are compact JSON; long lists say how many there are and how to page.";

impl ServerHandler for Vx {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("vx", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let r = tools::call(self, &request.name, args, &context).await?;
        Ok(r.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(tools::LAST_RUN_URI, "last-run")
                .with_description("The last recorded run of this workspace: its command, outcome, counts and per-task rows (compact JSON).")
                .with_mime_type("application/json"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(tools::TASK_LOG_TEMPLATE, "task-log")
                .with_description("A task's stored log (the end of it), for its current key; `task` is `project#task`, URL-encoded (`#` as `%23`).")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (text, mime) = tools::read_resource(self, &request.uri, &context.ct).await?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri).with_mime_type(mime),
        ])
        .into())
    }
}

/// A tool's answer: compact JSON text.
pub fn json_result(v: &Value) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(v.to_string())])
}

/// A tool's failure the agent reads: the engine's message, and its data
/// (file, line, field, ...) when it has some.
pub fn error_result(e: &RpcError) -> CallToolResult {
    let mut v = serde_json::json!({ "error": e.message, "code": e.code });
    if let Some(d) = &e.data {
        v["data"] = d.clone();
    }
    CallToolResult::error(vec![ContentBlock::text(v.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_labels_are_safe_for_the_history() {
        for (name, want) in [
            (Some("claude-code"), "mcp:claude-code"),
            (Some("My Client/2"), "mcp:My-Client-2"),
            (Some(""), "mcp:unknown"),
            (None, "mcp:unknown"),
        ] {
            let info = name.map(|n| Implementation::new(n, "1"));
            assert_eq!(client_label(info), want);
        }
        let long = "x".repeat(500);
        assert_eq!(
            client_label(Some(Implementation::new(long, "1"))).len(),
            4 + 64
        );
    }

    #[test]
    fn a_failing_task_keeps_only_its_tail() {
        let ev = Events::default();
        let (tx, _rx) = watch::channel(Progress::default());
        let id = Id::Num(1);
        ev.runs.lock().unwrap().insert(
            id.clone(),
            RunWatch {
                progress: tx,
                running: HashMap::new(),
                failed: Vec::new(),
            },
        );
        for i in 0..2000 {
            ev.event(
                &id,
                RunEvent::TaskOutput {
                    id: "a#t".into(),
                    stream: vx_proto::Stream::Stdout,
                    line: format!("line {i}"),
                    replay: false,
                    worker: None,
                },
            );
        }
        ev.event(
            &id,
            RunEvent::TaskFinished {
                result: vx_proto::TaskResult {
                    id: "a#t".into(),
                    project: "a".into(),
                    task: "t".into(),
                    status: TaskStatus::Failed,
                    cache: vx_proto::CacheSource::Miss,
                    key: None,
                    exit_code: Some(1),
                    duration_ms: 1,
                    attempts: 1,
                    blocked_by: None,
                    error: None,
                    cpu_ms: None,
                    peak_rss_bytes: None,
                    worker: None,
                },
            },
        );
        let runs = ev.runs.lock().unwrap();
        let w = &runs[&id];
        assert_eq!(w.failed.len(), 1);
        let tail = &w.failed[0].1;
        assert!(tail.len() <= TAIL_BYTES, "{}", tail.len());
        assert!(tail.starts_with("line "), "cut at a line: {tail:?}");
        assert!(tail.ends_with("line 1999\n"));
        assert!(w.running.is_empty());
        assert_eq!(w.progress.borrow().done, 1);
    }
}
