//! The off-chain clients generate their types from `metadata/sliver.scale` (subxt static
//! codegen). This test fails when that file no longer matches the runtime.

const METADATA_VERSION: u32 = 16;
const REGENERATE: &str =
    "SLIVER_UPDATE_METADATA=1 SKIP_WASM_BUILD=1 cargo test -p sliver-runtime --test metadata";

#[test]
fn committed_metadata_matches_runtime() {
    let fresh = sliver_runtime::metadata_bytes(METADATA_VERSION)
        .expect("the runtime serves metadata version 16");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../metadata/sliver.scale");
    if std::env::var_os("SLIVER_UPDATE_METADATA").is_some() {
        std::fs::write(&path, &fresh).expect("write metadata/sliver.scale");
        eprintln!("wrote {} ({} bytes)", path.display(), fresh.len());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "metadata/sliver.scale ({} bytes) is stale against the runtime ({} bytes); regenerate it with\n    {REGENERATE}\nand commit it with the runtime change",
        committed.len(),
        fresh.len()
    );
}

#[test]
fn metadata_starts_with_magic_and_version() {
    let bytes = sliver_runtime::metadata_bytes(METADATA_VERSION).unwrap();
    assert_eq!(&bytes[..4], b"meta", "metadata must start with the `meta` magic number");
    assert_eq!(bytes[4], METADATA_VERSION as u8);
}
