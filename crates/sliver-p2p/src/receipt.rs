//! Signed receipts: a receiver signs the hash of every frame header it accepts, so each
//! transfer is attributable and a miner can show a validator which of its work its neighbours
//! accepted.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Domain separation for receipt signatures.
pub const RECEIPT_CONTEXT: &[u8] = b"sliver-receipt-v1";
/// Longest refusal message read from a peer.
pub const MAX_REASON: usize = 512;

/// A receiver's signature over a frame header's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// BLAKE3 of the encoded header.
    pub header_hash: [u8; 32],
    /// The receiver's public key.
    pub receiver: PublicKey,
    /// Signature over `RECEIPT_CONTEXT || header_hash`.
    pub signature: Vec<u8>,
}

impl Receipt {
    /// Signs `header_hash` with `key`.
    pub fn sign(key: &Keypair, header_hash: [u8; 32]) -> Self {
        let signature = key.sign(&message(&header_hash)).unwrap_or_default();
        Receipt { header_hash, receiver: key.public(), signature }
    }

    /// The peer that signed.
    pub fn signer(&self) -> PeerId {
        self.receiver.to_peer_id()
    }

    /// True if the signature is valid and was made by `peer`.
    pub fn verify(&self, peer: &PeerId) -> bool {
        self.signer() == *peer && self.receiver.verify(&message(&self.header_hash), &self.signature)
    }
}

fn message(hash: &[u8; 32]) -> Vec<u8> {
    [RECEIPT_CONTEXT, hash.as_slice()].concat()
}

/// The receiver's answer on a tensor stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Accepted, with a receipt.
    Accepted(Receipt),
    /// Refused, with the reason.
    Refused(String),
}

impl Reply {
    /// `[0][key len u16][key][hash 32][sig len u16][sig]` or `[1][len u16][reason]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Accepted(r) => {
                let key = r.receiver.encode_protobuf();
                out.push(0);
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(&key);
                out.extend_from_slice(&r.header_hash);
                out.extend_from_slice(&(r.signature.len() as u16).to_le_bytes());
                out.extend_from_slice(&r.signature);
            }
            Reply::Refused(reason) => {
                let bytes = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    /// Parses a reply (untrusted bytes); `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let (&tag, rest) = bytes.split_first()?;
        let (len, rest) = split_u16(rest)?;
        match tag {
            0 => {
                let key = PublicKey::try_decode_protobuf(rest.get(..len)?).ok()?;
                let rest = &rest[len..];
                let header_hash: [u8; 32] = rest.get(..32)?.try_into().ok()?;
                let (sig_len, rest) = split_u16(&rest[32..])?;
                if rest.len() != sig_len {
                    return None;
                }
                Some(Reply::Accepted(Receipt {
                    header_hash,
                    receiver: key,
                    signature: rest.to_vec(),
                }))
            }
            1 if len <= MAX_REASON && rest.len() == len => {
                Some(Reply::Refused(String::from_utf8_lossy(rest).into_owned()))
            }
            _ => None,
        }
    }
}

fn split_u16(b: &[u8]) -> Option<(usize, &[u8])> {
    let len = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
    Some((len, &b[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_verify_only_for_their_signer_and_hash() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let r = Receipt::sign(&k, [7; 32]);
        assert!(r.verify(&k.public().to_peer_id()));
        assert!(!r.verify(&other.public().to_peer_id()));
        let mut forged = r.clone();
        forged.header_hash = [8; 32];
        assert!(!forged.verify(&k.public().to_peer_id()));
        let reply = Reply::Accepted(r.clone());
        assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        let refused = Reply::Refused("too large".into());
        assert_eq!(Reply::decode(&refused.encode()), Some(refused));
        assert_eq!(Reply::decode(&[]), None);
        assert_eq!(Reply::decode(&[9, 0, 0]), None);
        for cut in 0..Reply::Accepted(r.clone()).encode().len() {
            assert_eq!(Reply::decode(&Reply::Accepted(r.clone()).encode()[..cut]), None);
        }
    }
}
