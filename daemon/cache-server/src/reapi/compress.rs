//! `compress` — REAPI's compressed blobs (`Compressor.ZSTD`): resource
//! names of the `compressed-blobs/zstd/` form, a bounded streaming zstd
//! decoder for uploads ([`Unzstd`]) and the one-shot helpers the batch
//! calls use. A blob is always stored uncompressed under the digest of its
//! uncompressed bytes; compression is only how it travels.
//!
//! Never: lets a compressed stream decompress past the size its digest
//! declares (a zstd bomb is refused at the first byte beyond it, and the
//! decoder's window is capped by that size), or hands out more than
//! [`OUT`] decompressed bytes at a time.

use std::io;
use tonic::Status;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

/// The decompressed bytes one [`Unzstd::step`] hands out at most.
pub const OUT: usize = 256 << 10;
/// The compression level of served compressed blobs (fast).
pub const LEVEL: i32 = 1;

/// How a ByteStream resource travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Identity,
    Zstd,
}

/// A resource name with `compressed-blobs/zstd/` read as `blobs/` (for
/// [`vx_reapi::parse_resource`]), and the form it names. Another
/// compressor is `INVALID_ARGUMENT`.
pub fn split_resource(name: &str) -> Result<(String, Form), Status> {
    let mut parts: Vec<&str> = name.split('/').collect();
    let Some(mut i) = parts
        .iter()
        .position(|p| matches!(*p, "blobs" | "uploads" | "compressed-blobs"))
    else {
        return Ok((name.to_string(), Form::Identity));
    };
    if parts[i] == "uploads" {
        i += 2;
    }
    if parts.get(i) != Some(&"compressed-blobs") {
        return Ok((name.to_string(), Form::Identity));
    }
    match parts.get(i + 1) {
        Some(&"zstd") => {
            parts[i] = "blobs";
            parts.remove(i + 1);
            Ok((parts.join("/"), Form::Zstd))
        }
        Some(&"identity") => Ok((name.to_string(), Form::Identity)),
        other => Err(Status::invalid_argument(format!(
            "compressor {:?} is not supported (zstd, identity)",
            other.unwrap_or(&"")
        ))),
    }
}

/// The decoder window (log2 bytes) allowed for a blob of `size` bytes: no
/// more than the blob needs, at least zstd's usual 8 MiB, at most 128 MiB.
pub fn window_log(size: u64) -> u32 {
    let need = 64 - size.saturating_sub(1).leading_zeros();
    need.clamp(23, 27)
}

/// A streaming zstd decoder bounded by the declared (uncompressed) size.
pub struct Unzstd {
    dec: Decoder<'static>,
    out: Vec<u8>,
    limit: u64,
    produced: u64,
    /// The last step ended a frame with nothing pending.
    frame_done: bool,
}

impl Unzstd {
    pub fn new(limit: u64) -> io::Result<Unzstd> {
        let mut dec = Decoder::new()?;
        dec.set_parameter(DParameter::WindowLogMax(window_log(limit)))?;
        Ok(Unzstd {
            dec,
            out: vec![0; OUT],
            limit,
            produced: 0,
            frame_done: false,
        })
    }

    /// Decompresses from `input[*pos..]`, advancing `pos`, and returns up
    /// to [`OUT`] bytes; call again until it returns `None` (everything fed
    /// so far is out).
    pub fn step(&mut self, input: &[u8], pos: &mut usize) -> Result<Option<&[u8]>, Status> {
        let mut inb = InBuffer::around(&input[*pos..]);
        let mut outb = OutBuffer::around(&mut self.out[..]);
        let hint = self
            .dec
            .run(&mut inb, &mut outb)
            .map_err(|e| Status::invalid_argument(format!("not a valid zstd stream: {e}")))?;
        let (used, n) = (inb.pos(), outb.pos());
        *pos += used;
        if used > 0 || n > 0 {
            self.frame_done = hint == 0;
        }
        self.produced += n as u64;
        if self.produced > self.limit {
            return Err(Status::invalid_argument(format!(
                "the compressed data decompresses past the digest's {} bytes",
                self.limit
            )));
        }
        if n == 0 && used == 0 {
            return Ok(None);
        }
        Ok(Some(&self.out[..n]))
    }

    /// Whether the data fed so far ends a zstd frame.
    pub fn complete(&self) -> bool {
        self.frame_done
    }
}

/// Decompresses a whole (batch) blob, at most `limit` bytes out.
pub fn decompress(data: &[u8], limit: u64) -> Result<Vec<u8>, Status> {
    let mut u = Unzstd::new(limit).map_err(super::store_failed)?;
    let mut out = Vec::with_capacity(limit.min(1 << 20) as usize);
    let mut pos = 0;
    while let Some(piece) = u.step(data, &mut pos)? {
        out.extend_from_slice(piece);
    }
    if pos < data.len() || !u.complete() {
        return Err(Status::invalid_argument("the zstd stream is truncated"));
    }
    Ok(out)
}

/// Compresses a whole (batch) blob.
pub fn compress(data: &[u8]) -> Result<Vec<u8>, Status> {
    zstd::bulk::compress(data, LEVEL).map_err(super::store_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        let h = "a".repeat(64);
        let (n, f) = split_resource(&format!("inst/compressed-blobs/zstd/{h}/10")).unwrap();
        assert_eq!(
            (n.as_str(), f),
            (format!("inst/blobs/{h}/10").as_str(), Form::Zstd)
        );
        let (n, f) =
            split_resource(&format!("uploads/u-1/compressed-blobs/zstd/{h}/10/meta")).unwrap();
        assert_eq!(n, format!("uploads/u-1/blobs/{h}/10/meta"));
        assert_eq!(f, Form::Zstd);
        let plain = format!("x/blobs/{h}/10");
        assert_eq!(split_resource(&plain).unwrap(), (plain, Form::Identity));
        let e = split_resource(&format!("compressed-blobs/deflate/{h}/10")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn round_trip_and_a_bomb_is_refused() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let z = compress(&data).unwrap();
        assert!(z.len() < data.len());
        assert_eq!(decompress(&z, data.len() as u64).unwrap(), data);
        // One byte less declared than it holds: refused.
        let e = decompress(&z, data.len() as u64 - 1).unwrap_err();
        assert!(e.message().contains("past the digest"), "{e:?}");
        // A bomb: 64 MiB of zeros in a few KiB, declared as 1 KiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        assert!(bomb.len() < 64 << 10);
        assert!(decompress(&bomb, 1024).is_err());
        // Truncated: refused.
        assert!(decompress(&z[..z.len() / 2], data.len() as u64).is_err());
        // Streamed in small pieces, the output never exceeds OUT at a time.
        let mut u = Unzstd::new(data.len() as u64).unwrap();
        let mut got = Vec::new();
        for c in z.chunks(1000) {
            let mut pos = 0;
            while let Some(p) = u.step(c, &mut pos).unwrap() {
                assert!(p.len() <= OUT);
                got.extend_from_slice(p);
            }
            assert_eq!(pos, c.len());
        }
        assert!(u.complete());
        assert_eq!(got, data);
        assert_eq!(window_log(1), 23);
        assert_eq!(window_log(1 << 40), 27);
    }
}
