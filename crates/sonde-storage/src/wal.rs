//! The write-ahead log: segmented, append-only files of CRC32C-checked,
//! length-prefixed records with sequence numbers (layout in `storage-format.md`).
//!
//! [`WalWriter`] only writes bytes; group commit (many writers, one fsync) and the
//! fsync policy live in the engine's WAL thread, which owns the writer. [`replay`]
//! reads every file in order and truncates a torn or corrupt tail instead of refusing
//! to start: a record is trusted only if its length, CRC and sequence all check out.

use std::path::{Path, PathBuf};

use crate::vfs::{AppendFile, Vfs};
use crate::{Error, Result};

/// First bytes of every WAL file.
pub const MAGIC: &[u8; 8] = b"SONDEWAL";
/// WAL file format version.
pub const VERSION: u32 = 1;
/// Bytes of the file header: magic, version, reserved.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record header: payload length, CRC32C, sequence number.
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest payload a record may carry; a larger length in a header means corruption.
pub const MAX_RECORD_LEN: usize = 512 << 20;

fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn parse_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

/// WAL files in `dir`, as (first sequence number, path), oldest first.
pub fn list_files(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<(u64, PathBuf)> = vfs
        .list(dir)
        .map_err(|e| Error::io("listing WAL directory", dir, e))?
        .into_iter()
        .filter_map(|n| parse_file_name(&n).map(|s| (s, dir.join(n))))
        .collect();
    files.sort();
    Ok(files)
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Frames one record: `len u32 | crc32c u32 | seq u64 | payload`, the CRC covering the
/// sequence number and the payload.
pub fn frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let seq_bytes = seq.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(payload);
}

/// Appends records to the current WAL file and rolls to a new file past a size.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    file: Box<dyn AppendFile>,
    file_len: u64,
    max_file_bytes: u64,
    next_seq: u64,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Starts a new WAL file whose first record will have sequence `next_seq`.
    pub fn create(vfs: &dyn Vfs, dir: &Path, next_seq: u64, max_file_bytes: u64) -> Result<Self> {
        let file = Self::new_file(vfs, dir, next_seq)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            file_len: HEADER_LEN as u64,
            max_file_bytes,
            next_seq,
            buf: Vec::new(),
        })
    }

    fn new_file(vfs: &dyn Vfs, dir: &Path, first_seq: u64) -> Result<Box<dyn AppendFile>> {
        let path = dir.join(file_name(first_seq));
        let mut f = vfs
            .create_append(&path)
            .map_err(|e| Error::io("creating WAL file", &path, e))?;
        f.write_all(&header())
            .and_then(|_| f.sync())
            .and_then(|_| vfs.sync_dir(dir))
            .map_err(|e| Error::io("writing WAL header", &path, e))?;
        Ok(f)
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Writes records for `payloads` (to the OS, not yet durable) and returns the
    /// sequence number of the first.
    pub fn append<'a>(
        &mut self,
        vfs: &dyn Vfs,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64> {
        if self.file_len >= self.max_file_bytes {
            self.rotate(vfs)?;
        }
        let first = self.next_seq;
        self.buf.clear();
        for p in payloads {
            frame(self.next_seq, p, &mut self.buf);
            self.next_seq += 1;
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| Error::io("appending to WAL", &self.dir, e))?;
        self.file_len += self.buf.len() as u64;
        Ok(first)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync()
            .map_err(|e| Error::io("fsyncing WAL", &self.dir, e))
    }

    /// Closes the current file (durably) and starts a new one at `next_seq`, so that
    /// every record before the cut lives in older files.
    pub fn rotate(&mut self, vfs: &dyn Vfs) -> Result<()> {
        self.sync()?;
        self.file = Self::new_file(vfs, &self.dir, self.next_seq)?;
        self.file_len = HEADER_LEN as u64;
        Ok(())
    }
}

/// What [`replay`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplayStats {
    pub files: usize,
    pub records: u64,
    pub skipped_below_watermark: u64,
    /// Bytes cut off torn or corrupt tails.
    pub truncated_bytes: u64,
    pub last_seq: u64,
}

/// Reads every WAL file in `dir` in order and calls `apply(seq, payload)` for each
/// valid record with `seq > watermark`. A file whose tail is torn or corrupt is
/// truncated to its last valid record (with a warning); a file with a bad header is
/// removed. Returns statistics including the highest sequence number seen.
pub fn replay(
    vfs: &dyn Vfs,
    dir: &Path,
    watermark: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<ReplayStats> {
    let mut stats = ReplayStats {
        last_seq: watermark,
        ..Default::default()
    };
    for (first_seq, path) in list_files(vfs, dir)? {
        stats.files += 1;
        let data = vfs
            .read(&path)
            .map_err(|e| Error::io("reading WAL file", &path, e))?;
        if data.len() < HEADER_LEN || &data[..8] != MAGIC {
            tracing::warn!(path = %path.display(), len = data.len(), "WAL file without a valid header; removing it");
            vfs.remove_file(&path)
                .map_err(|e| Error::io("removing bad WAL file", &path, e))?;
            stats.truncated_bytes += data.len() as u64;
            continue;
        }
        let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(Error::Format {
                path: path.clone(),
                reason: format!("WAL version {version}, this build reads {VERSION}"),
            });
        }
        let mut pos = HEADER_LEN;
        let mut expect = first_seq;
        let valid_end = loop {
            let Some(hdr) = data.get(pos..pos + RECORD_HEADER_LEN) else {
                break pos;
            };
            let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
            let seq = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
            let body = pos + RECORD_HEADER_LEN;
            if len > MAX_RECORD_LEN || body + len > data.len() || seq != expect {
                break pos;
            }
            let payload = &data[body..body + len];
            if crc32c::crc32c_append(crc32c::crc32c(&hdr[8..16]), payload) != crc {
                break pos;
            }
            if seq > watermark {
                apply(seq, payload)?;
                stats.records += 1;
            } else {
                stats.skipped_below_watermark += 1;
            }
            stats.last_seq = stats.last_seq.max(seq);
            expect += 1;
            pos = body + len;
        };
        if valid_end < data.len() {
            let cut = (data.len() - valid_end) as u64;
            tracing::warn!(path = %path.display(), offset = valid_end, bytes = cut, "torn or corrupt WAL tail; truncating");
            vfs.truncate(&path, valid_end as u64)
                .map_err(|e| Error::io("truncating WAL tail", &path, e))?;
            stats.truncated_bytes += cut;
        }
    }
    Ok(stats)
}

/// Deletes WAL files all of whose records are ≤ `watermark` (already in segments).
/// The newest file is always kept.
pub fn remove_below(vfs: &dyn Vfs, dir: &Path, watermark: u64) -> Result<usize> {
    let files = list_files(vfs, dir)?;
    let mut removed = 0;
    for w in files.windows(2) {
        let (_, path) = &w[0];
        let (next_first, _) = w[1];
        if next_first.saturating_sub(1) <= watermark {
            vfs.remove_file(path)
                .map_err(|e| Error::io("removing WAL file", path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("syncing WAL directory", dir, e))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::OsVfs;

    fn collect(dir: &Path, watermark: u64) -> (Vec<(u64, Vec<u8>)>, ReplayStats) {
        let mut got = Vec::new();
        let stats = replay(&OsVfs, dir, watermark, |s, p| {
            got.push((s, p.to_vec()));
            Ok(())
        })
        .unwrap();
        (got, stats)
    }

    #[test]
    fn write_rotate_replay_and_watermark() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut w = WalWriter::create(&OsVfs, dir, 1, 64).unwrap();
        for i in 0..10u8 {
            w.append(&OsVfs, [&[i; 40][..]]).unwrap();
        }
        w.sync().unwrap();
        assert!(list_files(&OsVfs, dir).unwrap().len() > 1);
        let (got, stats) = collect(dir, 0);
        assert_eq!(got.len(), 10);
        assert_eq!(stats.last_seq, 10);
        assert_eq!(got[3], (4, vec![3u8; 40]));
        let (got, _) = collect(dir, 7);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![8, 9, 10]);
        remove_below(&OsVfs, dir, 7).unwrap();
        let (got, _) = collect(dir, 0);
        assert!(got.iter().all(|g| g.0 >= 7) && got.last().unwrap().0 == 10);
    }

    #[test]
    fn torn_tail_and_flipped_byte_are_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut w = WalWriter::create(&OsVfs, dir, 1, 1 << 20).unwrap();
        for i in 0..5u8 {
            w.append(&OsVfs, [&[i; 100][..]]).unwrap();
        }
        w.sync().unwrap();
        drop(w);
        let (_, path) = list_files(&OsVfs, dir).unwrap().pop().unwrap();
        let mut data = std::fs::read(&path).unwrap();
        let rec = RECORD_HEADER_LEN + 100;
        // flip one byte inside record 4's payload
        data[HEADER_LEN + 3 * rec + RECORD_HEADER_LEN + 50] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let (got, stats) = collect(dir, 0);
        assert_eq!(got.len(), 3);
        assert_eq!(stats.truncated_bytes, 2 * rec as u64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (HEADER_LEN + 3 * rec) as u64
        );
        // torn tail: half a record header
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &[1, 2, 3, 4, 5]).unwrap();
        let (got, stats) = collect(dir, 0);
        assert_eq!((got.len(), stats.truncated_bytes), (3, 5));
    }
}
