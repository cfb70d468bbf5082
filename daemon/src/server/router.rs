//! `router` — the one place a request becomes a handler call.
//!
//! Owns, once for every transport: finding the method's handler, the
//! hello-first rule (for transports that want it), the scope check against
//! the caller's [`Principal`], the idle-timer touch and the app's raw-params
//! check ([`App`]), decoding params (`INVALID_PARAMS` naming the field),
//! a per-request [`Cancel`] (child of the connection's, itself a child of
//! the daemon's) that `$/cancel` reaches by request id, a `tracing` span per
//! request, panic isolation (a panicking handler fails its request with
//! `INTERNAL_ERROR`, nothing else), blocking handlers on the blocking pool,
//! tagging every streamed event with its request id ([`Sink`]), and
//! converting engine errors to stable codes in one function
//! ([`engine_error`]).
//!
//! A transport is an adapter: it makes a [`Conn`] with [`Router::connect`]
//! (its principal and its [`Sink`]) and hands each request to
//! [`Router::start`] (or [`Router::call`]) and each notification to
//! [`Router::notify`], then writes the answer its own way.
//!
//! Never: knows a method by name (handlers are registered by `handlers`),
//! does I/O, or frames messages.

use crate::engine::EngineError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vx_proto::catalogue::{Kind, Method, Scope};
use vx_proto::{Id, RpcError, RunEvent, codes};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A request's answer: its result as JSON, or its error.
pub type Reply = Result<Value, RpcError>;

/// What a connection's app state offers the router.
pub trait App: Send + Sync + 'static {
    /// Called once for every request admitted (the idle timer).
    fn touch(&self) {}
    /// Checks a request's raw params before they are decoded.
    fn check(&self, _method: &str, _params: &Value) -> Result<(), RpcError> {
        Ok(())
    }
}

/// Who is calling, and the scopes they were granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Principal {
    /// The Unix socket's peer (same uid, checked by the listener) or the
    /// stdio client: the user themself, with every scope.
    pub fn local_user() -> Principal {
        Principal::new("local user", &Scope::ALL)
    }

    pub fn new(name: impl Into<String>, scopes: &[Scope]) -> Principal {
        Principal {
            name: name.into(),
            scopes: scopes.to_vec(),
        }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Where a connection's streamed events go, each with the id of the request
/// that streams it. Must never block (the engine calls it in order, inline).
pub trait Sink: Send + Sync + 'static {
    fn event(&self, request: &Id, e: RunEvent);
    /// The connection's bounded queue, for an event-bus subscriber
    /// (`events.subscribe`); `None` when the transport has none.
    fn queue(self: Arc<Self>) -> Option<Arc<dyn crate::bus::Queue>> {
        None
    }
}

/// A cancellation scope: a [`CancellationToken`] and the signal number that
/// cancelled it (2 = SIGINT, 15 = SIGTERM; it decides a run's exit code).
/// Cancelling a scope cancels its children; a child cancelled through its
/// parent reports the parent's signal.
#[derive(Clone)]
pub struct Cancel(Arc<CancelInner>);

struct CancelInner {
    token: CancellationToken,
    signal: AtomicI32,
    parent: Option<Cancel>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel(Arc::new(CancelInner {
            token: CancellationToken::new(),
            signal: AtomicI32::new(0),
            parent: None,
        }))
    }

    pub fn child(&self) -> Cancel {
        Cancel(Arc::new(CancelInner {
            token: self.0.token.child_token(),
            signal: AtomicI32::new(0),
            parent: Some(self.clone()),
        }))
    }

    /// Cancels this scope and its children; the first signal given wins.
    pub fn cancel(&self, signal: i32) {
        let sig = if signal > 0 { signal } else { libc::SIGTERM };
        let _ = self
            .0
            .signal
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
        self.0.token.cancel();
    }

    /// Whether this scope itself was cancelled (not only through a parent).
    pub fn cancelled_here(&self) -> bool {
        self.0.signal.load(Ordering::SeqCst) > 0
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.0.token
    }

    pub async fn cancelled(&self) {
        self.0.token.cancelled().await
    }

    /// The signal that cancelled this scope (its own, else the nearest
    /// cancelled ancestor's), or `None` while it is not cancelled.
    pub fn signal(&self) -> Option<i32> {
        if !self.is_cancelled() {
            return None;
        }
        let mut at = Some(self);
        while let Some(c) = at {
            let s = c.0.signal.load(Ordering::SeqCst);
            if s > 0 {
                return Some(s);
            }
            at = c.0.parent.as_ref();
        }
        Some(libc::SIGTERM)
    }

    /// The engine's view of this scope: a channel that carries the signal
    /// once the scope is cancelled (its sender lives as long as a receiver
    /// does, so it never reads as a spurious cancel).
    pub fn watch(&self) -> watch::Receiver<Option<i32>> {
        let (tx, rx) = watch::channel(None);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.cancelled() => {
                    let _ = tx.send(me.signal());
                    tx.closed().await;
                }
                _ = tx.closed() => {}
            }
        });
        rx
    }
}

/// An error a handler returns: a protocol error as is, or an engine error
/// that [`engine_error`] turns into its stable code.
#[derive(Debug)]
pub enum Error {
    Rpc(RpcError),
    Engine(EngineError),
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        Error::Rpc(e)
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Engine(e)
    }
}

impl Error {
    /// A bug on our side (a join failure, an encoding failure).
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Rpc(RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
    }

    fn into_rpc(self) -> RpcError {
        match self {
            Error::Rpc(e) => e,
            Error::Engine(e) => engine_error(e),
        }
    }
}

/// Engine errors → stable protocol codes: the one place they meet.
pub fn engine_error(e: EngineError) -> RpcError {
    super::error_codes::rpc_error(e)
}

/// Decodes params; a failure names the field (`data.field`, a path such as
/// `run.cwd` or `tasks[1]`).
pub fn decode<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = match params {
        // Absent params read as `{}`: a method without required fields
        // needs none.
        Value::Null => Value::Object(Default::default()),
        v => v,
    };
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent: name the field itself.
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(m)) => m.to_string(),
            (p, Some(m)) => format!("{p}.{m}"),
            (p, None) => p.to_string(),
        };
        let message = if field == "." {
            format!("invalid params: {inner}")
        } else {
            format!("invalid params: `{field}`: {inner}")
        };
        RpcError::new(codes::INVALID_PARAMS, message)
            .with_data(serde_json::json!({ "field": field }))
    })
}

fn encode<T: Serialize>(r: Result<T, Error>) -> Reply {
    match r {
        Ok(v) => {
            serde_json::to_value(v).map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
        }
        Err(e) => Err(e.into_rpc()),
    }
}

/// One connection of a transport, as the router sees it.
pub struct Conn<S> {
    state: Arc<S>,
    principal: Principal,
    sink: Arc<dyn Sink>,
    cancel: Cancel,
    /// Requests in flight: id, kind, cancel scope.
    inflight: Mutex<Vec<(Id, Kind, Cancel)>>,
    require_hello: bool,
    hello: AtomicBool,
    shutdown: AtomicBool,
    grace: Mutex<Duration>,
    /// A switch to another protocol asked for (`daemon.upgrade`): the
    /// protocol and the request's params, for the transport to act on.
    upgrade: Mutex<Option<(String, Value)>>,
}

impl<S> Conn<S> {
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Marks the handshake done (`daemon.hello`'s handler).
    pub fn set_hello(&self) {
        self.hello.store(true, Ordering::SeqCst);
    }

    /// Asks the transport to stop serving after this request
    /// (`daemon.shutdown`'s handler).
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Asks the transport to hand this connection's byte stream to
    /// `protocol` after this request's answer (`daemon.upgrade`'s handler).
    pub fn request_upgrade(&self, protocol: String, params: Value) {
        if let Ok(mut u) = self.upgrade.lock() {
            *u = Some((protocol, params));
        }
    }

    /// The switch asked for, once (the transport's side of
    /// [`Conn::request_upgrade`]).
    pub fn take_upgrade(&self) -> Option<(String, Value)> {
        self.upgrade.lock().ok().and_then(|mut u| u.take())
    }

    /// Cancels every request of the connection (the peer is gone, a signal).
    pub fn cancel_all(&self, signal: i32) {
        self.cancel.cancel(signal);
    }

    /// Cancels the connection's streams in flight (`run.cancel`); later
    /// requests are not affected.
    pub fn cancel_streams(&self, signal: i32) {
        if let Ok(v) = self.inflight.lock() {
            for (_, kind, c) in v.iter() {
                if *kind == Kind::Stream {
                    c.cancel(signal);
                }
            }
        }
    }

    /// Cancels the request(s) in flight with this id (`$/cancel`); returns
    /// whether there was one.
    pub fn cancel_request(&self, id: &Id, signal: i32) -> bool {
        let Ok(v) = self.inflight.lock() else {
            return false;
        };
        let mut found = false;
        for (i, _, c) in v.iter() {
            if i == id {
                c.cancel(signal);
                found = true;
            }
        }
        found
    }

    /// How many requests are in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Notes how long a run of this connection may take to stop (its
    /// SIGTERM→SIGKILL grace); [`Conn::grace`] is the longest.
    pub fn note_grace(&self, d: Duration) {
        if let Ok(mut g) = self.grace.lock() {
            *g = (*g).max(d);
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace.lock().map(|g| *g).unwrap_or_default()
    }

    fn forget(&self, cancel: &Cancel) {
        if let Ok(mut v) = self.inflight.lock() {
            v.retain(|(_, _, c)| !Arc::ptr_eq(&c.0, &cancel.0));
        }
    }
}

/// What a handler gets besides its params.
pub struct Call<S> {
    pub id: Id,
    pub method: &'static str,
    conn: Arc<Conn<S>>,
    cancel: Cancel,
}

impl<S> Call<S> {
    pub fn state(&self) -> &Arc<S> {
        &self.conn.state
    }

    pub fn conn(&self) -> &Arc<Conn<S>> {
        &self.conn
    }

    /// This request's cancellation scope.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// The connection's queue for event-bus notifications (see [`Sink::queue`]).
    pub fn queue(&self) -> Option<Arc<dyn crate::bus::Queue>> {
        self.conn.sink.clone().queue()
    }

    /// The event sink of this request: every event is tagged with its id.
    pub fn events(&self) -> impl Fn(RunEvent) + Send + Sync + 'static {
        let sink = self.conn.sink.clone();
        let id = self.id.clone();
        move |e| sink.event(&id, e)
    }
}

/// How a request started: answered at once, or a future to await.
pub enum Started {
    Done(Reply),
    Running(BoxFuture<Reply>),
}

type InlineFn<S> = Box<dyn Fn(&Call<S>, Value) -> Reply + Send + Sync>;
type AsyncFn<S> = Box<dyn Fn(Call<S>, Value) -> Result<BoxFuture<Reply>, RpcError> + Send + Sync>;

enum Handler<S> {
    Inline(InlineFn<S>),
    Async(AsyncFn<S>),
}

struct Entry<S> {
    name: &'static str,
    kind: Kind,
    scope: Scope,
    notification: bool,
    before_hello: bool,
    listed: bool,
    handler: Handler<S>,
}

/// Handlers by method name (see the module doc).
pub struct Router<S> {
    entries: HashMap<&'static str, Entry<S>>,
}

impl<S: App> Default for Router<S> {
    fn default() -> Self {
        Router::new()
    }
}

/// Aborts a spawned task when dropped (a handler dies with its request).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forgets an in-flight request when its future ends or is dropped.
struct Inflight<S> {
    conn: Arc<Conn<S>>,
    cancel: Cancel,
}

impl<S> Drop for Inflight<S> {
    fn drop(&mut self) {
        self.conn.forget(&self.cancel);
    }
}

fn id_text(id: &Id) -> String {
    match id {
        Id::Num(n) => n.to_string(),
        Id::Str(s) => s.clone(),
        Id::Null => "null".into(),
    }
}

impl<S: App> Router<S> {
    pub fn new() -> Router<S> {
        Router {
            entries: HashMap::new(),
        }
    }

    fn insert<M: Method>(&mut self, handler: Handler<S>) -> &mut Self {
        assert!(
            !self.entries.contains_key(M::NAME),
            "{} has two handlers",
            M::NAME
        );
        self.entries.insert(
            M::NAME,
            Entry {
                name: M::NAME,
                kind: M::KIND,
                scope: M::SCOPE,
                notification: M::NOTIFICATION,
                before_hello: false,
                listed: true,
                handler,
            },
        );
        self
    }

    /// A handler that answers at once, on the transport's own task: cheap,
    /// non-blocking work only (the handshake, cancels, flags).
    pub fn inline<M: Method>(
        &mut self,
        f: impl Fn(&Call<S>, M::Params) -> Result<M::Result, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.insert::<M>(Handler::Inline(Box::new(move |call, params| {
            let p = decode::<M::Params>(params)?;
            encode(f(call, p))
        })))
    }

    /// An async handler: runs in its own task (a panic fails its request).
    pub fn handle<M, F, Fut>(&mut self, f: F) -> &mut Self
    where
        M: Method,
        F: Fn(Call<S>, M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Result, Error>> + Send + 'static,
    {
        self.insert::<M>(Handler::Async(Box::new(move |call, params| {
            let p = decode::<M::Params>(params)?;
            let fut = f(call, p);
            Ok(Box::pin(async move { encode(fut.await) }))
        })))
    }

    /// A blocking handler: runs on the blocking pool, off the async threads.
    pub fn blocking<M: Method>(
        &mut self,
        f: impl Fn(Call<S>, M::Params) -> Result<M::Result, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        let f = Arc::new(f);
        self.insert::<M>(Handler::Async(Box::new(move |call, params| {
            let p = decode::<M::Params>(params)?;
            let f = f.clone();
            Ok(Box::pin(async move {
                match tokio::task::spawn_blocking(move || encode(f(call, p))).await {
                    Ok(r) => r,
                    Err(e) => Err(RpcError::new(
                        codes::INTERNAL_ERROR,
                        format!("internal error: the handler failed: {e}"),
                    )),
                }
            }))
        })))
    }

    /// Lets `method` be called before `daemon.hello`.
    pub fn allow_before_hello(&mut self, method: &str) -> &mut Self {
        if let Some(e) = self.entries.get_mut(method) {
            e.before_hello = true;
        }
        self
    }

    /// An async handler outside the catalogue (test hooks): not listed by
    /// [`Router::names`], takes raw params.
    pub fn unlisted(
        &mut self,
        name: &'static str,
        scope: Scope,
        f: impl Fn(Call<S>, Value) -> BoxFuture<Reply> + Send + Sync + 'static,
    ) -> &mut Self {
        self.entries.insert(
            name,
            Entry {
                name,
                kind: Kind::Query,
                scope,
                notification: false,
                before_hello: false,
                listed: false,
                handler: Handler::Async(Box::new(move |call, params| Ok(f(call, params)))),
            },
        );
        self
    }

    /// The methods registered from the catalogue, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .entries
            .values()
            .filter(|e| e.listed)
            .map(|e| e.name)
            .collect();
        v.sort();
        v
    }

    /// A new connection of a transport. `parent` is the daemon's scope (a
    /// stopping daemon cancels every connection); `require_hello` makes
    /// `daemon.hello` the first request.
    pub fn connect(
        &self,
        state: Arc<S>,
        principal: Principal,
        sink: Arc<dyn Sink>,
        parent: Option<&Cancel>,
        require_hello: bool,
    ) -> Arc<Conn<S>> {
        Arc::new(Conn {
            state,
            principal,
            sink,
            cancel: parent.map(Cancel::child).unwrap_or_default(),
            inflight: Mutex::new(Vec::new()),
            require_hello,
            hello: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            grace: Mutex::new(Duration::ZERO),
            upgrade: Mutex::new(None),
        })
    }

    /// Admits a request and starts it. Everything up to the handler's start
    /// (checks, decoding, registering its cancel scope, an inline handler)
    /// happens before this returns, so requests of one connection are
    /// admitted in the order they arrived and a `$/cancel` that follows a
    /// request always finds it.
    pub fn start(&self, conn: &Arc<Conn<S>>, id: Id, method: &str, params: Value) -> Started {
        self.admit(conn, id, method, params, false)
    }

    fn admit(
        &self,
        conn: &Arc<Conn<S>>,
        id: Id,
        method: &str,
        params: Value,
        notification: bool,
    ) -> Started {
        let entry = self.entries.get(method);
        if !notification
            && conn.require_hello
            && !conn.hello.load(Ordering::SeqCst)
            && !entry.is_some_and(|e| e.before_hello)
        {
            return Started::Done(Err(RpcError::new(
                codes::PROTOCOL_MISMATCH,
                "daemon.hello must be the first request",
            )));
        }
        let Some(entry) = entry else {
            return Started::Done(Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!("unknown method `{method}`"),
            )));
        };
        if !conn.principal.allows(entry.scope) {
            return Started::Done(Err(RpcError::new(
                codes::FORBIDDEN,
                format!(
                    "`{method}` needs the `{}` scope, which {} was not granted",
                    entry.scope.name(),
                    conn.principal.name
                ),
            )
            .with_data(serde_json::json!({ "scope": entry.scope.name() }))));
        }
        conn.state.touch();
        if let Err(e) = conn.state.check(method, &params) {
            return Started::Done(Err(e));
        }
        let span = tracing::info_span!("request", method = entry.name, id = %id_text(&id));
        let cancel = conn.cancel.child();
        let call = Call {
            id: id.clone(),
            method: entry.name,
            conn: conn.clone(),
            cancel: cancel.clone(),
        };
        match &entry.handler {
            Handler::Inline(f) => {
                let _g = span.enter();
                Started::Done(
                    std::panic::catch_unwind(AssertUnwindSafe(|| f(&call, params))).unwrap_or_else(
                        |p| {
                            tracing::error!("handler panicked: {}", panic_text(&p));
                            Err(RpcError::new(
                                codes::INTERNAL_ERROR,
                                "internal error: the handler panicked",
                            ))
                        },
                    ),
                )
            }
            Handler::Async(f) => {
                let fut = {
                    let _g = span.enter();
                    match std::panic::catch_unwind(AssertUnwindSafe(|| f(call, params))) {
                        Ok(Ok(fut)) => fut,
                        Ok(Err(e)) => return Started::Done(Err(e)),
                        Err(p) => {
                            tracing::error!("handler panicked: {}", panic_text(&p));
                            return Started::Done(Err(RpcError::new(
                                codes::INTERNAL_ERROR,
                                "internal error: the handler panicked",
                            )));
                        }
                    }
                };
                if let Ok(mut v) = conn.inflight.lock() {
                    v.push((id, entry.kind, cancel.clone()));
                }
                let guard = Inflight {
                    conn: conn.clone(),
                    cancel: cancel.clone(),
                };
                // A stream owns its cancellation (a cancelled run still
                // answers its summary); any other request is answered
                // `CANCELLED` as soon as it is cancelled itself (`$/cancel`).
                let races = entry.kind != Kind::Stream;
                Started::Running(Box::pin(
                    async move {
                        let _guard = guard;
                        // Its own task, so that a panic fails this request
                        // only; aborted if this future is dropped.
                        let mut task = AbortOnDrop(tokio::spawn(fut.in_current_span()));
                        let joined = if races {
                            tokio::select! {
                                r = &mut task.0 => r,
                                _ = cancel.cancelled(), if cancel.cancelled_here() || !cancel.is_cancelled() => {
                                    if cancel.cancelled_here() {
                                        return Err(RpcError::new(codes::CANCELLED, "the request was cancelled"));
                                    }
                                    // Cancelled with its connection (the
                                    // peer stopped writing): a query still
                                    // answers.
                                    (&mut task.0).await
                                }
                            }
                        } else {
                            (&mut task.0).await
                        };
                        joined.unwrap_or_else(|e| {
                            Err(RpcError::new(
                                codes::INTERNAL_ERROR,
                                format!("internal error: the handler failed: {e}"),
                            ))
                        })
                    }
                    .instrument(span),
                ))
            }
        }
    }

    /// [`Router::start`], awaited: the answer to one request.
    pub async fn call(&self, conn: &Arc<Conn<S>>, id: Id, method: &str, params: Value) -> Reply {
        match self.start(conn, id, method, params) {
            Started::Done(r) => r,
            Started::Running(f) => f.await,
        }
    }

    /// A notification: only methods that accept one are run (inline ones
    /// at once); anything else is ignored, as JSON-RPC asks.
    pub fn notify(&self, conn: &Arc<Conn<S>>, method: &str, params: Value) {
        let Some(entry) = self.entries.get(method).filter(|e| e.notification) else {
            tracing::debug!(method, "ignored a notification");
            return;
        };
        if !conn.principal.allows(entry.scope) {
            return;
        }
        match self.admit(conn, Id::Null, method, params, true) {
            Started::Done(Err(e)) => tracing::debug!(method, "notification failed: {e}"),
            Started::Done(Ok(_)) => {}
            Started::Running(f) => {
                tokio::spawn(f);
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vx_proto::catalogue::Empty;
    use vx_proto::{HelloParams, RunCancelParams};

    struct TestApp;
    impl App for TestApp {}

    /// Test methods, one per behaviour.
    macro_rules! test_method {
        ($ty:ident, $name:literal, $p:ty => $r:ty, $kind:ident, $scope:ident) => {
            struct $ty;
            impl Method for $ty {
                const NAME: &'static str = $name;
                type Params = $p;
                type Result = $r;
                const KIND: Kind = Kind::$kind;
                const SCOPE: Scope = Scope::$scope;
                const DOC: &'static str = "test";
            }
        };
    }
    test_method!(Echo, "t.echo", HelloParams => HelloParams, Query, Read);
    test_method!(Wipe, "t.wipe", Empty => Empty, Mutation, Admin);
    test_method!(Boom, "t.boom", Empty => Empty, Query, Read);
    test_method!(BoomInline, "t.boom_inline", Empty => Empty, Query, Read);
    test_method!(Slow, "t.slow", Empty => Empty, Query, Read);
    test_method!(Blocking, "t.blocking", Empty => Empty, Query, Read);
    test_method!(Stream, "t.stream", Empty => RunCancelParams, Stream, Run);
    test_method!(Hello, "t.hello", Empty => Empty, Query, Read);

    #[derive(Default)]
    struct Events(Mutex<Vec<(Id, RunEvent)>>);
    impl Sink for Events {
        fn event(&self, request: &Id, e: RunEvent) {
            self.0.lock().unwrap().push((request.clone(), e));
        }
    }

    fn router() -> Router<TestApp> {
        let mut r = Router::new();
        r.inline::<Echo>(|_, p| Ok(p));
        r.inline::<Wipe>(|_, p| Ok(p));
        r.inline::<Hello>(|call, p| {
            call.conn().set_hello();
            Ok(p)
        });
        r.allow_before_hello("t.hello");
        r.handle::<Boom, _, _>(|_, _| async { panic!("boom") });
        r.inline::<BoomInline>(|_, _| panic!("boom inline"));
        r.handle::<Slow, _, _>(|_, p| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(p)
        });
        r.blocking::<Blocking>(|_, p| {
            // Would stall an async worker thread; fine on the blocking pool.
            std::thread::sleep(Duration::from_millis(20));
            Ok(p)
        });
        r.handle::<Stream, _, _>(|call, _| async move {
            let mut rx = call.cancel().watch();
            (call.events())(RunEvent::TaskReady {
                id: "started".into(),
            });
            let _ = rx.changed().await;
            let signal = (*rx.borrow()).unwrap_or(0);
            Ok(RunCancelParams { signal })
        });
        r
    }

    fn conn(r: &Router<TestApp>, scopes: &[Scope]) -> (Arc<Conn<TestApp>>, Arc<Events>) {
        let events = Arc::new(Events::default());
        let c = r.connect(
            Arc::new(TestApp),
            Principal::new("tester", scopes),
            events.clone(),
            None,
            false,
        );
        (c, events)
    }

    #[tokio::test]
    async fn requests_are_checked_decoded_and_isolated() {
        let r = router();
        let read = &[Scope::Read][..];
        // (scopes, method, params, expected: Ok(result) or Err((code, field)))
        type Case<'a> = (
            &'a [Scope],
            &'a str,
            Value,
            Result<Value, (i64, Option<&'a str>)>,
        );
        let cases: Vec<Case> = vec![
            (
                read,
                "no.such",
                json!({}),
                Err((codes::METHOD_NOT_FOUND, None)),
            ),
            (
                read,
                "t.echo",
                json!({"protocol": 1, "client_version": "v"}),
                Ok(json!({"protocol": 1, "client_version": "v"})),
            ),
            (
                read,
                "t.echo",
                json!({"protocol": "one", "client_version": "v"}),
                Err((codes::INVALID_PARAMS, Some("protocol"))),
            ),
            (
                read,
                "t.echo",
                json!({"protocol": 1}),
                Err((codes::INVALID_PARAMS, Some("client_version"))),
            ),
            (
                read,
                "t.echo",
                json!([1]),
                Err((codes::INVALID_PARAMS, Some("."))),
            ),
            (read, "t.wipe", Value::Null, Err((codes::FORBIDDEN, None))),
            (&Scope::ALL, "t.wipe", Value::Null, Ok(json!({}))),
            (
                read,
                "t.boom",
                json!({}),
                Err((codes::INTERNAL_ERROR, None)),
            ),
            (
                read,
                "t.boom_inline",
                json!({}),
                Err((codes::INTERNAL_ERROR, None)),
            ),
            (read, "t.blocking", json!({}), Ok(json!({}))),
            (read, "t.stream", json!({}), Err((codes::FORBIDDEN, None))),
        ];
        for (scopes, method, params, want) in cases {
            let (c, _) = conn(&r, scopes);
            let got = r.call(&c, Id::Num(1), method, params.clone()).await;
            match (&got, &want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w, "{method} {params}"),
                (Err(e), Err((code, field))) => {
                    assert_eq!(e.code, *code, "{method} {params}: {e}");
                    if let Some(f) = field {
                        assert_eq!(
                            e.data.as_ref().and_then(|d| d["field"].as_str()),
                            Some(*f),
                            "{method} {params}: {e}"
                        );
                        assert!(*f == "." || e.message.contains(f), "{e}");
                    }
                    if e.code == codes::FORBIDDEN {
                        assert!(e.message.contains("tester"), "{e}");
                    }
                }
                _ => panic!("{method} {params}: got {got:?}, want {want:?}"),
            }
            // Whatever happened, the connection still serves.
            let ok = r
                .call(
                    &c,
                    Id::Num(2),
                    "t.echo",
                    json!({"protocol": 2, "client_version": ""}),
                )
                .await;
            assert!(ok.is_ok(), "{method}: the connection broke: {ok:?}");
            assert_eq!(c.in_flight(), 0, "{method}: a request was not forgotten");
        }
    }

    #[tokio::test]
    async fn hello_comes_first_when_the_transport_asks() {
        let r = router();
        let c = r.connect(
            Arc::new(TestApp),
            Principal::local_user(),
            Arc::new(Events::default()),
            None,
            true,
        );
        let e = r
            .call(&c, Id::Num(1), "no.such", json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::PROTOCOL_MISMATCH);
        assert!(r.call(&c, Id::Num(2), "t.hello", json!({})).await.is_ok());
        let e = r
            .call(&c, Id::Num(3), "no.such", json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::METHOD_NOT_FOUND);
    }

    #[tokio::test]
    async fn cancel_reaches_exactly_one_request_and_events_carry_its_id() {
        let r = router();
        let (c, events) = conn(&r, &Scope::ALL);
        let start = |id: i64, method: &str| match r.start(&c, Id::Num(id), method, json!({})) {
            Started::Running(f) => tokio::spawn(f),
            Started::Done(d) => panic!("{method} answered at once: {d:?}"),
        };
        let one = start(1, "t.stream");
        let two = start(2, "t.stream");
        let slow = start(3, "t.slow");
        assert_eq!(c.in_flight(), 3);
        // Both streams have started (each sent its event, tagged).
        for _ in 0..200 {
            if events.0.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut ids: Vec<Id> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(i, _)| i.clone())
            .collect();
        ids.sort_by_key(|i| format!("{i:?}"));
        assert_eq!(ids, vec![Id::Num(1), Id::Num(2)]);
        // `$/cancel` of request 1 only.
        assert!(c.cancel_request(&Id::Num(1), libc::SIGINT));
        let a = one.await.unwrap().unwrap();
        assert_eq!(a["signal"], libc::SIGINT);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!two.is_finished(), "the neighbour stream was cancelled too");
        assert!(!slow.is_finished());
        assert!(
            !c.cancel_request(&Id::Num(1), libc::SIGINT),
            "1 is forgotten"
        );
        // A query is answered CANCELLED at once.
        assert!(c.cancel_request(&Id::Num(3), libc::SIGTERM));
        let e = slow.await.unwrap().unwrap_err();
        assert_eq!(e.code, codes::CANCELLED);
        assert!(!two.is_finished());
        // `run.cancel` stops the connection's streams.
        c.cancel_streams(libc::SIGTERM);
        assert_eq!(two.await.unwrap().unwrap()["signal"], libc::SIGTERM);
        assert_eq!(c.in_flight(), 0);
        // Later requests are not born cancelled.
        let three = start(4, "t.stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!three.is_finished());
        // The connection going away cancels the rest with its signal.
        c.cancel_all(libc::SIGHUP);
        assert_eq!(three.await.unwrap().unwrap()["signal"], libc::SIGHUP);
    }

    #[tokio::test]
    async fn a_scope_reports_the_signal_that_cancelled_it() {
        let daemon = Cancel::new();
        let conn = daemon.child();
        let req = conn.child();
        assert_eq!(req.signal(), None);
        let mut rx = req.watch();
        daemon.cancel(libc::SIGTERM);
        assert!(req.is_cancelled() && !req.cancelled_here());
        assert_eq!(req.signal(), Some(libc::SIGTERM));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Some(libc::SIGTERM));
        // The first signal wins; a scope's own signal beats its parent's.
        let c = Cancel::new();
        let r = c.child();
        r.cancel(libc::SIGINT);
        c.cancel(libc::SIGTERM);
        r.cancel(libc::SIGKILL);
        assert_eq!(r.signal(), Some(libc::SIGINT));
        // An uncancelled scope's channel never reads as cancelled.
        let quiet = Cancel::new().watch();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!quiet.has_changed().unwrap());
    }

    #[test]
    fn engine_errors_keep_their_code_and_data() {
        let e = EngineError::new(crate::error::ErrorKind::Config, "bad")
            .with_data(json!({"file": "vx.toml"}));
        let r = engine_error(e);
        assert_eq!((r.code, r.message.as_str()), (codes::CONFIG_ERROR, "bad"));
        assert_eq!(r.data, Some(json!({"file": "vx.toml"})));
    }
}
