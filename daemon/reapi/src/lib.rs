//! `vx-reapi` — the Bazel Remote Execution API as vx speaks it: the
//! generated messages and gRPC stubs (re-exported from `bazel-remote-apis`,
//! built with tonic and prost; the Execution service's long-running
//! operations as [`lro`]), and what the cache server and the engine's
//! client must agree on byte for byte: SHA-256 [`Digest`]s of blobs and
//! messages ([`digest_of`], [`digest_of_message`], [`check`]), ByteStream
//! resource names ([`read_resource`], [`write_resource`], [`parse_resource`])
//! and the transfer limits ([`MAX_BATCH_BYTES`], [`CHUNK`]).
//!
//! Never: does I/O, links the engine or a server, or trusts a digest it did
//! not check (every parse validates the hash's form and the size's sign).

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
pub use bazel_remote_apis::build::bazel::semver;
pub use bazel_remote_apis::google::bytestream as bs;
pub use bazel_remote_apis::google::longrunning as lro;
pub use bazel_remote_apis::google::protobuf::{
    Any, Duration as PbDuration, Timestamp, UInt32Value,
};
pub use bazel_remote_apis::google::rpc;
pub use prost;

use prost::Message;
use re::Digest;
use sha2::{Digest as _, Sha256};

/// The largest total of blob bytes vx puts in one batch call (and the
/// largest blob sent through a batch); bigger blobs go through ByteStream.
/// gRPC's default message limit is 4 MiB, so a batch stays below it with
/// room for the framing.
pub const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024 - 64 * 1024;

/// ByteStream chunk size (some HTTP/2 stacks stall on larger messages).
pub const CHUNK: usize = 64 * 1024;

/// The SHA-256 of no bytes: the digest every server has.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a digest or a resource name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("{0:?} is not a SHA-256 hash (64 lower-case hex digits)")]
    BadHash(String),
    #[error("negative size {0}")]
    BadSize(i64),
    #[error("the bytes do not match the digest {want} (got {got})")]
    Mismatch { want: String, got: String },
    #[error("{0:?} is not a ByteStream resource name of a blob")]
    BadResource(String),
}

/// The SHA-256 digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest {
        hash: hex(&Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}

/// The digest of a message as it is stored (its protobuf encoding), and
/// that encoding.
pub fn digest_of_message<M: Message>(m: &M) -> (Digest, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// A protobuf timestamp of a time since the Unix epoch.
pub fn timestamp(since_epoch: std::time::Duration) -> Timestamp {
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// A digest's form: a SHA-256 hash and a size that is not negative.
pub fn valid(d: &Digest) -> Result<(), DigestError> {
    if d.hash.len() != 64
        || !d
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(DigestError::BadHash(d.hash.clone()));
    }
    if d.size_bytes < 0 {
        return Err(DigestError::BadSize(d.size_bytes));
    }
    Ok(())
}

/// Checks that `bytes` are what `d` names (size and SHA-256).
pub fn check(d: &Digest, bytes: &[u8]) -> Result<(), DigestError> {
    valid(d)?;
    let got = digest_of(bytes);
    if got.size_bytes != d.size_bytes || got.hash != d.hash {
        return Err(DigestError::Mismatch {
            want: format!("{}/{}", d.hash, d.size_bytes),
            got: format!("{}/{}", got.hash, got.size_bytes),
        });
    }
    Ok(())
}

/// A SHA-256 computed piece by piece (a ByteStream upload or download).
#[derive(Clone, Default)]
pub struct Hasher {
    h: Sha256,
    n: u64,
}

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        self.h.update(b);
        self.n += b.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The digest of what was fed.
    pub fn digest(self) -> Digest {
        Digest {
            hash: hex(&self.h.finalize()),
            size_bytes: self.n as i64,
        }
    }

    /// Whether what was fed is what `d` names.
    pub fn matches(self, d: &Digest) -> bool {
        self.n as i64 == d.size_bytes && hex(&self.h.finalize()) == d.hash
    }
}

fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

/// `{instance}/blobs/{hash}/{size}`: what ByteStream `Read` names.
pub fn read_resource(instance: &str, d: &Digest) -> String {
    format!("{}blobs/{}/{}", prefix(instance), d.hash, d.size_bytes)
}

/// `{instance}/uploads/{uuid}/blobs/{hash}/{size}`: what ByteStream `Write`
/// names.
pub fn write_resource(instance: &str, uuid: &str, d: &Digest) -> String {
    format!(
        "{}uploads/{uuid}/blobs/{}/{}",
        prefix(instance),
        d.hash,
        d.size_bytes
    )
}

/// A parsed ByteStream resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub instance: String,
    /// The upload's id (`uploads/{uuid}/…`), `None` for a read.
    pub upload: Option<String>,
    pub digest: Digest,
}

/// Parses `[{instance}/][uploads/{uuid}/]blobs/{hash}/{size}[/{anything}]`
/// (also `compressed-blobs/identity/…`, the identity "compression"). The
/// instance is everything before the `blobs` or `uploads` segment.
pub fn parse_resource(name: &str) -> Result<Resource, DigestError> {
    let bad = || DigestError::BadResource(name.to_string());
    let parts: Vec<&str> = name.split('/').collect();
    let mut i = 0;
    while i < parts.len() && !matches!(parts[i], "blobs" | "uploads" | "compressed-blobs") {
        i += 1;
    }
    if i == parts.len() {
        return Err(bad());
    }
    let instance = parts[..i].join("/");
    let mut upload = None;
    if parts[i] == "uploads" {
        let id = parts.get(i + 1).filter(|s| !s.is_empty()).ok_or_else(bad)?;
        upload = Some((*id).to_string());
        i += 2;
    }
    match parts.get(i) {
        Some(&"blobs") => i += 1,
        Some(&"compressed-blobs") if parts.get(i + 1) == Some(&"identity") => i += 2,
        _ => return Err(bad()),
    }
    let hash = parts.get(i).ok_or_else(bad)?;
    let size: i64 = parts
        .get(i + 1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let digest = Digest {
        hash: (*hash).to_string(),
        size_bytes: size,
    };
    valid(&digest)?;
    Ok(Resource {
        instance,
        upload,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = digest_of(b"");
        assert_eq!(d.hash, EMPTY_SHA256);
        assert_eq!(d.size_bytes, 0);
        let d = digest_of(b"abc");
        assert_eq!(
            d.hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check(&d, b"abc").is_ok());
        assert!(matches!(
            check(&d, b"abd"),
            Err(DigestError::Mismatch { .. })
        ));
        let short = Digest {
            hash: d.hash.clone(),
            size_bytes: 2,
        };
        assert!(check(&short, b"abc").is_err());
        let upper = Digest {
            hash: d.hash.to_uppercase(),
            size_bytes: 3,
        };
        assert!(matches!(valid(&upper), Err(DigestError::BadHash(_))));
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert!(h.clone().matches(&d));
        assert!(!h.matches(&short));
    }

    #[test]
    fn resources() {
        let d = digest_of(b"abc");
        let r = parse_resource(&read_resource("", &d)).unwrap();
        assert_eq!((r.instance.as_str(), r.upload, &r.digest), ("", None, &d));
        let w = write_resource("main/ci", "u-1", &d);
        assert_eq!(w, format!("main/ci/uploads/u-1/blobs/{}/3", d.hash));
        let r = parse_resource(&format!("{w}/extra/meta")).unwrap();
        assert_eq!(r.instance, "main/ci");
        assert_eq!(r.upload.as_deref(), Some("u-1"));
        let c = format!("x/compressed-blobs/identity/{}/3", d.hash);
        assert_eq!(parse_resource(&c).unwrap().instance, "x");
        for bad in [
            "".to_string(),
            "blobs".to_string(),
            format!("blobs/{}", d.hash),
            format!("blobs/{}/-1", d.hash),
            "blobs/xyz/3".to_string(),
            format!("uploads//blobs/{}/3", d.hash),
            format!("compressed-blobs/zstd/{}/3", d.hash),
        ] {
            assert!(parse_resource(&bad).is_err(), "{bad}");
        }
    }
}
