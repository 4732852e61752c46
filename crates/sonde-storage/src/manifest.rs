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
use crate::vfs::Vfs;
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
    /// Tables of the day's raw segments this tier left out because it would have
    /// saved too few rows ([`crate::RollupConfig::min_saving`]); readers use raw rows
    /// for them, and the tier is rebuilt with them before their raw rows expire.
    /// Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
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

    /// Loads `dir/MANIFEST` with its version (see [`Vfs::read_versioned`]), or a new
    /// empty manifest (version `None`) if there is none.
    pub fn load(vfs: &dyn Vfs, dir: &Path) -> Result<(Self, Option<String>)> {
        let path = dir.join(FILE_NAME);
        match vfs.read_versioned(&path) {
            Ok((data, version)) => Ok((Self::decode(&data, &path)?, version)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Self::new(), None)),
            Err(e) => Err(Error::io("reading manifest", &path, e)),
        }
    }

    /// Fails with [`Error::ManifestConflict`] when `dir/MANIFEST` is no longer at
    /// `version` (another server replaced it). Checked before a segment is written,
    /// so a server that lost the manifest writes nothing (segment ids would collide).
    /// Always passes on a file system (no versions; the lock keeps one writer).
    pub fn check_version(vfs: &dyn Vfs, dir: &Path, version: Option<&str>) -> Result<()> {
        let path = dir.join(FILE_NAME);
        let current = vfs
            .version(&path)
            .map_err(|e| Error::io("checking manifest version", &path, e))?;
        match (current, version) {
            (Some(c), Some(v)) if c != v => Err(Error::ManifestConflict { path }),
            (Some(_), None) => Err(Error::ManifestConflict { path }),
            _ => Ok(()),
        }
    }

    /// Atomically replaces `dir/MANIFEST` with this manifest, provided it is still at
    /// `version` (the one this process loaded or stored last; `None` = absent), and
    /// advances `version`. A file system has one writer (the data-directory lock);
    /// on an object store this is a conditional PUT, and losing it means another
    /// server writes the same prefix: the error says so and nothing is overwritten.
    pub fn store(&self, vfs: &dyn Vfs, dir: &Path, version: &mut Option<String>) -> Result<()> {
        let path = dir.join(FILE_NAME);
        match vfs.replace_if(&path, &self.encode(), version.as_deref()) {
            Ok(v) => {
                *version = v;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::ManifestConflict { path })
            }
            Err(e) => Err(Error::io("writing manifest", &path, e)),
        }
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
