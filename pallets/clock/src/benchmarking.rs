//! Benchmarks of the clock's calls and of its `on_initialize` hook.
//!
//! The hook benchmarks measure [`Pallet::tick`], i.e. `on_initialize` without the call to
//! [`Config::OnEpochChange`]: that call returns its own weight, which `on_initialize` adds.

use super::*;
use frame_benchmarking::v2::*;
use frame_system::RawOrigin;

/// The worst-case run: as many slivers as allowed, the longest dataset id.
fn max_run<T: Config>() -> TrainingRunParamsOf<T> {
    let max_slivers = u16::try_from(T::MaxSlivers::get()).unwrap_or(u16::MAX).max(1);
    let dataset_len = T::MaxDatasetIdLen::get() as usize;
    TrainingRunParams {
        model: ModelConfig {
            n_layers: max_slivers,
            d_model: 4_096,
            n_heads: 32,
            vocab_size: 50_304,
            context_len: 2_048,
            tied_embeddings: false,
        },
        num_slivers: max_slivers,
        dataset_id: BoundedVec::truncate_from(vec![b'd'; dataset_len]),
        dataset_hash: H256::repeat_byte(0xda),
        hyper: HyperParams {
            learning_rate_micro: 600,
            min_learning_rate_micro: 60,
            warmup_steps: 1_000,
            weight_decay_micro: 100_000,
            grad_clip_micro: 1_000_000,
            batch_size: 512,
            micro_batches: 16,
            merge_interval: 500,
            outer_lr_micro: 700_000,
            outer_momentum_micro: 900_000,
        },
    }
}

fn assert_last_event<T: Config>(event: Event<T>) {
    frame_system::Pallet::<T>::assert_last_event(<T as Config>::RuntimeEvent::from(event).into());
}

/// Store `run` as a new run and return its id, without going through the call.
fn insert_run<T: Config>(run: TrainingRunParamsOf<T>) -> RunId {
    let run_id = NextRunId::<T>::get();
    TrainingRuns::<T>::insert(run_id, TrainingRun::new(run, Zero::zero()));
    NextRunId::<T>::put(run_id.saturating_add(1));
    run_id
}

#[benchmarks]
mod benchmarks {
    use super::*;

    /// Worst case: no run is active, so the run is activated at once (two events).
    #[benchmark]
    fn set_training_run() -> Result<(), BenchmarkError> {
        let origin =
            T::RunOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let run = max_run::<T>();
        frame_system::Pallet::<T>::set_block_number(One::one());
        // Worst case: no run is active (a genesis run may be), so the new one activates now.
        ActiveRun::<T>::kill();
        let id = NextRunId::<T>::get();
        let epoch = CurrentEpoch::<T>::get();

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, run.clone());

        assert_eq!(ActiveRun::<T>::get(), Some(id));
        assert_eq!(TrainingRuns::<T>::get(id), Some(TrainingRun::new(run, One::one())));
        assert_last_event::<T>(Event::RunActivated { run_id: id, epoch });
        Ok(())
    }

    #[benchmark]
    fn force_new_epoch() {
        frame_system::Pallet::<T>::set_block_number(One::one());

        #[extrinsic_call]
        _(RawOrigin::Root);

        assert!(ForceNewEpoch::<T>::get());
        assert_last_event::<T>(Event::NewEpochForced);
    }

    /// A block inside the train phase: nothing to do.
    #[benchmark]
    fn on_initialize_idle() {
        let n: BlockNumberFor<T> = One::one();
        frame_system::Pallet::<T>::set_block_number(n);

        #[block]
        {
            assert_eq!(Pallet::<T>::tick(n), Tick::Idle);
        }

        assert_eq!(CurrentPhase::<T>::get(), Phase::Train);
    }

    /// The first block of the commit phase.
    #[benchmark]
    fn on_initialize_phase_change() {
        let (commit_offset, _, _) = Pallet::<T>::phase_offsets();
        let n = EpochStart::<T>::get().saturating_add(commit_offset);
        frame_system::Pallet::<T>::set_block_number(n);

        #[block]
        {
            assert_eq!(Pallet::<T>::tick(n), Tick::PhaseChanged);
        }

        assert_eq!(CurrentPhase::<T>::get(), Phase::Commit);
    }

    /// An epoch boundary with `m` registered miners, all assigned in the ending epoch too (so
    /// `m` old entries are cleared and `m` new ones written), a pending run with the most
    /// slivers to activate, and the longest dataset id.
    #[benchmark]
    fn on_initialize_rotate(m: Linear<0, { T::MaxMiners::get() }>) {
        T::BenchmarkHelper::register_miners(m);
        let active = insert_run::<T>(max_run::<T>());
        ActiveRun::<T>::put(active);
        // Fill the ending epoch's assignment.
        let first_boundary = T::EpochLength::get();
        frame_system::Pallet::<T>::set_block_number(first_boundary);
        Pallet::<T>::rotate(first_boundary);
        let pending = insert_run::<T>(max_run::<T>());
        PendingRun::<T>::put(pending);
        let n = first_boundary.saturating_add(T::EpochLength::get());
        frame_system::Pallet::<T>::set_block_number(n);
        let expected = m.min(T::MaxMiners::get());

        #[block]
        {
            let tick = Pallet::<T>::tick(n);
            assert!(matches!(tick, Tick::Rotated { miners, .. } if miners >= expected));
        }

        assert_eq!(CurrentEpoch::<T>::get(), 2);
        assert_eq!(ActiveRun::<T>::get(), Some(pending));
        assert_eq!(Assignment::<T>::iter().count() as u32, expected);
    }

    impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
