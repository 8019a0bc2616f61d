//! Unit tests and property tests of the clock.

use crate::{mock::*, *};
use frame_support::{assert_noop, assert_ok, traits::Hooks};
use proptest::prelude::*;
use sp_runtime::DispatchError::BadOrigin;

fn root() -> RuntimeOrigin {
    RuntimeOrigin::root()
}

/// Ten miners with distinct throughputs.
fn ten_miners() -> Vec<(Uid, u64)> {
    (0..10).map(|uid| (uid, 100 + 10 * u64::from(uid))).collect()
}

mod genesis {
    use super::*;

    #[test]
    fn empty_genesis() {
        ExtBuilder::default().build_and_execute(|| {
            assert_eq!(CurrentEpoch::<Test>::get(), 0);
            assert_eq!(EpochStart::<Test>::get(), 0);
            assert_eq!(CurrentPhase::<Test>::get(), Phase::Train);
            assert_eq!(EpochSeed::<Test>::get(), H256::zero());
            assert_eq!(ActiveRun::<Test>::get(), None);
            assert_eq!(PendingRun::<Test>::get(), None);
            assert_eq!(NextRunId::<Test>::get(), 0);
            assert!(SliverLoad::<Test>::get().is_empty());
            assert!(SliverClock::assignments().is_empty());
            assert_eq!(SliverClock::active_run(), None);
        });
    }

    #[test]
    fn initial_run_is_active_and_genesis_miners_assigned() {
        ExtBuilder::default().with_run(run_params(4)).with_miners(ten_miners()).build_and_execute(
            || {
                assert_eq!(ActiveRun::<Test>::get(), Some(0));
                assert_eq!(NextRunId::<Test>::get(), 1);
                let (run_id, run) = SliverClock::active_run().unwrap();
                assert_eq!(run_id, 0);
                assert_eq!(run, TrainingRun::new(run_params(4), 0));
                let expected = assign_slivers(&ten_miners(), 4, &[0; 32]);
                assert_eq!(SliverClock::assignments(), expected);
                assert_eq!(SliverLoad::<Test>::get().len(), 4);
            },
        );
    }

    #[test]
    #[should_panic(expected = "invalid initial_run")]
    fn invalid_initial_run_panics() {
        let mut run = run_params(4);
        run.num_slivers = 0;
        ExtBuilder::default().with_run(run).build();
    }

    #[test]
    fn genesis_config_json_round_trip() {
        let config = GenesisConfig::<Test> { initial_run: Some(run_params(2)) };
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"initialRun\""));
        assert!(json.contains("\"numSlivers\":2"));
        assert!(json.contains("\"learningRateMicro\":600"));
        let back: GenesisConfig<Test> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.initial_run, Some(run_params(2)));
        // An over-long dataset id is rejected when decoding.
        let long = json.replace(
            "\"datasetId\":[",
            &format!("\"datasetId\":[{}", "1,".repeat(MaxDatasetIdLen::get() as usize)),
        );
        assert!(serde_json::from_str::<GenesisConfig<Test>>(&long).is_err());
        // As is an unknown field.
        let unknown = json.replace("\"numSlivers\"", "\"numSliver\"");
        assert!(serde_json::from_str::<GenesisConfig<Test>>(&unknown).is_err());
    }
}

mod clock {
    use super::*;

    #[test]
    fn phases_change_at_exact_blocks() {
        ExtBuilder::default().build_and_execute(|| {
            let expected = |n: u64| match n % EPOCH {
                0..=5 => Phase::Train,
                6..=7 => Phase::Commit,
                _ => Phase::Reveal,
            };
            for n in 2..=35 {
                run_to_block(n);
                assert_eq!(CurrentPhase::<Test>::get(), expected(n), "block {n}");
                assert_eq!(CurrentEpoch::<Test>::get(), (n / EPOCH) as u32, "block {n}");
                assert_eq!(EpochStart::<Test>::get(), n / EPOCH * EPOCH, "block {n}");
                assert_eq!(SliverClock::current_phase(), expected(n));
                assert_eq!(SliverClock::current_epoch(), (n / EPOCH) as u32);
                SliverClock::do_try_state().unwrap();
            }
        });
    }

    #[test]
    fn events_at_every_boundary() {
        ExtBuilder::default().build_and_execute(|| {
            run_to_block(5);
            assert!(clock_events().is_empty());

            run_to_block(6);
            System::assert_last_event(
                Event::PhaseStarted { epoch: 0, phase: Phase::Commit }.into(),
            );
            run_to_block(7);
            assert_eq!(clock_events().len(), 1);
            run_to_block(8);
            System::assert_last_event(
                Event::PhaseStarted { epoch: 0, phase: Phase::Reveal }.into(),
            );
            run_to_block(9);
            assert_eq!(clock_events().len(), 2);

            run_to_block(10);
            let seed = EpochSeed::<Test>::get();
            assert_eq!(
                clock_events()[2..],
                [
                    Event::EpochStarted { epoch: 1, start: 10, end: 20, seed },
                    Event::PhaseStarted { epoch: 1, phase: Phase::Train },
                ]
            );

            run_to_block(20);
            let seed2 = EpochSeed::<Test>::get();
            assert_eq!(
                clock_events()[4..],
                [
                    Event::PhaseStarted { epoch: 1, phase: Phase::Commit },
                    Event::PhaseStarted { epoch: 1, phase: Phase::Reveal },
                    Event::EpochStarted { epoch: 2, start: 20, end: 30, seed: seed2 },
                    Event::PhaseStarted { epoch: 2, phase: Phase::Train },
                ]
            );
        });
    }

    #[test]
    fn on_epoch_change_called_once_per_boundary() {
        ExtBuilder::default().build_and_execute(|| {
            run_to_block(9);
            assert!(RecordEpochChanges::calls().is_empty());
            run_to_block(10);
            assert_eq!(RecordEpochChanges::calls(), vec![(0, 1)]);
            run_to_block(19);
            assert_eq!(RecordEpochChanges::calls(), vec![(0, 1)]);
            run_to_block(40);
            assert_eq!(RecordEpochChanges::calls(), vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
        });
    }

    #[test]
    fn on_initialize_reports_weights() {
        ExtBuilder::default().with_run(run_params(4)).with_miners(ten_miners()).build_and_execute(
            || {
                let weights = <Test as Config>::WeightInfo::on_initialize_idle();
                assert_eq!(next_block(), weights);
                run_to_block(5);
                assert_eq!(next_block(), <() as WeightInfo>::on_initialize_phase_change());
                run_to_block(9);
                // Ten miners assigned at genesis and again now.
                assert_eq!(
                    next_block(),
                    <() as WeightInfo>::on_initialize_rotate(10)
                        .saturating_add(ON_EPOCH_CHANGE_WEIGHT)
                );
                // Fewer miners now: the weight still counts the ten cleared.
                MockRegistry::set_miners(vec![(0, 1)]);
                run_to_block(19);
                assert_eq!(
                    next_block(),
                    <() as WeightInfo>::on_initialize_rotate(10)
                        .saturating_add(ON_EPOCH_CHANGE_WEIGHT)
                );
                run_to_block(29);
                assert_eq!(
                    next_block(),
                    <() as WeightInfo>::on_initialize_rotate(1)
                        .saturating_add(ON_EPOCH_CHANGE_WEIGHT)
                );
            },
        );
    }

    #[test]
    fn epoch_info_in_every_phase() {
        ExtBuilder::default().build_and_execute(|| {
            let info = |epoch, phase, epoch_start, phase_end, epoch_end| EpochInfo {
                epoch,
                phase,
                epoch_start,
                phase_end,
                epoch_end,
            };
            assert_eq!(SliverClock::epoch_info(), info(0, Phase::Train, 0, 6, 10));
            run_to_block(6);
            assert_eq!(SliverClock::epoch_info(), info(0, Phase::Commit, 0, 8, 10));
            run_to_block(8);
            assert_eq!(SliverClock::epoch_info(), info(0, Phase::Reveal, 0, 10, 10));
            run_to_block(13);
            assert_eq!(SliverClock::epoch_info(), info(1, Phase::Train, 10, 16, 20));
        });
    }

    #[test]
    fn epoch_info_saturates() {
        ExtBuilder::default().build_and_execute(|| {
            EpochStart::<Test>::put(u64::MAX - 3);
            let info = SliverClock::epoch_info();
            assert_eq!(info.phase_end, u64::MAX);
            assert_eq!(info.epoch_end, u64::MAX);
            EpochStart::<Test>::put(0);
        });
    }

    #[test]
    fn phase_at_covers_the_epoch() {
        ExtBuilder::default().build_and_execute(|| {
            assert_eq!(SliverClock::phase_at(20, 20), Phase::Train);
            assert_eq!(SliverClock::phase_at(25, 20), Phase::Train);
            assert_eq!(SliverClock::phase_at(26, 20), Phase::Commit);
            assert_eq!(SliverClock::phase_at(27, 20), Phase::Commit);
            assert_eq!(SliverClock::phase_at(28, 20), Phase::Reveal);
            assert_eq!(SliverClock::phase_at(29, 20), Phase::Reveal);
            // Before the start (never happens): treated as the start.
            assert_eq!(SliverClock::phase_at(3, 20), Phase::Train);
        });
    }

    #[test]
    fn integrity_test_passes() {
        <SliverClock as Hooks<u64>>::integrity_test();
    }
}

mod force_new_epoch {
    use super::*;

    #[test]
    fn requires_root() {
        ExtBuilder::default().build_and_execute(|| {
            assert_noop!(SliverClock::force_new_epoch(RuntimeOrigin::signed(1)), BadOrigin);
            assert_noop!(SliverClock::force_new_epoch(RuntimeOrigin::none()), BadOrigin);
        });
    }

    #[test]
    fn cannot_force_twice() {
        ExtBuilder::default().build_and_execute(|| {
            assert_ok!(SliverClock::force_new_epoch(root()));
            assert_noop!(SliverClock::force_new_epoch(root()), Error::<Test>::AlreadyForced);
            run_to_block(2);
        });
    }

    #[test]
    fn starts_a_new_epoch_at_the_next_block() {
        ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(7);
                assert_eq!(CurrentPhase::<Test>::get(), Phase::Commit);
                assert_ok!(SliverClock::force_new_epoch(root()));
                assert!(ForceNewEpoch::<Test>::get());
                System::assert_last_event(Event::NewEpochForced.into());
                assert_eq!(CurrentEpoch::<Test>::get(), 0);

                run_to_block(8);
                assert!(!ForceNewEpoch::<Test>::get());
                assert_eq!(CurrentEpoch::<Test>::get(), 1);
                assert_eq!(EpochStart::<Test>::get(), 8);
                assert_eq!(CurrentPhase::<Test>::get(), Phase::Train);
                assert_eq!(RecordEpochChanges::calls(), vec![(0, 1)]);
                let seed = EpochSeed::<Test>::get();
                System::assert_has_event(
                    Event::EpochStarted { epoch: 1, start: 8, end: 18, seed }.into(),
                );
                System::assert_last_event(
                    Event::PhaseStarted { epoch: 1, phase: Phase::Train }.into(),
                );
                assert_eq!(SliverClock::assignments(), assign_slivers(&ten_miners(), 2, &seed.0));

                // The forced epoch lasts a full epoch from its start.
                run_to_block(14);
                assert_eq!(CurrentPhase::<Test>::get(), Phase::Commit);
                run_to_block(17);
                assert_eq!(CurrentEpoch::<Test>::get(), 1);
                assert_eq!(CurrentPhase::<Test>::get(), Phase::Reveal);
                run_to_block(18);
                assert_eq!(CurrentEpoch::<Test>::get(), 2);
                assert_eq!(EpochStart::<Test>::get(), 18);
                assert_eq!(RecordEpochChanges::calls(), vec![(0, 1), (1, 2)]);
            },
        );
    }
}

mod set_training_run {
    use super::*;

    #[test]
    fn requires_run_origin() {
        ExtBuilder::default().build_and_execute(|| {
            assert_noop!(
                SliverClock::set_training_run(RuntimeOrigin::signed(1), run_params(2)),
                BadOrigin
            );
        });
    }

    fn assert_rejected(change: impl Fn(&mut TrainingRunParamsOf<Test>), error: Error<Test>) {
        let mut run = run_params(4);
        change(&mut run);
        assert_noop!(SliverClock::set_training_run(root(), run), error);
    }

    #[test]
    fn validates_the_model() {
        ExtBuilder::default().build_and_execute(|| {
            assert_rejected(|r| r.model.n_layers = 0, Error::<Test>::NoLayers);
            assert_rejected(|r| r.model.d_model = 0, Error::<Test>::ZeroModelDim);
            assert_rejected(|r| r.model.n_heads = 0, Error::<Test>::NoHeads);
            assert_rejected(|r| r.model.d_model = 500, Error::<Test>::HeadsDoNotDivideModelDim);
            assert_rejected(|r| r.model.vocab_size = 1, Error::<Test>::VocabTooSmall);
            assert_rejected(|r| r.model.vocab_size = 0, Error::<Test>::VocabTooSmall);
            assert_rejected(|r| r.model.context_len = 0, Error::<Test>::ZeroContextLen);
        });
    }

    #[test]
    fn validates_the_slivers_and_dataset() {
        ExtBuilder::default().build_and_execute(|| {
            assert_rejected(|r| r.num_slivers = 0, Error::<Test>::NoSlivers);
            assert_rejected(
                |r| {
                    r.model.n_layers = 3;
                },
                Error::<Test>::MoreSliversThanLayers,
            );
            // MaxSlivers is 4 in the mock; the model has 8 layers.
            assert_rejected(|r| r.num_slivers = 5, Error::<Test>::TooManySlivers);
            assert_rejected(|r| r.dataset_id = Default::default(), Error::<Test>::EmptyDatasetId);
        });
    }

    #[test]
    fn validates_the_hyper_parameters() {
        ExtBuilder::default().build_and_execute(|| {
            assert_rejected(|r| r.hyper.batch_size = 0, Error::<Test>::ZeroBatchSize);
            assert_rejected(|r| r.hyper.micro_batches = 0, Error::<Test>::ZeroMicroBatches);
            assert_rejected(
                |r| r.hyper.micro_batches = 5,
                Error::<Test>::MicroBatchesDoNotDivideBatch,
            );
            assert_rejected(|r| r.hyper.merge_interval = 0, Error::<Test>::ZeroMergeInterval);
        });
    }

    #[test]
    fn accepts_the_edge_values() {
        ExtBuilder::default().build_and_execute(|| {
            let mut run = run_params(1);
            run.model = ModelConfig {
                n_layers: 1,
                d_model: 1,
                n_heads: 1,
                vocab_size: 2,
                context_len: 1,
                tied_embeddings: false,
            };
            run.dataset_id = BoundedVec::truncate_from(vec![7; MaxDatasetIdLen::get() as usize]);
            run.hyper.batch_size = 1;
            run.hyper.micro_batches = 1;
            run.hyper.merge_interval = 1;
            assert_ok!(SliverClock::set_training_run(root(), run.clone()));
            assert_eq!(TrainingRuns::<Test>::get(0), Some(TrainingRun::new(run, 1)));
            // The most slivers allowed.
            assert_ok!(SliverClock::set_training_run(root(), run_params(4)));
        });
    }

    #[test]
    fn over_long_dataset_id_does_not_decode() {
        let run = run_params(2);
        let encode_with_id = |id: Vec<u8>| {
            let mut encoded = (run.model, run.num_slivers, id).encode();
            encoded.extend((run.dataset_hash, run.hyper).encode());
            encoded
        };
        let max = MaxDatasetIdLen::get() as usize;
        assert!(TrainingRunParamsOf::<Test>::decode(&mut &encode_with_id(vec![1; max])[..]).is_ok());
        assert!(TrainingRunParamsOf::<Test>::decode(&mut &encode_with_id(vec![1; max + 1])[..])
            .is_err());
    }

    #[test]
    fn first_run_activates_at_once() {
        ExtBuilder::default().with_miners(ten_miners()).build_and_execute(|| {
            run_to_block(3);
            assert_ok!(SliverClock::set_training_run(root(), run_params(2)));
            assert_eq!(TrainingRuns::<Test>::get(0), Some(TrainingRun::new(run_params(2), 3)));
            assert_eq!(NextRunId::<Test>::get(), 1);
            assert_eq!(ActiveRun::<Test>::get(), Some(0));
            assert_eq!(PendingRun::<Test>::get(), None);
            assert_eq!(
                clock_events(),
                vec![
                    Event::RunRegistered { run_id: 0 },
                    Event::RunActivated { run_id: 0, epoch: 0 }
                ]
            );
            // Miners are assigned at the next boundary.
            assert!(SliverClock::assignments().is_empty());
            run_to_block(10);
            assert_eq!(SliverClock::assignments().len(), 10);
            assert!(SliverClock::assignments().iter().all(|(_, s)| *s < 2));
        });
    }

    #[test]
    fn later_runs_activate_at_the_next_boundary() {
        ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(4);
                assert_ok!(SliverClock::set_training_run(root(), run_params(4)));
                System::assert_last_event(Event::RunRegistered { run_id: 1 }.into());
                assert_eq!(ActiveRun::<Test>::get(), Some(0));
                assert_eq!(PendingRun::<Test>::get(), Some(1));
                assert_eq!(NextRunId::<Test>::get(), 2);
                assert!(SliverClock::assignments().iter().all(|(_, s)| *s < 2));

                run_to_block(9);
                assert_eq!(ActiveRun::<Test>::get(), Some(0));
                run_to_block(10);
                assert_eq!(ActiveRun::<Test>::get(), Some(1));
                assert_eq!(PendingRun::<Test>::get(), None);
                System::assert_has_event(Event::RunActivated { run_id: 1, epoch: 1 }.into());
                let seed = EpochSeed::<Test>::get();
                assert_eq!(SliverClock::assignments(), assign_slivers(&ten_miners(), 4, &seed.0));
                assert_eq!(SliverLoad::<Test>::get().len(), 4);
                assert_eq!(
                    SliverClock::active_run().map(|(id, run)| (id, run.num_slivers)),
                    Some((1, 4))
                );

                // Nothing pending: the next boundary keeps the run.
                run_to_block(20);
                assert_eq!(ActiveRun::<Test>::get(), Some(1));
                assert!(!clock_events().contains(&Event::RunActivated { run_id: 1, epoch: 2 }));
            },
        );
    }

    #[test]
    fn a_new_run_replaces_the_pending_one() {
        ExtBuilder::default().with_run(run_params(2)).build_and_execute(|| {
            assert_ok!(SliverClock::set_training_run(root(), run_params(3)));
            assert_ok!(SliverClock::set_training_run(root(), run_params(4)));
            assert_eq!(PendingRun::<Test>::get(), Some(2));
            run_to_block(10);
            assert_eq!(ActiveRun::<Test>::get(), Some(2));
            // Run 1 stays recorded but was never activated.
            assert!(TrainingRuns::<Test>::contains_key(1));
            assert!(!clock_events()
                .iter()
                .any(|e| matches!(e, Event::RunActivated { run_id: 1, .. })));
        });
    }

    #[test]
    fn run_ids_can_run_out() {
        ExtBuilder::default().build_and_execute(|| {
            NextRunId::<Test>::put(RunId::MAX);
            assert_noop!(
                SliverClock::set_training_run(root(), run_params(2)),
                Error::<Test>::RunIdOverflow
            );
        });
    }
}

mod assignment {
    use super::*;

    #[test]
    fn no_run_no_assignment() {
        ExtBuilder::default().with_miners(ten_miners()).build_and_execute(|| {
            run_to_block(10);
            assert!(SliverClock::assignments().is_empty());
            assert!(SliverLoad::<Test>::get().is_empty());
            assert_eq!(SliverClock::sliver_of(0), None);
        });
    }

    #[test]
    fn assignment_and_load_follow_the_registry() {
        ExtBuilder::default().with_run(run_params(3)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(10);
                let seed = EpochSeed::<Test>::get();
                let expected = assign_slivers(&ten_miners(), 3, &seed.0);
                assert_eq!(SliverClock::assignments(), expected);
                for (uid, sliver) in &expected {
                    assert_eq!(SliverClock::sliver_of(*uid), Some(*sliver));
                }
                let mut load = vec![(0u32, 0u64); 3];
                for ((_, sliver), (_, throughput)) in expected.iter().zip(ten_miners()) {
                    load[*sliver as usize].0 += 1;
                    load[*sliver as usize].1 += throughput;
                }
                assert_eq!(SliverLoad::<Test>::get().into_inner(), load);
                assert_eq!(load.iter().map(|l| l.0).sum::<u32>(), 10);
            },
        );
    }

    #[test]
    fn mid_epoch_registration_is_assigned_at_the_next_boundary() {
        ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(12);
                MockRegistry::add_miner(42, 1_000);
                run_to_block(19);
                assert_eq!(SliverClock::sliver_of(42), None);
                assert_eq!(SliverClock::assignments().len(), 10);
                run_to_block(20);
                assert!(SliverClock::sliver_of(42).is_some());
                assert_eq!(SliverClock::assignments().len(), 11);
            },
        );
    }

    #[test]
    fn deregistered_miners_lose_their_sliver_at_the_boundary() {
        ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(10);
                assert!(SliverClock::sliver_of(3).is_some());
                MockRegistry::set_miners(
                    ten_miners().into_iter().filter(|(u, _)| *u != 3).collect(),
                );
                run_to_block(19);
                assert!(SliverClock::sliver_of(3).is_some());
                run_to_block(20);
                assert_eq!(SliverClock::sliver_of(3), None);
                assert_eq!(SliverClock::assignments().len(), 9);
            },
        );
    }

    #[test]
    fn at_most_max_miners_are_assigned() {
        let many: Vec<(Uid, u64)> = (0..40).map(|uid| (uid, 5)).collect();
        ExtBuilder::default().with_run(run_params(4)).with_miners(many).build_and_execute(|| {
            assert_eq!(SliverClock::assignments().len(), MaxMiners::get() as usize);
            run_to_block(10);
            let assigned = SliverClock::assignments();
            assert_eq!(assigned.len(), MaxMiners::get() as usize);
            // The registry's first MaxMiners miners, by uid.
            assert!(assigned.iter().all(|(uid, _)| u32::from(*uid) < MaxMiners::get()));
        });
    }

    #[test]
    fn assignment_changes_with_the_seed() {
        // Equal throughputs: only the seed decides who trains what.
        let equal: Vec<(Uid, u64)> = (0..12).map(|uid| (uid, 7)).collect();
        ExtBuilder::default().with_run(run_params(4)).with_miners(equal).build_and_execute(|| {
            let mut seen = Vec::new();
            for epoch in 1..=4u64 {
                run_to_block(epoch * EPOCH);
                seen.push(SliverClock::assignments());
            }
            seen.dedup();
            assert!(seen.len() > 1, "the assignment never changed");
        });
    }
}

mod seeds {
    use super::*;

    fn seeds_over_three_epochs(salt: u64) -> Vec<H256> {
        let mut seeds = Vec::new();
        ExtBuilder::default().with_parent_hash_salt(salt).build_and_execute(|| {
            seeds.push(EpochSeed::<Test>::get());
            for epoch in 1..=3u64 {
                run_to_block(epoch * EPOCH);
                seeds.push(EpochSeed::<Test>::get());
            }
        });
        seeds
    }

    #[test]
    fn seeds_differ_per_epoch() {
        let seeds = seeds_over_three_epochs(0);
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn seeds_are_deterministic_given_parent_hashes() {
        assert_eq!(seeds_over_three_epochs(0), seeds_over_three_epochs(0));
        assert_eq!(seeds_over_three_epochs(9), seeds_over_three_epochs(9));
        assert_ne!(seeds_over_three_epochs(0)[1..], seeds_over_three_epochs(9)[1..]);
    }

    #[test]
    fn seed_is_the_documented_hash() {
        ExtBuilder::default().build_and_execute(|| {
            run_to_block(10);
            let epoch1 = next_seed(&H256::zero(), &parent_hash_for(10), 1);
            assert_eq!(EpochSeed::<Test>::get(), epoch1);
            assert_eq!(
                epoch1,
                H256(sp_io::hashing::blake2_256(
                    &(H256::zero(), parent_hash_for(10), 1u32).encode()
                ))
            );
            run_to_block(20);
            assert_eq!(EpochSeed::<Test>::get(), next_seed(&epoch1, &parent_hash_for(20), 2));
            assert_eq!(PreviousEpochSeed::<Test>::get(), epoch1);
        });
    }

    #[test]
    fn data_and_audit_seeds() {
        ExtBuilder::default().build_and_execute(|| {
            assert_eq!(SliverClock::data_seed(0), Some(derive_seed(b"sliver/data", &H256::zero())));
            assert_eq!(SliverClock::data_seed(1), None);
            run_to_block(20);
            let current = EpochSeed::<Test>::get();
            let previous = PreviousEpochSeed::<Test>::get();
            let mut data = b"sliver/data".to_vec();
            data.extend_from_slice(current.as_bytes());
            assert_eq!(SliverClock::data_seed(2), Some(H256(sp_io::hashing::blake2_256(&data))));
            let mut audit = b"sliver/audit".to_vec();
            audit.extend_from_slice(previous.as_bytes());
            assert_eq!(SliverClock::audit_seed(1), Some(H256(sp_io::hashing::blake2_256(&audit))));
            assert_eq!(SliverClock::epoch_seed(1), Some(previous));
            assert_ne!(SliverClock::data_seed(2), SliverClock::audit_seed(2));
            assert_ne!(SliverClock::data_seed(2), SliverClock::data_seed(1));
            assert_eq!(SliverClock::data_seed(0), None);
            assert_eq!(SliverClock::audit_seed(3), None);
        });
    }

    #[test]
    fn parent_hash_entropy_reads_the_parent_hash() {
        ExtBuilder::default().build_and_execute(|| {
            System::set_parent_hash(H256::repeat_byte(3));
            assert_eq!(ParentHashEntropy::<Test>::entropy(), H256::repeat_byte(3));
            System::set_parent_hash(parent_hash_for(1));
        });
    }
}

mod try_state {
    use super::*;

    #[test]
    fn detects_broken_invariants() {
        ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
            || {
                run_to_block(10);
                assert_ok!(SliverClock::do_try_state());

                // An assignment outside the run.
                Assignment::<Test>::insert(0, 7);
                assert!(SliverClock::do_try_state().is_err());
                let sliver = assign_slivers(&ten_miners(), 2, &EpochSeed::<Test>::get().0)[0].1;
                Assignment::<Test>::insert(0, sliver);
                assert_ok!(SliverClock::do_try_state());

                // A load that does not match.
                let good = SliverLoad::<Test>::get();
                let mut bad = good.clone();
                bad[0].0 += 1;
                SliverLoad::<Test>::put(bad);
                assert!(SliverClock::do_try_state().is_err());
                SliverLoad::<Test>::put(good);

                // A phase that does not match the block.
                CurrentPhase::<Test>::put(Phase::Reveal);
                assert!(SliverClock::do_try_state().is_err());
                CurrentPhase::<Test>::put(Phase::Train);

                // A pending run that does not exist.
                PendingRun::<Test>::put(9);
                assert!(SliverClock::do_try_state().is_err());
                PendingRun::<Test>::kill();

                // An active run that does not exist.
                ActiveRun::<Test>::put(9);
                assert!(SliverClock::do_try_state().is_err());
                ActiveRun::<Test>::put(0);

                // An overrun epoch.
                System::set_block_number(20);
                assert!(SliverClock::do_try_state().is_err());
                System::set_block_number(10);
            },
        );
    }
}

mod assign_slivers_fn {
    use super::*;

    #[test]
    fn trivial_inputs() {
        assert!(assign_slivers(&[], 4, &[0; 32]).is_empty());
        assert!(assign_slivers(&[(1, 10), (2, 20)], 0, &[0; 32]).is_empty());
        assert_eq!(assign_slivers(&[(5, 10)], 1, &[9; 32]), vec![(5, 0)]);
    }

    #[test]
    fn lpt_example() {
        // Throughputs 9, 7, 6, 5, 4 on 2 slivers: 9 | 7, then 6 -> B (7+6=13), 5 -> A (9+5=14),
        // 4 -> B (17); loads 14 and 17.
        let miners = [(1, 9), (2, 7), (3, 6), (4, 5), (5, 4)];
        let seed = [0u8; 32];
        let out = assign_slivers(&miners, 2, &seed);
        let a = out[0].1;
        let b = 1 - a;
        assert_eq!(out, vec![(1, a), (2, b), (3, b), (4, a), (5, b)]);
    }

    #[test]
    fn rotation_decides_the_first_sliver() {
        // One miner goes to the sliver whose rotated index is 0: (index + seed[0]) % S == 0.
        for first in 0..4u8 {
            let mut seed = [0u8; 32];
            seed[0] = first;
            let expected = (4 - first % 4) % 4;
            assert_eq!(assign_slivers(&[(1, 10)], 4, &seed), vec![(1, u16::from(expected))]);
        }
    }

    #[test]
    fn equal_throughputs_go_round_robin() {
        let miners: Vec<(Uid, u64)> = (0..8).map(|uid| (uid, 3)).collect();
        let out = assign_slivers(&miners, 4, &[1; 32]);
        let mut counts = [0; 4];
        for (_, s) in out {
            counts[s as usize] += 1;
        }
        assert_eq!(counts, [2; 4]);
    }

    #[test]
    fn duplicate_uids_are_assigned_once() {
        let out = assign_slivers(&[(1, 5), (1, 9), (2, 1)], 2, &[0; 32]);
        assert_eq!(out.len(), 2);
        assert_eq!(out.iter().map(|(u, _)| *u).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn zero_throughputs_still_fill_every_sliver() {
        let miners: Vec<(Uid, u64)> = (0..5).map(|uid| (uid, 0)).collect();
        let out = assign_slivers(&miners, 5, &[3; 32]);
        let mut slivers: Vec<_> = out.iter().map(|(_, s)| *s).collect();
        slivers.sort();
        assert_eq!(slivers, vec![0, 1, 2, 3, 4]);
    }

    /// `(uid, sliver)` pairs and `miners` -> per-sliver `(count, load)`.
    fn loads(out: &[(Uid, SliverIndex)], miners: &[(Uid, u64)], s: u16) -> Vec<(u32, u128)> {
        let mut loads = vec![(0u32, 0u128); s as usize];
        for (uid, sliver) in out {
            let throughput = miners.iter().find(|(u, _)| u == uid).unwrap().1;
            loads[*sliver as usize].0 += 1;
            loads[*sliver as usize].1 += u128::from(throughput);
        }
        loads
    }

    fn miner_sets() -> impl Strategy<Value = Vec<(Uid, u64)>> {
        let throughput = prop_oneof![0u64..4, 0u64..10_000, any::<u64>()];
        prop::collection::btree_map(any::<Uid>(), throughput, 0..80)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_assignment_is_balanced_and_complete(
            miners in miner_sets(),
            num_slivers in 1u16..=16,
            seed in any::<[u8; 32]>(),
        ) {
            let out = assign_slivers(&miners, num_slivers, &seed);

            // Every miner exactly once, sorted by uid, on a valid sliver.
            let mut uids: Vec<Uid> = miners.iter().map(|(u, _)| *u).collect();
            uids.sort_unstable();
            prop_assert_eq!(out.iter().map(|(u, _)| *u).collect::<Vec<_>>(), uids);
            prop_assert!(out.iter().all(|(_, s)| *s < num_slivers));

            let loads = loads(&out, &miners, num_slivers);
            // All slivers staffed when there are enough miners.
            if miners.len() >= usize::from(num_slivers) {
                prop_assert!(loads.iter().all(|(count, _)| *count > 0));
            }
            // Load spread bounded by the largest throughput.
            let max_throughput = miners.iter().map(|(_, t)| u128::from(*t)).max().unwrap_or(0);
            let max_load = loads.iter().map(|(_, l)| *l).max().unwrap_or(0);
            let min_load = loads.iter().map(|(_, l)| *l).min().unwrap_or(0);
            prop_assert!(max_load - min_load <= max_throughput);
        }

        #[test]
        fn prop_assignment_ignores_input_order_and_is_deterministic(
            (miners, shuffled) in miner_sets().prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
            num_slivers in 1u16..=16,
            seed in any::<[u8; 32]>(),
        ) {
            let out = assign_slivers(&miners, num_slivers, &seed);
            prop_assert_eq!(&out, &assign_slivers(&miners, num_slivers, &seed));
            prop_assert_eq!(&out, &assign_slivers(&shuffled, num_slivers, &seed));
        }
    }
}

#[test]
fn a_released_uid_leaves_the_assignment_at_once() {
    use sliver_primitives::OnUidReleased;
    ExtBuilder::default().with_run(run_params(2)).with_miners(ten_miners()).build_and_execute(
        || {
            assert_ok!(SliverClock::force_new_epoch(root()));
            run_to_block(2);
            let (uid, sliver) = SliverClock::assignments()[0];
            let before = SliverLoad::<Test>::get()[usize::from(sliver)].0;
            <SliverClock as OnUidReleased>::on_uid_released(uid);
            assert!(SliverClock::assignments().iter().all(|(u, _)| *u != uid));
            assert_eq!(<SliverClock as EpochClock>::sliver_of(uid), None);
            assert_eq!(SliverLoad::<Test>::get()[usize::from(sliver)].0, before - 1);
            // Releasing an unassigned uid changes nothing.
            <SliverClock as OnUidReleased>::on_uid_released(999);
            assert_eq!(SliverClock::assignments().len(), 9);
        },
    );
}
