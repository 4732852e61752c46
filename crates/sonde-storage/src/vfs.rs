//! The file-system seam. Every byte the engine persists goes through [`Vfs`], so a test
//! can swap the real disk ([`OsVfs`]) for [`SimVfs`], which models what survives a
//! power loss: only file contents that were fsynced and directory entries whose
//! directory was fsynced. (SIGKILL keeps the page cache, so it cannot catch a missing
//! fsync; this can.)

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// A file opened for appending.
pub trait AppendFile: Send + Debug {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A file opened for positional reads.
pub trait ReadAt: Send + Sync + Debug {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operations the storage engine needs from a file system.
pub trait Vfs: Send + Sync + Debug {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates the file (truncating it) and opens it for appending.
    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Writes a whole file and fsyncs it (not its directory).
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Names of the entries directly inside `dir` (files and directories); an absent
    /// directory lists as empty.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Replaces `path` with `data` atomically: after a crash at any instant it holds
    /// either the old or the new content. A file system writes a temp file, fsyncs,
    /// renames and fsyncs the directory; an object store's PUT is atomic by itself.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        self.write_synced(&tmp, data)?;
        self.rename(&tmp, path)?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }

    /// Reads `path` with its version: an object store's ETag, `None` on a file
    /// system (where the data-directory lock already makes this process the only
    /// writer).
    fn read_versioned(&self, path: &Path) -> io::Result<(Vec<u8>, Option<String>)> {
        Ok((self.read(path)?, None))
    }

    /// How long ago `path` was last written, where that decides whether an
    /// unreferenced file may be another live writer's flush in progress (object
    /// stores); `None` on a file system, whose lock rules that out.
    fn age(&self, path: &Path) -> io::Result<Option<std::time::Duration>> {
        let _ = path;
        Ok(None)
    }

    /// The current version of `path` (`None` on a file system, or when absent).
    fn version(&self, path: &Path) -> io::Result<Option<String>> {
        let _ = path;
        Ok(None)
    }

    /// Replaces `path` atomically, but only if it is still at version `expected`
    /// (`None`: only if it does not exist yet) — a conditional put on an object store,
    /// so two servers sharing a bucket prefix cannot overwrite each other's manifest.
    /// Fails with [`io::ErrorKind::AlreadyExists`] when another writer got there
    /// first. Returns the new version. A file system has one writer (the lock) and
    /// replaces unconditionally.
    fn replace_if(
        &self,
        path: &Path,
        data: &[u8],
        expected: Option<&str>,
    ) -> io::Result<Option<String>> {
        let _ = expected;
        self.write_atomic(path, data)?;
        Ok(None)
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsVfs;

#[derive(Debug)]
struct OsAppend(File);

impl AppendFile for OsAppend {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[derive(Debug)]
struct OsRead {
    file: File,
    len: u64,
}

impl ReadAt for OsRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Vfs for OsVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(OsAppend(f)))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(OsRead { file, len }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

// ---------------------------------------------------------------------------------
// Simulation
// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimState {
    inodes: Vec<Inode>,
    /// What a directory listing shows now.
    current: BTreeMap<PathBuf, usize>,
    /// What survives a crash: entries whose directory was fsynced.
    durable: BTreeMap<PathBuf, usize>,
    /// Mutating operations left before the simulated crash; `None` = never.
    ops_left: Option<u64>,
    crashed: bool,
    ops: u64,
}

impl SimState {
    /// Counts a mutating operation; fails once the crash point is reached.
    fn tick(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other("simulated crash"));
        }
        self.ops += 1;
        if let Some(n) = self.ops_left.as_mut() {
            if *n == 0 {
                self.crashed = true;
                return Err(io::Error::other("simulated crash"));
            }
            *n -= 1;
        }
        Ok(())
    }
    fn lookup(&self, path: &Path) -> io::Result<usize> {
        self.current
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }
}

/// An in-memory file system that models power loss, for tests only.
///
/// [`SimVfs::crash_after`] arms a crash point: after that many more mutating operations
/// every operation fails, as if the process had died. [`SimVfs::power_loss`] then
/// drops everything that was not made durable — unsynced file bytes, and directory
/// entries (creations, renames, removals) whose directory was not fsynced — and the
/// engine can be reopened on the same `SimVfs`. Directories are implicit.
#[derive(Debug, Clone, Default)]
pub struct SimVfs(Arc<Mutex<SimState>>);

impl SimVfs {
    pub fn new() -> Self {
        Self::default()
    }
    /// After `ops` more mutating operations, fail everything until [`Self::power_loss`].
    pub fn crash_after(&self, ops: u64) {
        self.0.lock().ops_left = Some(ops);
    }
    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.0.lock().ops
    }
    /// Loses everything not durable and lets operations succeed again.
    pub fn power_loss(&self) {
        let mut s = self.0.lock();
        s.current = s.durable.clone();
        for ino in &mut s.inodes {
            ino.data = ino.durable.clone();
        }
        s.crashed = false;
        s.ops_left = None;
    }
}

#[derive(Debug)]
struct SimAppend {
    state: Arc<Mutex<SimState>>,
    ino: usize,
}

impl AppendFile for SimAppend {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick()?;
        s.inodes[self.ino].data.extend_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick()?;
        let ino = &mut s.inodes[self.ino];
        ino.durable = ino.data.clone();
        Ok(())
    }
}

#[derive(Debug)]
struct SimRead(Vec<u8>);

impl ReadAt for SimRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        let end = start + buf.len();
        if end > self.0.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&self.0[start..end]);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        self.0.lock().tick()
    }
    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut s = self.0.lock();
        s.tick()?;
        s.inodes.push(Inode::default());
        let ino = s.inodes.len() - 1;
        s.current.insert(path.to_path_buf(), ino);
        Ok(Box::new(SimAppend {
            state: self.0.clone(),
            ino,
        }))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.0.lock();
        s.tick()?;
        s.inodes.push(Inode {
            data: data.to_vec(),
            durable: data.to_vec(),
        });
        let ino = s.inodes.len() - 1;
        s.current.insert(path.to_path_buf(), ino);
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.0.lock();
        let ino = s.lookup(path)?;
        Ok(s.inodes[ino].data.clone())
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(SimRead(self.read(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        s.tick()?;
        let ino = s.lookup(from)?;
        s.current.remove(from);
        s.current.insert(to.to_path_buf(), ino);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        s.tick()?;
        s.lookup(path)?;
        s.current.remove(path);
        Ok(())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.0.lock();
        s.tick()?;
        let ino = s.lookup(path)?;
        let node = &mut s.inodes[ino];
        node.data.truncate(len as usize);
        node.durable = node.data.clone();
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.0.lock();
        let mut names: Vec<String> = s
            .current
            .keys()
            .filter_map(|p| {
                let rest = p.strip_prefix(dir).ok()?;
                rest.components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        s.tick()?;
        // Entries directly inside `dir` become durable as they are now.
        let direct = |p: &Path| p.parent() == Some(dir);
        let now: HashMap<PathBuf, usize> = s
            .current
            .iter()
            .filter(|(p, _)| direct(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable.retain(|p, _| !direct(p));
        s.durable.extend(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_entries_are_lost() {
        let vfs = SimVfs::new();
        let d = Path::new("/d");
        let mut f = vfs.create_append(&d.join("a")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        vfs.sync_dir(d).unwrap();
        f.write_all(b" world").unwrap();
        vfs.write_synced(&d.join("b"), b"x").unwrap(); // entry never synced
        vfs.power_loss();
        assert_eq!(vfs.read(&d.join("a")).unwrap(), b"hello");
        assert!(vfs.read(&d.join("b")).is_err());
    }

    #[test]
    fn atomic_write_survives_or_not_but_never_mixes() {
        for crash_at in 0..6 {
            let vfs = SimVfs::new();
            let p = Path::new("/m/MANIFEST");
            vfs.write_atomic(p, b"old").unwrap();
            vfs.crash_after(crash_at);
            let _ = vfs.write_atomic(p, b"new");
            vfs.power_loss();
            let got = vfs.read(p).unwrap();
            assert!(got == b"old" || got == b"new", "{crash_at}: {got:?}");
        }
    }
}
