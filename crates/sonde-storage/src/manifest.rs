//! The manifest: the set of live segments and the WAL watermark, replaced atomically.
//!
//! File `MANIFEST` = 24-byte header (magic, version, CRC32C of the body, body length)
//! then a JSON body, so other tools can list segments with nothing but a JSON parser.
//! Replacement is write-temp, fsync, rename, fsync-directory: after a crash at any
//! instant the directory holds either the old or the new manifest, never a mix.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sonde_types::TimestampMs;

use crate::segment::TableMeta;
use crate::vfs::{Vfs, write_atomic};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"SONDEMAN";
pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "MANIFEST";

/// One live segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub tenant: String,
    /// UTC day number (days since the epoch) of every row in the segment.
    pub day: i64,
    /// Path of the Parquet file, relative to the data directory.
    pub path: String,
    /// Path of the `.sidx` index, relative to the data directory.
    pub index_path: String,
    pub rows: u64,
    pub series: u64,
    pub bytes: u64,
    pub index_bytes: u64,
    pub min_time: TimestampMs,
    pub max_time: TimestampMs,
    pub tables: Vec<TableMeta>,
}

/// The set of live segments plus the WAL sequence up to which everything is in them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Incremented on every replacement.
    pub generation: u64,
    /// Every WAL record with a sequence ≤ this is persisted in `segments`.
    pub wal_watermark: u64,
    pub next_segment_id: u64,
    pub segments: Vec<SegmentMeta>,
    /// Rollup segments (absent in manifests written before rollups existed).
    #[serde(default)]
    pub rollups: Vec<RollupMeta>,
}

/// A rollup segment: one (tenant, day) of one tier, derived from the raw segments
/// `sources`. It is current while the day's raw segments are exactly `sources`
/// (compaction keeps it current by renaming sources); once the day's raw data has
/// expired, the rollup is all there is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupMeta {
    /// Bucket width in ms (60000 for the 1 m tier).
    pub tier_ms: i64,
    /// Ids of the raw segments it was built from, in manifest order.
    pub sources: Vec<u64>,
    /// Set when retention removed the day's last raw segment.
    #[serde(default)]
    pub raw_expired: bool,
    /// What the rollup holds ([`crate::rollup::ROLLUP_VERSION`]; absent: 1, before
    /// event tables were rolled up). Older versions are rebuilt.
    #[serde(default = "rollup_version_1")]
    pub version: u32,
    pub segment: SegmentMeta,
}

fn rollup_version_1() -> u32 {
    1
}

impl Manifest {
    pub fn new() -> Self {
        Manifest {
            format_version: VERSION,
            next_segment_id: 1,
            ..Default::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("manifest serializes");
        crate::codec::seal_file(MAGIC, VERSION, &body)
    }

    pub fn decode(data: &[u8], path: &Path) -> Result<Self> {
        let body = crate::codec::open_sealed(data, MAGIC, VERSION, "manifest", path)?;
        serde_json::from_slice(body).map_err(|e| Error::format(path, e.to_string()))
    }

    /// Loads `dir/MANIFEST`, or a new empty manifest if there is none.
    pub fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        match vfs.read(&path) {
            Ok(data) => Self::decode(&data, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(e) => Err(Error::io("reading manifest", &path, e)),
        }
    }

    /// Atomically replaces `dir/MANIFEST` with this manifest.
    pub fn store(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        write_atomic(vfs, &path, &self.encode())
            .map_err(|e| Error::io("writing manifest", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let mut m = Manifest::new();
        m.wal_watermark = 42;
        let enc = m.encode();
        assert_eq!(Manifest::decode(&enc, Path::new("M")).unwrap(), m);
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(Manifest::decode(&bad, Path::new("M")).is_err());
        assert!(Manifest::decode(&enc[..enc.len() - 1], Path::new("M")).is_err());
    }
}
