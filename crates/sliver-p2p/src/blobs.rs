//! Published blobs: byte strings a node serves to its peers in chunks, addressed by their
//! BLAKE3 hash (weights snapshots for merging and audits, activation payloads kept for audits,
//! checkpoints). Each store is bounded: publishing past `max_bytes` drops its oldest blobs.
//!
//! A node keeps two stores ([`Blobs`]): one for what its replicas need (pseudo-gradients and
//! merged weights) and one for what validators' audits ask for. Audits are driven by other
//! peers, so their blobs live apart and can never evict the blobs a merge depends on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A content-addressed, size-bounded store of published blobs.
#[derive(Debug)]
pub struct BlobStore {
    max_bytes: u64,
    total: u64,
    order: VecDeque<[u8; 32]>,
    blobs: HashMap<[u8; 32], Arc<Vec<u8>>>,
}

impl BlobStore {
    /// An empty store holding at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        BlobStore { max_bytes, total: 0, order: VecDeque::new(), blobs: HashMap::new() }
    }

    /// Publishes `bytes` and returns their hash. A blob larger than the whole store is refused
    /// (`None`); otherwise the oldest blobs are dropped until it fits. Publishing the same bytes
    /// again makes them the newest.
    pub fn insert(&mut self, bytes: Vec<u8>) -> Option<[u8; 32]> {
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            return None;
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        self.remove(&hash);
        while self.total + len > self.max_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(b) = self.blobs.remove(&old) {
                self.total -= b.len() as u64;
            }
        }
        self.total += len;
        self.order.push_back(hash);
        self.blobs.insert(hash, Arc::new(bytes));
        Some(hash)
    }

    /// Stops serving the blob `hash`; true if it was there.
    pub fn remove(&mut self, hash: &[u8; 32]) -> bool {
        match self.blobs.remove(hash) {
            Some(b) => {
                self.total -= b.len() as u64;
                self.order.retain(|h| h != hash);
                true
            }
            None => false,
        }
    }

    /// The blob `hash`, if published.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.blobs.get(hash).cloned()
    }

    /// Bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The chunk of `hash` starting at `offset`, at most `max_len` bytes, with the blob's
    /// length. `None` for an unknown blob; an offset past the end gives an empty chunk.
    pub fn chunk(&self, hash: &[u8; 32], offset: u64, max_len: u32) -> Option<(u64, Vec<u8>)> {
        let blob = self.blobs.get(hash)?;
        let total = blob.len() as u64;
        let start = offset.min(total) as usize;
        let end = (start as u64).saturating_add(max_len as u64).min(total) as usize;
        Some((total, blob[start..end].to_vec()))
    }
}

/// Which store a blob goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobClass {
    /// Pseudo-gradients, merged weights, checkpoints: what replicas fetch.
    Shared,
    /// Weights snapshots and payloads published to answer audits.
    Audit,
}

/// The two stores of a node; chunks are served from either.
#[derive(Debug)]
pub struct Blobs {
    shared: BlobStore,
    audit: BlobStore,
}

impl Blobs {
    /// Stores of `shared` and `audit` bytes at most.
    pub fn new(shared: u64, audit: u64) -> Self {
        Blobs { shared: BlobStore::new(shared), audit: BlobStore::new(audit) }
    }

    /// The store of `class`.
    pub fn store(&mut self, class: BlobClass) -> &mut BlobStore {
        match class {
            BlobClass::Shared => &mut self.shared,
            BlobClass::Audit => &mut self.audit,
        }
    }

    /// Stops serving `hash` from either store.
    pub fn remove(&mut self, hash: &[u8; 32]) {
        self.shared.remove(hash);
        self.audit.remove(hash);
    }

    /// A chunk of `hash` from whichever store holds it.
    pub fn chunk(&self, hash: &[u8; 32], offset: u64, max_len: u32) -> Option<(u64, Vec<u8>)> {
        self.shared.chunk(hash, offset, max_len).or_else(|| self.audit.chunk(hash, offset, max_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_blobs_make_room_and_chunks_are_bounded() {
        let mut s = BlobStore::new(10);
        let a = s.insert(vec![1; 4]).unwrap();
        let b = s.insert(vec![2; 4]).unwrap();
        assert_eq!(s.total_bytes(), 8);
        let c = s.insert(vec![3; 4]).unwrap(); // drops a
        assert!(s.get(&a).is_none());
        assert_eq!(s.get(&b).unwrap().as_slice(), &[2; 4]);
        assert_eq!(s.total_bytes(), 8);
        assert_eq!(s.chunk(&c, 1, 2), Some((4, vec![3, 3])));
        assert_eq!(s.chunk(&c, 3, 100), Some((4, vec![3])));
        assert_eq!(s.chunk(&c, u64::MAX, u32::MAX), Some((4, vec![])));
        assert_eq!(s.chunk(&a, 0, 1), None);
        assert!(s.insert(vec![0; 11]).is_none(), "larger than the store");
        assert!(s.remove(&b));
        assert!(!s.remove(&b));
        assert_eq!(s.total_bytes(), 4);
        // Re-publishing keeps one copy.
        s.insert(vec![3; 4]).unwrap();
        assert_eq!(s.total_bytes(), 4);
    }

    #[test]
    fn audit_blobs_never_evict_shared_ones() {
        let mut b = Blobs::new(10, 10);
        let weights = b.store(BlobClass::Shared).insert(vec![1; 8]).unwrap();
        for i in 0..20u8 {
            b.store(BlobClass::Audit).insert(vec![i; 6]).unwrap();
        }
        assert_eq!(b.chunk(&weights, 0, 100), Some((8, vec![1; 8])));
        assert_eq!(b.store(BlobClass::Audit).total_bytes(), 6);
        b.remove(&weights);
        assert_eq!(b.chunk(&weights, 0, 100), None);
    }
}
