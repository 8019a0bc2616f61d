//! # sliver-wire
//!
//! Wire formats for tensors crossing sliver boundaries: activations forward, their gradients
//! back. Shared by the training engine (which encodes and decodes) and the P2P transport (which
//! checks frames before it accepts them), without Burn or libp2p.
//!
//! A frame is self-describing: `[codec: u8][rank: u8][dims: u32 LE × rank][payload]`. Decoding
//! treats the bytes as hostile: the codec must be known, the rank at most [`MAX_RANK`], the
//! element count within the caller's limit, the payload exactly as long as shape and codec
//! require, and every value finite. Anything else is a [`CodecError`], never a panic.
//!
//! The learned bottleneck is not a wire format: it is a pair of projections in the slivers
//! themselves (see [`the engine's `Bottleneck``]); its narrow activations still travel in one of
//! these codecs (see `sliver-engine`).

use half::bf16;
use std::fmt;
use std::str::FromStr;

/// Highest tensor rank a frame may carry.
pub const MAX_RANK: usize = 4;

/// The wire encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireCodec {
    /// Lossless 32-bit floats: 4 bytes a value.
    F32,
    /// bfloat16 (round to nearest even): 2 bytes a value.
    Bf16,
    /// Signed 8-bit integers with one f32 scale per row (last dimension): 1 byte a value plus 4
    /// bytes a row.
    Int8,
}

impl WireCodec {
    /// The codec's id in a frame header.
    pub fn id(self) -> u8 {
        match self {
            WireCodec::F32 => 0,
            WireCodec::Bf16 => 1,
            WireCodec::Int8 => 2,
        }
    }

    /// The codec with header id `id`.
    pub fn from_id(id: u8) -> Result<Self, CodecError> {
        match id {
            0 => Ok(WireCodec::F32),
            1 => Ok(WireCodec::Bf16),
            2 => Ok(WireCodec::Int8),
            other => Err(CodecError::UnknownCodec(other)),
        }
    }

    /// Payload bytes for a tensor of `shape` (header excluded); `None` on overflow.
    pub fn payload_len(self, shape: &[usize]) -> Option<usize> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        match self {
            WireCodec::F32 => n.checked_mul(4),
            WireCodec::Bf16 => n.checked_mul(2),
            WireCodec::Int8 => {
                let row = *shape.last().unwrap_or(&1);
                let rows = if row == 0 { 0 } else { n / row };
                rows.checked_mul(4)?.checked_add(n)
            }
        }
    }
}

impl fmt::Display for WireCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireCodec::F32 => "f32",
            WireCodec::Bf16 => "bf16",
            WireCodec::Int8 => "int8",
        })
    }
}

impl FromStr for WireCodec {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, CodecError> {
        match s {
            "f32" => Ok(WireCodec::F32),
            "bf16" => Ok(WireCodec::Bf16),
            "int8" => Ok(WireCodec::Int8),
            other => Err(CodecError::UnknownName(other.to_string())),
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Fewer bytes than the header needs.
    #[error("frame truncated: {0} bytes is shorter than its header")]
    Truncated(usize),
    /// Unknown codec id.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// Unknown codec name.
    #[error("unknown codec {0:?} (expected f32, bf16 or int8)")]
    UnknownName(String),
    /// Rank outside 1..=MAX_RANK.
    #[error("rank {0} is outside 1..={MAX_RANK}")]
    Rank(usize),
    /// More elements than the receiver accepts.
    #[error("{elements} elements exceed the limit of {limit}")]
    TooLarge {
        /// Elements the header claims.
        elements: u128,
        /// The receiver's limit.
        limit: usize,
    },
    /// Payload length disagrees with the header.
    #[error("payload is {got} bytes, but shape {shape:?} in {codec} needs {want}")]
    Length {
        /// Claimed shape.
        shape: Vec<usize>,
        /// Codec.
        codec: WireCodec,
        /// Bytes required.
        want: usize,
        /// Bytes present.
        got: usize,
    },
    /// A NaN or infinity in the payload.
    #[error("non-finite value at element {0}")]
    NonFinite(usize),
    /// The shape is not the one the receiver expects.
    #[error("shape {got:?} differs from the expected {want:?}")]
    UnexpectedShape {
        /// Expected.
        want: Vec<usize>,
        /// Received.
        got: Vec<usize>,
    },
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Codec it came in.
    pub codec: WireCodec,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// Encodes `values` of `shape` (row-major; `values.len()` must equal the shape's product, which
/// callers holding a tensor always satisfy; a mismatch encodes the shorter of the two).
pub fn encode(codec: WireCodec, shape: &[usize], values: &[f32]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let values = &values[..n.min(values.len())];
    let mut out = Vec::with_capacity(2 + 4 * shape.len() + codec.payload_len(shape).unwrap_or(0));
    out.push(codec.id());
    out.push(shape.len() as u8);
    for &d in shape {
        out.extend_from_slice(&(d as u32).to_le_bytes());
    }
    match codec {
        WireCodec::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WireCodec::Bf16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
        WireCodec::Int8 => {
            let row = (*shape.last().unwrap_or(&1)).max(1);
            let scales_at = out.len();
            let rows = values.len() / row;
            out.resize(scales_at + 4 * rows, 0);
            for (r, chunk) in values.chunks(row).enumerate() {
                let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 0.0 };
                out[scales_at + 4 * r..scales_at + 4 * r + 4].copy_from_slice(&scale.to_le_bytes());
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                out.extend(
                    chunk.iter().map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
                );
            }
        }
    }
    out
}

/// Decodes a frame, accepting at most `max_elements` values.
pub fn decode(bytes: &[u8], max_elements: usize) -> Result<Decoded, CodecError> {
    if bytes.len() < 2 {
        return Err(CodecError::Truncated(bytes.len()));
    }
    let codec = WireCodec::from_id(bytes[0])?;
    let rank = bytes[1] as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(CodecError::Rank(rank));
    }
    let header = 2 + 4 * rank;
    if bytes.len() < header {
        return Err(CodecError::Truncated(bytes.len()));
    }
    let shape: Vec<usize> = bytes[2..header]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let elements: u128 = shape.iter().map(|&d| d as u128).product();
    if elements > max_elements as u128 {
        return Err(CodecError::TooLarge { elements, limit: max_elements });
    }
    let n = elements as usize;
    let payload = &bytes[header..];
    let want = codec.payload_len(&shape).unwrap_or(usize::MAX);
    if payload.len() != want {
        return Err(CodecError::Length { shape, codec, want, got: payload.len() });
    }
    let values: Vec<f32> = match codec {
        WireCodec::F32 => {
            payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        WireCodec::Bf16 => payload
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        WireCodec::Int8 => {
            let row = (*shape.last().unwrap_or(&1)).max(1);
            let rows = n / row;
            let (scales, q) = payload.split_at(4 * rows);
            let mut values = Vec::with_capacity(n);
            for (r, chunk) in q.chunks(row).enumerate() {
                let s = &scales[4 * r..4 * r + 4];
                let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                if !scale.is_finite() || scale < 0.0 {
                    return Err(CodecError::NonFinite(r * row));
                }
                values.extend(chunk.iter().map(|&b| f32::from(b as i8) * scale));
            }
            values
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(CodecError::NonFinite(i));
    }
    Ok(Decoded { codec, shape, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn f32_is_lossless_and_sizes_are_exact() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.37).collect();
        let bytes = encode(WireCodec::F32, &[2, 3, 4], &v);
        assert_eq!(bytes.len(), 2 + 12 + 96);
        let d = decode(&bytes, 1000).unwrap();
        assert_eq!(d.values, v);
        assert_eq!(encode(WireCodec::Bf16, &[2, 3, 4], &v).len(), 2 + 12 + 48);
        assert_eq!(encode(WireCodec::Int8, &[2, 3, 4], &v).len(), 2 + 12 + 24 + 24);
    }

    #[test]
    fn lossy_codecs_stay_within_their_error() {
        let v: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for (codec, rel) in [(WireCodec::Bf16, 1.0 / 128.0), (WireCodec::Int8, 1.0 / 127.0)] {
            let d = decode(&encode(codec, &[4, 64], &v), 1 << 20).unwrap();
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in v.iter().zip(&d.values) {
                assert!(
                    (a - b).abs() <= rel * max * 0.51 + 1e-6 || (a - b).abs() <= a.abs() * rel,
                    "{codec}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let good = encode(WireCodec::F32, &[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(decode(&good[..1], 100), Err(CodecError::Truncated(1)));
        assert_eq!(decode(&[9, 1, 0, 0, 0, 0], 100), Err(CodecError::UnknownCodec(9)));
        assert_eq!(decode(&[0, 0], 100), Err(CodecError::Rank(0)));
        assert_eq!(decode(&[0, 9], 100), Err(CodecError::Rank(9)));
        assert!(matches!(decode(&good[..good.len() - 1], 100), Err(CodecError::Length { .. })));
        assert!(matches!(decode(&good, 3), Err(CodecError::TooLarge { .. })));
        let mut huge = vec![0u8, 4];
        for _ in 0..4 {
            huge.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        assert!(matches!(
            decode(&huge, usize::MAX),
            Err(CodecError::TooLarge { .. }) | Err(CodecError::Length { .. })
        ));
        let nan = encode(WireCodec::F32, &[1, 1, 1], &[f32::NAN]);
        assert_eq!(decode(&nan, 100), Err(CodecError::NonFinite(0)));
        let mut bad_scale = encode(WireCodec::Int8, &[1, 1, 2], &[1.0, -1.0]);
        bad_scale[14..18].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert!(matches!(decode(&bad_scale, 100), Err(CodecError::NonFinite(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, 1 << 16);
        }

        #[test]
        fn roundtrip_any_shape(codec in 0u8..3, dims in proptest::collection::vec(1usize..6, 1..4), seed in any::<u64>()) {
            let codec = WireCodec::from_id(codec).unwrap();
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| ((seed.wrapping_add(i as u64) % 2001) as f32 - 1000.0) / 97.0).collect();
            let bytes = encode(codec, &dims, &v);
            prop_assert_eq!(bytes.len(), 2 + 4 * dims.len() + codec.payload_len(&dims).unwrap());
            let d = decode(&bytes, n).unwrap();
            prop_assert_eq!(d.shape, dims);
            prop_assert_eq!(d.values.len(), n);
        }
    }
}
