//! Path patterns: the one glob dialect vx uses for inputs, outputs and
//! member lists.
//!
//! Owns compiling a list of patterns (with `!` negations, applied in order,
//! last match wins) into a matcher over POSIX-style relative paths. Rules:
//! `*` and `?` never cross `/`, `**` does, `{a,b}` alternates, and a pattern
//! without glob characters names a file *or* a whole directory (`src` means
//! `src` and `src/**`). Absolute patterns and `..` are refused. This module
//! never touches the filesystem.

use globset::{GlobBuilder, GlobMatcher};

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob `{pattern}`: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Rule {
    negated: bool,
    matcher: GlobMatcher,
    /// For literal patterns: the same path as a directory prefix.
    dir_prefix: Option<String>,
}

/// A compiled, ordered list of patterns.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    rules: Vec<Rule>,
    sources: Vec<String>,
    /// See [`Patterns::base_dirs`]; computed once.
    bases: Option<Vec<String>>,
}

/// Whether a pattern contains glob syntax.
pub fn is_literal(p: &str) -> bool {
    !p.contains(['*', '?', '[', '{'])
}

/// Normalises a pattern: drops a leading `./` and a trailing `/`.
fn normalise(p: &str) -> String {
    let mut s = p.trim();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    let s = s.trim_end_matches('/');
    s.replace("/./", "/")
}

impl Patterns {
    /// Compiles `patterns`. A leading `!` makes a pattern exclude.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, GlobError> {
        let mut rules = Vec::with_capacity(patterns.len());
        let mut sources = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let raw = raw.as_ref();
            let (negated, body) = match raw.strip_prefix('!') {
                Some(b) => (true, b),
                None => (false, raw),
            };
            let err = |reason: &str| GlobError {
                pattern: raw.to_string(),
                reason: reason.to_string(),
            };
            if body.starts_with('!') {
                return Err(err("a double negation `!!` is not allowed"));
            }
            let body = normalise(body);
            if body.is_empty() || body == "." {
                return Err(err("empty pattern; write `**` for every file"));
            }
            if body.starts_with('/') {
                return Err(err("patterns are relative; remove the leading `/`"));
            }
            if body.contains('\\') {
                return Err(err("use `/` as the path separator"));
            }
            if body.split('/').any(|c| c == "..") {
                return Err(err("`..` may not leave the project"));
            }
            let glob = GlobBuilder::new(&body)
                .literal_separator(true)
                .backslash_escape(false)
                .empty_alternates(true)
                .build()
                .map_err(|e| err(&e.kind().to_string()))?;
            let dir_prefix = is_literal(&body).then(|| format!("{body}/"));
            rules.push(Rule {
                negated,
                matcher: glob.compile_matcher(),
                dir_prefix,
            });
            sources.push(raw.to_string());
        }
        let mut p = Self {
            rules,
            sources,
            bases: None,
        };
        p.bases = p.compute_base_dirs();
        Ok(p)
    }

    /// The patterns as written.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` (relative, `/`-separated) is selected: the last rule
    /// that matches decides; no match means not selected.
    pub fn matches(&self, path: &str) -> bool {
        let mut selected = false;
        for r in &self.rules {
            if r.negated == selected && rule_matches(r, path) {
                selected = !r.negated;
            }
        }
        selected
    }

    /// Directories (relative) under which every match must lie, or `None`
    /// when some include pattern can match anywhere. Used to walk only
    /// `dist/` for `dist/**` instead of the whole project.
    pub fn base_dirs(&self) -> Option<Vec<String>> {
        self.bases.clone()
    }

    /// The directory bases of the include patterns, without allocating.
    pub fn bases(&self) -> Option<&[String]> {
        self.bases.as_deref()
    }

    fn compute_base_dirs(&self) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for (r, src) in self.rules.iter().zip(&self.sources) {
            if r.negated {
                continue;
            }
            let body = normalise(src);
            let mut base = Vec::new();
            for comp in body.split('/') {
                if !is_literal(comp) {
                    break;
                }
                base.push(comp);
            }
            if base.is_empty() {
                return None;
            }
            out.push(base.join("/"));
        }
        Some(out)
    }
}

fn rule_matches(r: &Rule, path: &str) -> bool {
    r.matcher.is_match(path) || r.dir_prefix.as_deref().is_some_and(|p| path.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slash_but_double_star_does() {
        let p = Patterns::new(&["src/*.js"]).unwrap();
        assert!(p.matches("src/a.js"));
        assert!(!p.matches("src/x/a.js"));
        let p = Patterns::new(&["src/**"]).unwrap();
        assert!(p.matches("src/x/a.js"));
        assert!(!p.matches("lib/a.js"));
    }

    #[test]
    fn negation_last_wins() {
        let p = Patterns::new(&["**", "!**/*.test.js", "keep.test.js"]).unwrap();
        assert!(p.matches("a.js"));
        assert!(!p.matches("x/a.test.js"));
        assert!(p.matches("keep.test.js"));
    }

    #[test]
    fn literal_names_a_file_or_a_tree() {
        let p = Patterns::new(&["./src/"]).unwrap();
        assert!(p.matches("src"));
        assert!(p.matches("src/deep/x.ts"));
        assert!(!p.matches("srcx"));
    }

    #[test]
    fn refuses_bad_patterns() {
        for bad in [
            "/abs", "../up", "a/../b", "!!x", "", ".", "a\\b", "src/[", "{a",
        ] {
            assert!(Patterns::new(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_dirs() {
        let p = Patterns::new(&["dist/**", "build/out.txt", "!dist/x"]).unwrap();
        assert_eq!(p.base_dirs().unwrap(), vec!["dist", "build/out.txt"]);
        assert!(Patterns::new(&["**/*.js"]).unwrap().base_dirs().is_none());
    }
}
