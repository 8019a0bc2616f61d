//! Merging with the other miners of the same sliver over the network (DiLoCo outer step).
//!
//! At every epoch boundary each replica publishes its pseudo-gradient (start weights minus
//! current weights) as a blob named `merge/<epoch>` in its node status, fetches the other
//! replicas' blobs, averages what it has (its own included) and takes the engine's outer
//! Nesterov step from the shared start. The chain's epoch clock is the synchronisation point,
//! so replicas on hardware of different speeds merge after different numbers of inner steps
//! without waiting for each other. A replica that does not publish in time is left out of
//! that round and counted.
//!
//! Wire format of a set of named tensors (pseudo-gradients, weights): `b"SLVF1"`, a `u32`
//! count, then per tensor `[name length u16][name][frame length u32][sliver-wire frame]`, names
//! in sorted order. Decoding checks every name and length against the local model.

use std::time::Duration;

use sliver_engine::merge::Flat;
use sliver_p2p::{Client, ControlRequest, ControlResponse, PeerId};
use sliver_wire::WireCodec;

const MAGIC: &[u8; 5] = b"SLVF1";

/// Encodes named flat tensors with `codec` (f32 for weights, bf16 for pseudo-gradients).
pub fn encode_flat(flat: &Flat, codec: WireCodec) -> Vec<u8> {
    let mut out = Vec::new();
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

/// Decodes bytes from a peer into tensors with exactly the names and lengths of `like`.
pub fn decode_flat(bytes: &[u8], like: &Flat) -> Result<Flat, String> {
    let mut r = Reader(bytes);
    if r.take(5)? != MAGIC {
        return Err("not a Sliver tensor set".into());
    }
    let count = u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| "count")?) as usize;
    if count != like.len() {
        return Err(format!("{count} tensors, expected {}", like.len()));
    }
    let mut out = Flat::new();
    for _ in 0..count {
        let n = u16::from_le_bytes(r.take(2)?.try_into().map_err(|_| "name length")?) as usize;
        let name = std::str::from_utf8(r.take(n)?).map_err(|_| "a name is not UTF-8")?;
        let want = like.get(name).ok_or_else(|| format!("unexpected tensor {name:?}"))?.len();
        let len = u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| "frame length")?) as usize;
        let d = sliver_wire::decode(r.take(len)?, want).map_err(|e| format!("{name}: {e}"))?;
        if d.shape != [want] {
            return Err(format!("{name} has shape {:?}, expected [{want}]", d.shape));
        }
        if out.insert(name.to_string(), d.values).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

/// Waits (at most `timeout`) until `peer` names a blob `name` in its status, then fetches and
/// decodes it like `like`.
pub async fn fetch_named(
    client: &Client,
    peer: PeerId,
    name: &str,
    like: &Flat,
    timeout: Duration,
) -> Result<Flat, String> {
    let max_len = like.values().map(|v| 4 * v.len() as u64 + 1024).sum::<u64>() + 1024;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.request(peer, ControlRequest::Status).await {
            Ok(ControlResponse::Status(s)) => {
                if let Some(hash) = s.published.get(name) {
                    let fetch = client.fetch_blob(peer, *hash, max_len);
                    let bytes = tokio::time::timeout_at(deadline, fetch)
                        .await
                        .map_err(|_| format!("{name} not fetched within {timeout:?}"))?
                        .map_err(|e| e.to_string())?;
                    return decode_flat(&bytes, like);
                }
            }
            Ok(_) => return Err("unexpected answer to a status request".into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{name} not published within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_sets_round_trip_and_hostile_bytes_are_refused() {
        let mut flat = Flat::new();
        flat.insert("h.0.attn.c_attn.weight".into(), vec![0.5, -1.25, 3.0]);
        flat.insert("wte.weight".into(), vec![1.0; 10]);
        let bytes = encode_flat(&flat, WireCodec::F32);
        assert_eq!(decode_flat(&bytes, &flat).unwrap(), flat);
        let bf = decode_flat(&encode_flat(&flat, WireCodec::Bf16), &flat).unwrap();
        assert_eq!(bf["h.0.attn.c_attn.weight"], vec![0.5, -1.25, 3.0]);

        for cut in [0, 4, 9, 20, bytes.len() - 1] {
            assert!(decode_flat(&bytes[..cut], &flat).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_flat(&longer, &flat).unwrap_err().contains("trailing"));
        let mut other = flat.clone();
        other.insert("wte.weight".into(), vec![1.0; 11]);
        assert!(decode_flat(&bytes, &other).is_err(), "wrong length");
        let mut renamed = Flat::new();
        renamed.insert("x".into(), vec![0.0; 3]);
        renamed.insert("wte.weight".into(), vec![1.0; 10]);
        assert!(decode_flat(&bytes, &renamed).unwrap_err().contains("unexpected tensor"));
        let mut nan = flat.clone();
        nan.insert("wte.weight".into(), vec![f32::NAN; 10]);
        assert!(decode_flat(&encode_flat(&nan, WireCodec::F32), &flat).is_err(), "non-finite");
    }
}
