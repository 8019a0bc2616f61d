//! Tensor frames: the header that travels before every activation or gradient, its encoding,
//! and the checks a receiver applies before accepting the payload.
//!
//! On a `/sliver/tensor/1` stream the sender writes `[header length: u16 LE][header][payload]`
//! and the receiver answers with a [`crate::receipt::Reply`]. The header's encoding is fixed
//! (little-endian, no self-describing format) so its BLAKE3 hash, which receipts sign, is the
//! same on every machine.

use sliver_wire::WireCodec;

/// Marks a Sliver frame header (and its version).
pub const MAGIC: [u8; 4] = *b"SLF1";
/// Largest encoded header accepted.
pub const MAX_HEADER_LEN: usize = 4 + 8 * 5 + 2 + 1 + 1 + 1 + 4 * sliver_wire::MAX_RANK + 8 + 32;

/// Which way a frame travels along the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Activations, forward to the next sliver.
    Activation,
    /// Gradients, back to the previous sliver.
    Gradient,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Header shorter than its fields, or longer than [`MAX_HEADER_LEN`].
    #[error("header of {0} bytes is malformed")]
    HeaderLength(usize),
    /// Wrong magic bytes.
    #[error("not a Sliver frame (bad magic)")]
    Magic,
    /// Unknown direction byte.
    #[error("unknown direction {0}")]
    Direction(u8),
    /// Bad codec, rank, shape or payload (from `sliver-wire`).
    #[error(transparent)]
    Wire(#[from] sliver_wire::CodecError),
    /// Payload over the receiver's limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// The receiver's limit.
        max: u64,
    },
    /// The payload's length disagrees with the header.
    #[error("payload is {got} bytes, header says {want}")]
    Length {
        /// From the header.
        want: u64,
        /// Received.
        got: u64,
    },
    /// BLAKE3 of the payload differs from the header's.
    #[error("payload hash mismatch")]
    Hash,
    /// A value beyond the receiver's magnitude bound (finite, but absurd for an activation or
    /// a gradient).
    #[error("value {value:e} at element {at} exceeds the bound of {bound:e}")]
    Magnitude {
        /// Element index.
        at: usize,
        /// The value.
        value: f32,
        /// The receiver's bound.
        bound: f32,
    },
    /// The payload's own codec or shape differs from the header's.
    #[error("payload describes {got}, header says {want}")]
    Mismatch {
        /// From the header.
        want: String,
        /// From the payload.
        got: String,
    },
}

/// Everything a receiver needs to place a tensor, and to be held to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Training run id.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Inner step.
    pub step: u64,
    /// Micro-batch id.
    pub micro_batch: u64,
    /// Route id (the path this micro-batch takes through the slivers).
    pub route: u64,
    /// Sliver that sends it.
    pub sliver: u16,
    /// Forward or backward.
    pub direction: Direction,
    /// Wire codec of the payload.
    pub codec: WireCodec,
    /// Tensor shape (rank 1 to 4).
    pub shape: Vec<u32>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// BLAKE3 of the payload.
    pub payload_hash: [u8; 32],
}

impl FrameHeader {
    /// A header for `payload` (a `sliver-wire` frame): codec, shape, length and hash are taken
    /// from it. Fails if the payload is not a valid frame.
    pub fn for_payload(
        run: u64,
        epoch: u64,
        step: u64,
        micro_batch: u64,
        route: u64,
        sliver: u16,
        direction: Direction,
        payload: &[u8],
    ) -> Result<Self, FrameError> {
        let decoded = sliver_wire::decode(payload, usize::MAX)?;
        Ok(FrameHeader {
            run,
            epoch,
            step,
            micro_batch,
            route,
            sliver,
            direction,
            codec: decoded.codec,
            shape: decoded.shape.iter().map(|&d| d as u32).collect(),
            payload_len: payload.len() as u64,
            payload_hash: *blake3::hash(payload).as_bytes(),
        })
    }

    /// The fixed encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        out.extend_from_slice(&MAGIC);
        for v in [self.run, self.epoch, self.step, self.micro_batch, self.route] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.sliver.to_le_bytes());
        out.push(match self.direction {
            Direction::Activation => 0,
            Direction::Gradient => 1,
        });
        out.push(self.codec.id());
        out.push(self.shape.len() as u8);
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&self.payload_hash);
        out
    }

    /// Parses an encoded header (untrusted bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let bad = || FrameError::HeaderLength(bytes.len());
        if bytes.len() > MAX_HEADER_LEN || bytes.len() < 4 {
            return Err(bad());
        }
        if bytes[..4] != MAGIC {
            return Err(FrameError::Magic);
        }
        let mut r = Reader { bytes, at: 4 };
        let run = r.u64().ok_or_else(bad)?;
        let epoch = r.u64().ok_or_else(bad)?;
        let step = r.u64().ok_or_else(bad)?;
        let micro_batch = r.u64().ok_or_else(bad)?;
        let route = r.u64().ok_or_else(bad)?;
        let sliver = u16::from_le_bytes(r.take(2).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let direction = match r.take(1).ok_or_else(bad)?[0] {
            0 => Direction::Activation,
            1 => Direction::Gradient,
            other => return Err(FrameError::Direction(other)),
        };
        let codec = WireCodec::from_id(r.take(1).ok_or_else(bad)?[0])?;
        let rank = r.take(1).ok_or_else(bad)?[0] as usize;
        if rank == 0 || rank > sliver_wire::MAX_RANK {
            return Err(sliver_wire::CodecError::Rank(rank).into());
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(u32::from_le_bytes(
                r.take(4).ok_or_else(bad)?.try_into().map_err(|_| bad())?,
            ));
        }
        let payload_len = r.u64().ok_or_else(bad)?;
        let payload_hash: [u8; 32] = r.take(32).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        if r.at != bytes.len() {
            return Err(bad());
        }
        Ok(FrameHeader {
            run,
            epoch,
            step,
            micro_batch,
            route,
            sliver,
            direction,
            codec,
            shape,
            payload_len,
            payload_hash,
        })
    }

    /// BLAKE3 of the encoded header: what receipts sign.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Checks the announced length against the receiver's limit and against what codec and
    /// shape require, before any payload byte is read.
    pub fn check_len(&self, max_payload: u64) -> Result<(), FrameError> {
        if self.payload_len > max_payload {
            return Err(FrameError::TooLarge { len: self.payload_len, max: max_payload });
        }
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        let want = self
            .codec
            .payload_len(&shape)
            .and_then(|n| n.checked_add(2 + 4 * shape.len()))
            .map(|n| n as u64);
        if want != Some(self.payload_len) {
            return Err(FrameError::Length {
                want: want.unwrap_or(u64::MAX),
                got: self.payload_len,
            });
        }
        Ok(())
    }

    /// Checks a received payload: length, hash, and that it is a valid `sliver-wire` frame of
    /// the header's codec and shape (finite values included).
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        self.check_payload_within(payload, f32::MAX)
    }

    /// [`FrameHeader::check_payload`], and every value within `max_abs` in magnitude.
    pub fn check_payload_within(&self, payload: &[u8], max_abs: f32) -> Result<(), FrameError> {
        if payload.len() as u64 != self.payload_len {
            return Err(FrameError::Length { want: self.payload_len, got: payload.len() as u64 });
        }
        if *blake3::hash(payload).as_bytes() != self.payload_hash {
            return Err(FrameError::Hash);
        }
        let n: usize = self.shape.iter().map(|&d| d as usize).product();
        let decoded = sliver_wire::decode(payload, n)?;
        let shape: Vec<u32> = decoded.shape.iter().map(|&d| d as u32).collect();
        if decoded.codec != self.codec || shape != self.shape {
            return Err(FrameError::Mismatch {
                want: format!("{} {:?}", self.codec, self.shape),
                got: format!("{} {:?}", decoded.codec, shape),
            });
        }
        if let Some(at) = decoded.values.iter().position(|v| v.abs() > max_abs) {
            return Err(FrameError::Magnitude { at, value: decoded.values[at], bound: max_abs });
        }
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (FrameHeader, Vec<u8>) {
        let payload = sliver_wire::encode(WireCodec::Bf16, &[2, 3, 4], &[0.5; 24]);
        let h =
            FrameHeader::for_payload(7, 3, 11, 42, 9, 1, Direction::Activation, &payload).unwrap();
        (h, payload)
    }

    #[test]
    fn header_roundtrips_and_checks_its_payload() {
        let (h, payload) = sample();
        let bytes = h.encode();
        assert!(bytes.len() <= MAX_HEADER_LEN);
        assert_eq!(FrameHeader::decode(&bytes).unwrap(), h);
        h.check_len(1 << 20).unwrap();
        h.check_payload(&payload).unwrap();
        assert_eq!(h.check_len(10), Err(FrameError::TooLarge { len: h.payload_len, max: 10 }));
        let mut tampered = payload.clone();
        tampered[20] ^= 1;
        assert_eq!(h.check_payload(&tampered), Err(FrameError::Hash));
        assert!(matches!(h.check_payload(&payload[1..]), Err(FrameError::Length { .. })));
        assert!(h.check_payload_within(&payload, 0.5).is_ok());
        assert!(matches!(
            h.check_payload_within(&payload, 0.25),
            Err(FrameError::Magnitude { at: 0, .. })
        ));
        let mut lying = h.clone();
        lying.shape = vec![4, 3, 2];
        assert!(matches!(lying.check_payload(&payload), Err(FrameError::Mismatch { .. })));
        let mut long = h.clone();
        long.payload_len += 1;
        assert!(matches!(long.check_len(1 << 20), Err(FrameError::Length { .. })));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(FrameHeader::decode(&bad), Err(FrameError::Magic));
        assert!(FrameHeader::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = FrameHeader::decode(&bytes) {
                let _ = h.check_len(1 << 30);
            }
        }

        #[test]
        fn mutated_headers_are_rejected_or_reencode_identically(at in 0usize..80, bit in 0u8..8) {
            let (h, _) = sample();
            let mut bytes = h.encode();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(d) = FrameHeader::decode(&bytes) {
                prop_assert_eq!(d.encode(), bytes);
            }
        }
    }
}
