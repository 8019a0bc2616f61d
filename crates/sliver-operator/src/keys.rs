//! An operator's two identities: the chain account (sr25519: pays fees, receives rewards, holds
//! the uid) and the libp2p node key (ed25519: the PeerId, recorded in the registry with an
//! ownership proof). Both live in the data directory with mode 0600, created with that mode.

use std::path::{Path, PathBuf};

use sliver_chain::subxt_signer::{bip39, sr25519, SecretUri};
use sliver_chain::Keypair;

/// File in the data directory holding the account's secret (a secret URI) when none is given.
pub const ACCOUNT_FILE: &str = "account.key";

/// What can go wrong with keys; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No account given and none in the data directory.
    #[error(
        "no account: {path} does not exist. Create one with `{program} keys --generate`, or pass \
         --account (a secret URI such as //Alice, a mnemonic phrase, or a key file)"
    )]
    NoAccount {
        /// Where it was looked for.
        path: String,
        /// The program's name, for the advice.
        program: String,
    },
    /// The secret does not parse.
    #[error("the account from {from} is not usable: {reason}")]
    Unusable {
        /// Where the secret came from.
        from: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The system's reason.
        reason: String,
    },
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Node(#[from] sliver_p2p::P2pError),
}

fn io(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// Loads the account from `spec`: a secret URI (`//Alice`, `0x<64 hex>`, with derivations), a
/// BIP-39 mnemonic phrase, or the path of a file holding either. `None` reads
/// `<data_dir>/account.key`; `program` names the binary in the advice when there is none.
pub fn load_account(
    spec: Option<&str>,
    data_dir: &Path,
    program: &str,
) -> Result<Keypair, KeyError> {
    let spec = spec.filter(|s| !s.trim().is_empty());
    let (secret, from) = match spec {
        Some(s) if Path::new(s).is_file() => (read_secret(Path::new(s))?, format!("file {s}")),
        Some(s) => (s.trim().to_string(), "--account".to_string()),
        None => {
            let path = data_dir.join(ACCOUNT_FILE);
            if !path.is_file() {
                return Err(KeyError::NoAccount {
                    path: path.display().to_string(),
                    program: program.into(),
                });
            }
            (read_secret(&path)?, format!("file {}", path.display()))
        }
    };
    parse_secret(&secret).map_err(|reason| KeyError::Unusable { from, reason })
}

fn read_secret(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| io(path, e))
}

fn parse_secret(secret: &str) -> Result<Keypair, String> {
    if secret.split_whitespace().count() >= 12 && !secret.contains("//") {
        let phrase = bip39::Mnemonic::parse(secret).map_err(|e| format!("bad mnemonic: {e}"))?;
        return sr25519::Keypair::from_phrase(&phrase, None).map_err(|e| e.to_string());
    }
    let uri: SecretUri = secret.parse().map_err(|e| format!("bad secret URI: {e}"))?;
    sr25519::Keypair::from_uri(&uri).map_err(|e| e.to_string())
}

/// Creates `<data_dir>/account.key` with a fresh random seed unless it exists; returns its path
/// and whether it was created. The file is created with mode 0600 and `create_new`, so an
/// existing key (or a symlink planted in its place) is never overwritten or written through.
pub fn generate_account(data_dir: &Path) -> Result<(PathBuf, bool), KeyError> {
    let path = data_dir.join(ACCOUNT_FILE);
    if path.symlink_metadata().is_ok() {
        return Ok((path, false));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io(&path, format!("no randomness: {e}")))?;
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    match create_private(&path, format!("0x{hex}\n").as_bytes()) {
        Ok(()) => Ok((path, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((path, false)),
        Err(e) => Err(io(&path, e)),
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes `bytes`.
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The node key in `data_dir` (created on first use).
pub fn node_key(data_dir: &Path) -> Result<sliver_p2p::identity::Keypair, KeyError> {
    Ok(sliver_p2p::keys::load_or_create(data_dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_come_from_uris_phrases_and_files() {
        let none = Path::new("/nonexistent");
        let alice = load_account(Some("//Alice"), none, "sliver-miner").unwrap();
        assert_eq!(
            sliver_chain::account_of(&alice),
            sliver_chain::account_of(&sliver_chain::dev_keypair("alice").unwrap())
        );
        let phrase = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
        assert!(load_account(Some(phrase), none, "sliver-miner").is_ok());
        let err = load_account(Some("not a key"), none, "sliver-miner").err().unwrap();
        assert!(err.to_string().contains("not usable"), "{err}");

        let dir = std::env::temp_dir().join(format!("sliver-op-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = load_account(None, &dir, "sliver-validator").err().unwrap();
        assert!(err.to_string().contains("sliver-validator keys --generate"), "{err}");
        let (path, created) = generate_account(&dir).unwrap();
        assert!(created);
        let a = load_account(None, &dir, "x").unwrap();
        let b = load_account(Some(path.to_str().unwrap()), &dir, "x").unwrap();
        assert_eq!(sliver_chain::account_of(&a), sliver_chain::account_of(&b));
        assert!(!generate_account(&dir).unwrap().1, "an existing key is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            // A symlink planted where the key would go is not written through.
            let other = dir.join("other");
            std::fs::create_dir_all(&other).unwrap();
            let victim = dir.join("victim");
            std::fs::write(&victim, b"theirs").unwrap();
            std::os::unix::fs::symlink(&victim, other.join(ACCOUNT_FILE)).unwrap();
            assert!(!generate_account(&other).unwrap().1);
            assert_eq!(std::fs::read(&victim).unwrap(), b"theirs");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
