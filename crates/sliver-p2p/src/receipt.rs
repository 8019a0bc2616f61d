//! Signed receipts: a receiver signs, for every frame it accepted, that it accepted *this*
//! frame from *this* sender, so each transfer is attributable and a miner can show a validator
//! which of its work its neighbours accepted. A receipt is signed only after the frame passed
//! every check of the transport and of the receiving stage (its schedule: run, epoch, sliver,
//! the sender's assignment, the micro-batch it waits for), never for bytes merely received.
//!
//! The signed message is `RECEIPT_CONTEXT || len || sender PeerId || len || receiver PeerId ||
//! BLAKE3(header)` (lengths as one byte), so a receipt for a frame from A cannot be presented
//! as evidence about B, nor a receipt of one receiver as another's.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Domain separation for receipt signatures (version 2: the sender and receiver are signed).
pub const RECEIPT_CONTEXT: &[u8] = b"sliver-receipt-v2";
/// Longest refusal message read from a peer.
pub const MAX_REASON: usize = 512;
/// Longest encoded PeerId accepted in a receipt.
const MAX_PEER_ID: usize = 64;

/// A receiver's signature over the sender, itself and a frame header's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Who sent the frame.
    pub sender: PeerId,
    /// BLAKE3 of the encoded header.
    pub header_hash: [u8; 32],
    /// The receiver's public key.
    pub receiver: PublicKey,
    /// Signature over the message above.
    pub signature: Vec<u8>,
}

impl Receipt {
    /// Signs, with the receiver's `key`, that it accepted the frame `header_hash` from `sender`.
    pub fn sign(key: &Keypair, sender: PeerId, header_hash: [u8; 32]) -> Self {
        let receiver = key.public();
        let signature =
            key.sign(&message(&sender, &receiver.to_peer_id(), &header_hash)).unwrap_or_default();
        Receipt { sender, header_hash, receiver, signature }
    }

    /// The peer that signed.
    pub fn signer(&self) -> PeerId {
        self.receiver.to_peer_id()
    }

    /// True if the signature is valid and says that `receiver` accepted this frame from
    /// `sender`.
    pub fn verify(&self, sender: &PeerId, receiver: &PeerId) -> bool {
        self.sender == *sender
            && self.signer() == *receiver
            && self.receiver.verify(&message(sender, receiver, &self.header_hash), &self.signature)
    }
}

fn message(sender: &PeerId, receiver: &PeerId, hash: &[u8; 32]) -> Vec<u8> {
    let (s, r) = (sender.to_bytes(), receiver.to_bytes());
    let mut m = Vec::with_capacity(RECEIPT_CONTEXT.len() + s.len() + r.len() + 34);
    m.extend_from_slice(RECEIPT_CONTEXT);
    m.push(s.len() as u8);
    m.extend_from_slice(&s);
    m.push(r.len() as u8);
    m.extend_from_slice(&r);
    m.extend_from_slice(hash);
    m
}

/// The receiver's answer on a tensor stream (short-lived: the size of its variants does not
/// matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Accepted, with a receipt.
    Accepted(Receipt),
    /// Refused, with the reason.
    Refused(String),
}

impl Reply {
    /// `[0][key len u16][key][sender len u8][sender][hash 32][sig len u16][sig]` or
    /// `[1][len u16][reason]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Accepted(r) => {
                let key = r.receiver.encode_protobuf();
                let sender = r.sender.to_bytes();
                out.push(0);
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(&key);
                out.push(sender.len() as u8);
                out.extend_from_slice(&sender);
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
                let (&sender_len, rest) = rest.split_first()?;
                let sender_len = sender_len as usize;
                if sender_len > MAX_PEER_ID {
                    return None;
                }
                let sender = PeerId::from_bytes(rest.get(..sender_len)?).ok()?;
                let rest = &rest[sender_len..];
                let header_hash: [u8; 32] = rest.get(..32)?.try_into().ok()?;
                let (sig_len, rest) = split_u16(&rest[32..])?;
                if rest.len() != sig_len {
                    return None;
                }
                Some(Reply::Accepted(Receipt {
                    sender,
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
    fn receipts_verify_only_for_their_sender_signer_and_hash() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let (me, sender) = (k.public().to_peer_id(), PeerId::random());
        let r = Receipt::sign(&k, sender, [7; 32]);
        assert!(r.verify(&sender, &me));
        assert!(!r.verify(&sender, &other.public().to_peer_id()), "another receiver");
        assert!(!r.verify(&PeerId::random(), &me), "another sender");
        let mut forged = r.clone();
        forged.header_hash = [8; 32];
        assert!(!forged.verify(&sender, &me));
        let mut moved = r.clone();
        let b = PeerId::random();
        moved.sender = b;
        assert!(!moved.verify(&b, &me), "a receipt about A cannot be shown as one about B");
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
