#!/usr/bin/env bash
# The main job: set up, build, and run a local Sliver network that trains a small model.
# A development chain (one authority, one-second blocks, 20-block epochs) and four miners
# (//Bob, //Charlie, //Dave, //Eve) that register, are assigned the run's two slivers by the
# chain, and train the run's GPT (4 layers, 128 wide, byte vocabulary) over libp2p on loopback,
# merging with their replicas and committing their weights on chain every epoch.
# Ctrl-C stops everything.
#   SLIVER_DEVNET_EPOCHS=N  stop after N epochs of training (default: run until Ctrl-C)
#   SLIVER_DEVNET_DATA=F    training text (default: ../shared/data/tinyshakespeare.txt when it
#                           exists, else the project's own documentation and sources)
#   SLIVER_RPC_PORT=P       RPC port of the node (default 9944)
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"

sliver_setup
sliver_build_node
step "building sliver-miner and sliver-validator"
SKIP_WASM_BUILD=1 cargo build --locked -p sliver-miner -p sliver-validator
miner=$CARGO_TARGET_DIR/debug/sliver-miner

port=${SLIVER_RPC_PORT:-9944}
rpc=ws://127.0.0.1:$port
data=$(mktemp -d)
log=$data/node.log
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

corpus=${SLIVER_DEVNET_DATA:-$SLIVER_ROOT/../shared/data/tinyshakespeare.txt}
if [ ! -f "$corpus" ]; then
  corpus=$data/corpus.txt
  find README.md docs crates pallets offchain-* -name '*.md' -o -name '*.rs' | sort | xargs cat >"$corpus"
  step "no tinyshakespeare.txt here: training on the project's own docs and sources ($(wc -c <"$corpus") bytes)"
fi

step "starting sliver-node --dev (RPC $rpc, log $log)"
"$SLIVER_NODE_BIN" --dev --base-path "$data/chain" --rpc-port "$port" --no-prometheus >"$log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  grep -q "Running JSON-RPC server" "$log" && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$log"; echo "sliver-node exited; see its log above" >&2; exit 1; }
  sleep 0.5
done

accounts=(//Bob //Charlie //Dave //Eve)
for i in 0 1 2 3; do
  "$miner" --rpc-url "$rpc" --data-dir "$data/m$i" --account "${accounts[$i]}" \
    register --address "/ip4/127.0.0.1/tcp/$((30600 + i))"
done

until=()
if [ -n "${SLIVER_DEVNET_EPOCHS:-}" ]; then
  now=$("$miner" --rpc-url "$rpc" --data-dir "$data/m0" --account //Bob status | sed -n 's/^chain .*: epoch \([0-9]*\).*/\1/p')
  until=(--until-epoch $((now + 1 + SLIVER_DEVNET_EPOCHS)))
fi
step "training: 4 miners, 2 slivers; status lines of miner //Bob follow (all logs in $data/m*.log)"
for i in 0 1 2 3; do
  out=$data/m$i.log
  [ "$i" = 0 ] && out=/dev/stderr
  "$miner" --rpc-url "$rpc" --data-dir "$data/m$i" --account "${accounts[$i]}" \
    run --listen "/ip4/127.0.0.1/tcp/$((30600 + i))" --data "$corpus" --no-mdns \
    --metrics-port $((9616 + i)) "${until[@]}" >"$data/m$i.summary" 2>"$out" &
  pids+=($!)
done
for p in "${pids[@]:1}"; do wait "$p" || { echo "a miner failed; logs:" >&2; tail -n 20 "$data"/m*.log >&2; exit 1; }; done
step "summary"
cat "$data"/m*.summary
