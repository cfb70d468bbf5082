//! `catalogue` — every method of the protocol as a type, and the list of them.
//!
//! Owns: the [`Method`] trait (name, params, result, kind, scope, the
//! notifications it streams, its doc), one zero-sized type per method (in
//! the spirit of rust-analyzer's `lsp::ext` requests), the [`Notification`]
//! trait for what the engine sends unasked, and [`visit`], the one list of
//! both. [`catalogue`] turns that list into the `daemon.methods` answer
//! (with a JSON Schema of each params and result type when the `schema`
//! feature is on); `vxd`'s router registers one handler per listed method
//! and `docs/protocol.md` is generated from it, so a method cannot exist on
//! one side only or go undocumented.
//!
//! Registering one more method: declare its type with `method!` (here or in
//! another file of this crate: `crate::catalogue::method!`), add one line to
//! [`visit`], and register its handler in `vxd`'s `server/handlers.rs`.
//!
//! Never: I/O, or knowledge of how a method is served.

use crate::history as h;
use crate::methods as m;
use crate::{Id, MaybeSchema, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What calling a method does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reads; changes nothing a later call could see (may be retried).
    Query,
    /// Changes state (the cache, the daemon, a run).
    Mutation,
    /// Streams notifications (its `events`) until its response.
    Stream,
}

/// What a caller must be granted to call a method. A principal carries a
/// set of scopes; none implies another. On the Unix socket and over stdio
/// the caller is the same user and holds every scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Look: plans, history, stats, status.
    Read,
    /// Execute tasks (run, watch, cancel them).
    Run,
    /// Delete or stop: cache clean/prune, daemon shutdown.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
            Kind::Stream => "stream",
        }
    }
}

/// One method of the protocol. Implemented by a zero-sized type per method.
pub trait Method: 'static {
    /// The JSON-RPC method name.
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + MaybeSchema + Send + 'static;
    type Result: Serialize + DeserializeOwned + MaybeSchema + Send + 'static;
    const KIND: Kind;
    const SCOPE: Scope;
    /// The notifications it streams before its response.
    const EVENTS: &'static [&'static str] = &[];
    /// Whether it may also be sent as a notification (no `id`, no answer).
    const NOTIFICATION: bool = false;
    /// What it does (markdown, the first line a summary).
    const DOC: &'static str;
}

/// A notification the engine sends (a method's `EVENTS` name one of these).
pub trait Notification: 'static {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + MaybeSchema + Send + 'static;
    const DOC: &'static str;
}

/// Params or result of a method that has none: `{}` (or absent params).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Empty {}

/// Parameters of `$/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CancelParams {
    /// The id of the request to cancel (on the same connection).
    pub id: Id,
}

/// The params of a `run.event` notification: the event, and the id of the
/// request it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunEventParams {
    /// The id of the request (`run.start`, `watch.start`) that streams it.
    #[serde(default)]
    pub request: Option<Id>,
    #[serde(flatten)]
    pub event: m::RunEvent,
}

/// One method in the `daemon.methods` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MethodInfo {
    pub name: String,
    pub kind: Kind,
    pub scope: Scope,
    /// The notifications it streams before its response.
    #[serde(default)]
    pub events: Vec<String>,
    /// Whether it may also be sent as a notification.
    #[serde(default)]
    pub notification: bool,
    pub doc: String,
    /// The Rust type name of its params (for the docs).
    pub params_type: String,
    /// The Rust type name of its result.
    pub result_type: String,
    /// JSON Schema (2020-12) of its params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// JSON Schema (2020-12) of its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// One notification in the `daemon.methods` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NotificationInfo {
    pub name: String,
    pub doc: String,
    pub params_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

/// The result of `daemon.methods`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Catalogue {
    pub protocol: u32,
    pub methods: Vec<MethodInfo>,
    pub notifications: Vec<NotificationInfo>,
}

/// Walks the catalogue: see [`visit`].
pub trait Visit {
    fn method<M: Method>(&mut self);
    fn notification<N: Notification>(&mut self);
}

/// Declares a method type. The doc comment becomes its `DOC`.
macro_rules! method {
    ($(#[doc = $doc:literal])* $ty:ident = $name:expr; $params:ty => $result:ty; $kind:ident, $scope:ident $(, events: [$($ev:expr),*])? $(, notification: $n:literal)?) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl $crate::catalogue::Method for $ty {
            const NAME: &'static str = $name;
            type Params = $params;
            type Result = $result;
            const KIND: $crate::catalogue::Kind = $crate::catalogue::Kind::$kind;
            const SCOPE: $crate::catalogue::Scope = $crate::catalogue::Scope::$scope;
            $(const EVENTS: &'static [&'static str] = &[$($ev),*];)?
            $(const NOTIFICATION: bool = $n;)?
            const DOC: &'static str = concat!($($doc, "\n"),*);
        }
    };
}
#[allow(unused_imports)] // for method types declared in other files of this crate
pub(crate) use method;

method! {
    /// Must be the first request on a connection: checks the protocol
    /// version and says what serves the connection (`stdio` or `daemon`).
    DaemonHello = m::HELLO; m::HelloParams => m::HelloResult; Query, Read
}
method! {
    /// This catalogue: every method with its kind, scope, events, and the
    /// JSON Schemas of its params and result; every notification.
    DaemonMethods = m::DAEMON_METHODS; Empty => Catalogue; Query, Read
}
method! {
    /// Plan and execute tasks: `run.event` notifications (tagged with this
    /// request's id) stream until the response.
    RunStart = m::RUN_START; m::RunParams => m::RunSummary; Stream, Run, events: [m::RUN_EVENT]
}
method! {
    /// Plan only (`--dry`, `--graph`): tasks, keys and predicted cache status.
    RunPlan = m::RUN_PLAN; m::RunParams => m::Plan; Query, Read
}
method! {
    /// Stop every run of this connection (Ctrl-C); `signal` decides the exit
    /// code (2 gives 130, 15 gives 143).
    RunCancel = m::RUN_CANCEL; m::RunCancelParams => Empty; Mutation, Run, notification: true
}
method! {
    /// Cancel one request of this connection by its id: a run stops as with
    /// `run.cancel` (SIGTERM) and answers its summary; any other request is
    /// answered `CANCELLED` (unless it finished first). Its neighbours go on;
    /// an unknown or finished id is ignored.
    Cancel = m::CANCEL; CancelParams => Empty; Mutation, Read, notification: true
}
method! {
    /// A dev loop: an initial run, then a cycle per batch of changes;
    /// `run.event` notifications stream until `run.cancel` (or `$/cancel`),
    /// then the response.
    WatchStart = m::WATCH_START; m::WatchParams => m::WatchSummary; Stream, Run, events: [m::RUN_EVENT]
}
method! {
    /// Entries, blobs and bytes of the local cache.
    CacheStats = m::CACHE_STATS; m::CacheParams => m::CacheStats; Query, Read
}
method! {
    /// Delete the local cache.
    CacheClean = m::CACHE_CLEAN; m::CacheParams => m::CacheCleaned; Mutation, Admin
}
method! {
    /// Drop least recently used entries by age and size, then unreferenced
    /// blobs and stale temp files.
    CachePrune = m::CACHE_PRUNE; m::CachePruneParams => m::CachePruned; Mutation, Admin
}
method! {
    /// Recent recorded runs, newest first (`vx history`).
    HistoryRuns = m::HISTORY_RUNS; h::HistoryRunsParams => h::RunList; Query, Read
}
method! {
    /// One recorded run (`vx last`).
    HistoryRun = m::HISTORY_RUN; h::HistoryRunParams => h::RunRecord; Query, Read
}
method! {
    /// One task's recorded rows and statistics (`vx history TASK`).
    HistoryTask = m::HISTORY_TASK; h::HistoryTaskParams => h::TaskHistory; Query, Read
}
method! {
    /// Why a task's key changed between its last two recorded runs (`vx why`).
    HistoryWhy = m::HISTORY_WHY; h::HistoryTaskParams => h::WhyReport; Query, Read
}
method! {
    /// Versions, counts, cache, history and daemon of a workspace (`vx info`).
    WorkspaceInfo = m::WORKSPACE_INFO; h::InfoParams => h::WorkspaceInfo; Query, Read
}
method! {
    /// What a long-lived daemon holds and has done (a daemon only: the
    /// no-daemon engine answers `METHOD_NOT_FOUND`).
    DaemonStatus = m::STATUS; Empty => m::DaemonStatus; Query, Read
}
method! {
    /// Stop the engine after answering (allowed before `daemon.hello`).
    DaemonShutdown = m::SHUTDOWN; Empty => Empty; Mutation, Admin
}

/// The `run.event` notification.
#[derive(Debug, Clone, Copy)]
pub struct RunEvent;

impl Notification for RunEvent {
    const NAME: &'static str = m::RUN_EVENT;
    type Params = RunEventParams;
    const DOC: &'static str = "One event of a run, in order, tagged with the id of the request that streams it (`request`); `type` says which event.";
}

/// The one list of the protocol's methods and notifications, in the order
/// the docs show them. One line per method.
pub fn visit(v: &mut impl Visit) {
    v.method::<DaemonHello>();
    v.method::<RunStart>();
    v.method::<WatchStart>();
    v.method::<RunPlan>();
    v.method::<RunCancel>();
    v.method::<Cancel>();
    v.method::<CacheStats>();
    v.method::<CacheClean>();
    v.method::<CachePrune>();
    v.method::<HistoryRuns>();
    v.method::<HistoryRun>();
    v.method::<HistoryTask>();
    v.method::<HistoryWhy>();
    v.method::<WorkspaceInfo>();
    v.method::<DaemonStatus>();
    v.method::<DaemonMethods>();
    v.method::<DaemonShutdown>();
    v.notification::<RunEvent>();
    crate::live::method::visit(v);
    v.method::<crate::init::method::WorkspaceInit>();
    v.method::<crate::upgrade::method::DaemonUpgrade>();
    v.method::<crate::plugins::method::PluginsList>();
}

/// The JSON Schema of `T`, when the `schema` feature is on.
#[cfg(feature = "schema")]
fn schema_of<T: MaybeSchema>() -> Option<Value> {
    serde_json::to_value(schemars::schema_for!(T)).ok()
}

#[cfg(not(feature = "schema"))]
#[allow(clippy::extra_unused_type_parameters)] // the same signature as with the feature
fn schema_of<T: MaybeSchema>() -> Option<Value> {
    None
}

/// The short name of a type (`vx_proto::methods::RunParams` → `RunParams`).
fn short_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// The descriptor of one method (with schemas when the feature is on).
pub fn describe<M: Method>() -> MethodInfo {
    MethodInfo {
        name: M::NAME.to_string(),
        kind: M::KIND,
        scope: M::SCOPE,
        events: M::EVENTS.iter().map(|e| e.to_string()).collect(),
        notification: M::NOTIFICATION,
        doc: tidy_doc(M::DOC),
        params_type: short_name::<M::Params>(),
        result_type: short_name::<M::Result>(),
        params: schema_of::<M::Params>(),
        result: schema_of::<M::Result>(),
    }
}

/// The descriptor of one notification.
pub fn describe_notification<N: Notification>() -> NotificationInfo {
    NotificationInfo {
        name: N::NAME.to_string(),
        doc: tidy_doc(N::DOC),
        params_type: short_name::<N::Params>(),
        params: schema_of::<N::Params>(),
    }
}

/// A doc comment's lines joined into paragraphs.
fn tidy_doc(doc: &str) -> String {
    let mut out = String::new();
    for line in doc.lines().map(str::trim) {
        if line.is_empty() {
            out.push_str("\n\n");
        } else {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push(' ');
            }
            out.push_str(line);
        }
    }
    out.trim().to_string()
}

/// The whole catalogue (the `daemon.methods` answer).
pub fn catalogue() -> Catalogue {
    struct Collect(Catalogue);
    impl Visit for Collect {
        fn method<M: Method>(&mut self) {
            self.0.methods.push(describe::<M>());
        }
        fn notification<N: Notification>(&mut self) {
            self.0.notifications.push(describe_notification::<N>());
        }
    }
    let mut c = Collect(Catalogue {
        protocol: PROTOCOL_VERSION,
        methods: Vec::new(),
        notifications: Vec::new(),
    });
    visit(&mut c);
    c.0
}

/// The names of every method, in catalogue order.
pub fn method_names() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl Visit for Names {
        fn method<M: Method>(&mut self) {
            self.0.push(M::NAME);
        }
        fn notification<N: Notification>(&mut self) {}
    }
    let mut n = Names(Vec::new());
    visit(&mut n);
    n.0
}

/// The generated part of `docs/protocol.md`: one section per method and
/// notification, from the catalogue (checked by `tests/tests/catalogue.rs`;
/// `VX_BLESS=1` rewrites it).
pub fn markdown() -> String {
    let c = catalogue();
    let mut s = String::new();
    s.push_str("| method | kind | scope | params | result | streams |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for m in &c.methods {
        s.push_str(&format!(
            "| [`{}`](#{}) | {} | {} | `{}` | `{}` | {} |\n",
            m.name,
            anchor(&m.name),
            m.kind.name(),
            m.scope.name(),
            m.params_type,
            m.result_type,
            if m.events.is_empty() {
                "—".to_string()
            } else {
                m.events
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    for m in &c.methods {
        s.push_str(&format!("\n#### `{}`\n\n{}\n", m.name, m.doc));
        if m.notification {
            s.push_str("\nMay be sent as a notification (no `id`, no answer).\n");
        }
        s.push_str(&fields("Params", &m.params_type, m.params.as_ref()));
        s.push_str(&fields("Result", &m.result_type, m.result.as_ref()));
    }
    for n in &c.notifications {
        s.push_str(&format!(
            "\n#### `{}` (notification)\n\n{}\n",
            n.name, n.doc
        ));
        s.push_str(&fields("Params", &n.params_type, n.params.as_ref()));
    }
    let defs = definitions(&c);
    if !defs.is_empty() {
        s.push_str("\n#### Types\n\nThe named types the params, results and events refer to.\n");
        for (name, schema) in defs {
            s.push_str(&format!("\n##### `{name}`\n\n"));
            let d = one_line(schema.get("description"));
            if !d.is_empty() {
                s.push_str(&format!("{d}\n\n"));
            }
            let body = shape(&schema);
            if body.is_empty() {
                s.push_str(&format!("{}.\n", type_of(&schema)));
            } else {
                s.push_str(&body);
            }
        }
    }
    s
}

/// The GitHub anchor of a `#### \`name\`` heading.
fn anchor(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect::<String>()
        .to_lowercase()
}

/// "Params: `T`" and what the schema says of `T`'s shape.
fn fields(what: &str, ty: &str, schema: Option<&Value>) -> String {
    let body = schema.map(shape).unwrap_or_default();
    if body.is_empty() {
        format!("\n{what}: `{ty}`.\n")
    } else {
        format!("\n{what}: `{ty}`\n\n{body}")
    }
}

fn one_line(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("")
        .replace('\n', " ")
        .replace('|', "\\|")
}

/// The shape of a schema in markdown: a field table, and the variants of
/// an enum (values, or tagged objects). Empty when there is nothing to say.
fn shape(schema: &Value) -> String {
    let mut s = String::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty());
    if let Some(props) = props {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        s.push_str("| field | type | required | description |\n| --- | --- | --- | --- |\n");
        for (name, p) in props {
            s.push_str(&format!(
                "| `{name}` | {} | {} | {} |\n",
                type_of(p),
                if required.contains(&name.as_str()) {
                    "yes"
                } else {
                    "no"
                },
                one_line(p.get("description"))
            ));
        }
    }
    let alts: Vec<&Value> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let v: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        s.push_str(&format!("One of {}.\n", v.join(", ")));
    } else if !alts.is_empty() && alts.iter().all(|a| a.get("properties").is_some()) {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str("| variant | fields | description |\n| --- | --- | --- |\n");
        for a in alts {
            let props = a.get("properties").and_then(Value::as_object);
            let tag = props.and_then(|p| {
                p.iter()
                    .find_map(|(k, v)| v.get("const").map(|c| format!("`{k}`: `{}`", plain(c))))
            });
            let others: Vec<String> = props
                .map(|p| {
                    p.iter()
                        .filter(|(_, v)| v.get("const").is_none())
                        .map(|(k, v)| format!("`{k}` ({})", type_of(v)))
                        .collect()
                })
                .unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                tag.unwrap_or_else(|| "—".into()),
                others.join(", "),
                one_line(a.get("description"))
            ));
        }
    } else if !alts.is_empty() {
        let v: Vec<String> = alts
            .iter()
            .map(|a| match a.get("const").or_else(|| a.get("enum")) {
                Some(c) => {
                    let d = one_line(a.get("description"));
                    if d.is_empty() {
                        format!("`{}`", plain(c))
                    } else {
                        format!("`{}` ({d})", plain(c))
                    }
                }
                None => type_of(a),
            })
            .collect();
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&format!("One of: {}.\n", v.join("; ")));
    }
    s
}

/// A JSON value as plain text (`"a"` → `a`, `["a"]` → `a`).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(", "),
        v => v.to_string(),
    }
}

/// Every named type the schemas refer to (`$defs`), by name.
fn definitions(c: &Catalogue) -> std::collections::BTreeMap<String, Value> {
    let mut defs = std::collections::BTreeMap::new();
    let schemas = c
        .methods
        .iter()
        .flat_map(|m| [m.params.as_ref(), m.result.as_ref()])
        .chain(c.notifications.iter().map(|n| n.params.as_ref()))
        .flatten();
    for s in schemas {
        if let Some(d) = s.get("$defs").and_then(Value::as_object) {
            for (k, v) in d {
                defs.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    defs
}

/// A short type for a property schema: `string`, `integer | null`, `[RunEvent]`, ...
fn type_of(p: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        return format!("`{}`", r.rsplit('/').next().unwrap_or(r));
    }
    if let Some(t) = p.get("type") {
        let names: Vec<String> = match t {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => vec![],
        };
        let mut out: Vec<String> = names
            .into_iter()
            .map(|n| {
                if n == "array"
                    && let Some(items) = p.get("items")
                {
                    format!("array of {}", type_of(items))
                } else {
                    n
                }
            })
            .collect();
        out.dedup();
        return out.join(" \\| ");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            return alts.iter().map(type_of).collect::<Vec<_>>().join(" \\| ");
        }
    }
    if p.get("enum").is_some() || p.get("const").is_some() {
        return "enum".into();
    }
    "any".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_include_every_name_constant() {
        let names = method_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate method: {names:?}");
        for n in [
            m::HELLO,
            m::RUN_START,
            m::RUN_PLAN,
            m::RUN_CANCEL,
            m::CACHE_STATS,
            m::CACHE_CLEAN,
            m::CACHE_PRUNE,
            m::SHUTDOWN,
            m::STATUS,
            m::WATCH_START,
            m::HISTORY_RUNS,
            m::HISTORY_RUN,
            m::HISTORY_TASK,
            m::HISTORY_WHY,
            m::WORKSPACE_INFO,
            m::DAEMON_METHODS,
            m::CANCEL,
        ] {
            assert!(names.contains(&n), "{n} is not in the catalogue");
        }
    }

    #[test]
    fn every_streamed_event_is_a_known_notification() {
        let c = catalogue();
        for m in &c.methods {
            assert!(!m.doc.is_empty(), "{} has no doc", m.name);
            for e in &m.events {
                assert!(
                    c.notifications.iter().any(|n| &n.name == e),
                    "{} streams unknown {e}",
                    m.name
                );
            }
            assert_eq!(
                m.kind == Kind::Stream,
                !m.events.is_empty(),
                "{}: a stream method, and only one, streams events",
                m.name
            );
        }
    }

    #[test]
    fn run_event_params_carry_the_request_id_beside_the_event() {
        let p = RunEventParams {
            request: Some(Id::Num(7)),
            event: m::RunEvent::Warning {
                message: "m".into(),
            },
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "warning", "message": "m", "request": 7})
        );
        let back: RunEventParams = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        // An old engine's event (no `request`) still reads.
        let old: RunEventParams =
            serde_json::from_value(serde_json::json!({"type": "task_ready", "id": "a#b"})).unwrap();
        assert_eq!(old.request, None);
    }

    #[test]
    fn docs_are_tidied_into_paragraphs() {
        assert_eq!(tidy_doc(" a\n b\n\n c\n"), "a b\n\nc");
    }
}
