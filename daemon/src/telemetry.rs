//! `telemetry` — the data side of tracing a run: W3C trace context ids the
//! engine makes itself, the `TRACEPARENT` each task's process gets, and
//! each traced run's `OTEL_*` settings for an in-process exporter.
//!
//! Owns: whether a run is traced (the [`Policy`] an exporter installs with
//! [`set_policy`]; no policy → nothing is traced), the run's trace id and
//! span id (a client's own `TRACEPARENT` makes the run a child of it), the
//! task span ids, and a small bounded memory of traced runs' `OTEL_*`
//! variables ([`run_settings`]; the run's environment may name the
//! collector, and its headers are secrets that never go on the bus).
//!
//! Never: links OpenTelemetry or any transport, sends anything, or puts the
//! trace context into a task's key (`TRACEPARENT` is process environment
//! only).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

/// Decides from a run's client environment whether the run is traced.
pub type Policy = fn(&BTreeMap<String, String>) -> bool;

/// Traced runs whose settings are remembered (oldest forgotten first).
const REMEMBERED: usize = 64;

fn policy() -> &'static RwLock<Option<Policy>> {
    static P: OnceLock<RwLock<Option<Policy>>> = OnceLock::new();
    P.get_or_init(|| RwLock::new(None))
}

/// Installs the exporter's policy (the `vxd` binary does, when it attaches
/// an exporter).
pub fn set_policy(p: Policy) {
    if let Ok(mut g) = policy().write() {
        *g = Some(p);
    }
}

/// 64 random bits (a per-process random hasher over a counter and the
/// clock: unique ids, not secrets).
fn random_u64() -> u64 {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A span id: 16 lowercase hex digits, never all zero.
pub fn new_span_id() -> String {
    loop {
        let v = random_u64();
        if v != 0 {
            return format!("{v:016x}");
        }
    }
}

fn new_trace_id() -> String {
    loop {
        let (a, b) = (random_u64(), random_u64());
        if a | b != 0 {
            return format!("{a:016x}{b:016x}");
        }
    }
}

/// The `00-<trace>-<span>-<flags>` parts of a valid W3C `traceparent`.
pub fn parse_traceparent(s: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = s.trim().split('-').collect();
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|c| c.is_ascii_hexdigit());
    if p.len() < 4 || !hex(p[0], 2) || p[0] == "ff" || !hex(p[1], 32) || !hex(p[2], 16) {
        return None;
    }
    if !hex(p[3], 2) || p[1].bytes().all(|c| c == b'0') || p[2].bytes().all(|c| c == b'0') {
        return None;
    }
    let l = |x: &str| x.to_ascii_lowercase();
    Some((l(p[1]), l(p[2]), l(p[3])))
}

/// A traced run's context.
#[derive(Debug, Clone)]
pub struct RunTrace {
    pub trace_id: String,
    /// The run span's id.
    pub span_id: String,
    /// The client's span (its `TRACEPARENT`), the run span's parent.
    pub parent_span_id: Option<String>,
    /// The client's `TRACESTATE`, handed on unchanged.
    pub tracestate: Option<String>,
}

impl RunTrace {
    /// The run span's `traceparent`.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// A new child span of the run: its id and its `traceparent`.
    pub fn child(&self) -> (String, String) {
        let id = new_span_id();
        let tp = format!("00-{}-{id}-01", self.trace_id);
        (id, tp)
    }

    /// The variables a task's process gets for the span `traceparent`.
    pub fn task_env(&self, traceparent: &str) -> Vec<(String, String)> {
        let mut v = vec![("TRACEPARENT".to_string(), traceparent.to_string())];
        if let Some(s) = &self.tracestate {
            v.push(("TRACESTATE".to_string(), s.clone()));
        }
        v
    }
}

/// A new trace for a run whose client environment is `env`, if the
/// installed policy traces it.
pub fn begin(env: &BTreeMap<String, String>) -> Option<RunTrace> {
    let p = (*policy().read().ok()?)?;
    if !p(env) {
        return None;
    }
    let parent = env.get("TRACEPARENT").and_then(|s| parse_traceparent(s));
    let (trace_id, parent_span_id) = match parent {
        Some((t, s, _)) => (t, Some(s)),
        None => (new_trace_id(), None),
    };
    Some(RunTrace {
        trace_id,
        span_id: new_span_id(),
        tracestate: parent_span_id
            .as_ref()
            .and_then(|_| env.get("TRACESTATE").cloned()),
        parent_span_id,
    })
}

/// Traced runs' `OTEL_*` variables, oldest first.
type Remembered = Mutex<VecDeque<(String, BTreeMap<String, String>)>>;

fn remembered() -> &'static Remembered {
    static R: OnceLock<Remembered> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Remembers a traced run's `OTEL_*` variables (its client's).
pub fn remember(run_id: &str, env: &BTreeMap<String, String>) {
    let otel: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Ok(mut r) = remembered().lock() {
        if r.len() >= REMEMBERED {
            r.pop_front();
        }
        r.push_back((run_id.to_string(), otel));
    }
}

/// The `OTEL_*` variables of a traced run's client (the last
/// [`REMEMBERED`] runs).
pub fn run_settings(run_id: &str) -> Option<BTreeMap<String, String>> {
    let r = remembered().lock().ok()?;
    r.iter()
        .rev()
        .find(|(id, _)| id == run_id)
        .map(|(_, m)| m.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let t = "0af7651916cd43dd8448eb211c80319c";
        let s = "b7ad6b7169203331";
        let cases: &[(String, bool)] = &[
            (format!("00-{t}-{s}-01"), true),
            (format!("00-{}-{s}-01", t.to_uppercase()), true),
            (format!("ff-{t}-{s}-01"), false),
            (format!("00-{}-{s}-01", "0".repeat(32)), false),
            (format!("00-{t}-{}-01", "0".repeat(16)), false),
            (format!("00-{t}-{s}"), false),
            (format!("00-{t}x-{s}-01"), false),
            ("".to_string(), false),
        ];
        for (s, ok) in cases {
            assert_eq!(parse_traceparent(s).is_some(), *ok, "{s}");
        }
    }

    #[test]
    fn ids_are_valid_and_distinct() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, b);
        let rt = RunTrace {
            trace_id: a.clone(),
            span_id: new_span_id(),
            parent_span_id: None,
            tracestate: None,
        };
        let (id, tp) = rt.child();
        let (t, s, f) = parse_traceparent(&tp).expect("valid");
        assert_eq!(
            (t.as_str(), s.as_str(), f.as_str()),
            (a.as_str(), id.as_str(), "01")
        );
        assert!(parse_traceparent(&rt.traceparent()).is_some());
    }

    #[test]
    fn settings_are_remembered_boundedly() {
        for i in 0..(REMEMBERED + 5) {
            let env = BTreeMap::from([
                ("OTEL_SERVICE_NAME".to_string(), format!("s{i}")),
                ("SECRET_OTHER".to_string(), "x".to_string()),
            ]);
            remember(&format!("telemetry-test-{i}"), &env);
        }
        assert!(run_settings("telemetry-test-0").is_none());
        let last = run_settings(&format!("telemetry-test-{}", REMEMBERED + 4)).expect("kept");
        assert_eq!(last.len(), 1, "only OTEL_ variables: {last:?}");
    }
}
