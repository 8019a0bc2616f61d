//! Set-up the pallets' benchmarks need from the other Sliver pallets, done on the real pallets'
//! storage (compiled only with `runtime-benchmarks`).

use crate::{AccountId, Runtime};
use pallet_sliver_registry::{Backend, HardwareProfile, Registration};
use sliver_primitives::{EpochIndex, Phase, Role, Stake, Uid};

/// Implements every Sliver pallet's `BenchmarkHelper` on the runtime's real pallets.
pub struct SliverBenchmarkHelper;

fn put_registration(uid: Uid, role: Role, stake: Stake) -> AccountId {
    let who: AccountId = frame_benchmarking::account("sliver", uid.into(), 0);
    let mut peer_key = [0u8; 32];
    peer_key[..2].copy_from_slice(&uid.to_le_bytes());
    let registration = Registration::<Runtime> {
        account: who.clone(),
        role,
        peer_key,
        addresses: Default::default(),
        hardware: HardwareProfile {
            backend: Backend::Cpu,
            memory_mib: 16 * 1024,
            throughput: 1_000 + u64::from(uid),
        },
        registered_at: 0,
        deposit: 0,
        stake,
    };
    if pallet_sliver_registry::Registrations::<Runtime>::get(uid).is_none() {
        match role {
            Role::Miner => pallet_sliver_registry::MinerCount::<Runtime>::mutate(|c| *c += 1),
            Role::Validator => {
                pallet_sliver_registry::ValidatorCount::<Runtime>::mutate(|c| *c += 1)
            }
        }
    }
    pallet_sliver_registry::Registrations::<Runtime>::insert(uid, registration);
    pallet_sliver_registry::UidOf::<Runtime>::insert(&who, uid);
    pallet_sliver_registry::PeerKeyOwner::<Runtime>::insert(peer_key, uid);
    who
}

impl pallet_sliver_registry::BenchmarkHelper for SliverBenchmarkHelper {
    fn set_epoch(epoch: EpochIndex) {
        pallet_sliver_clock::CurrentEpoch::<Runtime>::put(epoch);
    }
}

impl pallet_sliver_clock::BenchmarkHelper for SliverBenchmarkHelper {
    fn register_miners(n: u32) {
        for uid in 0..n.min(u32::from(Uid::MAX)) {
            put_registration(uid as Uid, Role::Miner, 0);
        }
    }
}

impl pallet_sliver_rewards::BenchmarkHelper<AccountId> for SliverBenchmarkHelper {
    fn register_validator(uid: Uid, stake: Stake) -> AccountId {
        put_registration(uid, Role::Validator, stake)
    }

    fn register_miner(uid: Uid) -> AccountId {
        put_registration(uid, Role::Miner, 0)
    }

    fn set_phase(phase: Phase) {
        pallet_sliver_clock::CurrentPhase::<Runtime>::put(phase);
    }

    fn set_epoch(epoch: EpochIndex) {
        pallet_sliver_clock::CurrentEpoch::<Runtime>::put(epoch);
    }
}
