//! Label sets the ingest decoders already built, found again by the bytes they had
//! on the wire.
//!
//! A Prometheus sender repeats every series' labels in every request, byte for
//! byte. Turning those bytes into a [`Labels`] (UTF-8 checks, sorting, packing) was
//! the largest cost of remote_write ingest after the protobuf walk itself. The cache
//! maps a seeded hash of a series' label bytes to those bytes, the table name and the
//! shared label set built the first time; a decoder whose bytes equal an entry's
//! reuses the rest. The label set is the shared copy the head stores, so the head
//! finds the series by identity too (its slot hint, [`Labels::slot`]), and it
//! remembers its validation ([`Labels::validate`]).
//!
//! Memoization only: an entry is a function of its bytes alone (so tenants may share
//! it), a hit yields exactly what a miss would, and storage validates both the same
//! way. Memory is bounded by two generations of at most `capacity` entries (48 bytes
//! and the label bytes each; the label sets are the head's): when the current
//! generation is full it becomes the previous one, and entries found there are moved
//! back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use sonde_types::Labels;

/// Entries per generation unless configured.
pub const DEFAULT_CAPACITY: usize = 500_000;

/// What decoding a series' label bytes produced.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The label bytes, as the protocol encoded them.
    pub wire: Box<[u8]>,
    pub table: Arc<str>,
    pub labels: Labels,
}

type Map = HashMap<u64, Entry, foldhash::fast::RandomState>;

#[derive(Default)]
struct Generations {
    current: Map,
    previous: Map,
}

/// See the module documentation.
pub struct SeriesCache {
    capacity: usize,
    seed: foldhash::fast::RandomState,
    gens: RwLock<Generations>,
}

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl SeriesCache {
    /// A cache of at most `capacity` entries per generation; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        SeriesCache {
            capacity,
            seed: Default::default(),
            gens: Default::default(),
        }
    }

    /// Starts one request's lookups (a shared lock held until [`Lookups::finish`]).
    /// `None` when the cache is off.
    pub fn lookups(&self) -> Option<Lookups<'_>> {
        (self.capacity > 0).then(|| Lookups {
            cache: self,
            gens: Some(self.gens.read()),
            misses: RefCell::default(),
        })
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let g = self.gens.read();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, entries: Vec<(u64, Entry)>) {
        if entries.is_empty() {
            return;
        }
        let mut g = self.gens.write();
        for (hash, entry) in entries {
            if g.current.len() >= self.capacity {
                g.previous = std::mem::take(&mut g.current);
            }
            g.current.insert(hash, entry);
        }
    }
}

/// One request's view of the cache: lookups under a shared lock, entries to add
/// collected and written once, at [`Lookups::finish`].
pub struct Lookups<'a> {
    cache: &'a SeriesCache,
    gens: Option<RwLockReadGuard<'a, Generations>>,
    misses: RefCell<Vec<(u64, Entry)>>,
}

impl std::fmt::Debug for Lookups<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("misses", &self.misses.borrow().len())
            .finish()
    }
}

impl Lookups<'_> {
    /// The key of a series whose labels were `wire` (the protocol's own encoding).
    pub fn key(&self, wire: &[u8]) -> u64 {
        self.cache.seed.hash_one(wire)
    }

    /// What `wire` (under `key`) decoded to before, if anything. Borrowed, not
    /// cloned: the tables' shared names would otherwise have their counts bumped by
    /// every request thread at once.
    pub fn get(&self, key: u64, wire: &[u8]) -> Option<&Entry> {
        let gens = self.gens.as_ref().expect("lookups are open until finish");
        let ok = |e: &&Entry| *e.wire == *wire;
        if let Some(e) = gens.current.get(&key).filter(ok) {
            return Some(e);
        }
        let e = gens.previous.get(&key).filter(ok)?;
        self.misses.borrow_mut().push((key, e.clone()));
        Some(e)
    }

    /// Records what `wire` (under `key`) decoded to.
    pub fn add(&self, key: u64, wire: &[u8], table: Arc<str>, labels: Labels) {
        self.misses.borrow_mut().push((
            key,
            Entry {
                wire: wire.into(),
                table,
                labels,
            },
        ));
    }

    /// Releases the shared lock and stores the new entries.
    pub fn finish(mut self) {
        self.gens = None;
        let misses = self.misses.take();
        self.cache.insert(misses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &str) -> Labels {
        Labels::new([("job", v)]).unwrap()
    }

    #[test]
    fn hits_need_equal_bytes() {
        let cache = SeriesCache::new(10);
        let l = cache.lookups().unwrap();
        let k = l.key(b"wire");
        assert!(l.get(k, b"wire").is_none());
        l.add(k, b"wire", "t".into(), labels("x"));
        l.finish();
        let l = cache.lookups().unwrap();
        let e = l.get(k, b"wire").expect("hit");
        assert_eq!((&*e.table, e.labels.get("job")), ("t", Some("x")));
        assert!(l.get(k, b"wirf").is_none(), "same key, other bytes");
        assert_ne!(l.key(b"wirf"), k);
        l.finish();
        assert!(SeriesCache::new(0).lookups().is_none(), "off");
    }

    #[test]
    fn two_generations_bound_memory_and_keep_what_is_used() {
        let cache = SeriesCache::new(3);
        let l = cache.lookups().unwrap();
        let keys: Vec<u64> = (0..7u8).map(|i| l.key(&[i])).collect();
        for (i, &k) in keys.iter().enumerate() {
            l.add(k, &[i as u8], "t".into(), labels(&i.to_string()));
        }
        l.finish();
        assert_eq!(cache.len(), 4, "current (1) + previous (3)");
        let l = cache.lookups().unwrap();
        assert!(l.get(keys[0], &[0]).is_none(), "dropped two rotations ago");
        assert!(l.get(keys[3], &[3]).is_some(), "in the previous generation");
        l.finish();
        // Found in the previous generation: moved back into the current one, so it
        // survives the next rotation.
        let l = cache.lookups().unwrap();
        for i in 10..13u8 {
            l.add(l.key(&[i]), &[i], "t".into(), labels("y"));
        }
        l.finish();
        let l = cache.lookups().unwrap();
        assert!(l.get(keys[3], &[3]).is_some());
        assert!(l.get(keys[4], &[4]).is_none());
        l.finish();
    }
}
