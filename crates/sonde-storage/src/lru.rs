//! A least-recently-used map bounded by the total weight of its values.
//!
//! The one LRU of the project: the object-store block cache weighs a block by its
//! bytes, the PromQL parse cache weighs every parsed query as one. The map takes no
//! lock of its own; its owner holds it behind whatever lock it already has.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Values keyed by `K`, each with the weight it was inserted with; inserting past
/// `capacity` evicts the least recently used entries until the total fits.
pub struct Lru<K, V> {
    capacity: usize,
    weight: usize,
    tick: u64,
    /// key → (tick of last use, weight, value)
    entries: HashMap<K, (u64, usize, V)>,
    /// tick of last use → key, oldest first
    by_use: BTreeMap<u64, K>,
}

impl<K, V> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru")
            .field("capacity", &self.capacity)
            .field("weight", &self.weight)
            .field("len", &self.entries.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map that holds at most `capacity` in total weight.
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            weight: 0,
            tick: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    /// The value under `key`, which becomes the most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tick += 1;
        let (used, _, value) = self.entries.get_mut(key)?;
        let k = self
            .by_use
            .remove(&*used)
            .expect("every entry has its tick");
        *used = self.tick;
        self.by_use.insert(self.tick, k);
        Some(value.clone())
    }

    /// Inserts or replaces `key`, then evicts the least recently used entries until
    /// the total weight is within capacity. A value heavier than the whole capacity
    /// is not kept (and evicts nothing).
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        if weight > self.capacity {
            return;
        }
        self.remove(&key);
        self.tick += 1;
        self.weight += weight;
        self.by_use.insert(self.tick, key.clone());
        self.entries.insert(key, (self.tick, weight, value));
        while self.weight > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((_, w, _)) = self.entries.remove(&oldest) {
                self.weight -= w;
            }
        }
    }

    /// Removes `key`, if present.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some((used, w, _)) = self.entries.remove(key) {
            self.by_use.remove(&used);
            self.weight -= w;
        }
    }

    /// Removes every entry whose key fails `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let gone: Vec<K> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total weight of the entries.
    pub fn weight(&self) -> usize {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_weight() {
        let mut c: Lru<(String, u64), &str> = Lru::new(10);
        let k = |b| ("a".to_string(), b);
        c.insert(k(0), "0", 5);
        c.insert(k(1), "1", 5);
        assert_eq!(c.get(&k(0)), Some("0")); // 0 is now newer than 1
        c.insert(k(2), "2", 5);
        assert_eq!(c.get(&k(1)), None, "least recently used, evicted");
        assert_eq!((c.get(&k(0)), c.get(&k(2))), (Some("0"), Some("2")));
        assert_eq!((c.len(), c.weight()), (2, 10));

        // Replacing a key re-weighs it and evicts nothing else while it fits.
        c.insert(k(2), "2b", 4);
        assert_eq!((c.len(), c.weight()), (2, 9));
        assert_eq!(c.get(&k(2)), Some("2b"));
        // Heavier than the whole capacity: not kept, nothing evicted.
        c.insert(k(3), "3", 11);
        assert_eq!((c.get(&k(3)), c.len()), (None, 2));
        // One heavy insert can evict several.
        c.insert(k(4), "4", 10);
        assert_eq!((c.len(), c.weight()), (1, 10));

        c.retain(|(_, b)| *b != 4);
        assert!(c.is_empty());
        assert_eq!(c.weight(), 0);
    }

    #[test]
    fn borrowed_lookups_and_count_bound() {
        let mut c: Lru<String, u32> = Lru::new(3);
        for (i, q) in ["a", "b", "c"].into_iter().enumerate() {
            c.insert(q.to_string(), i as u32, 1);
        }
        assert_eq!(c.get("a"), Some(0));
        c.insert("d".to_string(), 3, 1);
        assert_eq!(c.get("b"), None);
        assert_eq!(
            (c.get("a"), c.get("c"), c.get("d")),
            (Some(0), Some(2), Some(3))
        );
        c.remove("a");
        assert_eq!((c.len(), c.weight()), (2, 2));
    }
}
