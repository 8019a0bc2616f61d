# Shared set-up for Sliver's scripts: toolchain, target directory, build environment.
# Source it from bash: `. scripts/common.sh`.
set -euo pipefail
SLIVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One persistent target dir outside the clone, shared by the main and node workspaces, so that
# CI runs and working sessions reuse each other's builds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sliver/target}
# The runtime's wasm build resolves against the main workspace's Cargo.lock.
export WASM_BUILD_WORKSPACE_HINT=$SLIVER_ROOT
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export WASM_BUILD_NO_COLOR=1
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n==> %s\n' "$*" >&2; }

# Installs the system packages and the wasm toolchain if missing, then loads its environment.
sliver_setup() {
  step "toolchain (scripts/setup-toolchain.sh)"
  "$SLIVER_ROOT/scripts/setup-toolchain.sh" >/dev/null
  # shellcheck disable=SC1091
  . "${SLIVER_ENV_FILE:-$HOME/.cache/sliver/env.sh}"
}

# Builds sliver-node (debug profile, executor crates optimised) with its wasm runtime.
sliver_build_node() {
  step "building sliver-node (first build: about 15 minutes on 2 cores)"
  (cd "$SLIVER_ROOT/node" && cargo build --locked --bin sliver-node)
  export SLIVER_NODE_BIN=$CARGO_TARGET_DIR/debug/sliver-node
}
