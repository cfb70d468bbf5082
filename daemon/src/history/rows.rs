//! `history::rows` — the history file's own row types: what `history.redb`
//! stores, as distinct from the wire types of `vx_proto::history` that the
//! rest of the history hands out. Conversions go both ways here, so a
//! change to the protocol is a change to a conversion, never a storage
//! migration; a change here is one (the encoding is pinned by a test).
//!
//! The encoding is JSON, field for field what earlier versions wrote, so
//! files written before these types existed read unchanged. Never opens
//! the file or decides what to keep.

use super::HistoryError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vx_proto::history::{Fingerprint, RunRecord, TaskRun, TaskRunRow};
use vx_proto::{CacheSource, RunCounts, TaskStatus};

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HistoryError> {
    serde_json::from_slice(bytes).map_err(|e| HistoryError::Corrupt {
        path: PathBuf::from(super::FILE_NAME),
        message: format!("a stored record does not decode: {e}"),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, HistoryError> {
    serde_json::to_vec(v).map_err(|e| HistoryError::Db(e.to_string()))
}

/// How a task ended, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StatusRow {
    Success,
    Cached,
    Failed,
    Skipped,
    Aborted,
    Running,
}

/// Where a task's result came from, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum CacheRow {
    Miss,
    Local,
    UpToDate,
    Disabled,
    Remote,
}

/// A run's task counts, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CountsRow {
    total: usize,
    cached: usize,
    executed: usize,
    failed: usize,
    skipped: usize,
    aborted: usize,
    #[serde(default)]
    running: usize,
}

/// One task of a run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskRow {
    id: String,
    status: StatusRow,
    cache: CacheRow,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    attempts: u32,
    duration_ms: u64,
    start_ms: u64,
    end_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blocked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    persistent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
}

/// A run without its tasks (they are rows of `task_rows`), as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunHeadRow {
    run_id: String,
    argv: Vec<String>,
    requested: Vec<String>,
    started_at: u64,
    ended_at: u64,
    duration_ms: u64,
    exit_code: i32,
    ok: bool,
    concurrency: usize,
    counts: CountsRow,
    /// Always empty in the file (kept so older readers find the field).
    #[serde(default)]
    tasks: Vec<TaskRow>,
}

/// A `runs` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunRow {
    head: RunHeadRow,
    task_ids: Vec<String>,
}

/// A `task_rows` row: one task of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskRunRowRow {
    run_id: String,
    started_at: u64,
    task: TaskRow,
}

/// A `fingerprints` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FingerprintRow {
    key: String,
    task: String,
    files: Vec<(String, String)>,
    env: Vec<(String, String)>,
    config: String,
    command: String,
    upstream: Vec<(String, String)>,
    args: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    plugins: Vec<(String, String)>,
}

impl From<TaskStatus> for StatusRow {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Success => StatusRow::Success,
            TaskStatus::Cached => StatusRow::Cached,
            TaskStatus::Failed => StatusRow::Failed,
            TaskStatus::Skipped => StatusRow::Skipped,
            TaskStatus::Aborted => StatusRow::Aborted,
            TaskStatus::Running => StatusRow::Running,
        }
    }
}

impl From<StatusRow> for TaskStatus {
    fn from(s: StatusRow) -> Self {
        match s {
            StatusRow::Success => TaskStatus::Success,
            StatusRow::Cached => TaskStatus::Cached,
            StatusRow::Failed => TaskStatus::Failed,
            StatusRow::Skipped => TaskStatus::Skipped,
            StatusRow::Aborted => TaskStatus::Aborted,
            StatusRow::Running => TaskStatus::Running,
        }
    }
}

impl From<CacheSource> for CacheRow {
    fn from(c: CacheSource) -> Self {
        match c {
            CacheSource::Miss => CacheRow::Miss,
            CacheSource::Local => CacheRow::Local,
            CacheSource::UpToDate => CacheRow::UpToDate,
            CacheSource::Disabled => CacheRow::Disabled,
            CacheSource::Remote => CacheRow::Remote,
        }
    }
}

impl From<CacheRow> for CacheSource {
    fn from(c: CacheRow) -> Self {
        match c {
            CacheRow::Miss => CacheSource::Miss,
            CacheRow::Local => CacheSource::Local,
            CacheRow::UpToDate => CacheSource::UpToDate,
            CacheRow::Disabled => CacheSource::Disabled,
            CacheRow::Remote => CacheSource::Remote,
        }
    }
}

impl From<&RunCounts> for CountsRow {
    fn from(c: &RunCounts) -> Self {
        CountsRow {
            total: c.total,
            cached: c.cached,
            executed: c.executed,
            failed: c.failed,
            skipped: c.skipped,
            aborted: c.aborted,
            running: c.running,
        }
    }
}

impl From<CountsRow> for RunCounts {
    fn from(c: CountsRow) -> Self {
        RunCounts {
            total: c.total,
            cached: c.cached,
            executed: c.executed,
            failed: c.failed,
            skipped: c.skipped,
            aborted: c.aborted,
            running: c.running,
        }
    }
}

impl From<&TaskRun> for TaskRow {
    fn from(t: &TaskRun) -> Self {
        TaskRow {
            id: t.id.clone(),
            status: t.status.into(),
            cache: t.cache.into(),
            key: t.key.clone(),
            exit_code: t.exit_code,
            attempts: t.attempts,
            duration_ms: t.duration_ms,
            start_ms: t.start_ms,
            end_ms: t.end_ms,
            slot: t.slot,
            cpu_ms: t.cpu_ms,
            peak_rss_bytes: t.peak_rss_bytes,
            blocked_by: t.blocked_by.clone(),
            error: t.error.clone(),
            persistent: t.persistent,
            worker: t.worker.clone(),
        }
    }
}

impl From<TaskRow> for TaskRun {
    fn from(t: TaskRow) -> Self {
        TaskRun {
            id: t.id,
            status: t.status.into(),
            cache: t.cache.into(),
            key: t.key,
            exit_code: t.exit_code,
            attempts: t.attempts,
            duration_ms: t.duration_ms,
            start_ms: t.start_ms,
            end_ms: t.end_ms,
            slot: t.slot,
            cpu_ms: t.cpu_ms,
            peak_rss_bytes: t.peak_rss_bytes,
            blocked_by: t.blocked_by,
            error: t.error,
            persistent: t.persistent,
            worker: t.worker,
        }
    }
}

/// A run as the history hands it around: the record without its rows
/// (they live in `task_rows`) and the ids of those rows.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredRun {
    pub(super) head: RunRecord,
    pub(super) task_ids: Vec<String>,
}

impl StoredRun {
    /// The `runs` row (the head's tasks are never stored there).
    pub(super) fn encode(&self) -> Result<Vec<u8>, HistoryError> {
        let h = &self.head;
        encode(&RunRow {
            head: RunHeadRow {
                run_id: h.run_id.clone(),
                argv: h.argv.clone(),
                requested: h.requested.clone(),
                started_at: h.started_at,
                ended_at: h.ended_at,
                duration_ms: h.duration_ms,
                exit_code: h.exit_code,
                ok: h.ok,
                concurrency: h.concurrency,
                counts: (&h.counts).into(),
                tasks: Vec::new(),
            },
            task_ids: self.task_ids.clone(),
        })
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<StoredRun, HistoryError> {
        let r: RunRow = decode(bytes)?;
        let h = r.head;
        Ok(StoredRun {
            head: RunRecord {
                run_id: h.run_id,
                argv: h.argv,
                requested: h.requested,
                started_at: h.started_at,
                ended_at: h.ended_at,
                duration_ms: h.duration_ms,
                exit_code: h.exit_code,
                ok: h.ok,
                concurrency: h.concurrency,
                counts: h.counts.into(),
                tasks: h.tasks.into_iter().map(TaskRun::from).collect(),
            },
            task_ids: r.task_ids,
        })
    }
}

/// The `task_rows` row of one task of one run.
pub(super) fn encode_task_row(row: &TaskRunRow) -> Result<Vec<u8>, HistoryError> {
    encode(&TaskRunRowRow {
        run_id: row.run_id.clone(),
        started_at: row.started_at,
        task: (&row.task).into(),
    })
}

pub(super) fn decode_task_row(bytes: &[u8]) -> Result<TaskRunRow, HistoryError> {
    let r: TaskRunRowRow = decode(bytes)?;
    Ok(TaskRunRow {
        run_id: r.run_id,
        started_at: r.started_at,
        task: r.task.into(),
    })
}

/// The `fingerprints` row of a key.
pub(super) fn encode_fingerprint(f: &Fingerprint) -> Result<Vec<u8>, HistoryError> {
    encode(&FingerprintRow {
        key: f.key.clone(),
        task: f.task.clone(),
        files: f.files.clone(),
        env: f.env.clone(),
        config: f.config.clone(),
        command: f.command.clone(),
        upstream: f.upstream.clone(),
        args: f.args.clone(),
        plugins: f.plugins.clone(),
    })
}

pub(super) fn decode_fingerprint(bytes: &[u8]) -> Result<Fingerprint, HistoryError> {
    let f: FingerprintRow = decode(bytes)?;
    Ok(Fingerprint {
        key: f.key,
        task: f.task,
        files: f.files,
        env: f.env,
        config: f.config,
        command: f.command,
        upstream: f.upstream,
        args: f.args,
        plugins: f.plugins,
    })
}

/// A `durations` row: a task's newest executed successful durations.
pub(super) fn encode_durations(list: &[u64]) -> Result<Vec<u8>, HistoryError> {
    encode(&list)
}

/// A `durations` row, or none when it does not decode (it is a hint).
pub(super) fn decode_durations(bytes: &[u8]) -> Option<Vec<u64>> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskRun {
        TaskRun {
            id: "app#build".into(),
            status: TaskStatus::Success,
            cache: CacheSource::UpToDate,
            key: Some("k1".into()),
            exit_code: Some(0),
            attempts: 1,
            duration_ms: 12,
            start_ms: 3,
            end_ms: 15,
            slot: Some(1),
            cpu_ms: None,
            peak_rss_bytes: Some(4096),
            blocked_by: None,
            error: None,
            persistent: false,
            worker: None,
        }
    }

    /// The stored bytes of each row type, pinned: a change here is a
    /// storage migration (old files must still read), whatever the wire
    /// types do.
    #[test]
    fn the_stored_encoding_is_pinned() {
        let row = TaskRunRow {
            run_id: "r1".into(),
            started_at: 1000,
            task: task(),
        };
        let bytes = encode_task_row(&row).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"run_id":"r1","started_at":1000,"task":{"id":"app#build","status":"success","cache":"up-to-date","key":"k1","exit_code":0,"attempts":1,"duration_ms":12,"start_ms":3,"end_ms":15,"slot":1,"peak_rss_bytes":4096}}"#
        );
        assert_eq!(decode_task_row(&bytes).unwrap(), row);

        let run = StoredRun {
            head: RunRecord {
                run_id: "r1".into(),
                argv: vec!["vx".into(), "run".into()],
                requested: vec!["build".into()],
                started_at: 1000,
                ended_at: 1100,
                duration_ms: 100,
                exit_code: 0,
                ok: true,
                concurrency: 2,
                counts: RunCounts {
                    total: 1,
                    cached: 1,
                    ..Default::default()
                },
                tasks: Vec::new(),
            },
            task_ids: vec!["app#build".into()],
        };
        let bytes = run.encode().unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"head":{"run_id":"r1","argv":["vx","run"],"requested":["build"],"started_at":1000,"ended_at":1100,"duration_ms":100,"exit_code":0,"ok":true,"concurrency":2,"counts":{"total":1,"cached":1,"executed":0,"failed":0,"skipped":0,"aborted":0,"running":0},"tasks":[]},"task_ids":["app#build"]}"#
        );
        assert_eq!(StoredRun::decode(&bytes).unwrap(), run);

        let fp = Fingerprint {
            key: "k1".into(),
            task: "app#build".into(),
            files: vec![("src/a".into(), "h1".into())],
            env: vec![],
            config: "c".into(),
            command: "make".into(),
            upstream: vec![],
            args: "".into(),
            plugins: vec![],
        };
        let bytes = encode_fingerprint(&fp).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"key":"k1","task":"app#build","files":[["src/a","h1"]],"env":[],"config":"c","command":"make","upstream":[],"args":""}"#
        );
        assert_eq!(decode_fingerprint(&bytes).unwrap(), fp);
        assert_eq!(encode_durations(&[5, 7]).unwrap(), b"[5,7]");
    }

    /// The rows decode exactly what the wire types wrote before the row
    /// types existed (files recorded by earlier versions read unchanged).
    #[test]
    fn rows_written_through_the_wire_types_still_read() {
        let row = TaskRunRow {
            run_id: "r1".into(),
            started_at: 1000,
            task: task(),
        };
        let old = serde_json::to_vec(&row).unwrap();
        assert_eq!(old, encode_task_row(&row).unwrap());
        assert_eq!(decode_task_row(&old).unwrap(), row);
    }
}
