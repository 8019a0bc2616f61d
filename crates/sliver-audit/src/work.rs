//! The cheap check of a miner's audit index: the work its neighbours signed for.
//!
//! A miner is paid for micro-batches, and it can claim any number of them. What makes a claim
//! worth anything is a receipt: a neighbour's signature over `"sliver-receipt-v2" || sender ||
//! receiver || BLAKE3(header)`, which the neighbour gives only after its gate and checks
//! accepted the frame. For every frame the index says the miner sent, this module checks
//! that the header names the audited run, epoch, sliver, micro-batch and shape, and that the
//! receipt is signed by a miner the chain assigned to the neighbouring sliver in that epoch
//! (the next one for an activation, the previous one for a gradient), about exactly that
//! header and this sender. An honest miner only ever records receipts it got from such
//! neighbours, so a claim that fails is a fault, not noise.
//!
//! A micro-batch counts as work when the sliver's part of it is complete: the first sliver
//! sent its activation; the last sent the gradient of the loss; a middle sliver sent both.

use std::collections::BTreeSet;

use sliver_p2p::{AuditKey, Direction, FrameHeader, IndexEntry, PeerId, Reply};

use crate::shape::RunShape;

/// Who the chain says the audited miner worked with in the audited epoch.
#[derive(Clone, Debug)]
pub struct Neighbourhood {
    /// Run.
    pub run: u64,
    /// The audited epoch.
    pub epoch: u64,
    /// The audited miner.
    pub miner: PeerId,
    /// Its sliver in that epoch.
    pub sliver: u16,
    /// Miners of the previous sliver in that epoch.
    pub previous: Vec<PeerId>,
    /// Miners of the next sliver in that epoch.
    pub next: Vec<PeerId>,
    /// On the first sliver: its route (its position among the first sliver's miners).
    pub route: Option<u64>,
}

/// A frame the miner sent and its neighbour signed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    /// Which micro-batch.
    pub key: AuditKey,
    /// Its header.
    pub header: FrameHeader,
    /// The encoded header as the miner recorded it (what the receipt's hash covers).
    pub bytes: Vec<u8>,
    /// Who signed for it.
    pub receiver: PeerId,
}

/// What an index shows.
#[derive(Clone, Debug, Default)]
pub struct WorkReport {
    /// Micro-batches whose part on this sliver is complete and receipted.
    pub verified: Vec<AuditKey>,
    /// Micro-batches with valid frames but not complete (a gradient that never came back).
    pub incomplete: usize,
    /// Every frame with a valid receipt.
    pub sent: Vec<SentFrame>,
    /// The first claim that failed, if any.
    pub fault: Option<String>,
}

/// Checks every entry of a miner's index (all pages, keys ascending).
pub fn check_index(n: &Neighbourhood, shape: &RunShape, entries: &[IndexEntry]) -> WorkReport {
    let mut report = WorkReport::default();
    let last = shape.slivers().saturating_sub(1);
    let mut seen = BTreeSet::new();
    for e in entries {
        if !seen.insert(e.key) {
            report.fault.get_or_insert_with(|| format!("micro-batch {:?} listed twice", e.key));
            continue;
        }
        let (mut activation, mut gradient) = (false, false);
        for f in &e.sent {
            match check_sent(n, shape, last, &e.key, &f.header, f.receipt.as_deref()) {
                Ok(sent) => {
                    match sent.header.direction {
                        Direction::Activation => activation = true,
                        Direction::Gradient => gradient = true,
                    }
                    report.sent.push(sent);
                }
                Err(why) => {
                    report.fault.get_or_insert_with(|| format!("micro-batch {:?}: {why}", e.key));
                }
            }
        }
        if report.fault.is_some() {
            // One fault zeroes the miner: the rest need not be checked (nor cost signatures).
            break;
        }
        let complete = match (n.sliver == 0, n.sliver == last) {
            (true, _) => activation,
            (false, true) => gradient,
            (false, false) => activation && gradient,
        };
        if complete {
            report.verified.push(e.key);
        } else if activation || gradient {
            report.incomplete += 1;
        }
    }
    report
}

fn check_sent(
    n: &Neighbourhood,
    shape: &RunShape,
    last: u16,
    key: &AuditKey,
    bytes: &[u8],
    receipt: Option<&[u8]>,
) -> Result<SentFrame, String> {
    let h =
        FrameHeader::decode(bytes).map_err(|e| format!("a header that does not decode: {e}"))?;
    if h.run != n.run || h.epoch != n.epoch {
        return Err(format!("a frame of run {} epoch {}", h.run, h.epoch));
    }
    if (h.route, h.step, h.micro_batch) != (key.route, key.step, key.micro_batch) {
        return Err("a frame of another micro-batch".into());
    }
    if h.sliver != n.sliver {
        return Err(format!("a frame of sliver {} from a miner of sliver {}", h.sliver, n.sliver));
    }
    if h.micro_batch >= shape.micro_batches {
        return Err(format!("micro-batch index {} of {}", h.micro_batch, shape.micro_batches));
    }
    let want: Vec<u32> = shape.hidden().iter().map(|&d| d as u32).collect();
    if h.shape != want {
        return Err(format!("shape {:?}, the run's is {want:?}", h.shape));
    }
    if let Some(route) = n.route {
        if h.route != route {
            return Err(format!("route {} on a first-sliver miner of route {route}", h.route));
        }
    }
    let neighbours = match h.direction {
        Direction::Activation if n.sliver < last => &n.next,
        Direction::Gradient if n.sliver > 0 => &n.previous,
        d => return Err(format!("a {d:?} sent from sliver {}", n.sliver)),
    };
    let Some(Reply::Accepted(r)) = receipt.and_then(Reply::decode) else {
        return Err("no receipt".into());
    };
    let receiver = r.signer();
    if r.header_hash != *blake3::hash(bytes).as_bytes() {
        return Err("a receipt for another header".into());
    }
    if !r.verify(&n.miner, &receiver) {
        return Err("a receipt that does not verify for this sender".into());
    }
    if !neighbours.contains(&receiver) {
        return Err(format!("a receipt signed by {receiver}, not a neighbour of that epoch"));
    }
    Ok(SentFrame { key: *key, header: h, bytes: bytes.to_vec(), receiver })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sliver_p2p::identity::Keypair;
    use sliver_p2p::{AuditedFrame, Receipt};

    fn shape() -> RunShape {
        RunShape {
            run: 1,
            model: sliver_engine::GptConfig::new().with_d_model(8).with_n_layer(2),
            specs: sliver_engine::SliverSpec::split(2, 2).unwrap(),
            micro_batches: 2,
            batch: 2,
            seq: 4,
            lr: sliver_engine::optim::LrSchedule {
                max_lr: 6e-4,
                min_lr: 6e-5,
                warmup_steps: 10,
                decay_steps: 5000,
            },
            clip: 1.0,
            adamw: sliver_engine::optim::AdamWConfig::default(),
        }
    }

    fn frame(
        dir: Direction,
        sliver: u16,
        step: u64,
        signer: &Keypair,
        sender: PeerId,
    ) -> AuditedFrame {
        let payload = sliver_engine::codec::encode(sliver_wire_codec(), &[2, 4, 8], &[0.5; 64]);
        let h = FrameHeader::for_payload(1, 3, step, 0, 0, sliver, dir, &payload).unwrap();
        let bytes = h.encode();
        let r = Receipt::sign(signer, sender, *blake3::hash(&bytes).as_bytes());
        AuditedFrame {
            header: bytes,
            receipt: Some(Reply::Accepted(r).encode()),
            payload_published: false,
        }
    }

    fn sliver_wire_codec() -> sliver_engine::codec::WireCodec {
        sliver_engine::codec::WireCodec::F32
    }

    #[test]
    fn receipted_work_counts_and_forged_or_misdirected_receipts_are_faults() {
        let (me, next, stranger) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let n = Neighbourhood {
            run: 1,
            epoch: 3,
            miner: me.public().to_peer_id(),
            sliver: 0,
            previous: vec![],
            next: vec![next.public().to_peer_id()],
            route: Some(0),
        };
        let key = |step| AuditKey { route: 0, step, micro_batch: 0 };
        let good = IndexEntry {
            key: key(0),
            sent: vec![frame(Direction::Activation, 0, 0, &next, n.miner)],
        };
        let r = check_index(&n, &shape(), std::slice::from_ref(&good));
        assert_eq!((r.verified.len(), r.fault.clone()), (1, None));
        assert_eq!(r.sent[0].receiver, next.public().to_peer_id());

        // Signed by someone who is not the next sliver's miner.
        let e = IndexEntry {
            key: key(1),
            sent: vec![frame(Direction::Activation, 0, 1, &stranger, n.miner)],
        };
        let r = check_index(&n, &shape(), &[good.clone(), e]);
        assert_eq!(r.verified.len(), 1);
        assert!(r.fault.unwrap().contains("not a neighbour"));
        // A receipt about another sender (another miner's receipt copied).
        let e = IndexEntry {
            key: key(1),
            sent: vec![frame(Direction::Activation, 0, 1, &next, stranger.public().to_peer_id())],
        };
        assert!(check_index(&n, &shape(), &[e]).fault.unwrap().contains("does not verify"));
        // A receipt for another header.
        let mut e = IndexEntry { key: key(1), sent: vec![good.sent[0].clone()] };
        e.sent[0].header = frame(Direction::Activation, 0, 1, &next, n.miner).header;
        assert!(check_index(&n, &shape(), &[e]).fault.unwrap().contains("another header"));
        // A frame under another key, and a claim without a receipt.
        let e = IndexEntry { key: key(2), sent: good.sent.clone() };
        assert!(check_index(&n, &shape(), &[e]).fault.unwrap().contains("another micro-batch"));
        let mut e = good.clone();
        e.sent[0].receipt = None;
        let r = check_index(&n, &shape(), &[e]);
        assert!(r.verified.is_empty() && r.fault.unwrap().contains("no receipt"));
        // Another route than its own.
        let n2 = Neighbourhood { route: Some(1), ..n.clone() };
        assert!(check_index(&n2, &shape(), &[good]).fault.unwrap().contains("route"));
    }
}
