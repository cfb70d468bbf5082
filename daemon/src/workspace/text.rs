//! Text helpers for config errors: positions, did-you-mean, JSONC, and the
//! conversion of parser errors into [`ConfigError`]s.

use super::ConfigError;

/// A config file's text and its root-relative name.
#[derive(Debug, Clone)]
pub(crate) struct Src {
    /// Root-relative (or absolute when outside any root) display name.
    pub file: String,
    pub text: String,
}

impl Src {
    pub fn new(file: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            text: text.into(),
        }
    }

    /// An error in this file, without a position.
    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::in_file(&self.file, message)
    }

    /// An error at byte `offset`.
    pub fn err_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (l, c) = line_col(&self.text, offset);
        self.err(message).at(l, c)
    }

    /// An error at a span start (toml's `Spanned`).
    pub fn err_span(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.err_at(span.start, message)
    }

    /// An error located at the first quoted occurrence of `needle`, else
    /// at the first occurrence of `key` as a key; else without position.
    pub fn err_near(&self, needle: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let pos = find_quoted(&self.text, needle).or_else(|| find_key(&self.text, key));
        self.err(message).at_opt(pos)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Position of the first `"s"` (or `'s'`) in `text`.
pub(crate) fn find_quoted(text: &str, s: &str) -> Option<(usize, usize)> {
    if s.is_empty() {
        return None;
    }
    for q in ['"', '\''] {
        let needle = format!("{q}{s}{q}");
        if let Some(i) = text.find(&needle) {
            return Some(line_col(text, i));
        }
    }
    None
}

/// Position of the first line where `key` is a key (`key =`, `"key":`).
pub(crate) fn find_key(text: &str, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() {
        return None;
    }
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let rest = trimmed
            .strip_prefix(key)
            .or_else(|| {
                trimmed
                    .strip_prefix('"')
                    .and_then(|t| t.strip_prefix(key))
                    .and_then(|t| t.strip_prefix('"'))
            })
            .map(str::trim_start);
        if let Some(rest) = rest
            && (rest.starts_with('=') || rest.starts_with(':'))
        {
            return Some(line_col(text, offset + indent));
        }
        offset += line.len();
    }
    None
}

/// The closest candidate to `word`, when close enough to be a plausible typo.
pub(crate) fn suggest<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let squash = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let w = squash(word);
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let score = if squash(c) == w {
            2.0
        } else {
            let d = strsim::damerau_levenshtein(&w, &squash(c));
            let jw = strsim::jaro_winkler(&w, &squash(c));
            if d <= 2 && d < w.len().max(1) || jw >= 0.88 {
                jw
            } else {
                continue;
            }
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// `did you mean `x`?` when there is a close candidate.
pub(crate) fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    suggest(word, candidates).map(|s| format!("did you mean `{s}`?"))
}

/// Foreign (Turborepo / Nx / package.json) spellings of vx.toml fields.
const VX_POINTERS: &[(&str, &str)] = &[
    ("dependsOn", "depends_on"),
    ("passThroughEnv", "pass_env"),
    ("readyWhen", "ready_when"),
    ("globalDependencies", "global_inputs"),
    ("globalEnv", "global_env"),
    ("globalPassThroughEnv", "global_pass_env"),
    ("cacheDir", "cache_dir"),
    ("pipeline", "tasks"),
    ("workspaces", "members"),
    ("packages", "members"),
    ("dependencies", "deps"),
    ("implicitDependencies", "deps"),
    ("script", "command"),
    ("exec", "command"),
    ("run", "command"),
    ("cmd", "command"),
    ("executor", "command"),
    ("env_pass_through", "pass_env"),
    ("passthrough", "pass_env"),
    ("workspace_inputs", "global_inputs"),
];

/// Turns a serde "unknown field" message into a located, hinted error.
/// `foreign` enables the Turbo/Nx pointers (for vx.toml).
fn unknown_field(msg: &str, foreign: bool) -> Option<(String, Option<String>)> {
    let rest = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))?;
    let end = rest.find('`')?;
    let field = &rest[..end];
    let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    let kind = if msg.starts_with("unknown variant") {
        "value"
    } else {
        "field"
    };
    let message = format!("unknown {kind} `{field}`");
    if foreign
        && let Some((_, vx)) = VX_POINTERS.iter().find(|(f, _)| *f == field)
        && expected.contains(vx)
    {
        return Some((message, Some(format!("vx calls this `{vx}`"))));
    }
    if let Some(s) = suggest(field, expected.iter().copied()) {
        return Some((message, Some(format!("did you mean `{s}`?"))));
    }
    let hint = if expected.is_empty() {
        None
    } else {
        Some(format!(
            "expected one of: {}",
            expected
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    Some((message, hint))
}

/// The `[table]` header governing the line holding `offset`, for context.
fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.split('#').next().unwrap_or(l).trim().to_string())
}

/// The `key` of the `key = value` line holding `offset`.
fn key_of_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', '{', ' '])).then(|| key.to_string())
}

/// A toml parse/deserialize error as a [`ConfigError`].
pub(crate) fn toml_error(src: &Src, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().to_string();
    let (mut message, hint) = unknown_field(&msg, true).unwrap_or((msg, None));
    let mut err = src.err("");
    if let Some(span) = e.span() {
        let (l, c) = line_col(&src.text, span.start);
        err = err.at(l, c);
        if message.starts_with("unknown field")
            && let Some(table) = enclosing_table(&src.text, span.start)
        {
            message = format!("{message} in {table}");
        } else if (message.starts_with("invalid type") || message.starts_with("invalid value"))
            && let Some(key) = key_of_line(&src.text, span.start)
        {
            message = format!("`{key}`: {message}");
        }
    }
    err.message = message;
    err.with_hint_opt(hint)
}

/// A serde_json error as a [`ConfigError`] (line and column from serde_json).
pub(crate) fn json_error(src: &Src, e: &serde_json::Error) -> ConfigError {
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let (message, hint) = unknown_field(&msg, false).unwrap_or((msg, None));
    let mut err = src.err(message).with_hint_opt(hint);
    if e.line() > 0 {
        err = err.at(e.line(), e.column());
    }
    err
}

/// Replaces `//` and `/* */` comments and trailing commas with spaces,
/// keeping every byte offset (and so every line and column) unchanged.
pub(crate) fn strip_jsonc(text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    let n = b.len();
    // Pass 1: comments.
    let mut i = 0;
    let mut in_str = false;
    while i < n {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                i += 1;
            }
            b'/' if i + 1 < n && b[i + 1] == b'/' => {
                while i < n && b[i] != b'\n' {
                    b[i] = b' ';
                    i += 1;
                }
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                b[i] = b' ';
                b[i + 1] = b' ';
                i += 2;
                while i < n && !(b[i] == b'*' && i + 1 < n && b[i + 1] == b'/') {
                    if b[i] != b'\n' && b[i] != b'\r' {
                        b[i] = b' ';
                    }
                    i += 1;
                }
                if i < n {
                    b[i] = b' ';
                    if i + 1 < n {
                        b[i + 1] = b' ';
                    }
                    i += 2;
                }
            }
            _ => i += 1,
        }
    }
    // Pass 2: trailing commas.
    let mut i = 0;
    let mut in_str = false;
    while i < n {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else if c == b',' {
            let mut j = i + 1;
            while j < n && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < n && (b[j] == b'}' || b[j] == b']') {
                b[i] = b' ';
            }
        }
        i += 1;
    }
    // Only whole multi-byte sequences inside comments were replaced.
    String::from_utf8(b).unwrap_or_else(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let t = "a\nbc = 1\n  \"x\": 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 2));
        assert_eq!(find_key(t, "bc"), Some((2, 1)));
        assert_eq!(find_key(t, "x"), Some((3, 3)));
        assert_eq!(find_quoted(t, "x"), Some((3, 3)));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("dependsOn", ["command", "depends_on"]).as_deref(),
            Some("depends_on")
        );
        assert_eq!(
            suggest("comand", ["command", "cache"]).as_deref(),
            Some("command")
        );
        assert_eq!(suggest("zzz", ["command", "cache"]), None);
    }

    #[test]
    fn jsonc_keeps_positions() {
        let t = "{\n  // c\n  \"a\": [1, 2,], /* x\n y */ \"b\": \"//no\",\n}\n";
        let s = strip_jsonc(t);
        assert_eq!(s.len(), t.len());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["b"], "//no");
        assert_eq!(v["a"][1], 2);
        assert_eq!(s.lines().count(), t.lines().count());
    }
}
