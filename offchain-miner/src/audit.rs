//! The audit log: what a validator needs to recompute any micro-batch this miner trained in the
//! current and the previous epoch, kept on disk and served on request.
//!
//! Per micro-batch (keyed by route, step and index, as the frames name it) the log keeps every
//! frame the miner received and sent: the encoded header (its BLAKE3 is what receipts sign), the
//! receipt its neighbour signed for each frame it sent, and the payload; each micro-batch names
//! the hash of the weights (f32, the `SLVF1` format of [`crate::merge`]) its forward ran with.
//! Per optimiser step it keeps a [`StepEntry`]: the micro-batches summed, in order, the
//! learning rate and clip factor, the weights' hashes before and after. Every few steps (see
//! [`crate::stage`]) it keeps the weights and the optimiser state (`SLVO1`) themselves. From
//! such a snapshot, the inputs (tokens rebuilt by deterministic sampling on the first sliver,
//! the received activation otherwise) and the received gradients, a validator replays the
//! steps after it and compares every output with the payload hashes in the headers the
//! neighbours signed for, and every step's result with the hash recorded.
//!
//! On disk: one append-only file per epoch, `epoch-<n>.log` under `<data dir>/audit/run-<id>/`,
//! starting with `SLVA1`, then entries `[b'W'][len u32][blob]` (weights or optimiser state),
//! `[b'T'][len u32][step record]` and
//! `[b'F'][has weights u8][weights hash 32?][header len u16][header][receipt len u16][receipt]
//! [payload len u32][payload]` (little-endian). The index lives in memory and is rebuilt from the
//! files when the miner restarts, by streaming each file (headers and receipts are read,
//! payloads skipped, snapshots hashed in chunks: memory stays bounded whatever the file's
//! size); a torn last entry (the process was killed mid-write) is cut off.
//!
//! Only frames the stage accepted from the neighbours the chain assigned it enter the log (the
//! stage records after its gate and its own checks), so a stranger cannot fill the budget.
//! Audits are answered to registered validators only (the transport refuses the others), at
//! most [`MAX_CONCURRENT`] at once, and the blobs they publish go to the transport's audit
//! store, apart from the pseudo-gradients and weights replicas fetch.
//!
//! Epochs older than the previous one are deleted at each boundary. A restarted miner appends
//! to the log of its current epoch: it numbers its steps from the time when it enters a sliver
//! (`Stage::start_steps_at`), so it never repeats a key, and what it did before the restart
//! stays auditable.
//!
//! The log stops growing at its disk budget (a warning says so once per epoch); micro-batches
//! not recorded are answered "not kept" and earn nothing. A snapshot costs three times the
//! sliver's size in f32 (5.2 MB for a sliver of the dev run's model) once per segment of
//! steps; a middle sliver also keeps its weights at every step. See docs/miner.md.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sliver_p2p::control::{
    MAX_AUDIT_BLOBS, MAX_INDEX_ENTRIES, MAX_INDEX_SENT, MAX_STEP_BATCHES, MAX_STEP_ENTRIES,
};
use sliver_p2p::{
    AuditAnswer, AuditAsk, AuditBlobsRequest, AuditIndexPage, AuditIndexRequest, AuditKey,
    AuditQuery, AuditRequest, AuditStepsPage, AuditStepsRequest, AuditedFrame, Client, FrameHeader,
    IndexEntry, StepEntry,
};
use tokio::sync::{mpsc, Semaphore};

use crate::telemetry::{Event, Telemetry};

const MAGIC: &[u8; 5] = b"SLVA1";
/// Audits answered at once at most; more wait in the transport's queue (then "busy").
pub const MAX_CONCURRENT: usize = 2;
/// Longest receipt kept (a `Reply::Accepted` encoding is about 110 bytes for ed25519).
const MAX_RECEIPT: usize = 4096;

/// Longest step record on disk.
const MAX_STEP_RECORD: usize = 32 + 32 + 33 + 8 + 8 + 8 + 1 + 2 + MAX_STEP_BATCHES * 24;

/// Route, step, micro-batch.
type Key = (u64, u64, u64);

#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    len: u64,
}

#[derive(Clone, Debug)]
struct FrameEntry {
    header: Vec<u8>,
    receipt: Option<Vec<u8>>,
    payload: Span,
}

#[derive(Clone, Debug, Default)]
struct Record {
    weights: Option<[u8; 32]>,
    frames: Vec<FrameEntry>,
}

struct EpochLog {
    path: PathBuf,
    file: File,
    len: u64,
    /// Created by this process (a log left by an earlier process is read-only).
    writable: bool,
    weights: HashMap<[u8; 32], Span>,
    records: HashMap<Key, Record>,
    /// Optimiser steps, in the order they were taken.
    steps: Vec<StepEntry>,
    /// Blobs published to answer audits of this epoch (withdrawn when the epoch is dropped).
    published: Vec<[u8; 32]>,
    full: bool,
}

struct Inner {
    dir: PathBuf,
    run: u64,
    budget: u64,
    epochs: BTreeMap<u64, EpochLog>,
    current: Option<u64>,
}

/// Figures of the log, for the status line and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Epochs held.
    pub epochs: usize,
    /// Micro-batches recorded (all epochs held).
    pub micro_batches: usize,
    /// Weight snapshots recorded.
    pub snapshots: usize,
    /// Bytes on disk.
    pub bytes: u64,
}

/// What [`AuditLog::answer`] found: the answer, and the blobs to publish before sending it
/// (the weights snapshot and every payload), by hash.
pub struct Found {
    /// The answer for the validator.
    pub answer: AuditAnswer,
    /// Blob bytes the answer names.
    pub blobs: Vec<Vec<u8>>,
}

/// The miner's audit log (cheap to clone; one lock inside).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Inner>>,
}

impl AuditLog {
    /// Opens the log of training run `run` under `dir` (created if missing), reading the
    /// epochs an earlier process left. At most `budget` bytes are written.
    pub fn open(dir: &Path, run: u64, budget: u64) -> std::io::Result<Self> {
        let dir = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&dir)?;
        let mut epochs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(epoch) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            match EpochLog::load(&path) {
                Ok(log) => {
                    epochs.insert(epoch, log);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "audit log unreadable; removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(AuditLog {
            inner: Arc::new(Mutex::new(Inner { dir, run, budget, epochs, current: None })),
        })
    }

    /// Starts recording `epoch` (a new log; nothing changes if it is current already or older
    /// than the current one) and drops the epochs before the previous one. Returns the blobs
    /// published for the dropped epochs' audits, for the caller to withdraw.
    pub fn begin_epoch(&self, epoch: u64) -> Vec<[u8; 32]> {
        let Ok(mut inner) = self.inner.lock() else { return Vec::new() };
        if inner.current.is_some_and(|c| c >= epoch) {
            return Vec::new();
        }
        inner.current = Some(epoch);
        let mut withdrawn = Vec::new();
        let stale: Vec<u64> =
            inner.epochs.keys().copied().filter(|e| e.saturating_add(1) < epoch).collect();
        for e in stale {
            if let Some(log) = inner.epochs.remove(&e) {
                withdrawn.extend(log.published);
                let _ = std::fs::remove_file(&log.path);
            }
        }
        let path = inner.dir.join(format!("epoch-{epoch}.log"));
        if let Some(old) = inner.epochs.get_mut(&epoch) {
            // Left by an earlier process of this miner: it stays answerable and new entries are
            // appended after it.
            old.writable = true;
            return withdrawn;
        }
        match EpochLog::create(&path) {
            Ok(log) => {
                inner.epochs.insert(epoch, log);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the audit log; this epoch is not auditable")
            }
        }
        withdrawn
    }

    /// Records the weights snapshot `bytes` for `epoch`; returns its BLAKE3 hash, or `None` if
    /// the epoch is not being recorded or the budget is spent.
    pub fn snapshot(&self, epoch: u64, bytes: &[u8]) -> Option<[u8; 32]> {
        let hash = *blake3::hash(bytes).as_bytes();
        let mut inner = self.inner.lock().ok()?;
        let room = inner.room();
        let log = inner.epochs.get_mut(&epoch).filter(|l| l.writable)?;
        if log.weights.contains_key(&hash) {
            return Some(hash);
        }
        let mut entry = Vec::with_capacity(5);
        entry.push(b'W');
        entry.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        let offset = log.append(&[&entry, bytes], room, epoch)?;
        log.weights.insert(hash, Span { offset: offset + 5, len: bytes.len() as u64 });
        Some(hash)
    }

    /// Whether `epoch` is being recorded (and the budget is not spent).
    pub fn recording(&self, epoch: u64) -> bool {
        let Ok(inner) = self.inner.lock() else { return false };
        inner.epochs.get(&epoch).is_some_and(|l| l.writable && !l.full)
    }

    /// Records one optimiser step of `epoch` (see [`StepEntry`]); `false` if it was not
    /// recorded (not recording, over the budget, or more micro-batches than a record holds).
    pub fn step(&self, epoch: u64, step: StepEntry) -> bool {
        if step.batches.len() > MAX_STEP_BATCHES {
            tracing::warn!(
                batches = step.batches.len(),
                "a step of more micro-batches than an audit record holds; not recorded"
            );
            return false;
        }
        let Ok(mut inner) = self.inner.lock() else { return false };
        let room = inner.room();
        let Some(log) = inner.epochs.get_mut(&epoch).filter(|l| l.writable) else {
            return false;
        };
        let body = encode_step(&step);
        let mut head = vec![b'T'];
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        if log.append(&[&head, &body], room, epoch).is_none() {
            return false;
        }
        log.steps.push(step);
        true
    }

    /// A page of the step records of `req.epoch` from position `req.from`; `None` if the epoch
    /// is not held. Memory only.
    pub fn steps_page(&self, req: &AuditStepsRequest) -> Option<AuditStepsPage> {
        let inner = self.inner.lock().ok()?;
        if req.run != inner.run {
            return None;
        }
        let log = inner.epochs.get(&req.epoch)?;
        let from = (req.from as usize).min(log.steps.len());
        let to = (from + MAX_STEP_ENTRIES).min(log.steps.len());
        Some(AuditStepsPage { steps: log.steps[from..to].to_vec(), more: to < log.steps.len() })
    }

    /// The bytes of the kept blobs (weights and optimiser-state snapshots) among
    /// `req.hashes`, by hash. Reads the disk: call it off the async threads.
    pub fn blobs(&self, req: &AuditBlobsRequest) -> std::io::Result<Vec<([u8; 32], Vec<u8>)>> {
        let (file, spans) = {
            let Ok(inner) = self.inner.lock() else { return Ok(Vec::new()) };
            if req.run != inner.run {
                return Ok(Vec::new());
            }
            let Some(log) = inner.epochs.get(&req.epoch) else { return Ok(Vec::new()) };
            let spans: Vec<([u8; 32], Span)> = req
                .hashes
                .iter()
                .take(MAX_AUDIT_BLOBS)
                .filter_map(|h| log.weights.get(h).map(|s| (*h, *s)))
                .collect();
            (log.file.try_clone()?, spans)
        };
        spans.into_iter().map(|(h, span)| Ok((h, read(&file, span)?))).collect()
    }

    /// Records one frame received or sent in `header.epoch` (with the neighbour's receipt bytes
    /// for a frame sent), and, for the frame that started the micro-batch's forward here, the
    /// weights snapshot it ran with.
    pub fn record(
        &self,
        weights: Option<[u8; 32]>,
        header: &FrameHeader,
        receipt: Option<Vec<u8>>,
        payload: &[u8],
    ) {
        // A test-only cheat may claim made-up work next to what was sent (see `crate::cheat`).
        let claim = receipt.as_ref().and_then(|_| crate::cheat::extra_claim(header));
        self.record_one(weights, header, receipt, payload);
        if let Some((fake, r)) = claim {
            let w = weights.or_else(|| {
                let inner = self.inner.lock().ok()?;
                inner.epochs.get(&fake.epoch)?.weights.keys().next().copied()
            });
            self.record_one(w, &fake, Some(r), payload);
        }
    }

    fn record_one(
        &self,
        weights: Option<[u8; 32]>,
        header: &FrameHeader,
        receipt: Option<Vec<u8>>,
        payload: &[u8],
    ) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let room = inner.room();
        let Some(log) = inner.epochs.get_mut(&header.epoch).filter(|l| l.writable) else {
            return;
        };
        let head = header.encode();
        let receipt = receipt.filter(|r| r.len() <= MAX_RECEIPT);
        let mut entry = Vec::with_capacity(64 + head.len());
        entry.push(b'F');
        match weights {
            Some(w) => {
                entry.push(1);
                entry.extend_from_slice(&w);
            }
            None => entry.push(0),
        }
        entry.extend_from_slice(&(head.len() as u16).to_le_bytes());
        entry.extend_from_slice(&head);
        let r = receipt.as_deref().unwrap_or_default();
        entry.extend_from_slice(&(r.len() as u16).to_le_bytes());
        entry.extend_from_slice(r);
        entry.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let Some(offset) = log.append(&[&entry, payload], room, header.epoch) else { return };
        let span = Span { offset: offset + entry.len() as u64, len: payload.len() as u64 };
        log.index(header, weights, head, receipt, span);
    }

    /// The account of the micro-batch `req` asks for, if it is kept: headers, receipts, and
    /// the bytes of the weights snapshot and payloads to serve as blobs. Reads the disk: call it
    /// off the async threads.
    pub fn answer(&self, req: &AuditRequest) -> std::io::Result<Option<Found>> {
        // What to read, taken under the lock; the reads happen without it, so that training
        // (which records under the same lock) does not wait for the disk.
        let (file, weights, frames) = {
            let Ok(inner) = self.inner.lock() else { return Ok(None) };
            if req.run != inner.run {
                return Ok(None);
            }
            let Some(log) = inner.epochs.get(&req.epoch) else { return Ok(None) };
            let Some(record) = log.records.get(&(req.route, req.step, req.micro_batch)) else {
                return Ok(None);
            };
            let Some(weights) = record.weights else { return Ok(None) };
            let frames: Vec<FrameEntry> =
                record.frames.iter().take(sliver_p2p::control::MAX_AUDIT_FRAMES).cloned().collect();
            (log.file.try_clone()?, weights, frames)
        };
        // The weights are named, not served: kept snapshots are asked for by hash
        // (`AuditBlobs`).
        let mut blobs = Vec::new();
        let mut answered = Vec::new();
        for f in frames {
            blobs.push(read(&file, f.payload)?);
            answered.push(AuditedFrame {
                header: f.header,
                receipt: f.receipt,
                payload_published: true,
            });
        }
        Ok(Some(Found { answer: AuditAnswer { weights, frames: answered }, blobs }))
    }

    /// A page of the index of `req.epoch`: the kept micro-batches (those with a weights
    /// snapshot) after `req.after`, in key order, each with the frames this miner sent for it
    /// and their receipts. `None` if the epoch is not held. Memory only, no disk.
    pub fn index_page(&self, req: &AuditIndexRequest) -> Option<AuditIndexPage> {
        let inner = self.inner.lock().ok()?;
        if req.run != inner.run {
            return None;
        }
        let log = inner.epochs.get(&req.epoch)?;
        let mut keys: Vec<AuditKey> = log
            .records
            .iter()
            .filter(|(_, r)| r.weights.is_some())
            .map(|(&(route, step, micro_batch), _)| AuditKey { route, step, micro_batch })
            .filter(|k| req.after.is_none_or(|a| a < *k))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > MAX_INDEX_ENTRIES;
        keys.truncate(MAX_INDEX_ENTRIES);
        let entries = keys
            .into_iter()
            .map(|key| {
                let record = &log.records[&(key.route, key.step, key.micro_batch)];
                let sent = record
                    .frames
                    .iter()
                    .filter(|f| f.receipt.is_some())
                    .take(MAX_INDEX_SENT)
                    .map(|f| AuditedFrame {
                        header: f.header.clone(),
                        receipt: f.receipt.clone(),
                        payload_published: false,
                    })
                    .collect();
                IndexEntry { key, sent }
            })
            .collect();
        Some(AuditIndexPage { entries, more })
    }

    /// Notes blobs published to answer an audit of `epoch`, to withdraw with the epoch.
    pub fn note_published(&self, epoch: u64, hashes: impl IntoIterator<Item = [u8; 32]>) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(log) = inner.epochs.get_mut(&epoch) {
                log.published.extend(hashes);
            }
        }
    }

    /// Figures for the status line.
    pub fn stats(&self) -> AuditStats {
        let Ok(inner) = self.inner.lock() else { return AuditStats::default() };
        AuditStats {
            epochs: inner.epochs.len(),
            micro_batches: inner.epochs.values().map(|l| l.records.len()).sum(),
            snapshots: inner.epochs.values().map(|l| l.weights.len()).sum(),
            bytes: inner.used(),
        }
    }
}

impl Inner {
    fn used(&self) -> u64 {
        self.epochs.values().map(|l| l.len).sum()
    }

    fn room(&self) -> u64 {
        self.budget.saturating_sub(self.used())
    }
}

impl EpochLog {
    fn create(path: &Path) -> std::io::Result<Self> {
        let mut file =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        file.write_all(MAGIC)?;
        Ok(EpochLog {
            path: path.to_path_buf(),
            file,
            len: MAGIC.len() as u64,
            writable: true,
            weights: HashMap::new(),
            records: HashMap::new(),
            steps: Vec::new(),
            published: Vec::new(),
            full: false,
        })
    }

    /// Reads a log an earlier process wrote, streaming it, and cuts off a torn last entry.
    fn load(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let mut scan =
            Scan { r: BufReader::with_capacity(64 << 10, file.try_clone()?), at: 0, len };
        if scan.take(MAGIC.len())?.as_deref() != Some(MAGIC.as_slice()) {
            return Err(std::io::Error::other("not a Sliver audit log"));
        }
        let mut log = EpochLog {
            path: path.to_path_buf(),
            file,
            len: MAGIC.len() as u64,
            writable: false,
            weights: HashMap::new(),
            records: HashMap::new(),
            steps: Vec::new(),
            published: Vec::new(),
            full: false,
        };
        loop {
            let start = scan.at;
            match scan.entry()? {
                Some(Entry::Weights(hash, span)) => {
                    log.weights.insert(hash, span);
                }
                Some(Entry::Step(step)) => log.steps.push(step),
                Some(Entry::Frame { weights, header, receipt, payload }) => {
                    if let Ok(h) = FrameHeader::decode(&header) {
                        log.index(&h, weights, header, receipt, payload);
                    }
                }
                None => {
                    if start < len {
                        tracing::warn!(path = %path.display(), cut = len - start, "audit log ended in a torn entry; cut off");
                        log.file.set_len(start)?;
                    }
                    log.len = start;
                    break;
                }
            }
        }
        Ok(log)
    }

    /// Appends `parts` as one entry; returns its offset, or `None` if it does not fit in `room`
    /// or cannot be written.
    fn append(&mut self, parts: &[&[u8]], room: u64, epoch: u64) -> Option<u64> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.full {
            return None;
        }
        if len > room {
            self.full = true;
            tracing::warn!(
                epoch,
                "the audit log reached its disk budget (audit_disk_mib); later micro-batches of \
                 this epoch are not auditable"
            );
            return None;
        }
        let offset = self.len;
        for p in parts {
            if let Err(e) = self.file.write_all_at(p, self.len) {
                tracing::warn!(error = %e, "audit log write failed; this epoch stops recording");
                self.full = true;
                // Leave no torn entry behind.
                let _ = self.file.set_len(offset);
                self.len = offset;
                return None;
            }
            self.len += p.len() as u64;
        }
        Some(offset)
    }

    fn index(
        &mut self,
        header: &FrameHeader,
        weights: Option<[u8; 32]>,
        head: Vec<u8>,
        receipt: Option<Vec<u8>>,
        payload: Span,
    ) {
        let record =
            self.records.entry((header.route, header.step, header.micro_batch)).or_default();
        if record.weights.is_none() {
            record.weights = weights;
        }
        if record.frames.len() < sliver_p2p::control::MAX_AUDIT_FRAMES {
            record.frames.push(FrameEntry { header: head, receipt, payload });
        }
    }
}

fn encode_step(s: &StepEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + 24 * s.batches.len());
    b.extend_from_slice(&s.before);
    b.extend_from_slice(&s.after);
    match s.optim {
        Some(h) => {
            b.push(1);
            b.extend_from_slice(&h);
        }
        None => b.push(0),
    }
    b.extend_from_slice(&s.schedule_step.to_le_bytes());
    b.extend_from_slice(&s.lr.to_le_bytes());
    b.extend_from_slice(&s.factor.to_le_bytes());
    b.push(u8::from(s.skipped));
    b.extend_from_slice(&(s.batches.len() as u16).to_le_bytes());
    for k in &s.batches {
        for v in [k.route, k.step, k.micro_batch] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

fn decode_step(b: &[u8]) -> Option<StepEntry> {
    let mut r = b;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (r.get(..n)?, r.get(n..)?);
        r = rest;
        Some(head)
    };
    let before: [u8; 32] = take(32)?.try_into().ok()?;
    let after: [u8; 32] = take(32)?.try_into().ok()?;
    let optim = match take(1)?[0] {
        0 => None,
        1 => Some(take(32)?.try_into().ok()?),
        _ => return None,
    };
    let u64_of = |b: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(b.try_into().ok()?)) };
    let schedule_step = u64_of(take(8)?)?;
    let lr = f64::from_bits(u64_of(take(8)?)?);
    let factor = f64::from_bits(u64_of(take(8)?)?);
    let skipped = match take(1)?[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let n = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    if n > MAX_STEP_BATCHES {
        return None;
    }
    let mut batches = Vec::with_capacity(n);
    for _ in 0..n {
        let (route, step, micro_batch) = (u64_of(take(8)?)?, u64_of(take(8)?)?, u64_of(take(8)?)?);
        batches.push(AuditKey { route, step, micro_batch });
    }
    if !r.is_empty() {
        return None;
    }
    Some(StepEntry { before, after, optim, schedule_step, lr, factor, skipped, batches })
}

fn read(file: &File, span: Span) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; span.len as usize];
    file.read_exact_at(&mut buf, span.offset)?;
    Ok(buf)
}

enum Entry {
    Weights([u8; 32], Span),
    Step(StepEntry),
    Frame { weights: Option<[u8; 32]>, header: Vec<u8>, receipt: Option<Vec<u8>>, payload: Span },
}

/// Reads a log file entry by entry without holding more than one header and receipt.
struct Scan {
    r: BufReader<File>,
    at: u64,
    len: u64,
}

impl Scan {
    /// `n` bytes, or `None` if the file ends first.
    fn take(&mut self, n: usize) -> std::io::Result<Option<Vec<u8>>> {
        if self.len - self.at < n as u64 {
            return Ok(None);
        }
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf)?;
        self.at += n as u64;
        Ok(Some(buf))
    }

    fn array<const N: usize>(&mut self) -> std::io::Result<Option<[u8; N]>> {
        Ok(self.take(N)?.and_then(|v| v.try_into().ok()))
    }

    /// Skips `n` bytes (or hashes them), `None` if the file ends first.
    fn pass(&mut self, n: u64, hash: bool) -> std::io::Result<Option<(Span, [u8; 32])>> {
        if self.len - self.at < n {
            return Ok(None);
        }
        let span = Span { offset: self.at, len: n };
        let mut h = blake3::Hasher::new();
        if hash {
            let mut left = n;
            let mut buf = vec![0u8; (64 << 10).min(n as usize).max(1)];
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                self.r.read_exact(&mut buf[..k])?;
                h.update(&buf[..k]);
                left -= k as u64;
            }
        } else {
            self.r.seek_relative(n as i64)?;
        }
        self.at += n;
        Ok(Some((span, *h.finalize().as_bytes())))
    }

    /// The next entry; `None` at the end of the file or at a torn or malformed entry.
    fn entry(&mut self) -> std::io::Result<Option<Entry>> {
        let Some([kind]) = self.array::<1>()? else { return Ok(None) };
        match kind {
            b'W' => {
                let Some(len) = self.array::<4>()? else { return Ok(None) };
                let Some((span, hash)) = self.pass(u32::from_le_bytes(len) as u64, true)? else {
                    return Ok(None);
                };
                Ok(Some(Entry::Weights(hash, span)))
            }
            b'T' => {
                let Some(len) = self.array::<4>()? else { return Ok(None) };
                let len = u32::from_le_bytes(len) as usize;
                if len > MAX_STEP_RECORD {
                    return Ok(None);
                }
                let Some(body) = self.take(len)? else { return Ok(None) };
                Ok(decode_step(&body).map(Entry::Step))
            }
            b'F' => {
                let weights = match self.array::<1>()? {
                    Some([0]) => None,
                    Some([1]) => match self.array::<32>()? {
                        Some(w) => Some(w),
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                };
                let Some(hl) = self.array::<2>()? else { return Ok(None) };
                let hl = u16::from_le_bytes(hl) as usize;
                if hl > sliver_p2p::frame::MAX_HEADER_LEN {
                    return Ok(None);
                }
                let Some(header) = self.take(hl)? else { return Ok(None) };
                let Some(rl) = self.array::<2>()? else { return Ok(None) };
                let rl = u16::from_le_bytes(rl) as usize;
                if rl > MAX_RECEIPT {
                    return Ok(None);
                }
                let receipt = match rl {
                    0 => None,
                    n => match self.take(n)? {
                        Some(r) => Some(r),
                        None => return Ok(None),
                    },
                };
                let Some(pl) = self.array::<4>()? else { return Ok(None) };
                let Some((payload, _)) = self.pass(u32::from_le_bytes(pl) as u64, false)? else {
                    return Ok(None);
                };
                Ok(Some(Entry::Frame { weights, header, receipt, payload }))
            }
            _ => Ok(None),
        }
    }
}

/// Answers validators' audits from `log`, at most [`MAX_CONCURRENT`] at once: the log is read
/// off the async threads, the weights snapshot and payloads are published in the transport's
/// audit store, then the answer goes out (well within the asker's request timeout for what the
/// log holds).
pub async fn serve(
    log: AuditLog,
    client: Client,
    mut queries: mpsc::Receiver<AuditQuery>,
    telemetry: Telemetry,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    while let Some(q) = queries.recv().await {
        let req = match q.request.clone() {
            AuditAsk::MicroBatch(req) => req,
            AuditAsk::Steps(req) => {
                let page = log.steps_page(&req);
                tracing::debug!(peer = %q.peer, ?req, kept = page.is_some(), "audit steps answered");
                q.respond_steps(page).await;
                continue;
            }
            AuditAsk::Blobs(req) => {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (log, client) = (log.clone(), client.clone());
                tokio::spawn(async move {
                    let l = log.clone();
                    let r = req.clone();
                    let found = match tokio::task::spawn_blocking(move || l.blobs(&r)).await {
                        Ok(Ok(found)) => found,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "audit log unreadable");
                            Vec::new()
                        }
                        Err(_) => Vec::new(),
                    };
                    let mut published = Vec::new();
                    for (hash, bytes) in found {
                        match client.publish_audit_blob(bytes) {
                            Ok(h) if h == hash => published.push(h),
                            Ok(_) => tracing::warn!("an audit blob changed on disk; not served"),
                            Err(e) => tracing::warn!(error = %e, "audit blob not published"),
                        }
                    }
                    log.note_published(req.epoch, published.iter().copied());
                    q.respond_blobs(published).await;
                    drop(slot);
                });
                continue;
            }
            AuditAsk::Index(req) => {
                // From memory: answered at once, outside the slots.
                let page = log.index_page(&req);
                tracing::debug!(peer = %q.peer, ?req, kept = page.is_some(), "audit index answered");
                q.respond_index(page).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (log, client, telemetry) = (log.clone(), client.clone(), telemetry.clone());
        telemetry.send(Event::Audit { answered: None });
        tokio::spawn(async move {
            let l = log.clone();
            let answer = match tokio::task::spawn_blocking(move || l.answer(&req)).await {
                Ok(Ok(Some(found))) => {
                    let mut hashes = Vec::new();
                    for b in found.blobs {
                        match client.publish_audit_blob(b) {
                            Ok(h) => hashes.push(h),
                            Err(e) => tracing::warn!(error = %e, "audit blob not published"),
                        }
                    }
                    log.note_published(req.epoch, hashes);
                    Some(found.answer)
                }
                Ok(Ok(None)) | Err(_) => None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "audit log unreadable");
                    None
                }
            };
            tracing::debug!(peer = %q.peer, ?req, kept = answer.is_some(), "audit answered");
            telemetry.send(Event::Audit { answered: Some(answer.is_some()) });
            q.respond(answer).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sliver_p2p::Direction;

    fn header(epoch: u64, step: u64, mb: u64, direction: Direction) -> (FrameHeader, Vec<u8>) {
        let values: Vec<f32> = (0..8).map(|i| (i + step * 10 + mb) as f32).collect();
        let payload = sliver_wire::encode(sliver_wire::WireCodec::F32, &[2, 4], &values);
        let h = FrameHeader::for_payload(7, epoch, step, mb, 1, 0, direction, &payload).unwrap();
        (h, payload)
    }

    fn req(epoch: u64, step: u64, mb: u64) -> AuditRequest {
        AuditRequest { run: 7, epoch, route: 1, step, micro_batch: mb }
    }

    #[test]
    fn records_answers_and_survives_a_restart() {
        let dir = tempdir();
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        assert!(log.begin_epoch(3).is_empty());
        let w = log.snapshot(3, b"weights of step 0").unwrap();
        let (h0, p0) = header(3, 0, 0, Direction::Activation);
        log.record(Some(w), &h0, Some(b"receipt".to_vec()), &p0);
        let (h1, p1) = header(3, 0, 0, Direction::Gradient);
        log.record(None, &h1, None, &p1);

        let found = log.answer(&req(3, 0, 0)).unwrap().unwrap();
        assert_eq!(found.answer.weights, w);
        assert_eq!(found.answer.frames.len(), 2);
        assert_eq!(found.answer.frames[0].header, h0.encode());
        assert_eq!(found.answer.frames[0].receipt.as_deref(), Some(&b"receipt"[..]));
        assert_eq!(found.answer.frames[1].receipt, None);
        assert_eq!(found.blobs, vec![p0.clone(), p1.clone()], "the payloads; weights by hash");
        assert!(log.answer(&req(3, 0, 1)).unwrap().is_none(), "never recorded");
        assert!(log.answer(&AuditRequest { run: 8, ..req(3, 0, 0) }).unwrap().is_none());

        // The index lists the kept micro-batch with the frame it sent and its receipt.
        let ask = |after| AuditIndexRequest { run: 7, epoch: 3, after };
        let page = log.index_page(&ask(None)).unwrap();
        assert!(!page.more);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].key, req(3, 0, 0).key());
        assert_eq!(page.entries[0].sent.len(), 1, "only the frame it sent");
        assert_eq!(page.entries[0].sent[0].header, h0.encode());
        assert!(log.index_page(&ask(Some(req(3, 0, 0).key()))).unwrap().entries.is_empty());
        assert!(log.index_page(&AuditIndexRequest { epoch: 9, ..ask(None) }).is_none());

        // A restart (with a torn entry at the end) reads the epoch back.
        drop(log);
        let path = dir.join("run-7/epoch-3.log");
        let good = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[b'F', 0, 9]).unwrap();
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "torn entry cut off");
        let again = log.answer(&req(3, 0, 0)).unwrap().unwrap();
        assert_eq!(again.blobs, found.blobs);
        assert_eq!(again.answer, found.answer);

        // The next epoch keeps the previous one; the one after drops it.
        log.note_published(3, [[9u8; 32]]);
        log.begin_epoch(4);
        assert!(log.answer(&req(3, 0, 0)).unwrap().is_some());
        assert_eq!(log.begin_epoch(5), vec![[9u8; 32]]);
        assert!(log.answer(&req(3, 0, 0)).unwrap().is_none());
        assert!(!path.exists());
        assert!(log.begin_epoch(2).is_empty(), "an older epoch changes nothing");
        assert_eq!(log.stats().epochs, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn step_records_page_survive_a_restart_and_blobs_are_served_by_hash() {
        let dir = tempdir();
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        log.begin_epoch(3);
        let w = log.snapshot(3, b"weights").unwrap();
        let o = log.snapshot(3, b"optimiser state").unwrap();
        let entry = |i: u64| StepEntry {
            before: [i as u8; 32],
            after: [i as u8 + 1; 32],
            optim: (i % 8 == 0).then_some(o),
            schedule_step: 40 + i,
            lr: 1e-3 / (i + 1) as f64,
            factor: 0.75,
            skipped: i == 5,
            batches: (0..3).map(|mb| AuditKey { route: 1, step: i, micro_batch: mb }).collect(),
        };
        for i in 0..100 {
            assert!(log.step(3, entry(i)));
        }
        let too_big = StepEntry {
            batches: vec![AuditKey { route: 0, step: 0, micro_batch: 0 }; MAX_STEP_BATCHES + 1],
            ..entry(0)
        };
        assert!(!log.step(3, too_big), "a record over the limit is refused");
        let page = |from| log.steps_page(&AuditStepsRequest { run: 7, epoch: 3, from }).unwrap();
        let (p0, p1) = (page(0), page(64));
        assert!(p0.more && !p1.more);
        assert_eq!((p0.steps.len(), p1.steps.len()), (64, 36));
        assert_eq!(p1.steps[0], entry(64));
        assert!(page(1000).steps.is_empty());
        assert!(log.steps_page(&AuditStepsRequest { run: 8, epoch: 3, from: 0 }).is_none());

        let ask = |hashes| AuditBlobsRequest { run: 7, epoch: 3, hashes };
        let found = log.blobs(&ask(vec![w, [5; 32], o])).unwrap();
        assert_eq!(found, vec![(w, b"weights".to_vec()), (o, b"optimiser state".to_vec())]);
        assert!(log.blobs(&AuditBlobsRequest { run: 8, ..ask(vec![w]) }).unwrap().is_empty());

        drop(log);
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        let again = log.steps_page(&AuditStepsRequest { run: 7, epoch: 3, from: 0 }).unwrap();
        assert_eq!(again, p0, "read back from disk");
        assert_eq!(log.blobs(&ask(vec![o])).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_restart_appends_to_the_current_epoch() {
        let dir = tempdir();
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        log.begin_epoch(3);
        let w = log.snapshot(3, b"w").unwrap();
        let (h, p) = header(3, 0, 0, Direction::Activation);
        log.record(Some(w), &h, None, &p);
        drop(log);
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        log.begin_epoch(3);
        assert!(log.answer(&req(3, 0, 0)).unwrap().is_some(), "what came before stays auditable");
        let w2 = log.snapshot(3, b"w2").unwrap();
        let (h2, p2) = header(3, 5, 0, Direction::Activation);
        log.record(Some(w2), &h2, None, &p2);
        drop(log);
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        assert!(log.answer(&req(3, 0, 0)).unwrap().is_some());
        assert!(log.answer(&req(3, 5, 0)).unwrap().is_some(), "and what came after");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_budget_bounds_the_log() {
        let dir = tempdir();
        let log = AuditLog::open(&dir, 7, 600).unwrap();
        log.begin_epoch(1);
        let w = log.snapshot(1, &[1u8; 100]).unwrap();
        let mut kept = 0;
        for mb in 0..20 {
            let (h, p) = header(1, 0, mb, Direction::Activation);
            log.record(Some(w), &h, None, &p);
            kept += usize::from(log.answer(&req(1, 0, mb)).unwrap().is_some());
        }
        assert!(kept > 0 && kept < 20, "kept {kept}");
        assert!(log.stats().bytes <= 600, "{:?}", log.stats());
        assert!(log.snapshot(1, &[2u8; 100]).is_none(), "full for the rest of the epoch");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_a_log() {
        let dir = tempdir();
        let run = dir.join("run-7");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("epoch-2.log"), b"not an audit log").unwrap();
        std::fs::write(run.join("epoch-3.log"), [MAGIC.as_slice(), &[b'F', 1, 2, 3]].concat())
            .unwrap();
        let log = AuditLog::open(&dir, 7, 1 << 20).unwrap();
        assert_eq!(log.stats().epochs, 1, "the bad-magic file is removed, the torn one kept");
        assert!(!run.join("epoch-2.log").exists());
        assert_eq!(std::fs::metadata(run.join("epoch-3.log")).unwrap().len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sliver-audit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
