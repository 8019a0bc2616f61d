//! The miner's ledger: hours contributed and earnings, across runs and restarts, kept in
//! `<data dir>/ledger.toml` for `sliver-miner status`.
//!
//! - Time: the seconds spent training (inside the availability windows) and the tokens and
//!   optimiser steps, per training run, plus the availability windows joined.
//! - Earnings: the chain pays miners by transfer at epoch settlement and records each payout as
//!   a `MinerPaid` event. While it runs, the miner scans every finalized block for payouts to
//!   its account and adds them up; after a restart it resumes from the last block it scanned
//!   (as far back as the node keeps block state: a pruning node keeps 256 blocks by default,
//!   so payouts made while the miner was down for longer are missed; the account's balance on
//!   chain stays the authority).
//!
//! The file is rewritten whole (to a temporary file, then renamed), so a crash leaves the old
//! or the new version, never half of one. One task keeps it ([`LedgerKeeper`]): it adds the
//! work the telemetry task counted and the payouts it finds through the chain task, every 10 s
//! and when asked to flush.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sliver_chain::AccountId;
use sliver_operator::chain::ChainHandle;
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::{Event, Telemetry};

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading failed.
    #[error("cannot read the ledger {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not a ledger.
    #[error("bad ledger {path}: {reason} (move it away to start a new one)")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write the ledger {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Work done in one training run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunEntry {
    /// Seconds spent training.
    pub trained_secs: f64,
    /// Tokens trained.
    pub tokens: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Availability windows joined (a start counts as one).
    pub windows: u64,
}

/// What `ledger.toml` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ledger {
    /// Per training run, by `run-<id>`.
    pub runs: BTreeMap<String, RunEntry>,
    /// Earned as a miner, in plancks (a decimal string: TOML has no 128-bit integers).
    pub earned: String,
    /// Payouts received.
    pub payouts: u64,
    /// Last finalized block scanned for payouts.
    pub scanned_to: u32,
    /// The account the earnings belong to (another account starts the earnings afresh).
    pub account: String,
}

impl Ledger {
    /// Where the ledger of `data_dir` lives.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("ledger.toml")
    }

    /// Reads the ledger (empty if there is none yet).
    pub fn load(path: &Path) -> Result<Self, LedgerError> {
        let p = || path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| LedgerError::Parse { path: p(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(LedgerError::Read { path: p(), reason: e.to_string() }),
        }
    }

    /// Writes the ledger atomically.
    pub fn save(&self, path: &Path) -> Result<(), LedgerError> {
        let write = |e: String| LedgerError::Write { path: path.display().to_string(), reason: e };
        let text = toml::to_string(self).map_err(|e| write(e.to_string()))?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| write(e.to_string()))
    }

    /// Earned so far, in plancks.
    pub fn earned(&self) -> u128 {
        self.earned.parse().unwrap_or(0)
    }

    /// Adds a payout.
    pub fn add_earnings(&mut self, amount: u128, payouts: u32) {
        self.earned = self.earned().saturating_add(amount).to_string();
        self.payouts = self.payouts.saturating_add(payouts as u64);
    }

    /// Makes the earnings those of `account`: a ledger of another account starts them afresh.
    pub fn for_account(&mut self, account: &str) {
        if self.account != account {
            self.account = account.to_string();
            self.earned = "0".into();
            self.payouts = 0;
            self.scanned_to = 0;
        }
    }

    /// The entry of run `id`.
    pub fn run(&mut self, id: u32) -> &mut RunEntry {
        self.runs.entry(format!("run-{id}")).or_default()
    }

    /// Hours trained over all runs.
    pub fn hours(&self) -> f64 {
        self.runs.values().map(|r| r.trained_secs).sum::<f64>() / 3600.0
    }
}

/// Blocks a pruning node still holds the state of, behind its finalized head.
const SCAN_BACK: u32 = 250;

enum Cmd {
    Window,
    Flush(oneshot::Sender<()>),
}

/// Handle to the task that keeps the ledger; cheap to clone.
#[derive(Clone)]
pub struct LedgerKeeper {
    tx: mpsc::Sender<Cmd>,
}

/// This process's figures the ledger already holds.
#[derive(Default)]
struct Seen {
    trained_secs: f64,
    tokens: u64,
    steps: u64,
}

impl LedgerKeeper {
    /// Starts keeping `book` (of `who`, saved to `path`) for run `run`.
    pub fn spawn(
        book: Ledger,
        path: PathBuf,
        chain: ChainHandle,
        telemetry: Telemetry,
        who: AccountId,
        run: u32,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        telemetry.send(Event::Earned(book.earned()));
        tokio::spawn(keep(book, path, chain, telemetry, who, run, rx));
        LedgerKeeper { tx }
    }

    /// Counts an availability window joined.
    pub fn window_joined(&self) {
        let _ = self.tx.try_send(Cmd::Window);
    }

    /// Adds the work done so far and saves, now.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn keep(
    mut book: Ledger,
    path: PathBuf,
    chain: ChainHandle,
    telemetry: Telemetry,
    who: AccountId,
    run: u32,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        let flushed = tokio::select! {
            _ = tick.tick() => {
                match scan_payouts(&chain, &mut book, &who).await {
                    Ok(paid) if paid > 0 => telemetry.send(Event::Earned(book.earned())),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "payout scan interrupted; retried in 10 s"),
                }
                None
            }
            cmd = rx.recv() => match cmd {
                Some(Cmd::Window) => {
                    book.run(run).windows += 1;
                    None
                }
                Some(Cmd::Flush(reply)) => Some(reply),
                None => return,
            },
        };
        let f = telemetry.figures().await;
        let entry = book.run(run);
        entry.trained_secs += (f.trained_secs - seen.trained_secs).max(0.0);
        entry.tokens += f.tokens.saturating_sub(seen.tokens);
        entry.steps += f.steps.saturating_sub(seen.steps);
        seen = Seen { trained_secs: f.trained_secs, tokens: f.tokens, steps: f.steps };
        if let Err(e) = book.save(&path) {
            tracing::warn!("{e}");
        }
        if let Some(reply) = flushed {
            let _ = reply.send(());
        }
    }
}

/// Adds the payouts to `who` in the finalized blocks since the last scan; returns how many.
async fn scan_payouts(
    chain: &ChainHandle,
    book: &mut Ledger,
    who: &AccountId,
) -> Result<u32, sliver_operator::chain::ChainTaskError> {
    let from = book.scanned_to.saturating_add(1);
    let who = *who;
    let found = chain
        .call(move |c| async move {
            let head = c.head().await?.finalized as u32;
            let mut out = Vec::new();
            for block in from.max(head.saturating_sub(SCAN_BACK))..=head {
                let (amount, count) = c.miner_payouts_at(block, &who).await?;
                out.push((block, amount, count));
            }
            Ok(out)
        })
        .await?;
    let mut paid = 0;
    for (block, amount, count) in found {
        if count > 0 {
            book.add_earnings(amount, count);
            paid += count;
            tracing::info!(block, amount = %slv(amount), total = %slv(book.earned()), "paid");
        }
        book.scanned_to = block;
    }
    Ok(paid)
}

/// `amount` plancks as SLV with 12 decimals.
pub fn slv(amount: u128) -> String {
    format!("{}.{:012} SLV", amount / 1_000_000_000_000, amount % 1_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_adds_up() {
        let dir = std::env::temp_dir().join(format!("sliver-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Ledger::path(&dir);
        let _ = std::fs::remove_file(&path);
        let mut l = Ledger::load(&path).unwrap();
        assert_eq!(l, Ledger::default());
        l.for_account("alice");
        l.run(1).trained_secs += 5400.0;
        l.run(2).trained_secs += 1800.0;
        l.run(2).windows += 1;
        // More than u64 can hold: the amount survives the file.
        let big = u64::MAX as u128 * 3;
        l.add_earnings(big, 2);
        l.add_earnings(7, 1);
        l.scanned_to = 99;
        l.save(&path).unwrap();
        let back = Ledger::load(&path).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.earned(), big + 7);
        assert_eq!(back.payouts, 3);
        assert!((back.hours() - 2.0).abs() < 1e-9);
        assert_eq!(slv(1_500_000_000_000), "1.500000000000 SLV");

        let mut other = back.clone();
        other.for_account("bob");
        assert_eq!((other.earned(), other.payouts, other.scanned_to), (0, 0, 0));
        assert_eq!(other.runs, back.runs, "hours belong to the machine, not the account");

        std::fs::write(&path, "earned = 3\n").unwrap();
        assert!(Ledger::load(&path).unwrap_err().to_string().contains("bad ledger"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
