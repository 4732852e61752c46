//! The storage crate's one error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in storage, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write was rejected by validation; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] sonde_types::Error),
    /// A field was written with a type other than the one the table already has.
    #[error("table {table:?} field {field:?}: has type {existing:?}, write has {got:?}")]
    FieldTypeConflict {
        table: String,
        field: String,
        existing: sonde_types::FieldType,
        got: sonde_types::FieldType,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but is not what its format promises.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("invalid matcher for label {label:?}: {reason}")]
    Matcher { label: String, reason: String },
    /// The head is full and flushing cannot keep up; the client should retry later.
    #[error(
        "head is full ({bytes} bytes, limit max_head_bytes = {limit}) and a flush is still running; retry later"
    )]
    HeadFull { bytes: usize, limit: usize },
    /// The manifest's conditional replacement lost: another server replaced it since
    /// this one last read it (two servers writing one object-store prefix).
    #[error(
        "manifest {} was replaced by another writer: two servers share this object-store prefix; this one no longer flushes (its writes stay in its WAL)",
        path.display()
    )]
    ManifestConflict { path: PathBuf },
    /// The engine stopped (shut down, or a fatal WAL error); no more writes.
    #[error("storage is closed: {0}")]
    Closed(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
    /// True when the error is the client's fault (bad input), false for server faults.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_) | Error::FieldTypeConflict { .. } | Error::Matcher { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
