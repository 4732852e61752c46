//! Damaged files: the documented recovery or a clear error, never a panic.

use sonde_storage::{ScanRequest, Storage};

use crate::common::{TENANT, config, events, stored_events};

fn wal_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 16)
        .collect();
    files.sort();
    files.pop().expect("a WAL file with records")
}

#[test]
fn truncated_wal_tail_keeps_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(config(dir.path())).unwrap();
        for i in 0..10 {
            s.write(TENANT, events(i * 10..i * 10 + 10)).unwrap();
        }
    }
    let wal = wal_file(dir.path());
    let len = std::fs::metadata(&wal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 7).unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let ids = stored_events(&s);
    assert_eq!(ids.len(), 90, "the last, torn record is dropped");
    assert!(ids.values().all(|&n| n == 1));
    // The store keeps working after the repair.
    s.write(TENANT, events(1000..1010)).unwrap();
    drop(s);
    assert_eq!(
        stored_events(&Storage::open(config(dir.path())).unwrap()).len(),
        100
    );
}

#[test]
fn flipped_byte_in_wal_record_truncates_from_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(config(dir.path())).unwrap();
        for i in 0..10 {
            s.write(TENANT, events(i * 10..i * 10 + 10)).unwrap();
        }
    }
    let wal = wal_file(dir.path());
    let mut data = std::fs::read(&wal).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(&wal, &data).unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let ids = stored_events(&s);
    assert!(ids.len() < 100 && ids.len() >= 30, "{}", ids.len());
    // Whatever survived is a prefix of the writes, each row once.
    assert_eq!(*ids.keys().next_back().unwrap() as usize, ids.len() - 1);
    assert!(ids.values().all(|&n| n == 1));
}

#[test]
fn truncated_segment_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(config(dir.path())).unwrap();
        s.write(TENANT, events(0..1000)).unwrap();
        s.flush().unwrap();
    }
    let seg = dir.path().join(
        &Storage::open(config(dir.path()))
            .unwrap()
            .manifest()
            .segments[0]
            .path,
    );
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let err = s
        .scan(TENANT, &ScanRequest::new("events", 0, i64::MAX))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(".parquet"), "error names the file: {msg}");
    // Writes still work; the damage is confined to that segment.
    s.write(TENANT, events(5000..5010)).unwrap();
}

#[test]
fn corrupt_index_and_manifest_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(config(dir.path())).unwrap();
        s.write(TENANT, events(0..100)).unwrap();
        s.flush().unwrap();
    }
    let m = Storage::open(config(dir.path())).unwrap().manifest();
    let idx = dir.path().join(&m.segments[0].index_path);
    let mut data = std::fs::read(&idx).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&idx, &data).unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let err = s
        .scan(TENANT, &ScanRequest::new("events", 0, i64::MAX))
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    drop(s);

    let manifest = dir.path().join("MANIFEST");
    let mut data = std::fs::read(&manifest).unwrap();
    data[30] ^= 1;
    std::fs::write(&manifest, &data).unwrap();
    let err = Storage::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("MANIFEST"), "{err}");
}
