#!/usr/bin/env bash
# The main job: set up, build, and run a local Sliver network.
# Today: a development chain (one authority, one-second blocks) and a miner process that follows
# its finalized head. Ctrl-C stops everything.
#   SLIVER_DEVNET_HEADS=N  stop after N finalized heads (default: run until Ctrl-C)
#   SLIVER_RPC_PORT=P      RPC port of the node (default 9944)
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"

sliver_setup
sliver_build_node
step "building sliver-miner and sliver-validator"
SKIP_WASM_BUILD=1 cargo build --locked -p sliver-miner -p sliver-validator

port=${SLIVER_RPC_PORT:-9944}
data=$(mktemp -d)
log=$data/node.log
step "starting sliver-node --dev (RPC ws://127.0.0.1:$port, log $log)"
"$SLIVER_NODE_BIN" --dev --base-path "$data/chain" --rpc-port "$port" --no-prometheus >"$log" 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null; wait $node_pid 2>/dev/null; rm -rf "$data"' EXIT

for _ in $(seq 1 120); do
  grep -q "Running JSON-RPC server" "$log" && break
  kill -0 $node_pid 2>/dev/null || { cat "$log"; echo "sliver-node exited; see its log above" >&2; exit 1; }
  sleep 0.5
done

step "following the chain with sliver-miner (blocks produced every second, finalized by GRANDPA)"
heads=()
[ -n "${SLIVER_DEVNET_HEADS:-}" ] && heads=(--heads "$SLIVER_DEVNET_HEADS")
"$CARGO_TARGET_DIR/debug/sliver-miner" --rpc-url "ws://127.0.0.1:$port" "${heads[@]}"
