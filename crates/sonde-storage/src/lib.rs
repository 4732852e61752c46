//! Sonde's storage engine.
//!
//! [`Storage`] is the one entry point: [`Storage::write`] validates a batch, appends it
//! to the WAL (acknowledging only once it is durable under the default
//! [`FsyncPolicy::Always`], with group commit across concurrent writers) and applies
//! it to the in-memory head; [`Storage::flush`] turns the head into Parquet segments
//! with a croaring index and commits them through the manifest; [`Storage::scan`]
//! reads a table's matching series over a time range from the head and the segments.
//!
//! Layout of a data directory (byte-level details in `storage-format.md`):
//! ```text
//! LOCK                                       held (flock) while the store is open
//! MANIFEST                                   live segments + WAL watermark
//! wal/<first-seq>.wal                        write-ahead log files
//! segments/<tenant>/<day>/<id>.parquet       rows of many tables of one tenant-day
//! segments/<tenant>/<day>/<id>.sidx          label index of that segment
//! catalog/<tenant>/<day>.cat                 series seen per tenant-day
//! dedup.keys                                 deduplication keys of flushed writes
//! ```
//! With [`Config::object_store`] everything but `LOCK` and `wal/` lives under an
//! object-store prefix instead ([`objstore`]).
//!
//! Design decision: one thread owns the WAL and applies batches to the head in
//! sequence order after the fsync. Replay therefore reproduces exactly the head that
//! readers saw, last-write-wins is decided by WAL order, and a single fsync covers
//! every writer that queued while the previous one ran (group commit).

pub mod catalog;
pub mod chunk;
pub mod codec;
pub mod dedup;
mod engine;
mod error;
pub mod head;
pub mod lru;
mod maintain;
pub mod manifest;
pub mod objstore;
pub mod order;
pub mod par;
pub mod postings;
pub mod rollup;
mod scan;
pub mod segment;
pub mod series;
pub mod sketch;
pub mod vfs;
pub mod volume;
pub mod wal;

pub use catalog::TableStats;
pub use engine::{
    Config, FlushStats, FsyncPolicy, Storage, TableRejection, TableSchema, TablesOutcome,
    WriteReceipt,
};
pub use error::{Error, Result};
pub use maintain::{CompactionConfig, MaintenanceStats, RetentionConfig, max_segments_per_day};
pub use objstore::ObjectStoreConfig;
pub use postings::{MatchOp, Matcher};
pub use rollup::{BucketScan, Buckets, RollupConfig, RollupCover};
pub use scan::{ScanOutput, ScanRequest, ScanStats};
