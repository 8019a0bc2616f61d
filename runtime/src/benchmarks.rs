//! The pallets whose benchmarks `frame-omni-bencher` runs against this runtime.

frame_benchmarking::define_benchmarks!(
    [pallet_sliver_registry, SliverRegistry]
    [pallet_sliver_clock, SliverClock]
    [pallet_sliver_rewards, SliverRewards]
);
