//! Compiles the runtime to WebAssembly with `substrate-wasm-builder` (skipped when
//! `SKIP_WASM_BUILD=1`). The blob is exposed as `WASM_BINARY` in the native build.
fn main() {
    #[cfg(feature = "std")]
    substrate_wasm_builder::WasmBuilder::build_using_defaults();
}
