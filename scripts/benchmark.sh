#!/usr/bin/env bash
# Runs the pallets' frame-benchmarking benchmarks on the runtime compiled to WebAssembly and
# regenerates each pallet's weights.rs from the measurements.
#
# Needs frame-omni-bencher 0.28 (polkadot-sdk stable2609), installed once with
#   cargo install frame-omni-bencher@0.28.0 --locked
# Usage: ./scripts/benchmark.sh [pallet_sliver_registry pallet_sliver_clock pallet_sliver_rewards]
# STEPS and REPEAT override the sampling (defaults 20 and 10).
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"
sliver_setup

command -v frame-omni-bencher >/dev/null || {
  echo "frame-omni-bencher not found: cargo install frame-omni-bencher@0.28.0 --locked" >&2; exit 1; }

step "building the runtime wasm with runtime-benchmarks"
cargo build --locked -p sliver-runtime --features runtime-benchmarks
wasm=$CARGO_TARGET_DIR/debug/wbuild/sliver-runtime/sliver_runtime.wasm

pallets=("$@")
[ ${#pallets[@]} -eq 0 ] && pallets=(pallet_sliver_registry pallet_sliver_clock pallet_sliver_rewards)
for p in "${pallets[@]}"; do
  dir=pallets/${p#pallet_sliver_}
  step "benchmarking $p -> $dir/src/weights.rs"
  frame-omni-bencher v1 benchmark pallet --runtime "$wasm" --pallet "$p" --extrinsic '*' \
    --steps "${STEPS:-20}" --repeat "${REPEAT:-10}" --template scripts/weight-template.hbs \
    --output "$dir/src/weights.rs"
done
