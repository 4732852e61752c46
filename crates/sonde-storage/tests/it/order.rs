//! Series order inside a segment's table: chosen by the first flush of a day,
//! kept by later flushes and by compaction.

use sonde_storage::{Matcher, ScanRequest, Storage};
use sonde_types::{DAY_MS, FieldType, Labels, MetricKind, SeriesBatch, TableBatch, WriteBatch};

use crate::common::{TENANT, config};

const T0: i64 = 1_700_000_000_000;
const ROWS: i64 = 100;

/// `tenants` × 2 token types × `users` counter series of `ROWS` samples each.
fn tokens(tenants: usize, users: usize, user_offset: usize) -> WriteBatch {
    tokens_at(T0, tenants, users, user_offset)
}

/// [`tokens`] from `t0` on.
fn tokens_at(t0: i64, tenants: usize, users: usize, user_offset: usize) -> WriteBatch {
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
                let ts: Vec<i64> = (0..ROWS).map(|i| t0 + i * 15_000).collect();
                // Irregular increments (an LCG), so value pages are not trivially small.
                let mut x = (tenant * 1000 + user * 2 + k) as u64;
                let v: Vec<i64> = (0..ROWS)
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

/// A selection over several segments (two days sharing an order) and the head is
/// merged as it streams, in the segments' order; with a third day in another order
/// it falls back to the whole merge. Both hand over exactly what `scan` answers.
#[test]
fn streamed_merge_over_days_and_the_head_equals_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(dir.path())).unwrap();
    let day2 = T0 + DAY_MS;
    s.write(TENANT, tokens_at(T0, 4, 10, 0)).unwrap();
    s.write(TENANT, tokens_at(day2, 4, 10, 5)).unwrap();
    s.flush().unwrap();
    // Later rows of day 2 in the head, for old and new series.
    s.write(TENANT, tokens_at(day2 + ROWS * 15_000, 4, 10, 8))
        .unwrap();
    let led = vec![
        "token_type".to_string(),
        "tenant".to_string(),
        "user_id".to_string(),
    ];
    assert_eq!(orders(&s), vec![led.clone(); 2]);
    let streamed = |matchers: Vec<Matcher>| {
        let mut req = ScanRequest::new("llm_tokens_total", i64::MIN, i64::MAX).with_threads(2);
        req.matchers = matchers;
        let (parts, stats) = s.scan_map(TENANT, &req, |part| part.to_vec()).unwrap();
        let series: Vec<_> = parts.into_iter().flatten().collect();
        assert_eq!(stats.series, series.len());
        assert_eq!(stats.segments_read, 2);
        series
    };
    for matchers in [Vec::new(), vec![Matcher::eq("token_type", "output")]] {
        let got = streamed(matchers.clone());
        // In the segments' order: each token type together.
        let types: Vec<_> = got.iter().map(|(l, _)| l.get("token_type")).collect();
        assert!(
            types.windows(2).all(|w| w[0] <= w[1]),
            "ordered by token type first"
        );
        let mut sorted = got.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted, scan(&s, matchers).series);
    }
    let all = scan(&s, Vec::new()).series;
    // 4 tenants × 2 types × users 0..18: day 1 users 0..10, day 2 5..18.
    assert_eq!(all.len(), 4 * 2 * 18);
    let u8 = all
        .iter()
        .find(|(l, _)| l.get("user_id") == Some("u008"))
        .unwrap();
    assert_eq!(u8.1.len(), 3 * ROWS as usize, "both days and the head");

    // A third day whose first flush had one series: no order; the whole merge.
    let day3 = T0 + 2 * DAY_MS;
    s.write(TENANT, tokens_at(day3, 1, 1, 0)).unwrap();
    s.flush().unwrap();
    assert_eq!(orders(&s).last().unwrap(), &Vec::<String>::new());
    let req = ScanRequest::new("llm_tokens_total", i64::MIN, i64::MAX).with_threads(2);
    let (parts, _) = s.scan_map(TENANT, &req, |part| part.to_vec()).unwrap();
    let got: Vec<_> = parts.into_iter().flatten().collect();
    let expected = scan(&s, Vec::new()).series;
    assert_eq!(got, expected, "the whole merge is in label order");
    assert_eq!(expected.len(), 4 * 2 * 18);
}
