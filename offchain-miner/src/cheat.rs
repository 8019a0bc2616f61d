//! Dishonest miners, for testing validators only.
//!
//! With the `cargo` feature `cheat` (off by default, and a compile error in release builds)
//! the environment variable `SLIVER_CHEAT` makes this miner cheat in one of the ways a
//! validator must catch:
//!
//! - `random`: random values in place of its outputs (activations on the first and middle
//!   slivers, gradients on the last and middle ones), i.e. no forward or backward pass;
//! - `zero`: zeros in place of its outputs;
//! - `stale`: the output it sent for the previous micro-batch, sent again for this one (the
//!   very first output, which has none before it, is made up);
//! - `unsigned`: for every frame it sends, a second claim of work under another key, with a
//!   receipt no neighbour signed;
//! - `lazy`: honest forward and backward passes, but its optimiser steps are never applied:
//!   it keeps weights it did not train (as a miner that copies a replica's weights and skips
//!   its own steps would), and records its steps as if it had taken them.
//!
//! Without the feature every function here is the honest identity, and setting
//! `SLIVER_CHEAT` is an error (so a test cannot silently run an honest miner as a cheater).

#[cfg(all(feature = "cheat", not(debug_assertions)))]
compile_error!("the `cheat` feature builds a dishonest miner for tests; release builds refuse it");

use sliver_p2p::{Direction, FrameHeader};

/// The variable that selects a cheat.
pub const VARIABLE: &str = "SLIVER_CHEAT";

/// Checks `SLIVER_CHEAT` against this build: an error if it is set without the feature, or
/// names no cheat.
pub fn check() -> Result<(), String> {
    let Some(v) = std::env::var_os(VARIABLE) else { return Ok(()) };
    #[cfg(feature = "cheat")]
    return imp::kind()
        .map(|_| ())
        .ok_or_else(|| format!("{VARIABLE}={v:?}: use random, zero, stale, unsigned or lazy"));
    #[cfg(not(feature = "cheat"))]
    Err(format!(
        "{VARIABLE}={v:?} is set, but this sliver-miner is built without the test-only `cheat` feature"
    ))
}

/// The payload to send in place of `payload` (the honest one without a cheat).
#[inline]
pub fn outgoing(direction: Direction, payload: Vec<u8>) -> Vec<u8> {
    #[cfg(feature = "cheat")]
    return imp::outgoing(direction, payload);
    #[cfg(not(feature = "cheat"))]
    {
        let _ = direction;
        payload
    }
}

/// True if optimiser steps are to be recorded but not applied (the `lazy` cheat).
#[inline]
pub fn skips_steps() -> bool {
    #[cfg(feature = "cheat")]
    return imp::kind() == Some(imp::Kind::Lazy);
    #[cfg(not(feature = "cheat"))]
    false
}

/// A made-up claim of work to record next to a sent frame: a header under another key and a
/// receipt signed by a stranger. `None` without the `unsigned` cheat.
#[inline]
pub fn extra_claim(header: &FrameHeader) -> Option<(FrameHeader, Vec<u8>)> {
    #[cfg(feature = "cheat")]
    return imp::extra_claim(header);
    #[cfg(not(feature = "cheat"))]
    {
        let _ = header;
        None
    }
}

#[cfg(feature = "cheat")]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use sliver_p2p::identity::Keypair;
    use sliver_p2p::{Direction, FrameHeader, PeerId, Receipt, Reply};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Random,
        Zero,
        Stale,
        Unsigned,
        Lazy,
    }

    pub fn kind() -> Option<Kind> {
        static KIND: OnceLock<Option<Kind>> = OnceLock::new();
        *KIND.get_or_init(|| match std::env::var(super::VARIABLE).ok()?.as_str() {
            "random" => Some(Kind::Random),
            "zero" => Some(Kind::Zero),
            "stale" => Some(Kind::Stale),
            "unsigned" => Some(Kind::Unsigned),
            "lazy" => Some(Kind::Lazy),
            _ => None,
        })
    }

    fn replace(payload: &[u8], f: impl Fn(usize) -> f32) -> Vec<u8> {
        match sliver_wire::decode(payload, usize::MAX >> 8) {
            Ok(d) => {
                let values: Vec<f32> = (0..d.values.len()).map(f).collect();
                sliver_wire::encode(d.codec, &d.shape, &values)
            }
            Err(_) => payload.to_vec(),
        }
    }

    pub fn outgoing(direction: Direction, payload: Vec<u8>) -> Vec<u8> {
        static LAST: Mutex<Option<HashMap<bool, Vec<u8>>>> = Mutex::new(None);
        match kind() {
            Some(Kind::Random) => replace(&payload, |i| {
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            }),
            Some(Kind::Zero) => replace(&payload, |_| 0.0),
            Some(Kind::Stale) => {
                let Ok(mut last) = LAST.lock() else { return payload };
                let map = last.get_or_insert_with(HashMap::new);
                let key = direction == Direction::Activation;
                // The first output has no predecessor: random values stand in for it.
                map.insert(key, payload.clone())
                    .unwrap_or_else(|| replace(&payload, |i| ((i % 13) as f32 - 6.0) * 0.05))
            }
            _ => payload,
        }
    }

    pub fn extra_claim(header: &FrameHeader) -> Option<(FrameHeader, Vec<u8>)> {
        // Made-up keys carry bit 62 (real steps are counts or milliseconds, far below it).
        const MADE_UP: u64 = 1 << 62;
        if kind() != Some(Kind::Unsigned) || header.step & MADE_UP != 0 {
            return None;
        }
        let mut fake = header.clone();
        fake.step |= MADE_UP;
        let stranger = Keypair::generate_ed25519();
        let me = PeerId::random();
        let receipt = Receipt::sign(&stranger, me, fake.hash());
        Some((fake, Reply::Accepted(receipt).encode()))
    }
}
