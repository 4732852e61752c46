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
//! way. Memory is bounded by two generations of at most `capacity` entries (about
//! 48 bytes and the label bytes each; the label sets are the head's): when the
//! current generation is full it becomes the previous one, and entries found there
//! are moved back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};
use sonde_types::Labels;

/// Entries per generation unless configured.
pub const DEFAULT_CAPACITY: usize = 500_000;

/// What decoding a series' label bytes produced.
#[derive(Clone, Debug)]
pub struct Entry {
    pub table: Arc<str>,
    pub labels: Labels,
}

/// One generation: entries in the order they were added, each with the end of its
/// label bytes in one buffer filled in the same order (it starts where the previous
/// entry's end), and a map from key to position.
#[derive(Default)]
struct Generation {
    entries: Vec<(Entry, usize)>,
    bytes: Vec<u8>,
    index: HashMap<u64, u32, foldhash::fast::RandomState>,
}

impl Generation {
    fn wire(&self, at: usize) -> &[u8] {
        let start = at.checked_sub(1).map_or(0, |p| self.entries[p].1);
        &self.bytes[start..self.entries[at].1]
    }

    fn find(&self, key: u64, wire: &[u8]) -> Option<usize> {
        let at = *self.index.get(&key)? as usize;
        (self.wire(at) == wire).then_some(at)
    }

    fn push(&mut self, key: u64, wire: &[u8], entry: Entry) {
        self.bytes.extend_from_slice(wire);
        self.index.insert(key, self.entries.len() as u32);
        self.entries.push((entry, self.bytes.len()));
    }
}

#[derive(Default)]
struct Generations {
    current: Generation,
    previous: Generation,
}

/// See the module documentation.
pub struct SeriesCache {
    capacity: usize,
    seed: foldhash::fast::RandomState,
    gens: RwLock<Generations>,
    /// Series looked up, and found, since start (for `/metrics`).
    lookups: AtomicU64,
    hits: AtomicU64,
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
            capacity: capacity.min(u32::MAX as usize),
            seed: Default::default(),
            gens: Default::default(),
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Starts one request's lookups (a shared lock held until [`Lookups::finish`]).
    /// `None` when the cache is off.
    pub fn lookups(&self) -> Option<Lookups<'_>> {
        (self.capacity > 0).then(|| Lookups {
            cache: self,
            gens: self.gens.read(),
            next: Cell::new(None),
            counts: Cell::new((0, 0)),
            misses: RefCell::default(),
        })
    }

    /// Series looked up and series found since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.lookups.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
        )
    }

    /// Bytes held: entries, their label bytes and the indexes (not the label sets,
    /// which the head shares).
    pub fn bytes(&self) -> usize {
        let g = self.gens.read();
        [&g.current, &g.previous]
            .iter()
            .map(|g| {
                g.entries.capacity() * std::mem::size_of::<(Entry, usize)>()
                    + g.bytes.capacity()
                    + g.index.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            })
            .sum()
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let g = self.gens.read();
        g.current.entries.len() + g.previous.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, entries: Vec<Pending>) {
        if entries.is_empty() {
            return;
        }
        let mut g = self.gens.write();
        for (key, wire, entry) in entries {
            if g.current.entries.len() >= self.capacity {
                g.previous = std::mem::take(&mut g.current);
            }
            g.current.push(key, &wire, entry);
        }
    }
}

/// An entry to add: its key, label bytes and value.
type Pending = (u64, Box<[u8]>, Entry);

/// One request's view of the cache: lookups under a shared lock, entries to add
/// collected and written once, at [`Lookups::finish`].
///
/// Senders repeat their series in the same order request after request, and
/// entries are stored in the order they were added, so the entry after the last
/// hit is tried first: a comparison of bytes that sit next to the previous ones,
/// instead of a hash and a lookup at a random place in memory (at 100k series the
/// lookup's cache misses were most of the cost).
pub struct Lookups<'a> {
    cache: &'a SeriesCache,
    gens: RwLockReadGuard<'a, Generations>,
    /// Position in the current generation to try first.
    next: Cell<Option<usize>>,
    /// Lookups and hits, added to the cache's totals at the end.
    counts: Cell<(u64, u64)>,
    misses: RefCell<Vec<Pending>>,
}

impl std::fmt::Debug for Lookups<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("misses", &self.misses.borrow().len())
            .finish()
    }
}

impl Lookups<'_> {
    /// What `wire` (a series' label bytes in the protocol's encoding) decoded to
    /// before, if anything. Borrowed, not cloned: the tables' shared names would
    /// otherwise have their counts bumped by every request thread at once.
    pub fn get(&self, wire: &[u8]) -> Option<&Entry> {
        let found = self.find(wire);
        let (n, hits) = self.counts.get();
        self.counts.set((n + 1, hits + u64::from(found.is_some())));
        found
    }

    fn find(&self, wire: &[u8]) -> Option<&Entry> {
        let cur = &self.gens.current;
        if let Some(at) = self.next.get()
            && at < cur.entries.len()
            && cur.wire(at) == wire
        {
            self.next.set(Some(at + 1));
            return Some(&cur.entries[at].0);
        }
        let key = self.key(wire);
        if let Some(at) = cur.find(key, wire) {
            self.next.set(Some(at + 1));
            return Some(&cur.entries[at].0);
        }
        self.next.set(None);
        let prev = &self.gens.previous;
        let at = prev.find(key, wire)?;
        let e = &prev.entries[at].0;
        self.misses.borrow_mut().push((key, wire.into(), e.clone()));
        Some(e)
    }

    /// Records what `wire` decoded to.
    pub fn add(&self, wire: &[u8], table: Arc<str>, labels: Labels) {
        let key = self.key(wire);
        self.misses
            .borrow_mut()
            .push((key, wire.into(), Entry { table, labels }));
    }

    fn key(&self, wire: &[u8]) -> u64 {
        self.cache.seed.hash_one(wire)
    }

    /// Releases the shared lock and stores the new entries.
    pub fn finish(self) {
        let Lookups {
            cache,
            gens,
            counts,
            misses,
            ..
        } = self;
        drop(gens);
        let (n, hits) = counts.get();
        cache.lookups.fetch_add(n, Ordering::Relaxed);
        cache.hits.fetch_add(hits, Ordering::Relaxed);
        cache.insert(misses.into_inner());
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
        assert!(l.get(b"wire").is_none());
        l.add(b"wire", "t".into(), labels("x"));
        l.add(b"wirf", "u".into(), labels("y"));
        l.finish();
        let l = cache.lookups().unwrap();
        let e = l.get(b"wire").expect("hit");
        assert_eq!((&*e.table, e.labels.get("job")), ("t", Some("x")));
        assert!(
            l.get(b"wirg").is_none(),
            "the next entry is tried, not trusted"
        );
        assert_eq!(&*l.get(b"wirf").unwrap().table, "u");
        assert_eq!(&*l.get(b"wire").unwrap().table, "t", "out of order");
        assert!(l.get(b"").is_none());
        l.finish();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.counts(), (6, 3));
        assert!(cache.bytes() >= 8);
        assert!(SeriesCache::new(0).lookups().is_none(), "off");
    }

    #[test]
    fn two_generations_bound_memory_and_keep_what_is_used() {
        let cache = SeriesCache::new(3);
        let l = cache.lookups().unwrap();
        for i in 0..7u8 {
            l.add(&[i], "t".into(), labels(&i.to_string()));
        }
        l.finish();
        assert_eq!(cache.len(), 4, "current (1) + previous (3)");
        let l = cache.lookups().unwrap();
        assert!(l.get(&[0]).is_none(), "dropped two rotations ago");
        assert_eq!(
            l.get(&[3]).unwrap().labels.get("job"),
            Some("3"),
            "previous"
        );
        l.finish();
        // Found in the previous generation: moved back into the current one, so it
        // survives the next rotation.
        let l = cache.lookups().unwrap();
        for i in 10..13u8 {
            l.add(&[i], "t".into(), labels("y"));
        }
        l.finish();
        let l = cache.lookups().unwrap();
        assert!(l.get(&[3]).is_some());
        assert!(l.get(&[4]).is_none());
        l.finish();
    }
}
