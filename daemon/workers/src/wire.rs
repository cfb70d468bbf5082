//! `wire` — the worker link's messages to and from the engine's types.
//!
//! Owns: the conversions both ways, and the bounds on what a peer may send
//! (a name, labels, a commit, a capacity, a log line, a report's error: each
//! checked or cut to a fixed size, so nothing a peer sends grows memory).
//! Never: interprets a message (the engine does).

use crate::pb;
use vx_proto::{Stream, TaskStatus};
use vxd::engine::distribute::{Assignment, FromWorker, Hello, Report, ToWorker};

/// The longest worker name accepted.
pub const MAX_NAME: usize = 128;
/// The most labels a worker may carry, and the longest label.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL: usize = 64;
/// The largest capacity a worker may announce.
pub const MAX_CAPACITY: u32 = vx_proto::MAX_CONCURRENCY as u32;
/// The longest log line sent (longer lines are cut with a marker; the
/// engine cuts at its own limit too).
pub const MAX_LINE: usize = 256 << 10;
/// The longest one-line error in a report.
pub const MAX_ERROR: usize = 4 << 10;
/// The most leases one heartbeat may name.
pub const MAX_LEASES: usize = 4 * MAX_CAPACITY as usize;

/// Whether `l` is a valid label (`[A-Za-z0-9_.-]+`, at most [`MAX_LABEL`]).
pub fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_LABEL
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Cuts `s` to at most `max` bytes (at a char boundary), marking the cut.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let full = s.len();
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str(&format!(" … [cut: {full} bytes]"));
    s
}

/// A worker's hello, validated.
pub fn hello_from_wire(h: pb::Hello) -> Result<Hello, String> {
    let name = h.name.trim().to_string();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "a worker name is 1 to {MAX_NAME} printable characters"
        ));
    }
    if h.capacity == 0 || h.capacity > MAX_CAPACITY {
        return Err(format!(
            "worker {name}: capacity {} is not between 1 and {MAX_CAPACITY}",
            h.capacity
        ));
    }
    if h.labels.len() > MAX_LABELS {
        return Err(format!(
            "worker {name}: {} labels (at most {MAX_LABELS})",
            h.labels.len()
        ));
    }
    if let Some(bad) = h.labels.iter().find(|l| !valid_label(l)) {
        return Err(format!(
            "worker {name}: label {:?} is not [A-Za-z0-9_.-]+ (at most {MAX_LABEL} characters)",
            cut(bad.clone(), MAX_LABEL)
        ));
    }
    if let Some(c) = &h.commit
        && (c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!(
            "worker {name}: commit {:?} is not a hex SHA",
            cut(c.clone(), 64)
        ));
    }
    Ok(Hello {
        name,
        commit: h.commit,
        capacity: h.capacity,
        labels: h.labels,
        protocol: h.protocol,
    })
}

pub fn hello_to_wire(h: &Hello) -> pb::FromWorker {
    pb::FromWorker {
        msg: Some(pb::from_worker::Msg::Hello(pb::Hello {
            name: h.name.clone(),
            commit: h.commit.clone(),
            capacity: h.capacity,
            labels: h.labels.clone(),
            protocol: h.protocol,
        })),
    }
}

fn stream_from_wire(s: i32) -> Result<Stream, String> {
    match pb::Stream::try_from(s) {
        Ok(pb::Stream::Stdout) => Ok(Stream::Stdout),
        Ok(pb::Stream::Stderr) => Ok(Stream::Stderr),
        _ => Err(format!("unknown output stream {s}")),
    }
}

fn stream_to_wire(s: Stream) -> pb::Stream {
    match s {
        Stream::Stdout => pb::Stream::Stdout,
        Stream::Stderr => pb::Stream::Stderr,
    }
}

fn status_to_wire(s: TaskStatus) -> pb::Status {
    match s {
        TaskStatus::Success | TaskStatus::Cached => pb::Status::Success,
        TaskStatus::Aborted | TaskStatus::Skipped => pb::Status::Aborted,
        TaskStatus::Failed | TaskStatus::Running => pb::Status::Failed,
    }
}

fn status_from_wire(s: i32) -> Result<TaskStatus, String> {
    match pb::Status::try_from(s) {
        Ok(pb::Status::Success) => Ok(TaskStatus::Success),
        Ok(pb::Status::Failed) => Ok(TaskStatus::Failed),
        Ok(pb::Status::Aborted) => Ok(TaskStatus::Aborted),
        _ => Err(format!("unknown task status {s}")),
    }
}

/// A message after the hello, validated. A second hello or an empty
/// message is an error (the link is closed).
pub fn from_worker_from_wire(m: pb::FromWorker) -> Result<FromWorker, String> {
    use pb::from_worker::Msg;
    match m.msg {
        None => Err("an empty message".into()),
        Some(Msg::Hello(_)) => Err("a second Hello".into()),
        Some(Msg::Ready(r)) => Ok(FromWorker::Ready { free: r.free }),
        Some(Msg::Heartbeat(h)) => {
            if h.leases.len() > MAX_LEASES {
                return Err(format!("a heartbeat naming {} leases", h.leases.len()));
            }
            Ok(FromWorker::Heartbeat { leases: h.leases })
        }
        Some(Msg::Log(l)) => Ok(FromWorker::Log {
            lease: l.lease,
            stream: stream_from_wire(l.stream)?,
            line: cut(l.line, MAX_LINE),
        }),
        Some(Msg::Done(d)) => {
            let r = d.report.ok_or("a Done without a report")?;
            Ok(FromWorker::Done {
                lease: d.lease,
                report: Report {
                    status: status_from_wire(r.status)?,
                    exit_code: r.exit_code,
                    duration_ms: r.duration_ms,
                    error: r.error.map(|e| cut(e, MAX_ERROR)),
                    uploaded: r.uploaded,
                    cpu_ms: r.cpu_ms,
                    peak_rss_bytes: r.peak_rss_bytes,
                },
            })
        }
    }
}

pub fn from_worker_to_wire(m: FromWorker) -> pb::FromWorker {
    use pb::from_worker::Msg;
    let msg = match m {
        FromWorker::Ready { free } => Msg::Ready(pb::Ready { free }),
        FromWorker::Heartbeat { leases } => Msg::Heartbeat(pb::Heartbeat { leases }),
        FromWorker::Log {
            lease,
            stream,
            line,
        } => Msg::Log(pb::Log {
            lease,
            stream: stream_to_wire(stream) as i32,
            line: cut(line, MAX_LINE),
        }),
        FromWorker::Done { lease, report } => Msg::Done(pb::Done {
            lease,
            report: Some(pb::Report {
                status: status_to_wire(report.status) as i32,
                exit_code: report.exit_code,
                duration_ms: report.duration_ms,
                error: report.error.map(|e| cut(e, MAX_ERROR)),
                uploaded: report.uploaded,
                cpu_ms: report.cpu_ms,
                peak_rss_bytes: report.peak_rss_bytes,
            }),
        }),
    };
    pb::FromWorker { msg: Some(msg) }
}

pub fn to_worker_to_wire(m: ToWorker) -> pb::ToWorker {
    use pb::to_worker::Msg;
    let msg = match m {
        ToWorker::Assign(a) => Msg::Assign(pb::Assignment {
            lease: a.lease,
            run_id: a.run_id,
            task_id: a.task_id,
            key: a.key,
            deps: a
                .deps
                .into_iter()
                .map(|(task_id, key)| pb::Dep { task_id, key })
                .collect(),
            env: a
                .env
                .into_iter()
                .map(|(name, value)| pb::EnvVar { name, value })
                .collect(),
            args: a.args,
            lease_ms: a.lease_ms,
        }),
        ToWorker::Revoke { lease, reason } => Msg::Revoke(pb::Revoke { lease, reason }),
    };
    pb::ToWorker { msg: Some(msg) }
}

/// What the coordinator sent, as the engine's type (`None`: an empty
/// message, ignored).
pub fn to_worker_from_wire(m: pb::ToWorker) -> Result<Option<ToWorker>, String> {
    use pb::to_worker::Msg;
    Ok(match m.msg {
        None => None,
        Some(Msg::Revoke(r)) => Some(ToWorker::Revoke {
            lease: r.lease,
            reason: cut(r.reason, MAX_ERROR),
        }),
        Some(Msg::Assign(a)) => {
            if a.task_id.is_empty() || a.key.is_empty() {
                return Err(format!("assignment {} names no task or key", a.lease));
            }
            if a.lease_ms == 0 {
                return Err(format!("assignment {} has a lease of 0 ms", a.lease));
            }
            Some(ToWorker::Assign(Assignment {
                lease: a.lease,
                run_id: a.run_id,
                task_id: a.task_id,
                key: a.key,
                deps: a.deps.into_iter().map(|d| (d.task_id, d.key)).collect(),
                env: a.env.into_iter().map(|e| (e.name, e.value)).collect(),
                args: a.args,
                lease_ms: a.lease_ms,
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> pb::Hello {
        pb::Hello {
            name: "w1".into(),
            commit: Some("0123abcd".into()),
            capacity: 2,
            labels: vec!["linux".into(), "gpu_1.x-y".into()],
            protocol: 1,
        }
    }

    #[test]
    fn hellos_are_validated() {
        assert!(hello_from_wire(hello()).is_ok());
        let bad: Vec<(pb::Hello, &str)> = vec![
            (
                pb::Hello {
                    name: "".into(),
                    ..hello()
                },
                "name",
            ),
            (
                pb::Hello {
                    name: "a\nb".into(),
                    ..hello()
                },
                "name",
            ),
            (
                pb::Hello {
                    name: "x".repeat(MAX_NAME + 1),
                    ..hello()
                },
                "name",
            ),
            (
                pb::Hello {
                    capacity: 0,
                    ..hello()
                },
                "capacity",
            ),
            (
                pb::Hello {
                    capacity: MAX_CAPACITY + 1,
                    ..hello()
                },
                "capacity",
            ),
            (
                pb::Hello {
                    labels: vec!["a b".into()],
                    ..hello()
                },
                "label",
            ),
            (
                pb::Hello {
                    labels: vec!["".into()],
                    ..hello()
                },
                "label",
            ),
            (
                pb::Hello {
                    labels: vec!["l".into(); MAX_LABELS + 1],
                    ..hello()
                },
                "labels",
            ),
            (
                pb::Hello {
                    commit: Some("not-hex".into()),
                    ..hello()
                },
                "commit",
            ),
        ];
        for (h, what) in bad {
            let e = hello_from_wire(h.clone()).expect_err(&format!("{h:?}"));
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            FromWorker::Ready { free: 3 },
            FromWorker::Heartbeat { leases: vec![1, 7] },
            FromWorker::Log {
                lease: 7,
                stream: Stream::Stderr,
                line: "héllo".into(),
            },
            FromWorker::Done {
                lease: 7,
                report: Report {
                    status: TaskStatus::Failed,
                    exit_code: Some(3),
                    duration_ms: 12,
                    error: Some("exit 3".into()),
                    uploaded: false,
                    cpu_ms: Some(4),
                    peak_rss_bytes: None,
                },
            },
        ];
        for m in msgs {
            assert_eq!(from_worker_from_wire(from_worker_to_wire(m.clone())), Ok(m));
        }
        let a = Assignment {
            lease: 9,
            run_id: "r1".into(),
            task_id: "app#build".into(),
            key: "k".into(),
            deps: vec![("lib#build".into(), "k2".into())],
            env: vec![("MODE".into(), "prod".into())],
            args: vec!["--x".into()],
            lease_ms: 1500,
        };
        for m in [
            ToWorker::Assign(a),
            ToWorker::Revoke {
                lease: 9,
                reason: "lease expired".into(),
            },
        ] {
            assert_eq!(
                to_worker_from_wire(to_worker_to_wire(m.clone())),
                Ok(Some(m))
            );
        }
    }

    #[test]
    fn peers_cannot_grow_memory_or_confuse_the_link() {
        let long = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Log(pb::Log {
                lease: 1,
                stream: pb::Stream::Stdout as i32,
                line: "é".repeat(MAX_LINE),
            })),
        };
        match from_worker_from_wire(long) {
            Ok(FromWorker::Log { line, .. }) => {
                assert!(line.len() < MAX_LINE + 64, "{}", line.len());
                assert!(line.ends_with("bytes]"));
            }
            other => panic!("{other:?}"),
        }
        let second_hello = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Hello(hello())),
        };
        assert!(from_worker_from_wire(second_hello).is_err());
        assert!(from_worker_from_wire(pb::FromWorker { msg: None }).is_err());
        let bad_stream = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Log(pb::Log {
                lease: 1,
                stream: 9,
                line: "x".into(),
            })),
        };
        assert!(from_worker_from_wire(bad_stream).is_err());
        let no_report = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Done(pb::Done {
                lease: 1,
                report: None,
            })),
        };
        assert!(from_worker_from_wire(no_report).is_err());
    }
}
