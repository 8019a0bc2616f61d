#!/usr/bin/env bash
# Runs sliver-engine's benchmarks and prints their tables (recorded in docs/engine.md).
# Usage: ./scripts/bench-engine.sh [quality|speed|pipeline|codecs|merge|robust|all] [extra flags]
#   DATA=path/to/text  (default: ../shared/data/tinyshakespeare.txt)
# The PyTorch side (speed, quality) needs torch: this script installs it from PyPI into
# ~/.cache/sliver/torch-venv on first use (about 3 GB with its CUDA wheels; CPU is what runs).
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"
which=${1:-all}
shift || true
data=${DATA:-$SLIVER_ROOT/../shared/data/tinyshakespeare.txt}
[ -f "$data" ] || { echo "no corpus at $data: set DATA=path/to/text" >&2; exit 1; }

venv=$HOME/.cache/sliver/torch-venv
if [ "$which" != pipeline ] && [ "$which" != codecs ] && [ "$which" != merge ] && [ "$which" != robust ]; then
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    step "installing PyTorch into $venv (PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch setuptools
  fi
  export SLIVER_TORCH_PYTHON=$venv/bin/python
fi

step "building sliver-engine (Burn and maths crates at opt-level 3)"
cargo build --locked -p sliver-engine --bin sliver-engine
step "benchmark: $which"
"$CARGO_TARGET_DIR/debug/sliver-engine" bench "$which" --data "$data" "$@"
