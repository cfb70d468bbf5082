//! `metrics` — the server's counters and their Prometheus text
//! (`GET /metrics`): requests by route and status, hits, misses, bytes in
//! and out, stored bytes and artifacts, evictions. Never blocks a request
//! on anything but a short lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

impl Metrics {
    /// Counts one usage event.
    pub fn event(&self, remote: bool, hit: bool) {
        self.events[(remote as usize) << 1 | hit as usize].fetch_add(1, Relaxed);
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
        let _ = writeln!(s, "# HELP vx_cache_stored_bytes Bytes of artifacts stored.");
        let _ = writeln!(s, "# TYPE vx_cache_stored_bytes gauge");
        let _ = writeln!(s, "vx_cache_stored_bytes {stored_bytes}");
        let _ = writeln!(s, "# HELP vx_cache_stored_artifacts Artifacts stored.");
        let _ = writeln!(s, "# TYPE vx_cache_stored_artifacts gauge");
        let _ = writeln!(s, "vx_cache_stored_artifacts {stored_artifacts}");
        s
    }
}
