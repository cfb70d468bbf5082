//! `shape` — keeping answers small: paging of long lists, short hashes,
//! and decoding a resource URI's task.
//!
//! Never: calls the engine.

use serde_json::{Value, json};

/// One page of `items`: at most `limit` from `offset`, and the fields that
/// say how many there are and how to get the next page.
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
    pub offset: usize,
    pub next: Option<usize>,
}

pub fn page<T>(items: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = items.len();
    let offset = offset.min(total);
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let end = offset + items.len();
    Page {
        items,
        total,
        offset,
        next: (end < total).then_some(end),
    }
}

impl<T> Page<T> {
    /// `total`, and when the page is not the end, `next_offset` and a hint.
    pub fn fields(&self, what: &str, tool: &str) -> Value {
        let mut v = json!({ "total": self.total });
        if self.offset > 0 {
            v["offset"] = json!(self.offset);
        }
        if let Some(n) = self.next {
            v["truncated"] = json!(true);
            v["next_offset"] = json!(n);
            v["hint"] = json!(format!(
                "showing {} of {} {what}: call {tool} again with offset={n} for more",
                self.items.len(),
                self.total
            ));
        }
        v
    }
}

/// Merges `b`'s fields into object `a`.
pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The first 12 hex digits of a key or hash (enough to tell them apart).
pub fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// Percent-decodes a URI segment (`app%23build` → `app#build`); `None`
/// when it is not valid UTF-8 after decoding.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_say_how_to_get_the_rest() {
        // (len, offset, limit) → (shown, next)
        for (len, offset, limit, shown, next) in [
            (10, 0, 4, 4, Some(4)),
            (10, 8, 4, 2, None),
            (10, 20, 4, 0, None),
            (0, 0, 4, 0, None),
            (4, 0, 4, 4, None),
        ] {
            let p = page((0..len).collect::<Vec<_>>(), offset, limit);
            assert_eq!(
                (p.items.len(), p.next),
                (shown, next),
                "{len} {offset} {limit}"
            );
            let f = p.fields("things", "tool");
            assert_eq!(f["total"], len);
            assert_eq!(
                f.get("next_offset").and_then(Value::as_u64),
                next.map(|n| n as u64)
            );
            if next.is_some() {
                assert!(f["hint"].as_str().unwrap().contains("offset="));
            }
        }
    }

    #[test]
    fn uris_decode() {
        for (s, want) in [
            ("app%23build", Some("app#build")),
            ("app#build", Some("app#build")),
            ("a%2", Some("a%2")),
            ("%zz", Some("%zz")),
            ("%ff", None),
        ] {
            assert_eq!(percent_decode(s).as_deref(), want, "{s}");
        }
    }
}
