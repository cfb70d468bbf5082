//! `auth` — who may do what: tokens (from `--tokens FILE`, or the quick
//! `--token-rw` / `--token-ro`), each with a name, a role (`read` or
//! `write`), the namespace it writes to and the namespaces it reads (its
//! own last). A pull-request token that reads `main` and writes `pr` can
//! never poison what `main` builds (CVE-2025-36852, "CREEP").
//! Never: logs a secret, or compares one in variable time.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
}

/// One token's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub role: Role,
    /// Where its uploads go.
    pub namespace: String,
    /// Where its downloads are looked up, in order (its own namespace last).
    pub reads: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    /// The secret itself, or
    secret: Option<String>,
    /// the name of an environment variable holding it.
    secret_env: Option<String>,
    role: Role,
    namespace: Option<String>,
    #[serde(default)]
    read: Vec<String>,
}

pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespace or team name: `[A-Za-z0-9._-]{1,100}`, not `.`/`..`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The token table (secrets kept as SHA-256 digests).
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Grant>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn add(&mut self, secret: &str, g: Grant) -> Result<(), String> {
        if secret.len() < 8 {
            return Err(format!(
                "the secret of token {:?} is shorter than 8 characters",
                g.name
            ));
        }
        if !valid_name(&g.namespace) {
            return Err(format!(
                "token {:?}: {:?} is not a valid namespace",
                g.name, g.namespace
            ));
        }
        if let Some(bad) = g.reads.iter().find(|n| !valid_name(n)) {
            return Err(format!(
                "token {:?}: {bad:?} is not a valid namespace",
                g.name
            ));
        }
        if self.by_digest.insert(digest(secret), g.clone()).is_some() {
            return Err(format!(
                "token {:?}: the same secret is listed twice",
                g.name
            ));
        }
        Ok(())
    }

    /// Reads a TOML tokens file (`[[token]]` tables).
    pub fn load_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let raw: RawFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for t in raw.token {
            let secret = match (&t.secret, &t.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(n)) => std::env::var(n).map_err(|_| {
                    format!("{}: token {:?}: ${n} is not set", path.display(), t.name)
                })?,
                _ => {
                    return Err(format!(
                        "{}: token {:?}: give exactly one of `secret` and `secret_env`",
                        path.display(),
                        t.name
                    ));
                }
            };
            let namespace = t.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
            let mut reads = t.read;
            reads.retain(|n| *n != namespace);
            reads.push(namespace.clone());
            self.add(
                &secret,
                Grant {
                    name: t.name,
                    role: t.role,
                    namespace,
                    reads,
                },
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The grant of an `Authorization` header's bearer token.
    pub fn check(&self, authorization: Option<&str>) -> Option<&Grant> {
        let v = authorization?.trim();
        let secret = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))?
            .trim();
        // A digest lookup: no secret-dependent comparison of the secret.
        self.by_digest.get(&digest(secret))
    }
}

/// A quick-start grant in the default namespace.
pub fn quick(name: &str, role: Role) -> Grant {
    Grant {
        name: name.into(),
        role,
        namespace: DEFAULT_NAMESPACE.into(),
        reads: vec![DEFAULT_NAMESPACE.into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.toml");
        std::fs::write(
            &f,
            r#"
[[token]]
name = "ci-main"
secret = "main-secret-1"
role = "write"
namespace = "main"

[[token]]
name = "pr"
secret = "pr-secret-12"
role = "write"
namespace = "pr"
read = ["main"]
"#,
        )
        .unwrap();
        let mut t = Tokens::default();
        t.load_file(&f).unwrap();
        let pr = t.check(Some("Bearer pr-secret-12")).unwrap();
        assert_eq!(pr.reads, vec!["main".to_string(), "pr".to_string()]);
        assert_eq!(pr.namespace, "pr");
        assert!(t.check(Some("Bearer nope-nope-nope")).is_none());
        assert!(t.check(None).is_none());
        assert!(t.check(Some("Basic main-secret-1")).is_none());
        for bad in [
            "[[token]]\nname='x'\nrole='write'\n",
            "[[token]]\nname='x'\nsecret='short'\nrole='write'\n",
            "[[token]]\nname='x'\nsecret='longenough'\nrole='admin'\n",
            "[[token]]\nname='x'\nsecret='longenough'\nrole='read'\nnamespace='../x'\n",
        ] {
            std::fs::write(&f, bad).unwrap();
            assert!(Tokens::default().load_file(&f).is_err(), "{bad}");
        }
    }
}
