#!/usr/bin/env bash
# The networked pipeline against monolithic training of the same model, in one process
# (recorded in docs/miner.md). Usage: ./scripts/bench-miner.sh [seconds per setup, default 20]
#   DATA=path/to/text  (default: ../shared/data/tinyshakespeare.txt)
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"
data=${DATA:-$SLIVER_ROOT/../shared/data/tinyshakespeare.txt}
[ -f "$data" ] || { echo "no corpus at $data: set DATA=path/to/text" >&2; exit 1; }
step "building sliver-miner-bench"
cargo build --locked -p sliver-miner --bin sliver-miner-bench
step "benchmark: network against monolithic"
"$CARGO_TARGET_DIR/debug/sliver-miner-bench" --data "$data" --secs "${1:-20}"
