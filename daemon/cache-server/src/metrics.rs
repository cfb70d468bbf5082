//! `metrics` — the server's counters and their Prometheus text
//! (`GET /metrics`): requests by route and status, hits, misses, bytes in
//! and out, stored bytes and artifacts, evictions; and the REAPI calls by
//! service, method and outcome (the gRPC status code) with the blob bytes
//! each method moved in and out. Never blocks a request on anything but a
//! short lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A REAPI call's labels: service, method, code.
type CallKey = (&'static str, &'static str, &'static str);
/// A REAPI method: service, method.
type MethodKey = (&'static str, &'static str);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub conflicts: AtomicU64,
    pub bad_signatures: AtomicU64,
    /// Usage events by (local, remote) × (miss, hit).
    events: [AtomicU64; 4],
    /// REAPI calls by (service, method, code).
    reapi_calls: Mutex<BTreeMap<CallKey, u64>>,
    /// REAPI blob bytes by (service, method): (in, out).
    reapi_bytes: Mutex<BTreeMap<MethodKey, (u64, u64)>>,
}

/// The canonical name of a gRPC status code (as in `google.rpc.Code`).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Metrics {
    /// Counts one usage event.
    pub fn event(&self, remote: bool, hit: bool) {
        self.events[(remote as usize) << 1 | hit as usize].fetch_add(1, Relaxed);
    }

    /// Counts one REAPI call that ended with `code`.
    pub fn reapi_call(&self, service: &'static str, method: &'static str, code: tonic::Code) {
        if let Ok(mut m) = self.reapi_calls.lock() {
            *m.entry((service, method, code_name(code))).or_default() += 1;
        }
    }

    /// Counts blob bytes a REAPI method took in and gave out.
    pub fn reapi_bytes(
        &self,
        service: &'static str,
        method: &'static str,
        bytes_in: u64,
        out: u64,
    ) {
        if bytes_in == 0 && out == 0 {
            return;
        }
        if let Ok(mut m) = self.reapi_bytes.lock() {
            let e = m.entry((service, method)).or_default();
            e.0 += bytes_in;
            e.1 += out;
        }
    }

    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition, with the store's gauges.
    pub fn render(&self, stored_bytes: u64, stored_artifacts: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP vx_cache_requests_total Requests by route and status."
        );
        let _ = writeln!(s, "# TYPE vx_cache_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "vx_cache_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "vx_cache_hits_total",
                "Artifact downloads served.",
                &self.hits,
            ),
            (
                "vx_cache_misses_total",
                "Artifact lookups that found nothing.",
                &self.misses,
            ),
            (
                "vx_cache_bytes_in_total",
                "Artifact bytes uploaded.",
                &self.bytes_in,
            ),
            (
                "vx_cache_bytes_out_total",
                "Artifact bytes downloaded.",
                &self.bytes_out,
            ),
            (
                "vx_cache_evictions_total",
                "Artifacts evicted (age or size).",
                &self.evictions,
            ),
            (
                "vx_cache_evicted_bytes_total",
                "Bytes evicted.",
                &self.evicted_bytes,
            ),
            ("vx_cache_uploads_total", "Artifacts stored.", &self.uploads),
            (
                "vx_cache_conflicts_total",
                "Uploads refused because the artifact exists.",
                &self.conflicts,
            ),
            (
                "vx_cache_bad_signatures_total",
                "Uploads refused for a bad signature.",
                &self.bad_signatures,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP vx_cache_events_total Cache usage events received, by source and event."
        );
        let _ = writeln!(s, "# TYPE vx_cache_events_total counter");
        for (i, v) in self.events.iter().enumerate() {
            let source = if i & 2 != 0 { "remote" } else { "local" };
            let event = if i & 1 != 0 { "hit" } else { "miss" };
            let _ = writeln!(
                s,
                "vx_cache_events_total{{source=\"{source}\",event=\"{event}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP vx_cache_reapi_calls_total REAPI calls by service, method and outcome (gRPC status code)."
        );
        let _ = writeln!(s, "# TYPE vx_cache_reapi_calls_total counter");
        if let Ok(m) = self.reapi_calls.lock() {
            for ((service, method, code), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "vx_cache_reapi_calls_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP vx_cache_reapi_bytes_total REAPI blob bytes by service, method and direction (in: uploaded, out: downloaded)."
        );
        let _ = writeln!(s, "# TYPE vx_cache_reapi_bytes_total counter");
        if let Ok(m) = self.reapi_bytes.lock() {
            for ((service, method), (i, o)) in m.iter() {
                for (dir, n) in [("in", i), ("out", o)] {
                    let _ = writeln!(
                        s,
                        "vx_cache_reapi_bytes_total{{service=\"{service}\",method=\"{method}\",direction=\"{dir}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP vx_cache_stored_bytes Bytes stored (artifacts, REAPI blobs and ActionCache entries)."
        );
        let _ = writeln!(s, "# TYPE vx_cache_stored_bytes gauge");
        let _ = writeln!(s, "vx_cache_stored_bytes {stored_bytes}");
        let _ = writeln!(
            s,
            "# HELP vx_cache_stored_artifacts Objects stored (artifacts, REAPI blobs and ActionCache entries)."
        );
        let _ = writeln!(s, "# TYPE vx_cache_stored_artifacts gauge");
        let _ = writeln!(s, "vx_cache_stored_artifacts {stored_artifacts}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapi_calls_and_bytes_render_by_label() {
        let m = Metrics::default();
        m.reapi_call("ActionCache", "GetActionResult", tonic::Code::Ok);
        m.reapi_call("ActionCache", "GetActionResult", tonic::Code::NotFound);
        m.reapi_call("ActionCache", "GetActionResult", tonic::Code::NotFound);
        m.reapi_bytes("ByteStream", "Read", 0, 4096);
        m.reapi_bytes("ByteStream", "Read", 0, 10);
        m.reapi_bytes("ByteStream", "Write", 0, 0);
        let text = m.render(5, 1);
        for line in [
            r#"vx_cache_reapi_calls_total{service="ActionCache",method="GetActionResult",code="OK"} 1"#,
            r#"vx_cache_reapi_calls_total{service="ActionCache",method="GetActionResult",code="NOT_FOUND"} 2"#,
            r#"vx_cache_reapi_bytes_total{service="ByteStream",method="Read",direction="in"} 0"#,
            r#"vx_cache_reapi_bytes_total{service="ByteStream",method="Read",direction="out"} 4106"#,
            "# TYPE vx_cache_reapi_calls_total counter",
            "vx_cache_stored_bytes 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // A method that moved nothing has no bytes line.
        assert!(!text.contains(r#"method="Write""#), "{text}");
    }
}
