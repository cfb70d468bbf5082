//! `spans` — turns one run's bus notifications into OTLP spans and
//! metrics in the OpenTelemetry CI/CD semantic conventions.
//!
//! Owns: the run span (`cicd.pipeline.run`: `RUN <pipeline name>`), one
//! span per task under it (its id is the one the engine put in the task's
//! `TRACEPARENT`), their attributes (the table in `docs/telemetry.md`), and
//! the run's metric points (delta temporality: each run exports its own).
//! Never: does I/O (the caller sends what [`Runs::take`] returns) or keeps
//! more than [`FLUSH_SPANS`] finished spans of a run.

use crate::config::Config;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::SpanKind, status::StatusCode,
};
use std::collections::{BTreeMap, HashMap};
use vx_proto::live::{RunFinishedParams, RunStartedParams};
use vx_proto::{CacheSource, RunEvent, TaskResult, TaskStatus};

/// Finished task spans of a run sent before the run ends.
pub const FLUSH_SPANS: usize = 512;
/// Warnings kept as events on the run span.
const MAX_WARNINGS: usize = 32;
/// Histogram bounds, in seconds.
const BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Something to send.
pub enum Batch {
    Traces(Config, ExportTraceServiceRequest),
    Metrics(Config, ExportMetricsServiceRequest),
}

/// Version control facts of the workspace (`vcs.*`).
pub type Vcs = Vec<(&'static str, String)>;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(k: &str, v: impl Into<String>) -> KeyValue {
    kv(k, Value::StringValue(v.into()))
}

fn i(k: &str, v: i64) -> KeyValue {
    kv(k, Value::IntValue(v))
}

fn ms_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// `cicd.pipeline.task.run.result` of a task status.
pub fn task_result(st: TaskStatus) -> Option<&'static str> {
    Some(match st {
        TaskStatus::Success | TaskStatus::Cached => "success",
        TaskStatus::Failed => "failure",
        TaskStatus::Skipped => "skip",
        TaskStatus::Aborted => "cancellation",
        TaskStatus::Running => return None,
    })
}

/// `vx.task.cache.status` of a task.
pub fn cache_status(c: CacheSource) -> &'static str {
    match c {
        CacheSource::Miss => "miss",
        CacheSource::Local => "local",
        CacheSource::Remote => "remote",
        CacheSource::UpToDate => "up-to-date",
        CacheSource::Disabled => "disabled",
    }
}

/// `cicd.pipeline.result` of a finished run.
pub fn run_result(p: &RunFinishedParams) -> &'static str {
    match (p.ok, p.exit_code, &p.error) {
        (true, _, _) => "success",
        (_, Some(130) | Some(143), _) => "cancellation",
        (_, None, _) => "error",
        _ => "failure",
    }
}

/// The pipeline's name: the client's command line (arguments after `--`
/// are already redacted), without the program's path.
fn pipeline_name(argv: &[String]) -> String {
    let mut v: Vec<&str> = argv.iter().map(String::as_str).collect();
    if let Some(first) = v.first_mut() {
        *first = first.rsplit('/').next().unwrap_or(first);
    }
    v.join(" ")
}

struct TaskRec {
    span_id: Vec<u8>,
    start_ns: u64,
    cache: Option<CacheSource>,
}

struct RunRec {
    run_id: String,
    cfg: Config,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    started_ms: u64,
    tasks: HashMap<String, TaskRec>,
    spans: Vec<Span>,
    warnings: Vec<Event>,
    /// (result, cache status) → task durations in seconds.
    durations: BTreeMap<(&'static str, &'static str), Vec<f64>>,
    vcs: Vcs,
}

/// The traced runs in progress.
#[derive(Default)]
pub struct Runs {
    runs: HashMap<String, RunRec>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn new_span_id() -> Vec<u8> {
    hex(&vxd::telemetry::new_span_id())
}

impl Runs {
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Forgets every run (the subscription fell behind).
    pub fn clear(&mut self) {
        self.runs.clear();
    }

    /// A traced run started (a run without a `traceparent` is not traced).
    pub fn started(&mut self, p: &RunStartedParams, cfg: Config, vcs: Vcs) {
        let Some((trace, span, _)) = p
            .traceparent
            .as_deref()
            .and_then(vxd::telemetry::parse_traceparent)
        else {
            return;
        };
        self.runs.insert(
            p.run_id.clone(),
            RunRec {
                run_id: p.run_id.clone(),
                cfg,
                trace_id: hex(&trace),
                span_id: hex(&span),
                parent: p.parent_span_id.as_deref().map(hex).unwrap_or_default(),
                name: pipeline_name(&p.argv),
                started_ms: p.started_at,
                tasks: HashMap::new(),
                spans: Vec::new(),
                warnings: Vec::new(),
                durations: BTreeMap::new(),
                vcs,
            },
        );
    }

    /// One event of a run; returns spans to send early when the run has
    /// [`FLUSH_SPANS`] finished ones.
    pub fn event(&mut self, run_id: &str, e: &RunEvent) -> Option<Batch> {
        let r = self.runs.get_mut(run_id)?;
        match e {
            RunEvent::TaskStarted {
                id, traceparent, ..
            } => {
                let span_id = traceparent
                    .as_deref()
                    .and_then(vxd::telemetry::parse_traceparent)
                    .map(|(_, s, _)| hex(&s))
                    .unwrap_or_else(new_span_id);
                r.tasks.insert(
                    id.clone(),
                    TaskRec {
                        span_id,
                        start_ns: now_ns(),
                        cache: None,
                    },
                );
            }
            RunEvent::TaskCacheHit { id, source, .. } => {
                r.tasks
                    .entry(id.clone())
                    .or_insert_with(|| TaskRec {
                        span_id: new_span_id(),
                        start_ns: now_ns(),
                        cache: None,
                    })
                    .cache = Some(*source);
            }
            RunEvent::TaskFinished { result } => {
                let rec = r.tasks.remove(&result.id);
                let span = task_span(r, result, rec);
                r.spans.push(span);
                if r.spans.len() >= FLUSH_SPANS {
                    let spans = std::mem::take(&mut r.spans);
                    return Some(Batch::Traces(r.cfg.clone(), traces(r, spans)));
                }
            }
            RunEvent::Warning { message } if r.warnings.len() < MAX_WARNINGS => {
                r.warnings.push(Event {
                    time_unix_nano: now_ns(),
                    name: "vx.warning".into(),
                    attributes: vec![s("message", message.clone())],
                    dropped_attributes_count: 0,
                });
            }
            _ => {}
        }
        None
    }

    /// The run ended: its remaining spans (the run span last) and its
    /// metrics.
    pub fn finished(&mut self, p: &RunFinishedParams) -> Vec<Batch> {
        let Some(mut r) = self.runs.remove(&p.run_id) else {
            return Vec::new();
        };
        let end = ms_ns(p.ended_at).max(now_ns().min(ms_ns(p.ended_at) + 1));
        // Tasks that never finished (the run was cancelled or failed).
        let open: Vec<(String, TaskRec)> = r.tasks.drain().collect();
        for (id, t) in open {
            let mut span = bare_span(&r, &id, t.span_id, t.start_ns, end);
            span.attributes
                .push(s("cicd.pipeline.task.run.result", "cancellation"));
            r.spans.push(span);
        }
        let result = run_result(p);
        let mut attrs = vec![
            s("cicd.pipeline.name", r.name.clone()),
            s("cicd.pipeline.run.id", p.run_id.clone()),
            s("cicd.pipeline.action.name", "RUN"),
            s("cicd.pipeline.result", result),
            s("vx.run.kind", format!("{:?}", p.kind).to_lowercase()),
            i("vx.run.tasks", p.counts.total as i64),
            i("vx.run.cached", p.counts.cached as i64),
            i("vx.run.executed", p.counts.executed as i64),
            i("vx.run.failed", p.counts.failed as i64),
        ];
        if let Some(c) = p.exit_code {
            attrs.push(i("vx.run.exit_code", c as i64));
        }
        for (k, v) in &r.vcs {
            attrs.push(s(k, v.clone()));
        }
        let start = ms_ns(r.started_ms);
        let run_span = Span {
            trace_id: r.trace_id.clone(),
            span_id: r.span_id.clone(),
            parent_span_id: r.parent.clone(),
            flags: 1,
            name: format!("RUN {}", r.name),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end.max(start),
            attributes: attrs,
            events: std::mem::take(&mut r.warnings),
            status: Some(Status {
                message: p.error.clone().unwrap_or_default(),
                code: if result == "success" {
                    StatusCode::Ok
                } else {
                    StatusCode::Error
                } as i32,
            }),
            ..Default::default()
        };
        r.spans.push(run_span);
        let spans = std::mem::take(&mut r.spans);
        let mut out = vec![Batch::Traces(r.cfg.clone(), traces(&r, spans))];
        out.push(Batch::Metrics(
            r.cfg.clone(),
            metrics(&r, result, start, end.max(start)),
        ));
        out
    }
}

fn bare_span(r: &RunRec, id: &str, span_id: Vec<u8>, start: u64, end: u64) -> Span {
    Span {
        trace_id: r.trace_id.clone(),
        span_id,
        parent_span_id: r.span_id.clone(),
        flags: 1,
        name: id.to_string(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end.max(start),
        attributes: vec![
            s("cicd.pipeline.task.name", id),
            s("cicd.pipeline.task.run.id", format!("{}/{id}", r.run_id)),
        ],
        ..Default::default()
    }
}

fn task_span(r: &mut RunRec, t: &TaskResult, rec: Option<TaskRec>) -> Span {
    let now = now_ns();
    let (span_id, start, cache) = match rec {
        Some(x) => (x.span_id, x.start_ns, x.cache),
        None => (
            new_span_id(),
            now.saturating_sub(ms_ns(t.duration_ms)),
            None,
        ),
    };
    // An executed task's span lasts what it ran.
    let end = if t.status == TaskStatus::Cached {
        now
    } else {
        start + ms_ns(t.duration_ms)
    };
    let mut span = bare_span(r, &t.id, span_id, start, end);
    let cache = cache_status(cache.unwrap_or(t.cache));
    let result = task_result(t.status);
    let a = &mut span.attributes;
    if let Some(res) = result {
        a.push(s("cicd.pipeline.task.run.result", res));
    }
    a.push(s("vx.project", t.project.clone()));
    a.push(s("vx.task", t.task.clone()));
    a.push(s(
        "vx.task.status",
        format!("{:?}", t.status).to_lowercase(),
    ));
    a.push(s("vx.task.cache.status", cache));
    if let Some(k) = &t.key {
        a.push(s("vx.task.key", k.clone()));
    }
    a.push(i("vx.task.attempts", t.attempts as i64));
    if let Some(c) = t.exit_code {
        a.push(i("process.exit.code", c as i64));
    }
    if let Some(b) = &t.blocked_by {
        a.push(s("vx.task.blocked_by", b.clone()));
    }
    // No semantic-convention attribute exists for these (`process.cpu.time`
    // and `process.memory.usage` are metrics): vx's own names.
    if let Some(c) = t.cpu_ms {
        a.push(i("vx.task.cpu_ms", c as i64));
    }
    if let Some(m) = t.peak_rss_bytes {
        a.push(i("vx.task.peak_rss_bytes", m as i64));
    }
    if t.status == TaskStatus::Failed {
        span.status = Some(Status {
            message: t.error.clone().unwrap_or_else(|| "the task failed".into()),
            code: StatusCode::Error as i32,
        });
    }
    if let Some(res) = result {
        r.durations
            .entry((res, cache))
            .or_default()
            .push(t.duration_ms as f64 / 1000.0);
    }
    span
}

fn resource(cfg: &Config) -> Resource {
    let mut attributes = vec![
        s("service.name", cfg.service_name.clone()),
        s("service.version", env!("CARGO_PKG_VERSION")),
        s("telemetry.sdk.name", "vx"),
        s("telemetry.sdk.language", "rust"),
    ];
    attributes.extend(cfg.resource.iter().map(|(k, v)| s(k, v.clone())));
    Resource {
        attributes,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "vx".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn traces(r: &RunRec, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(&r.cfg)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn histogram_point(attrs: Vec<KeyValue>, vals: &[f64], start: u64, end: u64) -> HistogramDataPoint {
    let mut counts = vec![0u64; BOUNDS.len() + 1];
    for v in vals {
        let b = BOUNDS.iter().position(|x| v <= x).unwrap_or(BOUNDS.len());
        counts[b] += 1;
    }
    HistogramDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: end,
        count: vals.len() as u64,
        sum: Some(vals.iter().sum()),
        bucket_counts: counts,
        explicit_bounds: BOUNDS.to_vec(),
        min: vals.iter().copied().reduce(f64::min),
        max: vals.iter().copied().reduce(f64::max),
        ..Default::default()
    }
}

fn metrics(r: &RunRec, result: &str, start: u64, end: u64) -> ExportMetricsServiceRequest {
    let delta = AggregationTemporality::Delta as i32;
    let run_attrs = || {
        vec![
            s("cicd.pipeline.name", r.name.clone()),
            s("cicd.pipeline.result", result),
        ]
    };
    let secs = (end - start) as f64 / 1e9;
    let task_attrs = |res: &str, cache: &str| {
        vec![
            s("cicd.pipeline.name", r.name.clone()),
            s("cicd.pipeline.task.run.result", res),
            s("vx.task.cache.status", cache),
        ]
    };
    let metrics = vec![
        Metric {
            name: "cicd.pipeline.run.duration".into(),
            description: "Duration of a vx run".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![histogram_point(run_attrs(), &[secs], start, end)],
                aggregation_temporality: delta,
            })),
            ..Default::default()
        },
        Metric {
            name: "vx.run.count".into(),
            description: "vx runs, by result".into(),
            unit: "{run}".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: run_attrs(),
                    start_time_unix_nano: start,
                    time_unix_nano: end,
                    value: Some(number_data_point::Value::AsInt(1)),
                    ..Default::default()
                }],
                aggregation_temporality: delta,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "vx.task.count".into(),
            description: "Tasks, by result and cache status".into(),
            unit: "{task}".into(),
            data: Some(Data::Sum(Sum {
                data_points: r
                    .durations
                    .iter()
                    .map(|((res, cache), v)| NumberDataPoint {
                        attributes: task_attrs(res, cache),
                        start_time_unix_nano: start,
                        time_unix_nano: end,
                        value: Some(number_data_point::Value::AsInt(v.len() as i64)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: delta,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "vx.task.duration".into(),
            description: "Task durations, by result and cache status".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: r
                    .durations
                    .iter()
                    .map(|((res, cache), v)| histogram_point(task_attrs(res, cache), v, start, end))
                    .collect(),
                aggregation_temporality: delta,
            })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(&r.cfg)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
