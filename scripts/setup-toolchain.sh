#!/usr/bin/env bash
# Installs what Sliver needs to build: system packages for the node (clang, protoc) and a Rust
# toolchain that can compile the runtime to WebAssembly (target wasm32v1-none).
#
# Two routes:
#  1. An ordinary machine with internet: `rustup target add wasm32v1-none` and the rust-src
#     component on the default toolchain; WASM_BUILD_TOOLCHAIN stays unset.
#  2. A machine where rustup cannot download targets (the project's CI machines): Debian's
#     rustc-web 1.96 packages, a private sysroot that adds a prebuilt core/alloc for
#     wasm32v1-none, registered as the rustup toolchain "$SLIVER_WASM_TOOLCHAIN"
#     (default sliver-wasm). Build the runtime with WASM_BUILD_TOOLCHAIN=sliver-wasm.
#
# Idempotent: a second run takes seconds. Prints the environment to export as its last line(s)
# and writes them to "$SLIVER_ENV_FILE" (default ~/.cache/sliver/env.sh).
set -euo pipefail

NAME=${SLIVER_WASM_TOOLCHAIN:-sliver-wasm}
DIR=${SLIVER_WASM_SYSROOT:-$HOME/.local/share/$NAME}
ENV_FILE=${SLIVER_ENV_FILE:-$HOME/.cache/sliver/env.sh}
mkdir -p "$(dirname "$ENV_FILE")"

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for p in clang libclang-dev protobuf-compiler; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done

apt_install() {
  [ $# -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    log "missing system packages: $*; install them as root (apt-get install $*) and run again"
    exit 1
  fi
  local SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  log "installing system packages: $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Route 1: rustup can provide the target itself.
if [ -z "${SLIVER_FORCE_SYSROOT:-}" ] && rustup target list --installed 2>/dev/null | grep -qx wasm32v1-none \
   && rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  apt_install "${need_apt[@]}"
  log "rustup already has wasm32v1-none and rust-src"
  echo "unset WASM_BUILD_TOOLCHAIN" > "$ENV_FILE"
  cat "$ENV_FILE"; exit 0
fi
if [ -z "${SLIVER_FORCE_SYSROOT:-}" ] && timeout 60 rustup target add wasm32v1-none >/dev/null 2>&1 \
   && timeout 60 rustup component add rust-src >/dev/null 2>&1; then
  apt_install "${need_apt[@]}"
  log "installed wasm32v1-none and rust-src with rustup"
  echo "unset WASM_BUILD_TOOLCHAIN" > "$ENV_FILE"
  cat "$ENV_FILE"; exit 0
fi

# Route 2: Debian's rustc-web with a private sysroot.
log "rustup cannot provide wasm32v1-none here; using Debian rustc-web with a private sysroot at $DIR"
for p in rustc-web cargo-web rust-web-src libstd-rust-web-dev lld-22; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
apt_install "${need_apt[@]}"

HOST=x86_64-unknown-linux-gnu
mkdir -p "$DIR/bin" "$DIR/lib/rustlib/$HOST/bin" "$DIR/lib/rustlib/src" "$DIR/lib/rustlib/wasm32v1-none/lib"
ln -sfn "/usr/lib/rustlib/$HOST/lib" "$DIR/lib/rustlib/$HOST/lib"
ln -sfn /usr/lib/llvm-22/bin/lld "$DIR/lib/rustlib/$HOST/bin/rust-lld"
ln -sfn "$(readlink -f /usr/lib/rustlib/src/rust)" "$DIR/lib/rustlib/src/rust"
ln -sfn /usr/lib/rustlib/etc "$DIR/lib/rustlib/etc"
for tool in rustc rustdoc; do
  printf '#!/bin/sh\nexec /usr/bin/%s --sysroot=%s "$@"\n' "$tool" "$DIR" > "$DIR/bin/$tool"
done
printf '#!/bin/sh\nRUSTC=%s/bin/rustc RUSTDOC=%s/bin/rustdoc exec /usr/bin/cargo "$@"\n' "$DIR" "$DIR" > "$DIR/bin/cargo"
chmod +x "$DIR"/bin/*
rustup toolchain list | grep -q "^$NAME" || rustup toolchain link "$NAME" "$DIR"

# core/alloc/compiler_builtins for wasm32v1-none, with bitcode (the wasm release profile uses
# thin LTO and fails to link objects without it).
if ! ls "$DIR"/lib/rustlib/wasm32v1-none/lib/libcore-*.rlib >/dev/null 2>&1; then
  log "building core and alloc for wasm32v1-none (about 20 s)"
  W=$(mktemp -d); mkdir -p "$W/src"
  printf '[package]\nname = "corebuild"\nversion = "0.1.0"\nedition = "2021"\n[workspace]\n' > "$W/Cargo.toml"
  printf '#![no_std]\n' > "$W/src/lib.rs"
  ( cd "$W" && RUSTFLAGS="-C embed-bitcode=yes" RUSTC_BOOTSTRAP=1 rustup run "$NAME" cargo build -q --release \
      -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem --target wasm32v1-none )
  cp "$W"/target/wasm32v1-none/release/deps/lib{core,alloc,compiler_builtins}-*.{rlib,rmeta} \
     "$DIR/lib/rustlib/wasm32v1-none/lib/"
  rm -rf "$W"
  # cargo does not track sysroot changes: stale runtime wasm builds must go.
  for t in "${CARGO_TARGET_DIR:-$HOME/.cache/sliver/target}"/*/wbuild/*/target; do
    [ -d "$t" ] && { log "clearing stale wasm build $t"; rm -rf "$t"; }
  done
fi
echo "export WASM_BUILD_TOOLCHAIN=$NAME" > "$ENV_FILE"
log "wasm toolchain ready: $NAME"
cat "$ENV_FILE"
