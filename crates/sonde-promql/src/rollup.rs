//! Range functions answered from rollup tiers.
//!
//! A call `f(sel[range] offset o)` in a query whose evaluation times, range and
//! offset are all multiples of a tier's bucket width reads that tier's buckets (the
//! coarsest that fits) instead of raw samples. Every window `[t-o-range, t-o]` is
//! then a whole number of buckets plus, at its right edge, the sample exactly at
//! `t-o` if there is one — the first sample of the next bucket, which a bucket keeps
//! with its time. From count, sum, min, max, first and last sample (time and value)
//! and the reset-aware increase inside each bucket, the functions below compute what
//! they compute from raw samples, including Prometheus' extrapolation of `rate` and
//! `increase` (differences are float rounding only: sums are added per bucket).
//!
//! Used for: rate, increase, delta, count/sum/avg/min/max/last/present_over_time.
//! Not for `@`, subqueries, event tables (several rows per millisecond) or the
//! other functions, which read raw samples. The storage answers each day from the
//! tier only while the tier is current for it and buckets raw data on the fly for
//! the other days, so the answer never depends on which path served it.

use promql_parser::label::Matcher as PMatcher;
use promql_parser::parser::{Expr, MatrixSelector};
use sonde_storage::{Buckets, ScanRequest};
use sonde_types::MetricKind;

use crate::eval::{
    Evaluator, Grid, Series, Val, drop_name, merge_same, offset_ms, selector_matchers,
};
use crate::funcs::{Extrapolation, kahan_inc};
use crate::select::{resolve, split, storage_matchers};
use crate::{PromError, Result};

/// Range-function calls answered from a tier since the process started.
static ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many range-function calls were answered from a rollup tier (process-wide).
pub fn answered_from_tiers() -> u64 {
    ANSWERED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The default [`crate::PromConfig::rollup_min_saving`]: the saving below which the
/// storage does not build a tier either.
pub use sonde_storage::rollup::MIN_SAVING;

const FUNCS: &[&str] = &[
    "rate",
    "increase",
    "delta",
    "count_over_time",
    "sum_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "last_over_time",
    "present_over_time",
];

/// The coarsest tier whose width divides the range, the offset, the step and the
/// evaluation times.
fn fitting_tier(tiers: &[i64], range: i64, offset: i64, g: &Grid) -> Option<i64> {
    tiers.iter().rev().copied().find(|&t| {
        range >= t
            && range % t == 0
            && offset % t == 0
            && (g.start - offset).rem_euclid(t) == 0
            && (g.n <= 1 || g.step % t == 0)
    })
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        e => e,
    }
}

/// A call a tier answers: the tier, the call's range and offset, the metrics it
/// reads and the label matchers.
pub(crate) struct Plan {
    tier: i64,
    range: i64,
    offset: i64,
    refs: Vec<crate::select::MetricRef>,
    rest: Vec<PMatcher>,
}

/// `Some` when a rollup tier answers `name(range_expr)` on grid `g`.
pub(crate) fn plan(
    ev: &Evaluator<'_>,
    name: &str,
    range_expr: &Expr,
    g: &Grid,
) -> Result<Option<Plan>> {
    if !ev.cfg.use_rollups || !FUNCS.contains(&name) {
        return Ok(None);
    }
    let Expr::MatrixSelector(MatrixSelector { vs, range }) = strip(range_expr) else {
        return Ok(None);
    };
    if vs.at.is_some() {
        return Ok(None);
    }
    let range = range.as_millis() as i64;
    let offset = offset_ms(&vs.offset);
    let tiers = ev.storage.rollup_tiers();
    let Some(tier) = fitting_tier(&tiers, range, offset, g) else {
        return Ok(None);
    };
    let matchers = selector_matchers(vs)?;
    let (names, rest) = split(&matchers);
    let refs = resolve(ev.storage, ev.tenant, &names);
    let (lo, hi) = (g.start - offset - range, g.last() - offset);
    // Worth it only when the tier answers some day of the range for every table
    // (event tables are never rolled up), and, unless only the tier holds some of
    // those days, reads far fewer rows than the raw samples.
    let worth = |r: &crate::select::MetricRef| {
        let c = ev.storage.rollup_cover(ev.tenant, tier, &r.table, lo, hi);
        r.kind != MetricKind::Event
            && c.days > 0
            && (c.expired_days > 0
                || c.raw_rows >= c.tier_rows.saturating_mul(ev.cfg.rollup_min_saving))
    };
    if refs.is_empty() || !refs.iter().all(worth) {
        return Ok(None);
    }
    let rest = rest.into_iter().cloned().collect();
    Ok(Some(Plan {
        tier,
        range,
        offset,
        refs,
        rest,
    }))
}

/// `Some` when the call was answered from a tier.
pub(crate) fn try_range_function(
    ev: &mut Evaluator<'_>,
    name: &str,
    range_expr: &Expr,
    g: &Grid,
) -> Result<Option<Val>> {
    let Some(Plan {
        tier,
        range,
        offset,
        refs,
        rest,
    }) = plan(ev, name, range_expr, g)?
    else {
        return Ok(None);
    };
    let rest: Vec<&PMatcher> = rest.iter().collect();
    let (lo, hi) = (g.start - offset - range, g.last() - offset);
    let label_matchers = storage_matchers(&rest)?;
    let range_s = range as f64 / 1000.0;
    let mut out = Vec::new();
    for r in refs {
        let mut req = ScanRequest::new(&r.table, lo, hi).with_fields(vec![r.field.clone()]);
        req.matchers = label_matchers.clone();
        let delta = r.kind == MetricKind::DeltaSum;
        let scan = ev
            .storage
            .scan_buckets(ev.tenant, tier, &req, Some(needed(name, delta)))?;
        ev.check_deadline("range function")?;
        let loaded: usize = scan.series.iter().map(|(_, b)| b.len()).sum();
        if loaded > ev.budget {
            return Err(PromError::Execution(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            ));
        }
        ev.budget -= loaded;
        let values = |b: &Buckets| -> Vec<Option<f64>> {
            // Evaluation times ascend: both window edges only move forward.
            let (mut lo, mut hi) = (0usize, 0usize);
            (0..g.n)
                .map(|i| {
                    let e = g.t(i) - offset;
                    let s = e - range;
                    while hi < b.len() && b.start[hi] < e {
                        hi += 1;
                    }
                    while lo < hi && b.start[lo] < s {
                        lo += 1;
                    }
                    let w = Window::at(b, s, e, lo, hi);
                    eval(name, b, &w, delta, range_s)
                })
                .collect()
        };
        // Series are independent: split them over the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let all: Vec<Vec<Option<f64>>> = if threads < 2 || scan.series.len() < 2 {
            scan.series.iter().map(|(_, b)| values(b)).collect()
        } else {
            let chunk = scan.series.len().div_ceil(threads);
            std::thread::scope(|sc| {
                let handles: Vec<_> = scan
                    .series
                    .chunks(chunk)
                    .map(|part| {
                        sc.spawn(|| part.iter().map(|(_, b)| values(b)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("window evaluation panicked"))
                    .collect()
            })
        };
        for ((labels, _), vals) in scan.series.iter().zip(all) {
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let mut metric = crate::select::metric(&r.name, labels);
            if name != "last_over_time" {
                drop_name(&mut metric);
            }
            out.push(Series { metric, vals });
        }
    }
    ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(Val::Vector(merge_same(out)?)))
}

/// The statistics `name` reads (besides count, first and first_ts, always there).
fn needed(name: &str, delta: bool) -> &'static [&'static str] {
    match name {
        "rate" | "increase" | "delta" if delta => &["sum"],
        "rate" | "increase" => &["last", "last_ts", "inc"],
        "delta" => &["last", "last_ts"],
        "sum_over_time" | "avg_over_time" => &["sum"],
        "min_over_time" => &["min"],
        "max_over_time" => &["max"],
        "last_over_time" => &["last", "last_ts"],
        _ => &[],
    }
}

/// One window `[s, e]`: whole buckets `lo..hi` plus the sample at `e`, if any.
struct Window {
    s: i64,
    e: i64,
    lo: usize,
    hi: usize,
    edge: Option<f64>,
}

impl Window {
    /// The window `[s, e]` whose whole buckets are `lo..hi` (the first bucket
    /// starting at or after `s`, the first at or after `e`).
    fn at(b: &Buckets, s: i64, e: i64, lo: usize, hi: usize) -> Window {
        let edge = (hi < b.len() && b.start[hi] == e && b.first_ts[hi] == e).then(|| b.first[hi]);
        Window { s, e, lo, hi, edge }
    }
    fn count(&self, b: &Buckets) -> i64 {
        b.count[self.lo..self.hi].iter().sum::<i64>() + i64::from(self.edge.is_some())
    }
}

fn eval(name: &str, b: &Buckets, w: &Window, delta: bool, range_s: f64) -> Option<f64> {
    let n = w.count(b);
    if n == 0 {
        return None;
    }
    let (lo, hi) = (w.lo, w.hi);
    let kahan = |vals: &mut dyn Iterator<Item = f64>| {
        let (mut s, mut c) = (0.0, 0.0);
        for v in vals {
            (s, c) = kahan_inc(v, s, c);
        }
        if s.is_infinite() { s } else { s + c }
    };
    let first = || {
        if hi > lo {
            (b.first_ts[lo], b.first[lo])
        } else {
            (w.e, w.edge.unwrap_or(f64::NAN))
        }
    };
    let last = || match w.edge {
        Some(v) => (w.e, v),
        None => (b.last_ts[hi - 1], b.last[hi - 1]),
    };
    match name {
        "rate" | "increase" | "delta" if delta => {
            // Deltas in (s, e]: the sample exactly at s is not in the window.
            let at_s = hi > lo && b.start[lo] == w.s && b.first_ts[lo] == w.s;
            let kept = n - i64::from(at_s);
            if kept == 0 {
                return None;
            }
            let mut it = b.sum[lo..hi]
                .iter()
                .copied()
                .chain(at_s.then(|| -b.first[lo]))
                .chain(w.edge);
            let s = kahan(&mut it);
            Some(if name == "rate" { s / range_s } else { s })
        }
        "rate" | "increase" | "delta" => {
            if n < 2 {
                return None;
            }
            let counter = name != "delta";
            let (t0, v0) = first();
            let (t1, v1) = last();
            let result = if counter {
                let cross = |p: f64, c: f64| if c < p { c } else { c - p };
                let mut r = 0.0;
                let mut prev: Option<f64> = None;
                for k in lo..hi {
                    if let Some(p) = prev {
                        r += cross(p, b.first[k]);
                    }
                    r += b.inc[k];
                    prev = Some(b.last[k]);
                }
                if let (Some(p), Some(v)) = (prev, w.edge) {
                    r += cross(p, v);
                }
                r
            } else {
                v1 - v0
            };
            Some(Extrapolation::new(counter, name == "rate", range_s).apply(
                result,
                (t0, v0),
                t1,
                n as usize,
                (w.s, w.e),
            ))
        }
        "count_over_time" => Some(n as f64),
        "present_over_time" => Some(1.0),
        "sum_over_time" => Some(kahan(&mut b.sum[lo..hi].iter().copied().chain(w.edge))),
        "avg_over_time" => Some(kahan(&mut b.sum[lo..hi].iter().copied().chain(w.edge)) / n as f64),
        "min_over_time" | "max_over_time" => {
            let src = if name == "min_over_time" {
                &b.min
            } else {
                &b.max
            };
            let mut vals = src[lo..hi].iter().copied().chain(w.edge);
            let init = vals.next()?;
            Some(vals.fold(init, |m, v| {
                let better = if name == "min_over_time" {
                    v < m
                } else {
                    v > m
                };
                if better || m.is_nan() { v } else { m }
            }))
        }
        "last_over_time" => Some(last().1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_fit_only_aligned_queries() {
        let tiers = [60_000, 3_600_000];
        let g = Grid {
            start: 7_200_000,
            step: 3_600_000,
            n: 3,
        };
        assert_eq!(fitting_tier(&tiers, 3_600_000, 0, &g), Some(3_600_000));
        assert_eq!(fitting_tier(&tiers, 300_000, 0, &g), Some(60_000));
        assert_eq!(fitting_tier(&tiers, 90_000, 0, &g), None);
        let odd = Grid {
            start: 7_200_001,
            ..g
        };
        assert_eq!(fitting_tier(&tiers, 3_600_000, 0, &odd), None);
        let step = Grid { step: 30_000, ..g };
        assert_eq!(fitting_tier(&tiers, 3_600_000, 0, &step), None);
    }
}
