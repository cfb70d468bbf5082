//! NDJSON framing: bytes in, complete lines out.
//!
//! The framer owns only a byte buffer. It never blocks and never parses JSON,
//! so the same code serves the blocking client and the tokio daemon. A line
//! longer than [`MAX_LINE`] is dropped (reported as an oversized line) rather
//! than growing the buffer without bound.

/// The largest accepted line (64 MiB): a run result with many thousands of
/// tasks fits comfortably; a peer that never sends a newline does not.
pub const MAX_LINE: usize = 64 << 20;

/// One framed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its `\n` (and without a trailing `\r`).
    Line(Vec<u8>),
    /// A line exceeded [`MAX_LINE`]; its bytes were discarded.
    Oversized,
}

/// Accumulates bytes and yields complete lines.
#[derive(Debug, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Set while skipping the rest of an oversized line.
    discarding: bool,
}

impl LineFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns every line they complete, in order. Empty lines
    /// (keep-alives) are skipped.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(pos);
            bytes = &rest[1..];
            if self.discarding {
                self.discarding = false;
                self.buf.clear();
                continue;
            }
            self.buf.extend_from_slice(head);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_LINE {
                out.push(Frame::Oversized);
            } else if !line.iter().all(|b| b.is_ascii_whitespace()) {
                out.push(Frame::Line(line));
            }
        }
        if !self.discarding {
            self.buf.extend_from_slice(bytes);
            if self.buf.len() > MAX_LINE {
                self.buf = Vec::new();
                self.discarding = true;
                out.push(Frame::Oversized);
            }
        }
        out
    }

    /// Bytes of an unfinished line still buffered (useful at EOF).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes of an unfinished line (a connection switching to
    /// another protocol hands them on).
    pub fn take_pending(&mut self) -> Vec<u8> {
        if self.discarding {
            return Vec::new();
        }
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Id, Message, codes};
    use serde_json::json;

    fn sample_stream() -> (Vec<u8>, Vec<Message>) {
        let msgs = vec![
            Message::request(
                Id::Num(1),
                "daemon.hello",
                json!({"protocol": 1, "client": "vx ✓"}),
            ),
            Message::notification(
                "run.event",
                json!({"line": "héllo │ world\twith \"quotes\""}),
            ),
            Message::ok(Id::Str("x".into()), json!({"tasks": [1, 2, 3]})),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(m.encode());
        }
        (bytes, msgs)
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let (bytes, msgs) = sample_stream();
        for cut in 0..=bytes.len() {
            let mut f = LineFramer::new();
            let mut frames = f.push(&bytes[..cut]);
            frames.extend(f.push(&bytes[cut..]));
            let decoded: Vec<Message> = frames
                .into_iter()
                .map(|fr| match fr {
                    Frame::Line(l) => Message::decode(&l).unwrap(),
                    Frame::Oversized => panic!("oversized"),
                })
                .collect();
            assert_eq!(decoded, msgs, "cut at {cut}");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (bytes, msgs) = sample_stream();
        let mut f = LineFramer::new();
        let mut got = Vec::new();
        for b in &bytes {
            for fr in f.push(std::slice::from_ref(b)) {
                if let Frame::Line(l) = fr {
                    got.push(Message::decode(&l).unwrap());
                }
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn garbage_lines_do_not_break_the_stream() {
        let (good, msgs) = sample_stream();
        let mut bytes = b"this is not json\n\n{\"jsonrpc\":\"2.0\"}\n\r\n".to_vec();
        bytes.extend(&good);
        let mut f = LineFramer::new();
        let frames = f.push(&bytes);
        let mut errors = 0;
        let mut ok = Vec::new();
        for fr in frames {
            if let Frame::Line(l) = fr {
                match Message::decode(&l) {
                    Ok(m) => ok.push(m),
                    Err(e) => {
                        assert!(e.code == codes::PARSE_ERROR || e.code == codes::INVALID_REQUEST);
                        errors += 1;
                    }
                }
            }
        }
        assert_eq!(errors, 2);
        assert_eq!(ok, msgs);
    }

    #[test]
    fn oversized_line_is_dropped_and_stream_recovers() {
        let mut f = LineFramer::new();
        let big = vec![b'a'; MAX_LINE + 10];
        let frames = f.push(&big);
        assert_eq!(frames, vec![Frame::Oversized]);
        let frames = f.push(b"tail of big\n{\"jsonrpc\":\"2.0\",\"method\":\"m\"}\n");
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], Frame::Line(l) if l.starts_with(b"{")));
    }
}
