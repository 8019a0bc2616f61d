//! The miner's two identities: the chain account (sr25519, pays fees, receives rewards) and the
//! libp2p node key (ed25519, its PeerId, recorded in the registry with an ownership proof).

use std::path::{Path, PathBuf};

use sliver_chain::subxt_signer::{bip39, sr25519, SecretUri};
use sliver_chain::Keypair;

/// File in the data directory holding the account's secret (a secret URI) when none is given.
pub const ACCOUNT_FILE: &str = "account.key";

/// Loads the account from `spec`: a secret URI (`//Alice`, `0x<64 hex>`, with derivations), a
/// BIP-39 mnemonic phrase, or the path of a file holding either. `None` reads
/// `<data_dir>/account.key`.
pub fn load_account(spec: Option<&str>, data_dir: &Path) -> Result<Keypair, String> {
    let spec = spec.filter(|s| !s.trim().is_empty());
    let (secret, from) = match spec {
        Some(s) if Path::new(s).is_file() => (read_secret(Path::new(s))?, format!("file {s}")),
        Some(s) => (s.trim().to_string(), "--account".to_string()),
        None => {
            let path = data_dir.join(ACCOUNT_FILE);
            if !path.is_file() {
                return Err(format!(
                    "no account: {} does not exist. Create one with `sliver-miner keys \
                     --generate`, or pass --account (a secret URI such as //Alice, a mnemonic \
                     phrase, or a key file)",
                    path.display()
                ));
            }
            (read_secret(&path)?, format!("file {}", path.display()))
        }
    };
    parse_secret(&secret).map_err(|e| format!("the account from {from} is not usable: {e}"))
}

fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn parse_secret(secret: &str) -> Result<Keypair, String> {
    if secret.split_whitespace().count() >= 12 && !secret.contains("//") {
        let phrase = bip39::Mnemonic::parse(secret).map_err(|e| format!("bad mnemonic: {e}"))?;
        return sr25519::Keypair::from_phrase(&phrase, None).map_err(|e| e.to_string());
    }
    let uri: SecretUri = secret.parse().map_err(|e| format!("bad secret URI: {e}"))?;
    sr25519::Keypair::from_uri(&uri).map_err(|e| e.to_string())
}

/// Creates `<data_dir>/account.key` with a fresh random seed (mode 0600) unless it exists;
/// returns its path and whether it was created.
pub fn generate_account(data_dir: &Path) -> Result<(PathBuf, bool), String> {
    let path = data_dir.join(ACCOUNT_FILE);
    if path.exists() {
        return Ok((path, false));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, format!("0x{hex}\n").as_bytes())?;
    Ok((path, true))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The node key in `data_dir` (created on first use).
pub fn node_key(data_dir: &Path) -> Result<libp2p::identity::Keypair, String> {
    sliver_p2p::keys::load_or_create(data_dir).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_come_from_uris_phrases_and_files() {
        let alice = load_account(Some("//Alice"), Path::new("/nonexistent")).unwrap();
        assert_eq!(
            sliver_chain::account_of(&alice),
            sliver_chain::account_of(&sliver_chain::dev_keypair("alice").unwrap())
        );
        let phrase = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
        assert!(load_account(Some(phrase), Path::new("/nonexistent")).is_ok());
        let err = load_account(Some("not a key"), Path::new("/nonexistent")).err().unwrap();
        assert!(err.contains("not usable"), "{err}");

        let dir = std::env::temp_dir().join(format!("sliver-miner-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = load_account(None, &dir).err().unwrap();
        assert!(err.contains("sliver-miner keys --generate"), "{err}");
        let (path, created) = generate_account(&dir).unwrap();
        assert!(created);
        let a = load_account(None, &dir).unwrap();
        let b = load_account(Some(path.to_str().unwrap()), &dir).unwrap();
        assert_eq!(sliver_chain::account_of(&a), sliver_chain::account_of(&b));
        assert!(!generate_account(&dir).unwrap().1, "an existing key is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
