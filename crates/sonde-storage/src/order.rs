//! The order of series within a segment's table.
//!
//! A table's series are stored back to back, sorted by a list of label names (the
//! table's *order*, [`crate::segment::TableMeta::order`]) and then by their whole
//! label set. A series without one of the order's labels sorts as if its value were
//! empty. The flush that writes a table's first segment of a (tenant, day) chooses the
//! order from those series: the labels with the fewest distinct values come first, as
//! in a columnar database's sort key. Every later segment of that table and day uses
//! the same order, so compaction can still merge the day's segments in one pass.
//!
//! The reason is selective reads. A value page holds 8,192 samples, which is about 34
//! series of the standard dataset. Sorted by label set, `llm_tokens_total` alternates
//! runs of `token_type="input"` and `"output"` series (tenant sorts before
//! token_type), so a query for one token type decompressed every page and skipped
//! half of its rows. With `token_type` first, each token type is one contiguous half
//! of the table. Segments written before orders existed, and tables that have no
//! order, are sorted by label set alone: their order is empty.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use sonde_types::Labels;

/// The most label names an order lists. Later names rarely decide anything; the
/// label set breaks the remaining ties.
pub const MAX_ORDER_LABELS: usize = 8;

/// The value that a series' `name` label has for ordering (absent = empty).
fn key<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).unwrap_or("")
}

/// Compares two series of a table sorted by `order`.
pub fn cmp(order: &[String], a: &Labels, b: &Labels) -> Ordering {
    order
        .iter()
        .map(|n| key(a, n).cmp(key(b, n)))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.cmp(b))
}

/// Indexes into `labels`, sorted by `order` (each series' ordering values looked
/// up once, not per comparison).
pub fn sorted_positions(order: &[String], labels: &[&Labels]) -> Vec<usize> {
    let keys: Vec<Vec<&str>> = labels
        .iter()
        .map(|l| order.iter().map(|n| key(l, n)).collect())
        .collect();
    let mut pos: Vec<usize> = (0..labels.len()).collect();
    pos.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]).then_with(|| labels[a].cmp(labels[b])));
    pos
}

/// Sorts `rows` (label sets with anything) by `order`.
pub fn sort_rows<T>(order: &[String], rows: Vec<(Labels, T)>) -> Vec<(Labels, T)> {
    let labels: Vec<&Labels> = rows.iter().map(|(l, _)| l).collect();
    let pos = sorted_positions(order, &labels);
    let mut slots: Vec<Option<(Labels, T)>> = rows.into_iter().map(Some).collect();
    pos.into_iter()
        .map(|p| slots[p].take().expect("a permutation"))
        .collect()
}

/// Merges lists of label sets, each sorted by `order` without repeats: per distinct
/// label set, in order, the (list, position) pairs that hold it, lists ascending.
pub fn merge<'a>(
    order: &[String],
    lists: &[Vec<&'a Labels>],
) -> Vec<(&'a Labels, Vec<(usize, usize)>)> {
    let mut cursors = vec![0usize; lists.len()];
    let mut out = Vec::new();
    loop {
        let next = lists
            .iter()
            .zip(&cursors)
            .filter_map(|(l, &c)| l.get(c).copied())
            .min_by(|a, b| cmp(order, a, b));
        let Some(labels) = next else { break };
        let mut from = Vec::with_capacity(1);
        for (i, l) in lists.iter().enumerate() {
            if l.get(cursors[i]).is_some_and(|&x| x == labels) {
                from.push((i, cursors[i]));
                cursors[i] += 1;
            }
        }
        out.push((labels, from));
    }
    out
}

/// Chooses the order of a table from its series: the label names with fewer distinct
/// values than series (a missing label counts as one more value) and more than one,
/// fewest first, ties by name, at most [`MAX_ORDER_LABELS`].
pub fn choose<'a>(series: impl IntoIterator<Item = &'a Labels>) -> Vec<String> {
    let mut values: HashMap<&str, (HashSet<&str>, usize)> = HashMap::new();
    let mut n = 0usize;
    for labels in series {
        n += 1;
        for (k, v) in labels.iter() {
            let e = values.entry(k).or_default();
            e.0.insert(v);
            e.1 += 1;
        }
    }
    let mut names: Vec<(usize, &str)> = values
        .iter()
        .map(|(&k, (vals, present))| (vals.len() + usize::from(*present < n), k))
        .filter(|&(distinct, _)| distinct > 1 && distinct < n)
        .collect();
    names.sort_unstable();
    names.truncate(MAX_ORDER_LABELS);
    names.into_iter().map(|(_, k)| k.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn low_cardinality_labels_lead_and_unique_or_constant_ones_do_not() {
        let mut series = Vec::new();
        for user in 0..12 {
            for tt in ["input", "output"] {
                series.push(l(&[
                    ("job", "api"),
                    ("tenant", &format!("t{}", user % 4)),
                    ("token_type", tt),
                    ("user", &format!("u{user}")),
                    ("id", &format!("{user}-{tt}")),
                ]));
            }
        }
        // token_type 2 values, tenant 4, user 12; job is constant, id unique.
        assert_eq!(choose(&series), ["token_type", "tenant", "user"]);
        // A label some series lack splits them too (absent counts as a value).
        series.push(l(&[("id", "x")]));
        assert_eq!(choose(&series), ["job", "token_type", "tenant", "user"]);
    }

    #[test]
    fn sorted_positions_agree_with_cmp_and_group_the_leading_label() {
        let series: Vec<Labels> = (0..20)
            .map(|i| {
                l(&[
                    ("tenant", &format!("t{:02}", i / 2)),
                    ("token_type", if i % 2 == 0 { "input" } else { "output" }),
                ])
            })
            .collect();
        let refs: Vec<&Labels> = series.iter().collect();
        let order = vec!["token_type".to_string()];
        let pos = sorted_positions(&order, &refs);
        let sorted: Vec<&Labels> = pos.iter().map(|&i| refs[i]).collect();
        assert!(
            sorted
                .windows(2)
                .all(|w| cmp(&order, w[0], w[1]) == Ordering::Less)
        );
        // The ten input series, then the ten output series.
        assert!(
            sorted[..10]
                .iter()
                .all(|s| s.get("token_type") == Some("input"))
        );
        assert!(
            sorted[10..]
                .iter()
                .all(|s| s.get("token_type") == Some("output"))
        );
        // No order: the label set's own order.
        let pos = sorted_positions(&[], &refs);
        assert!(pos.windows(2).all(|w| refs[w[0]] < refs[w[1]]));
        // Two sorted lists merge into one, shared label sets once, list by list.
        let (a, b): (Vec<&Labels>, Vec<&Labels>) =
            sorted
                .iter()
                .enumerate()
                .fold((Vec::new(), Vec::new()), |(mut a, mut b), (i, &l)| {
                    if i % 3 != 0 {
                        a.push(l);
                    }
                    if i % 3 == 0 || i % 2 == 0 {
                        b.push(l);
                    }
                    (a, b)
                });
        let m = merge(&order, &[a.clone(), b.clone()]);
        assert_eq!(m.iter().map(|(l, _)| *l).collect::<Vec<_>>(), sorted);
        for (l, from) in &m {
            let lists = [&a, &b];
            assert!(from.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(from.iter().all(|&(i, p)| lists[i][p] == *l));
        }
        assert_eq!(m.iter().filter(|(_, from)| from.len() == 2).count(), 6);
        // A missing label sorts as empty, before any value.
        let bare = l(&[("tenant", "t99")]);
        assert_eq!(cmp(&order, &bare, &series[0]), Ordering::Less);
    }
}
