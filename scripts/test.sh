#!/usr/bin/env bash
# Runs every test of Sliver: formatting, the node build, unit, integration and end-to-end tests.
# Usage: ./scripts/test.sh        (what CI runs: .ci/run)
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"
start=$(date +%s)

sliver_setup

step "cargo fmt --check"
cargo fmt --all -- --check
(cd node && cargo fmt --all -- --check)

sliver_build_node

step "tests of the main workspace (pallets, runtime natively, off-chain crates, end-to-end)"
# No backtraces: CI keeps the tail of the output, and a backtrace there pushes the failed
# assertion's message (which carries the processes' logs) out of it.
RUST_BACKTRACE=0 SKIP_WASM_BUILD=1 cargo test --workspace --locked 2>&1

step "P2P across network namespaces (output shown: it says when it cannot shape the link)"
cargo test --locked -p sliver-p2p --test netns -- --nocapture 2>&1

step "engine with its optional features: BPE tokenizer tests, wgpu backend build"
cargo test --locked -p sliver-engine --features bpe --lib 2>&1
cargo check --locked -p sliver-engine --features wgpu 2>&1
cargo check --locked -p sliver-miner --features wgpu 2>&1

step "pallet benchmarks as tests (runtime-benchmarks) and try-runtime invariants"
SKIP_WASM_BUILD=1 cargo test --locked -p pallet-sliver-registry -p pallet-sliver-clock \
  -p pallet-sliver-rewards --features runtime-benchmarks 2>&1

printf '\n==> all tests passed in %d s\n' "$(( $(date +%s) - start ))" >&2
