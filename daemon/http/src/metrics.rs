//! `metrics` — `GET /metrics` in the Prometheus text format.
//!
//! Owns: the names and help of the series: runs and finished tasks (by
//! status and cache source) since the server started (from the event
//! [`crate::feed`]), cache entries and bytes (`cache.stats`), the daemon's
//! RSS, runs served and connections (`daemon.status`), and subscribers
//! (HTTP event-stream clients; the bus's subscriptions).
//!
//! Never: computes anything the engine does not already report.

use crate::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn series(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn get(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::new();
    let c = s.feed.counters();
    series(
        &mut out,
        "vx_runs_started_total",
        "counter",
        "Runs (and watch cycles) started since the HTTP server started.",
        &[(String::new(), c.runs_started as f64)],
    );
    series(
        &mut out,
        "vx_runs_finished_total",
        "counter",
        "Runs (and watch cycles) finished since the HTTP server started, by outcome.",
        &[
            ("{ok=\"true\"}".into(), c.runs_finished_ok as f64),
            ("{ok=\"false\"}".into(), c.runs_finished_failed as f64),
        ],
    );
    let tasks: Vec<(String, f64)> = c
        .tasks
        .iter()
        .map(|((st, src), n)| {
            (
                format!(
                    "{{status=\"{}\",cache=\"{}\"}}",
                    label_value(st),
                    label_value(src)
                ),
                *n as f64,
            )
        })
        .collect();
    series(
        &mut out,
        "vx_tasks_finished_total",
        "counter",
        "Tasks finished since the HTTP server started, by status and cache source.",
        &tasks,
    );
    series(
        &mut out,
        "vx_events_total",
        "counter",
        "Events the HTTP event feed received.",
        &[(String::new(), c.events as f64)],
    );
    let root = s.door.root().display().to_string();
    if let Ok(v) = crate::call(&s, "cache.stats", serde_json::json!({ "cwd": root })).await {
        series(
            &mut out,
            "vx_cache_entries",
            "gauge",
            "Entries in the local cache.",
            &[(String::new(), v["entries"].as_f64().unwrap_or(0.0))],
        );
        series(
            &mut out,
            "vx_cache_bytes",
            "gauge",
            "Bytes of blobs in the local cache.",
            &[(String::new(), v["blob_bytes"].as_f64().unwrap_or(0.0))],
        );
    }
    if let Ok(v) = crate::call(&s, "daemon.status", serde_json::json!({})).await {
        series(
            &mut out,
            "vx_daemon_rss_bytes",
            "gauge",
            "Resident memory of the daemon.",
            &[(String::new(), v["rss_bytes"].as_f64().unwrap_or(0.0))],
        );
        series(
            &mut out,
            "vx_daemon_runs_served_total",
            "counter",
            "Runs the daemon served since it started.",
            &[(String::new(), v["runs_served"].as_f64().unwrap_or(0.0))],
        );
        series(
            &mut out,
            "vx_daemon_connections",
            "gauge",
            "Live clients (socket, HTTP streams, WebSockets).",
            &[(String::new(), v["connections"].as_f64().unwrap_or(0.0))],
        );
        series(
            &mut out,
            "vx_daemon_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &[(
                String::new(),
                v["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            )],
        );
    }
    series(
        &mut out,
        "vx_http_stream_subscribers",
        "gauge",
        "HTTP event-stream clients (/events, /stream) connected now.",
        &[(String::new(), s.feed.clients.load(Ordering::Relaxed) as f64)],
    );
    series(
        &mut out,
        "vx_http_websockets",
        "gauge",
        "WebSockets (/ws) open now.",
        &[(String::new(), s.websockets.load(Ordering::Relaxed) as f64)],
    );
    let (held, bytes) = s.feed.held();
    series(
        &mut out,
        "vx_http_replay_events",
        "gauge",
        "Events held for Last-Event-ID resume.",
        &[(String::new(), held as f64)],
    );
    series(
        &mut out,
        "vx_http_replay_bytes",
        "gauge",
        "Bytes held for Last-Event-ID resume.",
        &[(String::new(), bytes as f64)],
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
