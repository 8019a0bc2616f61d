//! The stage's acceptance of tensor frames, as the transport consults it (a
//! [`sliver_p2p::FrameGate`]): before a payload is read, and again before a receipt is signed.
//!
//! A frame is accepted only if it fits this epoch's schedule as the chain set it:
//!
//! - run and epoch are the stage's (a frame of the epoch that just ended is refused without a
//!   strike: an honest neighbour may still send one);
//! - an **activation** comes from a miner the chain assigned to the previous sliver this epoch,
//!   names that sliver, has the shape `[batch, seq, width]` of this sliver's input, a
//!   micro-batch index below the run's count and a route of a first-sliver miner — the
//!   sender's own route when it is the first sliver — and its key (route, step, micro-batch)
//!   is not in flight here already (a duplicate cannot take an honest micro-batch's gradient);
//! - a **gradient** comes from the very miner this stage sent that micro-batch's activation to,
//!   names the next sliver, and has this sliver's output shape; it is taken once.
//!
//! Everything else is refused with a strike. A receipt therefore means "the receiving stage
//! accepted this frame from this sender".

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sliver_p2p::{Direction, FrameGate, FrameHeader, PeerId, Refusal};

/// Route, step, micro-batch.
pub type Key = (u64, u64, u64);

/// Activation keys remembered (the latest ones accepted this epoch); older ones are forgotten,
/// so a long epoch never fills the set. A key is only ever sent once by an honest miner (its
/// step numbers only grow), so forgetting the oldest costs nothing but a late duplicate.
const MAX_KEYS: usize = 1 << 16;

/// The last `cap` keys, oldest forgotten first.
#[derive(Debug)]
struct Recent {
    cap: usize,
    order: std::collections::VecDeque<(Option<PeerId>, Key)>,
    set: HashSet<(Option<PeerId>, Key)>,
}

impl Recent {
    fn new(cap: usize) -> Self {
        Recent { cap, order: Default::default(), set: HashSet::new() }
    }

    fn contains(&self, k: &(Option<PeerId>, Key)) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: (Option<PeerId>, Key)) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Who may send what to one stage this epoch.
#[derive(Clone, Debug, Default)]
pub struct Neighbours {
    /// Miners assigned to the previous sliver, with their route when that sliver is the first
    /// (a first-sliver miner's route is its position among its sliver's miners).
    pub previous: HashMap<PeerId, Option<u64>>,
    /// Routes this epoch: the number of first-sliver miners.
    pub routes: u64,
}

#[derive(Debug)]
struct State {
    run: u64,
    epoch: u64,
    sliver: u16,
    last: bool,
    micro_batches: u64,
    input: Vec<u32>,
    output: Vec<u32>,
    neighbours: Neighbours,
    /// Gradients awaited: key -> the peer the activation went to.
    pending: HashMap<Key, PeerId>,
    /// Activation keys accepted this epoch (with the sender on the last sliver, which answers
    /// at once and forwards nothing).
    seen: Recent,
}

/// The gate of one stage (shared with the transport through an `Arc`).
#[derive(Debug)]
pub struct StageGate {
    state: Mutex<State>,
}

/// What a gate is built from.
#[derive(Clone, Debug)]
pub struct GateConfig {
    /// Run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// This stage's sliver.
    pub sliver: u16,
    /// Whether it is the last.
    pub last: bool,
    /// Micro-batches per step.
    pub micro_batches: u64,
    /// Shape of the activations this sliver takes (`[batch, seq, width]`).
    pub input: [usize; 3],
    /// Shape of the activations it sends (and of the gradients it takes back).
    pub output: [usize; 3],
}

impl StageGate {
    /// A gate that admits no activation until [`StageGate::set_neighbours`] is called.
    pub fn new(cfg: GateConfig) -> Self {
        let shape = |s: [usize; 3]| s.iter().map(|&d| d as u32).collect();
        StageGate {
            state: Mutex::new(State {
                run: cfg.run,
                epoch: cfg.epoch,
                sliver: cfg.sliver,
                last: cfg.last,
                micro_batches: cfg.micro_batches,
                input: shape(cfg.input),
                output: shape(cfg.output),
                neighbours: Neighbours::default(),
                pending: HashMap::new(),
                seen: Recent::new(MAX_KEYS),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// This epoch's senders of activations (from the chain's assignment).
    pub fn set_neighbours(&self, neighbours: Neighbours) {
        self.with(|s| s.neighbours = neighbours);
    }

    /// Moves to `epoch`: what was pending or seen is forgotten.
    pub fn set_epoch(&self, epoch: u64) {
        self.enter_epoch(epoch, None);
    }

    /// Moves to `epoch` and, if given, its neighbours, in one step.
    pub fn enter_epoch(&self, epoch: u64, neighbours: Option<Neighbours>) {
        self.with(|s| {
            s.epoch = epoch;
            s.pending.clear();
            s.seen = Recent::new(MAX_KEYS);
            if let Some(n) = neighbours {
                s.neighbours = n;
            }
        });
    }

    /// The gradient of `key` is awaited from `peer` (call before sending it the activation).
    pub fn expect(&self, key: Key, peer: PeerId) {
        self.with(|s| s.pending.insert(key, peer));
    }

    /// The gradient of `key` is no longer awaited (dropped, or arrived and handled).
    pub fn forget(&self, key: &Key) {
        self.with(|s| s.pending.remove(key));
    }

    /// Whether `peer` may send `h` now; with `take`, the acceptance is recorded (an activation's
    /// key is seen, an awaited gradient is no longer awaited).
    fn judge(s: &mut State, peer: &PeerId, h: &FrameHeader, take: bool) -> Result<(), Refusal> {
        if h.run != s.run {
            return Err(Refusal::strike(format!("frame of run {}, this is run {}", h.run, s.run)));
        }
        if h.epoch != s.epoch {
            return Err(Refusal::benign(format!(
                "frame of epoch {}, this is {}",
                h.epoch, s.epoch
            )));
        }
        if h.micro_batch >= s.micro_batches {
            return Err(Refusal::strike(format!(
                "micro-batch {} of a step of {}",
                h.micro_batch, s.micro_batches
            )));
        }
        let key = (h.route, h.step, h.micro_batch);
        match h.direction {
            Direction::Activation => {
                if s.sliver == 0 || h.sliver.checked_add(1) != Some(s.sliver) {
                    return Err(Refusal::strike(format!(
                        "an activation of sliver {} sent to sliver {}",
                        h.sliver, s.sliver
                    )));
                }
                let Some(own_route) = s.neighbours.previous.get(peer) else {
                    return Err(Refusal::strike(format!(
                        "not assigned to sliver {} this epoch",
                        s.sliver - 1
                    )));
                };
                if h.route >= s.neighbours.routes || own_route.is_some_and(|r| r != h.route) {
                    return Err(Refusal::strike(format!("route {} is not the sender's", h.route)));
                }
                if h.shape != s.input {
                    return Err(Refusal::strike(format!(
                        "activation of shape {:?}, this sliver takes {:?}",
                        h.shape, s.input
                    )));
                }
                let id = (s.last.then_some(*peer), key);
                if s.seen.contains(&id) {
                    // No strike: on a middle sliver another miner of the previous sliver may
                    // have sent this key first (first wins), and nobody's retry should cost.
                    return Err(Refusal::benign("a micro-batch already in flight here"));
                }
                if take {
                    s.seen.insert(id);
                }
                Ok(())
            }
            Direction::Gradient => {
                if s.last || h.sliver != s.sliver + 1 {
                    return Err(Refusal::strike(format!(
                        "a gradient of sliver {} sent to sliver {}",
                        h.sliver, s.sliver
                    )));
                }
                match s.pending.get(&key) {
                    // Late (the step gave up on it) or never asked for by an honest schedule.
                    None => Err(Refusal::benign("a gradient for no pending micro-batch")),
                    Some(to) if to != peer => Err(Refusal::strike(
                        "a gradient from a miner this micro-batch was not sent to",
                    )),
                    Some(_) if h.shape != s.output => Err(Refusal::strike(format!(
                        "gradient of shape {:?}, this sliver sends {:?}",
                        h.shape, s.output
                    ))),
                    Some(_) => {
                        if take {
                            s.pending.remove(&key);
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

impl FrameGate for StageGate {
    fn check(&self, peer: &PeerId, header: &FrameHeader) -> Result<(), Refusal> {
        self.with(|s| Self::judge(s, peer, header, false))
            .unwrap_or_else(|| Err(Refusal::benign("stage unavailable")))
    }

    fn accept(&self, peer: &PeerId, header: &FrameHeader) -> Result<(), Refusal> {
        self.with(|s| Self::judge(s, peer, header, true))
            .unwrap_or_else(|| Err(Refusal::benign("stage unavailable")))
    }
}

/// The gate of a miner that is not training (waiting for an assignment, away, stopping):
/// every frame is refused, without a strike, and nothing is receipted.
#[derive(Debug, Default)]
pub struct Closed;

impl FrameGate for Closed {
    fn check(&self, _: &PeerId, _: &FrameHeader) -> Result<(), Refusal> {
        Err(Refusal::benign("not training now"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sliver_wire::WireCodec;

    fn header(
        dir: Direction,
        sliver: u16,
        route: u64,
        step: u64,
        mb: u64,
        shape: [usize; 3],
    ) -> FrameHeader {
        let n: usize = shape.iter().product();
        let payload = sliver_wire::encode(WireCodec::Bf16, &shape, &vec![0.0; n]);
        FrameHeader::for_payload(7, 3, step, mb, route, sliver, dir, &payload).unwrap()
    }

    fn gate(sliver: u16, last: bool) -> StageGate {
        StageGate::new(GateConfig {
            run: 7,
            epoch: 3,
            sliver,
            last,
            micro_batches: 2,
            input: [2, 4, 8],
            output: [2, 4, 8],
        })
    }

    #[test]
    fn activations_only_from_the_previous_slivers_miners_on_their_route() {
        let (a, b, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let g = gate(1, true);
        let act = |route, step, mb| header(Direction::Activation, 0, route, step, mb, [2, 4, 8]);
        assert!(g.check(&a, &act(0, 0, 0)).unwrap_err().strike, "no neighbours known yet");
        g.set_neighbours(Neighbours {
            previous: HashMap::from([(a, Some(0)), (b, Some(1))]),
            routes: 2,
        });
        assert_eq!(g.accept(&a, &act(0, 0, 0)), Ok(()));
        assert_eq!(
            g.accept(&a, &act(0, 0, 0)).map_err(|r| r.strike),
            Err(false),
            "the same micro-batch twice"
        );
        assert_eq!(g.accept(&b, &act(1, 0, 0)), Ok(()));
        assert!(g.check(&b, &act(0, 0, 1)).unwrap_err().strike, "another miner's route");
        assert!(g.check(&stranger, &act(0, 0, 1)).unwrap_err().strike, "not assigned");
        assert!(g.check(&a, &act(0, 0, 2)).unwrap_err().strike, "micro-batch index out of range");
        assert!(g.check(&a, &act(5, 0, 0)).unwrap_err().strike, "route out of range");
        let wide = header(Direction::Activation, 0, 0, 1, 0, [2, 4, 9]);
        assert!(g.check(&a, &wide).unwrap_err().strike, "wrong width");
        let skipping = header(Direction::Activation, 1, 0, 1, 0, [2, 4, 8]);
        assert!(g.check(&a, &skipping).unwrap_err().strike, "names another sliver");
        let grad = header(Direction::Gradient, 2, 0, 1, 0, [2, 4, 8]);
        assert!(g.check(&a, &grad).unwrap_err().strike, "the last sliver takes no gradients");
        // Another epoch is refused without a strike; a new epoch forgets what was seen.
        let mut late = act(0, 1, 0);
        late.epoch = 2;
        assert_eq!(g.check(&a, &late).map_err(|r| r.strike), Err(false));
        g.set_epoch(4);
        let mut next = act(0, 0, 0);
        next.epoch = 4;
        assert_eq!(g.accept(&a, &next), Ok(()));
    }

    #[test]
    fn gradients_only_from_the_peer_the_activation_went_to_and_once() {
        let (next, other) = (PeerId::random(), PeerId::random());
        let g = gate(0, false);
        let grad = |step| header(Direction::Gradient, 1, 0, step, 1, [2, 4, 8]);
        assert_eq!(g.check(&next, &grad(0)).map_err(|r| r.strike), Err(false), "nothing pending");
        g.expect((0, 0, 1), next);
        assert!(g.check(&other, &grad(0)).unwrap_err().strike, "from another miner");
        let act = header(Direction::Activation, 0, 0, 0, 1, [2, 4, 8]);
        assert!(g.check(&next, &act).unwrap_err().strike, "no activations to the first sliver");
        assert_eq!(g.accept(&next, &grad(0)), Ok(()));
        assert_eq!(g.accept(&next, &grad(0)).map_err(|r| r.strike), Err(false), "taken once");
        g.expect((0, 1, 1), next);
        g.forget(&(0, 1, 1));
        assert!(g.check(&next, &grad(1)).is_err(), "a dropped micro-batch's gradient");
    }
}
