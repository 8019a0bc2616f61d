//! The node's libp2p identity: an ed25519 key persisted in its data directory. Its PeerId is
//! what the registry pallet records, with an ownership signature made here.

use std::fs;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::P2pError;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "p2p_ed25519.key";

/// Loads the key from `dir`, or creates and saves a new one (file mode 0600 on Unix, created
/// with that mode: the secret is never readable by others, not even for a moment).
pub fn load_or_create(dir: &Path) -> Result<Keypair, P2pError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let bytes =
            fs::read(&path).map_err(|e| P2pError::Key(format!("{}: {e}", path.display())))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| P2pError::Key(format!("{} is not a libp2p key: {e}", path.display())));
    }
    fs::create_dir_all(dir).map_err(|e| P2pError::Key(format!("{}: {e}", dir.display())))?;
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| P2pError::Key(e.to_string()))?;
    write_private(&path, &bytes)?;
    Ok(key)
}

/// Writes `bytes` to a fresh temporary file created with mode 0600 (`create_new`: it fails
/// rather than follow a symlink or reuse a file someone else placed there), then renames it
/// over `path`, so the key appears whole and private or not at all.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), P2pError> {
    use std::io::Write;
    let err = |p: &Path, e: std::io::Error| P2pError::Key(format!("{}: {e}", p.display()));
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let tmp = path.with_extension(format!("tmp-{}", u64::from_le_bytes(nonce)));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(|e| err(&tmp, e))?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(err(path, e));
    }
    Ok(())
}

/// The raw 32-byte ed25519 public key (what the registry pallet checks signatures with).
pub fn ed25519_public(key: &Keypair) -> Result<[u8; 32], P2pError> {
    let ed =
        key.clone().try_into_ed25519().map_err(|_| P2pError::Key("not an ed25519 key".into()))?;
    Ok(ed.public().to_bytes())
}

/// The PeerId of a raw 32-byte ed25519 public key (as the registry records it); `None` if the
/// bytes are not a valid key.
pub fn peer_id_of(ed25519: &[u8; 32]) -> Option<libp2p::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(ed25519).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// Signs the registry's PeerId-ownership message (built by the chain client) with the node key.
pub fn sign_ownership(key: &Keypair, message: &[u8]) -> Result<[u8; 64], P2pError> {
    let sig = key.sign(message).map_err(|e| P2pError::Key(e.to_string()))?;
    sig.try_into().map_err(|_| P2pError::Key("signature is not 64 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_and_signs() {
        let dir = std::env::temp_dir().join(format!("sliver-p2p-key-{}", std::process::id()));
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let sig = sign_ownership(&a, b"register me").unwrap();
        assert!(a.public().verify(b"register me", &sig));
        assert_eq!(ed25519_public(&a).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A symlink planted where a key goes is replaced, never written through.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let victim = dir.join("victim");
            fs::write(&victim, b"theirs").unwrap();
            let link = dir.join("other.key");
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            write_private(&link, b"secret").unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"theirs");
            assert_eq!(fs::read(&link).unwrap(), b"secret");
            let meta = fs::symlink_metadata(&link).unwrap();
            assert!(meta.file_type().is_file());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        fs::write(dir.join(KEY_FILE), b"garbage").unwrap();
        assert!(load_or_create(&dir).unwrap_err().to_string().contains("not a libp2p key"));
        fs::remove_dir_all(dir).unwrap();
    }
}
