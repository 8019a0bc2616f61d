#!/usr/bin/env bash
# Runs sliver-p2p's transport benchmark (recorded in docs/p2p.md): on plain loopback, then on a
# loopback shaped like a home link inside a network namespace of its own (100 Mbit/s, and
# 25 ms each way where the kernel has the netem qdisc). Both ends and the raw-TCP baseline
# share the link. The shaped run needs root and iproute2.
# Usage: ./scripts/bench-p2p.sh [--count N]   (default 200 on loopback, 40 on the shaped link)
. "$(dirname "$0")/common.sh"
cd "$SLIVER_ROOT"
count=${2:-}
step "building sliver-p2p-bench"
cargo build --locked -p sliver-p2p --bin sliver-p2p-bench
bin=$CARGO_TARGET_DIR/debug/sliver-p2p-bench

step "loopback"
"$bin" --count "${count:-200}"

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  echo "SKIPPED the shaped link: it needs root, ip and tc" >&2
  exit 0
fi
ns=sliver-bench-$$
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
if ip netns exec "$ns" tc qdisc add dev lo root netem delay 25ms rate 100mbit 2>/dev/null; then
  step "shaped loopback: 100 Mbit/s, 25 ms each way (netem)"
else
  ip netns exec "$ns" tc qdisc add dev lo root tbf rate 100mbit burst 256kb latency 50ms
  step "shaped loopback: 100 Mbit/s (tbf; this kernel has no netem, so no added latency)"
fi
ip netns exec "$ns" "$bin" --count "${count:-40}"
