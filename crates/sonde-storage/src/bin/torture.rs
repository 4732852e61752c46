//! A writer for the crash test: appends event rows with unique ids as fast as it can,
//! plus a `ticks` counter, flushing and compacting now and then (compaction and the
//! rollup build also run in the background, every 50 ms), and
//! prints `ACK <first> <last>` once a batch is acknowledged and `COMPACTED <n>` after
//! a compaction pass merged n segments.
//! The test SIGKILLs it at random moments and checks that every acknowledged id is
//! stored exactly once.
//!
//! Usage: `sonde-storage-torture DATA_DIR FIRST_ID`

use std::io::Write;

use sonde_storage::{Config, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: sonde-storage-torture DATA_DIR FIRST_ID");
    let mut id: i64 = args.next().and_then(|s| s.parse().ok()).expect("FIRST_ID");
    let mut config = Config::new(dir);
    config.max_head_bytes = 64 << 10;
    // Event ids are the timestamps (days 0–2 of 1970): keep them, and merge often.
    config.retention.raw = None;
    // The tiers keep those days too (past a tier's retention no rollup is built).
    config.rollups.retention = vec![None, None];
    config.compaction.interval = std::time::Duration::from_millis(50);
    let storage = Storage::open(config).expect("open storage");
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let first = id;
        let mut t = TableBatch::single("events", MetricKind::Event, FieldType::I64);
        for k in 0..5 {
            let labels = Labels::new([("writer", format!("w{k}"))]).unwrap();
            t.series
                .push(SeriesBatch::i64(labels, vec![id, id + 1], vec![id, id + 1]));
            id += 2;
        }
        // A counter beside the events, so the tiers hold a metric table too.
        let mut c = TableBatch::single("ticks", MetricKind::Counter, FieldType::I64);
        c.series.push(SeriesBatch::i64(
            Labels::new([("writer", "w0")]).unwrap(),
            vec![first],
            vec![first],
        ));
        storage
            .write("default", WriteBatch { tables: vec![t, c] })
            .expect("write");
        writeln!(out, "ACK {first} {}", id - 1).unwrap();
        out.flush().unwrap();
        if n % 40 == 39 {
            storage.flush().expect("flush");
        }
        if n % 120 == 119 {
            let c = storage.compact().expect("compact");
            writeln!(out, "COMPACTED {}", c.compacted_inputs).unwrap();
        }
    }
}
