//! Commit-reveal of weights, persisted so that a validator restarted between its commit and the
//! Reveal phase still reveals (a commit never revealed is a silent validator for the epoch, and
//! its stake then counts against the quorum).
//!
//! Each epoch's weights and salt are written to `<data dir>/reveals/epoch-<n>.json` (mode 0600,
//! written whole or not at all) before the commit goes out, with what has been done since.
//! The salt comes from the operating system's cryptographic RNG: with it secret, the commitment
//! hides the weights until the reveal, so no validator can copy another's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sliver_chain::Uid;

/// One epoch's weights on their way to the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The chain epoch of the commit and the reveal.
    pub epoch: u32,
    /// The audited epoch the weights score.
    pub audited: u32,
    /// Miners.
    pub uids: Vec<Uid>,
    /// Their weights.
    pub weights: Vec<u16>,
    /// The commitment's salt.
    pub salt: [u8; 32],
    /// The commit is on chain.
    pub committed: bool,
    /// The reveal is on chain.
    pub revealed: bool,
}

/// Why a pending reveal could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    /// The directory or a file cannot be written or read.
    #[error("pending reveals in {path}: {reason}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
    /// No randomness for the salt.
    #[error("no randomness for a salt: {0}")]
    Random(String),
}

/// The pending reveals of this validator.
#[derive(Clone, Debug)]
pub struct Reveals {
    dir: PathBuf,
}

impl Reveals {
    /// The store under `data_dir` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Self, RevealError> {
        let dir = data_dir.join("reveals");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(Reveals { dir })
    }

    fn path(&self, epoch: u32) -> PathBuf {
        self.dir.join(format!("epoch-{epoch}.json"))
    }

    /// A new pending entry with a fresh salt.
    pub fn prepare(
        epoch: u32,
        audited: u32,
        weights: &[(Uid, u16)],
    ) -> Result<Pending, RevealError> {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(|e| RevealError::Random(e.to_string()))?;
        Ok(Pending {
            epoch,
            audited,
            uids: weights.iter().map(|(u, _)| *u).collect(),
            weights: weights.iter().map(|(_, w)| *w).collect(),
            salt,
            committed: false,
            revealed: false,
        })
    }

    /// Writes `p` (replacing what was kept for its epoch) and drops entries older than the
    /// epoch before it.
    pub fn save(&self, p: &Pending) -> Result<(), RevealError> {
        let path = self.path(p.epoch);
        let bytes = serde_json::to_vec(p).map_err(|e| io(&path, e))?;
        sliver_p2p::keys::write_private(&path, &bytes).map_err(|e| io(&path, e))?;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let old = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("epoch-"))
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n.saturating_add(1) < p.epoch);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// What is kept for `epoch`, if anything (an unreadable file counts as nothing).
    pub fn load(&self, epoch: u32) -> Option<Pending> {
        let bytes = std::fs::read(self.path(epoch)).ok()?;
        serde_json::from_slice(&bytes).ok().filter(|p: &Pending| p.epoch == epoch)
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> RevealError {
    RevealError::Io { path: path.display().to_string(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_reveals_survive_a_restart_and_old_ones_go() {
        let dir = std::env::temp_dir().join(format!("sliver-reveals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = Reveals::open(&dir).unwrap();
        let p = Reveals::prepare(7, 6, &[(0, 10), (3, 65_535)]).unwrap();
        assert_ne!(p.salt, Reveals::prepare(7, 6, &[(0, 1)]).unwrap().salt, "fresh salts");
        r.save(&p).unwrap();
        let again = Reveals::open(&dir).unwrap();
        assert_eq!(again.load(7), Some(p.clone()));
        assert_eq!(again.load(8), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("reveals/epoch-7.json")).unwrap().permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        let later = Pending { epoch: 9, committed: true, ..p };
        again.save(&later).unwrap();
        assert_eq!(again.load(7), None, "two epochs back is dropped");
        assert_eq!(again.load(9).unwrap().committed, true);
        std::fs::write(dir.join("reveals/epoch-9.json"), b"{not json").unwrap();
        assert_eq!(again.load(9), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
