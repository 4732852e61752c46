//! Series order inside a segment's table: chosen by the first flush of a day,
//! kept by later flushes and by compaction.

use sonde_storage::{Matcher, ScanRequest, Storage};
use sonde_types::{FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

use crate::common::{TENANT, config};

const T0: i64 = 1_700_000_000_000;
const ROWS: i64 = 100;

/// `tenants` × 2 token types × `users` counter series of `ROWS` samples each.
fn tokens(tenants: usize, users: usize, user_offset: usize) -> WriteBatch {
    let mut t = TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::I64);
    for tenant in 0..tenants {
        for user in user_offset..user_offset + users {
            for (k, tt) in ["input", "output"].into_iter().enumerate() {
                let labels = Labels::new([
                    ("tenant", format!("t{tenant:02}")),
                    ("token_type", tt.to_string()),
                    ("user_id", format!("u{user:03}")),
                ])
                .unwrap();
                let ts = (0..ROWS).map(|i| T0 + i * 15_000).collect();
                // Irregular increments (an LCG), so value pages are not trivially small.
                let mut x = (tenant * 1000 + user * 2 + k) as u64;
                let v = (0..ROWS)
                    .scan(0i64, |acc, _| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        *acc += (x >> 54) as i64;
                        Some(*acc)
                    })
                    .collect();
                t.series.push(SeriesBatch::i64(labels, ts, v));
            }
        }
    }
    WriteBatch { tables: vec![t] }
}

fn orders(s: &Storage) -> Vec<Vec<String>> {
    s.manifest()
        .segments
        .iter()
        .flat_map(|m| m.tables.iter().map(|t| t.order.clone()))
        .collect()
}

fn scan(s: &Storage, matchers: Vec<Matcher>) -> sonde_storage::ScanOutput {
    let mut req = ScanRequest::new("llm_tokens_total", i64::MIN, i64::MAX);
    req.matchers = matchers;
    s.scan(TENANT, &req).unwrap()
}

/// The fewest-valued label leads: a read of one token type reads about half of the
/// table's pages instead of all of them (by label set, `tenant` sorts first and the
/// two token types alternate every 20 series), and answers in label order.
#[test]
fn first_flush_orders_by_cardinality_and_selective_reads_skip_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    // 800 series × 100 rows: ten value pages of 8,192 samples.
    s.write(TENANT, tokens(20, 20, 0)).unwrap();
    s.flush().unwrap();
    assert_eq!(orders(&s), vec![vec!["token_type", "tenant", "user_id"]]);

    let all = scan(&s, Vec::new());
    let output = scan(&s, vec![Matcher::eq("token_type", "output")]);
    assert_eq!(all.series.len(), 800);
    assert_eq!(output.series.len(), 400);
    for out in [&all, &output] {
        assert!(
            out.series.windows(2).all(|w| w[0].0 < w[1].0),
            "label order"
        );
    }
    let expected: Vec<_> = all
        .series
        .iter()
        .filter(|(l, _)| l.get("token_type") == Some("output"))
        .collect();
    assert!(output.series.iter().eq(expected.iter().copied()));
    let share = output.stats.bytes_read as f64 / all.stats.bytes_read as f64;
    assert!(
        share < 0.7,
        "one token type read {} of {} bytes",
        output.stats.bytes_read,
        all.stats.bytes_read
    );
}

/// Later flushes of the same day keep the day's order, even where their own series
/// would choose another; compaction merges them into one segment that answers the
/// same. A new day chooses afresh.
#[test]
fn later_flushes_keep_the_days_order_and_compaction_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compaction.min_inputs = 2;
    let s = Storage::open(c.clone()).unwrap();
    // One series alone: no label splits it, so the day's order is empty.
    s.write(TENANT, tokens(1, 1, 0)).unwrap();
    s.flush().unwrap();
    // Two more flushes of many series: they take the empty order.
    s.write(TENANT, tokens(4, 10, 1)).unwrap();
    s.flush().unwrap();
    s.write(TENANT, tokens(4, 10, 11)).unwrap();
    s.flush().unwrap();
    assert_eq!(orders(&s), vec![Vec::<String>::new(); 3]);
    let before = scan(&s, Vec::new()).series;
    assert_eq!(before.len(), 2 + 80 + 80);
    let stats = s.compact().unwrap();
    assert_eq!((stats.compacted_inputs, stats.compacted_outputs), (3, 1));
    assert_eq!(scan(&s, Vec::new()).series, before);

    // A day with an order: every flush and the compacted segment keep it.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compaction.min_inputs = 2;
    let s = Storage::open(c).unwrap();
    s.write(TENANT, tokens(4, 10, 0)).unwrap();
    s.flush().unwrap();
    s.write(TENANT, tokens(2, 5, 100)).unwrap();
    s.flush().unwrap();
    let led = vec![
        "token_type".to_string(),
        "tenant".to_string(),
        "user_id".to_string(),
    ];
    assert_eq!(orders(&s), vec![led.clone(); 2]);
    let before = scan(&s, Vec::new()).series;
    assert_eq!(before.len(), 80 + 20);
    s.compact().unwrap();
    assert_eq!(orders(&s), vec![led]);
    assert_eq!(scan(&s, Vec::new()).series, before);
    let output = scan(&s, vec![Matcher::eq("token_type", "output")]);
    assert_eq!(output.series.len(), 50);
}
