//! Deduplication keys: a write may claim keys (a request's idempotency key, the ids
//! of the LLM calls it carries); a later write claiming a key still inside the window
//! is a duplicate and stores nothing.
//!
//! Keys are as durable as the writes that claim them: they travel in the write's WAL
//! record (replayed on start) and, at every flush, the whole set is written to
//! `dedup.keys` before the manifest that retires those WAL records is committed, so a
//! restart at any point still knows every key of every acknowledged write.
//!
//! File `dedup.keys`: the shared 24-byte sealed header (magic `SONDEDUP`, version 1,
//! CRC32C, length), then a varint count and per key: str tenant, str key, zigzag
//! varint written_ms.

use std::collections::HashMap;
use std::path::Path;

use sonde_types::TimestampMs;

use crate::codec::{Dec, Enc};
use crate::vfs::Vfs;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"SONDEDUP";
pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "dedup.keys";

/// Claimed keys with the time of the write that claimed them.
#[derive(Debug, Default, Clone)]
pub struct DedupSet {
    keys: HashMap<(String, String), TimestampMs>,
}

impl DedupSet {
    /// Whether `key` was claimed by a write less than `window_ms` before `now`.
    pub fn contains(&self, tenant: &str, key: &str, now: TimestampMs, window_ms: i64) -> bool {
        self.keys
            .get(&(tenant.to_string(), key.to_string()))
            .is_some_and(|&t| now - t < window_ms)
    }

    pub fn insert(&mut self, tenant: &str, key: &str, written_ms: TimestampMs) {
        let e = self
            .keys
            .entry((tenant.to_string(), key.to_string()))
            .or_insert(written_ms);
        *e = (*e).max(written_ms);
    }

    /// Forgets keys older than the window.
    pub fn prune(&mut self, now: TimestampMs, window_ms: i64) {
        self.keys.retain(|_, &mut t| now - t < window_ms);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let data = match vfs.read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io("reading dedup keys", &path, e)),
        };
        let body = crate::codec::open_sealed(&data, MAGIC, VERSION, "dedup key file", &path)?;
        let parse = || -> Result<Self, crate::codec::DecodeError> {
            let mut d = Dec::new(body);
            let n = d.len("key count", 3)?;
            let mut set = DedupSet::default();
            for _ in 0..n {
                let tenant = d.str("tenant")?;
                let key = d.str("key")?;
                let t = d.ivar("written time")?;
                set.keys.insert((tenant, key), t);
            }
            Ok(set)
        };
        parse().map_err(|e| Error::format(&path, e.to_string()))
    }

    /// Atomically replaces `dir/dedup.keys` with this set.
    pub fn store(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        let mut e = Enc(Vec::new());
        e.uvar(self.keys.len() as u64);
        for ((tenant, key), t) in &self.keys {
            e.str(tenant);
            e.str(key);
            e.ivar(*t);
        }
        let path = dir.join(FILE_NAME);
        vfs.write_atomic(&path, &crate::codec::seal_file(MAGIC, VERSION, &e.0))
            .map_err(|e| Error::io("writing dedup keys", &path, e))
    }
}
