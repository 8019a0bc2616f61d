//! Rebuilding the audit log's index streams the file: a log holding a 256 MB weights snapshot
//! and thousands of frames is read back with the process's peak resident memory growing by a
//! few megabytes, not by the file's size. (Its own test binary, so that no other test's
//! allocations move the peak.)

use std::io::Write;

use sliver_miner::audit::AuditLog;
use sliver_p2p::{AuditRequest, Direction, FrameHeader};
use sliver_wire::WireCodec;

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

#[test]
fn a_large_log_is_indexed_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("sliver-audit-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = dir.join("run-7");
    std::fs::create_dir_all(&run).unwrap();
    // Written by hand in the log's format (docs in audit.rs), a chunk at a time, so that writing
    // it does not raise the peak either.
    let snapshot_len: u64 = 256 << 20;
    let mut file = std::fs::File::create(run.join("epoch-3.log")).unwrap();
    file.write_all(b"SLVA1").unwrap();
    file.write_all(b"W").unwrap();
    file.write_all(&(snapshot_len as u32).to_le_bytes()).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut hasher = blake3::Hasher::new();
    for _ in 0..snapshot_len >> 20 {
        file.write_all(&chunk).unwrap();
        hasher.update(&chunk);
    }
    let weights = *hasher.finalize().as_bytes();
    let payload = sliver_wire::encode(WireCodec::Bf16, &[4, 64, 128], &vec![0.5; 4 * 64 * 128]);
    let frames = 2000u64;
    for mb in 0..frames {
        let h =
            FrameHeader::for_payload(7, 3, mb / 3, mb % 3, 0, 0, Direction::Activation, &payload)
                .unwrap();
        let head = h.encode();
        file.write_all(b"F").unwrap();
        file.write_all(&[1]).unwrap();
        file.write_all(&weights).unwrap();
        file.write_all(&(head.len() as u16).to_le_bytes()).unwrap();
        file.write_all(&head).unwrap();
        file.write_all(&0u16.to_le_bytes()).unwrap();
        file.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
        file.write_all(&payload).unwrap();
    }
    // A torn entry at the end, as a kill mid-write leaves.
    file.write_all(b"F\x01\x02").unwrap();
    drop(file);
    let size = std::fs::metadata(run.join("epoch-3.log")).unwrap().len();

    let before = peak_rss();
    let log = AuditLog::open(&dir, 7, u64::MAX).unwrap();
    let after = peak_rss();
    let stats = log.stats();
    println!(
        "indexed a {:.0} MB log ({} micro-batches, one {} MB snapshot): peak RSS {:.1} -> {:.1} MB",
        size as f64 / 1e6,
        stats.micro_batches,
        snapshot_len >> 20,
        before as f64 / 1e6,
        after as f64 / 1e6
    );
    assert_eq!(stats.micro_batches as u64, frames);
    assert_eq!(stats.snapshots, 1);
    assert!(after - before < 32 << 20, "the index was built in bounded memory");
    // The index is usable: an answer names the snapshot by its streamed hash.
    let found = log
        .answer(&AuditRequest { run: 7, epoch: 3, route: 0, step: 5, micro_batch: 1 })
        .unwrap()
        .expect("kept");
    assert_eq!(found.answer.weights, weights);
    assert_eq!(found.blobs.len(), 1, "the payload; the snapshot is asked for by hash");
    let snap = log
        .blobs(&sliver_p2p::AuditBlobsRequest { run: 7, epoch: 3, hashes: vec![weights] })
        .unwrap();
    assert_eq!(snap.len(), 1);
    assert_eq!(*blake3::hash(&snap[0].1).as_bytes(), weights);
    let _ = std::fs::remove_dir_all(&dir);
}
