//! Named tensor sets on the wire (`SLVF1`): the format of pseudo-gradients, merged weights
//! and the audit log's weights snapshots, shared by everyone who exchanges a sliver's
//! parameters (miners merging and syncing, validators replaying).
//!
//! `b"SLVF1"`, a `u32` count, then per tensor `[name length u16][name][frame length u32]
//! [sliver-wire frame of shape [n]]`, names in sorted order (little-endian). Decoding is for
//! bytes from strangers: it checks every name and length against the local model before
//! allocating, and every value for finiteness (the wire codec's rule).

use crate::merge::Flat;
use crate::EngineError;
use sliver_wire::WireCodec;

const MAGIC: &[u8; 5] = b"SLVF1";

/// Encodes named flat tensors with `codec` (f32 for weights, bf16 for pseudo-gradients).
pub fn encode_flat(flat: &Flat, codec: WireCodec) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(flat, codec) as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(flat.len() as u32).to_le_bytes());
    for (name, values) in flat {
        let frame = sliver_wire::encode(codec, &[values.len()], values);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// The exact size of [`encode_flat`]'s output for tensors like `like`: what a peer's blob of
/// that set may be at most (a larger one is refused before it is fetched).
pub fn encoded_len(like: &Flat, codec: WireCodec) -> u64 {
    let per_tensor: u64 = like
        .iter()
        .map(|(name, v)| {
            let frame = 2 + 4 + codec.payload_len(&[v.len()]).unwrap_or(usize::MAX / 4);
            2 + name.len() as u64 + 4 + frame as u64
        })
        .sum();
    (MAGIC.len() + 4) as u64 + per_tensor
}

/// Decodes bytes from a peer into tensors with exactly the names and lengths of `like`.
pub fn decode_flat(bytes: &[u8], like: &Flat) -> Result<Flat, EngineError> {
    let bad = EngineError::Checkpoint;
    let mut r = Reader(bytes);
    if r.take(5)? != MAGIC {
        return Err(bad("not a Sliver tensor set".into()));
    }
    let count = u32::from_le_bytes(r.array()?) as usize;
    if count != like.len() {
        return Err(bad(format!("{count} tensors, expected {}", like.len())));
    }
    let mut out = Flat::new();
    for _ in 0..count {
        let n = u16::from_le_bytes(r.array()?) as usize;
        let name =
            std::str::from_utf8(r.take(n)?).map_err(|_| bad("a name is not UTF-8".into()))?;
        let want = like.get(name).ok_or_else(|| bad(format!("unexpected tensor {name:?}")))?.len();
        let len = u32::from_le_bytes(r.array()?) as usize;
        let d = sliver_wire::decode(r.take(len)?, want).map_err(|e| bad(format!("{name}: {e}")))?;
        if d.shape != [want] {
            return Err(bad(format!("{name} has shape {:?}, expected [{want}]", d.shape)));
        }
        if out.insert(name.to_string(), d.values).is_some() {
            return Err(bad(format!("{name} appears twice")));
        }
    }
    if !r.0.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.0.len())));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        if self.0.len() < n {
            return Err(EngineError::Checkpoint("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        self.take(N)?.try_into().map_err(|_| EngineError::Checkpoint("truncated".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let flat = Flat::from([("a".to_string(), vec![1.0, 2.0]), ("b".to_string(), vec![3.0])]);
        let bytes = encode_flat(&flat, WireCodec::F32);
        assert_eq!(bytes.len() as u64, encoded_len(&flat, WireCodec::F32));
        assert_eq!(decode_flat(&bytes, &flat).unwrap(), flat);
        let other = Flat::from([("a".to_string(), vec![0.0; 3]), ("b".to_string(), vec![0.0])]);
        assert!(decode_flat(&bytes, &other).is_err());
        assert!(decode_flat(&bytes[..bytes.len() - 1], &flat).is_err());
        assert!(decode_flat(b"SLVF2", &flat).is_err());
    }
}
