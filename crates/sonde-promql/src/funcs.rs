//! Functions, aggregations and operators, with Prometheus' numeric behaviour.

use foldhash::{HashMap, HashMapExt};

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use sonde_types::NAME_LABEL;

use crate::eval::{
    Evaluator, Grid, Metric, RangeArg, Raw, Series, Val, drop_name, drop_stale, get, merge_same,
    set_label, strip_parens, within,
};
use crate::format::format_float;
use crate::select::{Selected, metric};
use crate::{PromError, Result};

pub(crate) fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Arithmetic drops the metric name; comparisons (as filters) keep it.
pub(crate) fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^" | "atan2")
}

/// Applies `op`; comparisons give the left value and whether it passes.
pub(crate) fn binop(op: &str, l: f64, r: f64) -> Result<(f64, bool)> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => {
            return Err(PromError::BadData(format!(
                "operator \"{other}\" not allowed here"
            )));
        }
    })
}

pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn kahan_sum(vals: &[f64]) -> f64 {
    let (mut s, mut c) = (0.0, 0.0);
    for &v in vals {
        (s, c) = kahan_inc(v, s, c);
    }
    if s.is_infinite() { s } else { s + c }
}

/// Prometheus' quantile over unsorted values (`quantile`, `quantile_over_time`).
pub(crate) fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

/// Least-squares slope and intercept at `intercept_time`.
fn linear_regression(ts: &[i64], vals: &[f64], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = vals[0];
    let mut const_y = true;
    for (i, (&t, &v)) in ts.iter().zip(vals).enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Running sum of counter-reset corrections: `out[i]` adds `v[j-1]` for every
/// `j ≤ i` with `v[j] < v[j-1]`, so a window's correction is a difference. `None`
/// when the counter never resets (the common case: no corrections to carry).
fn reset_prefix(vals: &[f64]) -> Option<Vec<f64>> {
    // A fold over two offset slices, not `any` over windows: it vectorizes.
    let drops = vals
        .iter()
        .skip(1)
        .zip(vals)
        .fold(false, |seen, (next, prev)| seen | (next < prev));
    if !drops {
        return None;
    }
    let mut out = Vec::with_capacity(vals.len());
    let mut acc = 0.0;
    let mut last = f64::NAN;
    for &v in vals {
        if v < last {
            acc += last;
        }
        out.push(acc);
        last = v;
    }
    Some(out)
}

/// `rate`, `increase` and `delta` of one window with Prometheus' extrapolation
/// (`ex` holds which). For counters, `resets` is the window's slice of
/// [`reset_prefix`] (`None`: no resets).
fn extrapolated(
    ex: &mut Extrapolation,
    ts: &[i64],
    vals: &[f64],
    resets: Option<&[f64]>,
    wstart: i64,
    wend: i64,
) -> Option<f64> {
    if ts.len() < 2 {
        return None;
    }
    let n = ts.len();
    let mut result = vals[n - 1] - vals[0];
    if let Some(r) = resets {
        result += r[n - 1] - r[0];
    }
    Some(ex.apply(result, (ts[0], vals[0]), ts[n - 1], n, (wstart, wend)))
}

/// Prometheus' extrapolation of windows' raw results to the window edges (`rate`,
/// `increase`, `delta`), for one series' windows in turn.
///
/// The factor a window's result is multiplied by depends only on where its samples
/// sit in it, and costs divisions: computed per window, it was most of this
/// function's time. On evenly spaced samples under a step that is a multiple of
/// their interval (the usual dashboard), every window but the first few sits the
/// same way, so the last window's factor is kept and reused when the next sits
/// alike. Durations stay in milliseconds and the edge tests are cross-multiplied.
/// The factor is the extrapolated over the sampled interval, divided by the range
/// in seconds for a rate (Prometheus 2.x divides the product by the range instead:
/// the answers differ by float rounding at most).
#[derive(Debug, Clone)]
pub(crate) struct Extrapolation {
    counter: bool,
    rate: bool,
    range_s: f64,
    last: Option<(Placement, f64)>,
}

/// Where a window's samples sit in it: milliseconds from the window's start to the
/// first sample and from the last sample to its end, between the first and last
/// samples, and the sample count (≥ 2).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placement {
    to_start: i64,
    to_end: i64,
    sampled: i64,
    n: usize,
}

impl Extrapolation {
    /// For a counter (`rate`, `increase`; never extrapolated below zero) or a gauge
    /// (`delta`); a rate is per second of the `range_s` range.
    pub fn new(counter: bool, rate: bool, range_s: f64) -> Self {
        Extrapolation {
            counter,
            rate,
            range_s,
            last: None,
        }
    }

    /// A window `(wstart, wend)`'s raw `result` (last − first, plus what counter
    /// resets lost), from its first sample `(t0, v0)`, last sample time `t1` and
    /// sample count `n` (≥ 2), extrapolated.
    pub fn apply(
        &mut self,
        result: f64,
        (t0, v0): (i64, f64),
        t1: i64,
        n: usize,
        (wstart, wend): (i64, i64),
    ) -> f64 {
        let p = Placement {
            to_start: t0 - wstart,
            to_end: wend - t1,
            sampled: t1 - t0,
            n,
        };
        // A counter is not extrapolated below zero: `sampled * v0 / result` is how
        // long it took to rise from zero to `v0` at the window's average rate.
        let (sampled, to_start) = (p.sampled as f64, p.to_start as f64);
        if self.counter && result > 0.0 && v0 >= 0.0 && sampled * v0 < to_start * result {
            return result * self.factor(p, sampled * v0 / result);
        }
        match self.last {
            Some((q, f)) if q == p => result * f,
            _ => {
                let f = self.factor(p, to_start);
                self.last = Some((p, f));
                result * f
            }
        }
    }

    /// The factor for placement `p`, its start extrapolated over `to_start`.
    fn factor(&self, p: Placement, to_start: f64) -> f64 {
        let to_end = p.to_end as f64;
        let sampled = p.sampled as f64;
        let intervals = (p.n - 1) as f64;
        // An edge within 1.1 average intervals (`sampled / intervals`) is
        // extrapolated to; otherwise half an average interval is added.
        let limit = sampled * 1.1;
        let half = || sampled / intervals / 2.0;
        let mut interval = sampled;
        interval += if to_start * intervals < limit {
            to_start
        } else {
            half()
        };
        interval += if to_end * intervals < limit {
            to_end
        } else {
            half()
        };
        let f = interval / sampled;
        if self.rate { f / self.range_s } else { f }
    }
}

/// Sum of the deltas in `(wstart, wend]` (delta temporality).
fn delta_sum(ts: &[i64], vals: &[f64], wstart: i64) -> Option<f64> {
    let from = ts.partition_point(|&t| t <= wstart);
    (from < ts.len()).then(|| kahan_sum(&vals[from..]))
}

fn over_time(name: &str, ts: &[i64], vals: &[f64], param: f64) -> Option<f64> {
    Some(match name {
        "sum_over_time" => kahan_sum(vals),
        "count_over_time" => vals.len() as f64,
        "present_over_time" => 1.0,
        "last_over_time" => *vals.last()?,
        "avg_over_time" => {
            let (mut mean, mut count, mut c) = (0.0f64, 0.0, 0.0);
            for &v in vals {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                (mean, c) = kahan_inc(v / count - mean / count, mean, c);
            }
            if mean.is_infinite() { mean } else { mean + c }
        }
        "min_over_time" => vals
            .iter()
            .copied()
            .fold(vals[0], |m, v| if v < m || m.is_nan() { v } else { m }),
        "max_over_time" => vals
            .iter()
            .copied()
            .fold(vals[0], |m, v| if v > m || m.is_nan() { v } else { m }),
        "stddev_over_time" | "stdvar_over_time" => {
            let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &v in vals {
                count += 1.0;
                let delta = v - (mean + cm);
                (mean, cm) = kahan_inc(delta / count, mean, cm);
                (aux, ca) = kahan_inc(delta * (v - (mean + cm)), aux, ca);
            }
            let var = (aux + ca) / count;
            if name == "stddev_over_time" {
                var.sqrt()
            } else {
                var
            }
        }
        "quantile_over_time" => quantile(param, &mut vals.to_vec()),
        "resets" => {
            let mut r = 0.0;
            for w in vals.windows(2) {
                if w[1] < w[0] {
                    r += 1.0;
                }
            }
            r
        }
        "changes" => {
            let mut r = 0.0;
            for w in vals.windows(2) {
                if !(w[1] == w[0] || (w[1].is_nan() && w[0].is_nan())) {
                    r += 1.0;
                }
            }
            r
        }
        "irate" | "idelta" => {
            let n = vals.len();
            if n < 2 {
                return None;
            }
            let (last, prev) = (vals[n - 1], vals[n - 2]);
            let mut r = if name == "irate" && last < prev {
                last
            } else {
                last - prev
            };
            if name == "irate" {
                let dt = (ts[n - 1] - ts[n - 2]) as f64 / 1000.0;
                if dt == 0.0 {
                    return None;
                }
                r /= dt;
            }
            r
        }
        "deriv" => {
            if vals.len() < 2 {
                return None;
            }
            linear_regression(ts, vals, ts[0]).0
        }
        _ => return None,
    })
}

const RANGE_FUNCS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "resets",
    "changes",
    "deriv",
    "predict_linear",
    "avg_over_time",
    "sum_over_time",
    "min_over_time",
    "max_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "present_over_time",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rate,
    Increase,
    Delta,
    PredictLinear,
    OverTime,
}

/// A range function (one of [`RANGE_FUNCS`]) with its scalar parameter evaluated,
/// applied series by series.
pub(crate) struct RangeFn {
    name: &'static str,
    kind: Kind,
    param: Vec<f64>,
}

/// A range function call's range argument and scalar parameter (the range argument
/// is the last one except for quantile_over_time's, second, and predict_linear's,
/// first); `None` when `c` does not call a range function.
fn range_call_args(c: &Call) -> Option<(&Expr, Option<&Expr>)> {
    let args = &c.args.args;
    match c.func.name {
        name if !RANGE_FUNCS.contains(&name) => None,
        "quantile_over_time" => Some((&args[1], Some(&args[0]))),
        "predict_linear" => Some((&args[0], Some(&args[1]))),
        _ => Some((&args[0], None)),
    }
}

impl RangeFn {
    /// The range function `name` with its parameter (if it takes one) evaluated.
    fn new(
        ev: &mut Evaluator<'_>,
        name: &'static str,
        param: Option<&Expr>,
        g: &Grid,
    ) -> Result<Self> {
        let param = match param {
            Some(p) => ev.scalar_arg(p, g)?,
            None => vec![0.0; g.n],
        };
        let kind = match name {
            "rate" => Kind::Rate,
            "increase" => Kind::Increase,
            "delta" => Kind::Delta,
            "predict_linear" => Kind::PredictLinear,
            _ => Kind::OverTime,
        };
        Ok(RangeFn { name, kind, param })
    }

    /// Whether the result keeps the series' `__name__`.
    pub fn keeps_name(&self) -> bool {
        self.name == "last_over_time"
    }

    /// The function at each step of `g` over `raw`'s windows (stale markers are
    /// dropped from `raw` first: range functions never see them).
    pub fn values(&self, arg: &RangeArg, g: &Grid, raw: &mut Raw) -> Vec<Option<f64>> {
        let range_s = arg.range as f64 / 1000.0;
        let kind = self.kind;
        drop_stale(raw);
        let counter = matches!(kind, Kind::Rate | Kind::Increase) && !raw.delta;
        let resets = if counter {
            reset_prefix(&raw.vals)
        } else {
            None
        };
        let mut ex = Extrapolation::new(kind != Kind::Delta, kind == Kind::Rate, range_s);
        arg.windows(raw, g, |step, lo, ts, vals, ws, we| {
            let window_resets = resets.as_deref().map(|r| &r[lo..lo + vals.len()]);
            match kind {
                Kind::Rate | Kind::Increase | Kind::Delta if raw.delta => {
                    let s = delta_sum(ts, vals, ws)?;
                    Some(if kind == Kind::Rate { s / range_s } else { s })
                }
                Kind::Rate | Kind::Increase => {
                    extrapolated(&mut ex, ts, vals, window_resets, ws, we)
                }
                Kind::Delta => extrapolated(&mut ex, ts, vals, None, ws, we),
                Kind::PredictLinear => {
                    if vals.len() < 2 {
                        return None;
                    }
                    let (slope, intercept) = linear_regression(ts, vals, we + arg.offset);
                    Some(slope * self.param[step] + intercept)
                }
                Kind::OverTime => over_time(self.name, ts, vals, self.param[step]),
            }
        })
    }
}

/// A range function call over a plain matrix selector that no rollup tier answers,
/// ready to be evaluated as its selection streams: the function, its window
/// placement, the selector's matchers and the span of samples to read.
pub(crate) type Streamed = (
    RangeFn,
    RangeArg,
    Vec<promql_parser::label::Matcher>,
    (i64, i64),
);

pub(crate) fn streamed_call(
    ev: &mut Evaluator<'_>,
    c: &Call,
    g: &Grid,
) -> Result<Option<Streamed>> {
    let Some((range_expr, param)) = range_call_args(c) else {
        return Ok(None);
    };
    let Expr::MatrixSelector(ms) = strip_parens(range_expr) else {
        return Ok(None);
    };
    if crate::rollup::plan(ev, c.func.name, range_expr, g)?.is_some() {
        return Ok(None);
    }
    let f = RangeFn::new(ev, c.func.name, param, g)?;
    let (arg, matchers, span) = ev.matrix_spec(ms, g)?;
    Ok(Some((f, arg, matchers, span)))
}

/// `raw`'s result series under `f`, its metric (from `metric`) built only when the
/// function has a value at some step.
fn range_series(
    f: &RangeFn,
    arg: &RangeArg,
    g: &Grid,
    raw: &mut Raw,
    metric: impl FnOnce(&mut Raw) -> Metric,
) -> Option<Series> {
    let vals = f.values(arg, g, raw);
    vals.iter().any(Option::is_some).then(|| {
        let mut metric = metric(raw);
        if !f.keeps_name() {
            drop_name(&mut metric);
        }
        Series { metric, vals }
    })
}

fn range_function(ev: &mut Evaluator<'_>, c: &Call, g: &Grid) -> Result<Val> {
    let (range_expr, param) = range_call_args(c).expect("called for range functions only");
    let f = RangeFn::new(ev, c.func.name, param, g)?;
    if let Some(v) = crate::rollup::try_range_function(ev, f.name, range_expr, g)? {
        return Ok(v);
    }
    let deadline = ev.deadline();
    // Series are independent of each other: evaluated in parts on the worker pool.
    let (parts, one_name) = if let Expr::MatrixSelector(ms) = strip_parens(range_expr) {
        // A plain selector streams: each part of the selection is read, evaluated and
        // dropped, so the whole selection is never decoded at once.
        let (arg, matchers, span) = ev.matrix_spec(ms, g)?;
        let (parts, names) = ev.stream(&matchers, span, |sel| {
            let mut out = Vec::new();
            for (i, s) in sel.enumerate() {
                if i % 1024 == 0 {
                    within(deadline, "range function")?;
                }
                let Selected {
                    name,
                    labels,
                    mut raw,
                } = s;
                out.extend(range_series(&f, &arg, g, &mut raw, |_| {
                    metric(name, labels)
                }));
            }
            Ok(out)
        })?;
        (parts, names <= 1)
    } else {
        let mut arg = ev.range_arg(range_expr, g)?;
        let mut raws = std::mem::take(&mut arg.raws);
        // Dropping `__name__` can make two series equal only when their names differ.
        let one_name = raws
            .windows(2)
            .all(|w| get(&w[0].metric, NAME_LABEL) == get(&w[1].metric, NAME_LABEL));
        let parts = sonde_storage::par::map_parts(
            &mut raws,
            ev.cfg.threads,
            sonde_storage::par::PARALLEL_MIN_SERIES,
            |part| {
                let mut out = Vec::new();
                for (i, raw) in part.iter_mut().enumerate() {
                    if i % 1024 == 0 {
                        within(deadline, "range function")?;
                    }
                    out.extend(range_series(&f, &arg, g, raw, |r| {
                        std::mem::take(&mut r.metric)
                    }));
                }
                Ok(out)
            },
        );
        (parts.into_iter().collect::<Result<Vec<_>>>()?, one_name)
    };
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        out.extend(part);
    }
    Ok(Val::Vector(if one_name || f.keeps_name() {
        out
    } else {
        merge_same(out)?
    }))
}

fn map_values(series: Vec<Series>, keep_name: bool, f: impl Fn(f64) -> f64) -> Vec<Series> {
    series
        .into_iter()
        .map(|mut s| {
            if !keep_name {
                drop_name(&mut s.metric);
            }
            for v in s.vals.iter_mut().flatten() {
                *v = f(*v);
            }
            s
        })
        .collect()
}

fn map_values_at(
    series: Vec<Series>,
    params: &[Vec<f64>],
    f: impl Fn(f64, &[f64]) -> f64,
) -> Vec<Series> {
    series
        .into_iter()
        .map(|mut s| {
            drop_name(&mut s.metric);
            for (i, v) in s.vals.iter_mut().enumerate() {
                if let Some(x) = v {
                    let p: Vec<f64> = params.iter().map(|p| p[i]).collect();
                    *x = f(*x, &p);
                }
            }
            s
        })
        .collect()
}

/// Year, month (1–12), day (1–31) of a day number since 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_part(name: &str, secs: f64) -> f64 {
    let s = secs.floor() as i64;
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let month_days = [
        31,
        if is_leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    match name {
        "minute" => ((sod / 60) % 60) as f64,
        "hour" => (sod / 3600) as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_month" => d as f64,
        "day_of_year" => (month_days[..(m - 1) as usize].iter().sum::<i64>() + d) as f64,
        "days_in_month" => month_days[(m - 1) as usize] as f64,
        "month" => m as f64,
        _ => y as f64,
    }
}

fn string_arg(e: &Expr) -> Result<String> {
    match e {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        Expr::Paren(p) => string_arg(&p.expr),
        _ => Err(PromError::BadData("expected a string literal".into())),
    }
}

pub(crate) fn call(ev: &mut Evaluator<'_>, c: &Call, g: &Grid) -> Result<Val> {
    let name = c.func.name;
    let args = &c.args.args;
    if RANGE_FUNCS.contains(&name) {
        return range_function(ev, c, g);
    }
    let math = |f: fn(f64) -> f64| f;
    let simple: Option<fn(f64) -> f64> = match name {
        "abs" => Some(math(f64::abs)),
        "ceil" => Some(math(f64::ceil)),
        "floor" => Some(math(f64::floor)),
        "exp" => Some(math(f64::exp)),
        "ln" => Some(math(f64::ln)),
        "log2" => Some(math(f64::log2)),
        "log10" => Some(math(f64::log10)),
        "sqrt" => Some(math(f64::sqrt)),
        "sgn" => Some(|v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }),
        "sin" => Some(math(f64::sin)),
        "cos" => Some(math(f64::cos)),
        "tan" => Some(math(f64::tan)),
        "asin" => Some(math(f64::asin)),
        "acos" => Some(math(f64::acos)),
        "atan" => Some(math(f64::atan)),
        "sinh" => Some(math(f64::sinh)),
        "cosh" => Some(math(f64::cosh)),
        "tanh" => Some(math(f64::tanh)),
        "asinh" => Some(math(f64::asinh)),
        "acosh" => Some(math(f64::acosh)),
        "atanh" => Some(math(f64::atanh)),
        "deg" => Some(|v: f64| v * 180.0 / std::f64::consts::PI),
        "rad" => Some(|v: f64| v * std::f64::consts::PI / 180.0),
        _ => None,
    };
    if let Some(f) = simple {
        let v = ev.vector_arg(&args[0], g)?;
        return Ok(Val::Vector(merge_same(map_values(v, false, f))?));
    }
    match name {
        "time" => Ok(Val::Scalar(
            (0..g.n).map(|i| g.t(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; g.n])),
        "vector" => {
            let s = ev.scalar_arg(&args[0], g)?;
            Ok(Val::Vector(vec![Series {
                metric: Vec::new(),
                vals: s.into_iter().map(Some).collect(),
            }]))
        }
        "scalar" => {
            let v = ev.vector_arg(&args[0], g)?;
            Ok(Val::Scalar(
                (0..g.n)
                    .map(|i| {
                        let mut it = v.iter().filter_map(|s| s.vals[i]);
                        match (it.next(), it.next()) {
                            (Some(x), None) => x,
                            _ => f64::NAN,
                        }
                    })
                    .collect(),
            ))
        }
        "timestamp" => {
            let v = match strip(&args[0]) {
                Expr::VectorSelector(vs) => ev.selector(vs, g, true)?,
                e => {
                    let v = ev.vector_arg(e, g)?;
                    v.into_iter()
                        .map(|mut s| {
                            for (i, x) in s.vals.iter_mut().enumerate() {
                                if x.is_some() {
                                    *x = Some(g.t(i) as f64 / 1000.0);
                                }
                            }
                            s
                        })
                        .collect()
                }
            };
            Ok(Val::Vector(merge_same(map_values(v, false, |x| x))?))
        }
        "round" => {
            let v = ev.vector_arg(&args[0], g)?;
            let to = match args.get(1) {
                Some(a) => ev.scalar_arg(a, g)?,
                None => vec![1.0; g.n],
            };
            Ok(Val::Vector(merge_same(map_values_at(v, &[to], |x, p| {
                let inv = 1.0 / p[0];
                (x * inv + 0.5).floor() / inv
            }))?))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let v = ev.vector_arg(&args[0], g)?;
            let mut params = Vec::new();
            for a in &args[1..] {
                params.push(ev.scalar_arg(a, g)?);
            }
            let mut out = map_values_at(v, &params, |x, p| match name {
                "clamp" => p[0].max(x.min(p[1])),
                "clamp_min" => x.max(p[0]),
                _ => x.min(p[0]),
            });
            if name == "clamp" {
                // `clamp` with min > max gives an empty vector at that step.
                for s in &mut out {
                    for (i, x) in s.vals.iter_mut().enumerate() {
                        if params[0][i] > params[1][i] {
                            *x = None;
                        }
                    }
                }
                out.retain(|s| s.vals.iter().any(Option::is_some));
            }
            Ok(Val::Vector(merge_same(out)?))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let v = match args.first() {
                Some(a) => ev.vector_arg(a, g)?,
                None => vec![Series {
                    metric: Vec::new(),
                    vals: (0..g.n).map(|i| Some(g.t(i) as f64 / 1000.0)).collect(),
                }],
            };
            Ok(Val::Vector(merge_same(map_values(v, false, |x| {
                date_part(name, x)
            }))?))
        }
        "sort" | "sort_desc" => {
            let mut v = ev.vector_arg(&args[0], g)?;
            let key = |s: &Series| s.vals[0].unwrap_or(f64::NAN);
            v.sort_by(|a, b| {
                let (x, y) = (key(a), key(b));
                let o = match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if name == "sort" => x.total_cmp(&y),
                    _ => y.total_cmp(&x),
                };
                o.then_with(|| a.metric.cmp(&b.metric))
            });
            Ok(Val::Vector(v))
        }
        "label_replace" => {
            let v = ev.vector_arg(&args[0], g)?;
            let dst = string_arg(&args[1])?;
            let repl = string_arg(&args[2])?;
            let src = string_arg(&args[3])?;
            let re_src = string_arg(&args[4])?;
            let re = regex::Regex::new(&format!("^(?s:{re_src})$")).map_err(|e| {
                PromError::BadData(format!(
                    "invalid regular expression in label_replace(): {e}"
                ))
            })?;
            if !crate::is_label_name(&dst) {
                return Err(PromError::BadData(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let out = v
                .into_iter()
                .map(|mut s| {
                    let value = get(&s.metric, &src).to_string();
                    if let Some(caps) = re.captures(&value) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        set_label(&mut s.metric, &dst, &res);
                    }
                    s
                })
                .collect();
            Ok(Val::Vector(merge_same(out)?))
        }
        "label_join" => {
            let v = ev.vector_arg(&args[0], g)?;
            let dst = string_arg(&args[1])?;
            let sep = string_arg(&args[2])?;
            let srcs: Vec<String> = args[3..]
                .iter()
                .map(|a| string_arg(a))
                .collect::<Result<_>>()?;
            if !crate::is_label_name(&dst) {
                return Err(PromError::BadData(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let out = v
                .into_iter()
                .map(|mut s| {
                    let joined: Vec<&str> = srcs.iter().map(|l| get(&s.metric, l)).collect();
                    let joined = joined.join(&sep);
                    set_label(&mut s.metric, &dst, &joined);
                    s
                })
                .collect();
            Ok(Val::Vector(merge_same(out)?))
        }
        "absent" => {
            let v = ev.vector_arg(&args[0], g)?;
            let metric = absent_labels(&args[0]);
            let vals = (0..g.n)
                .map(|i| (!v.iter().any(|s| s.vals[i].is_some())).then_some(1.0))
                .collect::<Vec<_>>();
            Ok(Val::Vector(nonempty_one(metric, vals)))
        }
        "absent_over_time" => {
            let arg = ev.range_arg(&args[0], g)?;
            let mut present = vec![false; g.n];
            for raw in &arg.raws {
                let w = arg.windows(raw, g, |_, _, _, _, _, _| Some(1.0));
                for (p, x) in present.iter_mut().zip(w) {
                    *p |= x.is_some();
                }
            }
            let metric = absent_labels(&args[0]);
            let vals = present.iter().map(|p| (!p).then_some(1.0)).collect();
            Ok(Val::Vector(nonempty_one(metric, vals)))
        }
        "histogram_quantile" => {
            let q = ev.scalar_arg(&args[0], g)?;
            let v = ev.vector_arg(&args[1], g)?;
            histogram_quantile(&q, v, g)
        }
        other => Err(PromError::BadData(format!(
            "function \"{other}\" is not supported"
        ))),
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        e => e,
    }
}

fn nonempty_one(metric: Metric, vals: Vec<Option<f64>>) -> Vec<Series> {
    if vals.iter().any(Option::is_some) {
        vec![Series { metric, vals }]
    } else {
        Vec::new()
    }
}

/// The labels `absent` reports: the selector's equality matchers (a label matched
/// twice is left out).
fn absent_labels(e: &Expr) -> Metric {
    let vs = match strip(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Vec::new(),
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in &vs.matchers.matchers {
        *seen.entry(m.name.as_str()).or_default() += 1;
    }
    let mut out: Metric = vs
        .matchers
        .matchers
        .iter()
        .filter(|m| {
            matches!(m.op, MatchOp::Equal) && m.name != NAME_LABEL && seen[m.name.as_str()] == 1
        })
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    out.sort();
    out
}

fn histogram_quantile(q: &[f64], v: Vec<Series>, g: &Grid) -> Result<Val> {
    let mut groups: Vec<(Metric, Vec<(f64, usize)>)> = Vec::new();
    let mut index: HashMap<Metric, usize> = HashMap::new();
    for (i, s) in v.iter().enumerate() {
        let Ok(le) = parse_le(get(&s.metric, "le")) else {
            continue;
        };
        let mut m = s.metric.clone();
        m.retain(|(k, _)| k != "le" && k != NAME_LABEL);
        let gi = *index.entry(m.clone()).or_insert_with(|| {
            groups.push((m, Vec::new()));
            groups.len() - 1
        });
        groups[gi].1.push((le, i));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (metric, buckets) in groups {
        let vals: Vec<Option<f64>> = (0..g.n)
            .map(|step| {
                let mut b: Vec<(f64, f64)> = buckets
                    .iter()
                    .filter_map(|&(le, i)| v[i].vals[step].map(|c| (le, c)))
                    .collect();
                if b.is_empty() {
                    return None;
                }
                Some(bucket_quantile(q[step], &mut b))
            })
            .collect();
        if vals.iter().any(Option::is_some) {
            out.push(Series { metric, vals });
        }
    }
    Ok(Val::Vector(out))
}

fn parse_le(s: &str) -> std::result::Result<f64, ()> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        _ => s.trim().parse::<f64>().map_err(|_| ()),
    }
}

/// Prometheus' quantile of classic buckets (upper bound, cumulative count).
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds, then force monotonic counts.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(le, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

pub(crate) fn aggregate(
    op: &str,
    input: &[Series],
    groups: Vec<(Metric, Vec<usize>)>,
    param: Option<Val>,
    g: &Grid,
) -> Result<Val> {
    let scalar_param = |p: &Option<Val>| -> Result<Vec<f64>> {
        match p {
            Some(Val::Scalar(v)) => Ok(v.clone()),
            _ => Err(PromError::BadData(format!(
                "expected a scalar parameter for {op}"
            ))),
        }
    };
    match op {
        "topk" | "bottomk" => {
            let k = scalar_param(&param)?;
            let mut keep: Vec<Vec<bool>> = vec![vec![false; g.n]; input.len()];
            // Best first, NaN last, ties by input order: a total order, so picking
            // the first `kk` needs no full sort.
            let order = |a: &(f64, usize), b: &(f64, usize)| {
                let o = match (a.0.is_nan(), b.0.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if op == "topk" => b.0.total_cmp(&a.0),
                    _ => a.0.total_cmp(&b.0),
                };
                o.then(a.1.cmp(&b.1))
            };
            let mut present: Vec<(f64, usize)> = Vec::new();
            for (_, members) in &groups {
                for step in 0..g.n {
                    let kk = k[step];
                    if kk.is_nan() || kk < 1.0 {
                        continue;
                    }
                    present.clear();
                    present.extend(
                        members
                            .iter()
                            .filter_map(|&i| input[i].vals[step].map(|v| (v, i))),
                    );
                    let kk = (kk as i64).min(present.len() as i64) as usize;
                    if kk == 0 {
                        continue;
                    }
                    if kk < present.len() {
                        present.select_nth_unstable_by(kk - 1, order);
                    }
                    for &(_, i) in &present[..kk] {
                        keep[i][step] = true;
                    }
                }
            }
            let out = input
                .iter()
                .zip(keep)
                .filter_map(|(s, k)| {
                    let vals: Vec<Option<f64>> = s
                        .vals
                        .iter()
                        .zip(k)
                        .map(|(v, k)| if k { *v } else { None })
                        .collect();
                    vals.iter().any(Option::is_some).then(|| Series {
                        metric: s.metric.clone(),
                        vals,
                    })
                })
                .collect();
            Ok(Val::Vector(out))
        }
        "count_values" => {
            let Some(Val::Str(label)) = &param else {
                return Err(PromError::BadData(
                    "expected a string parameter for count_values".into(),
                ));
            };
            if !crate::is_label_name(label) {
                return Err(PromError::BadData(format!("invalid label name {label:?}")));
            }
            let mut out: Vec<Series> = Vec::new();
            let mut index: HashMap<Metric, usize> = HashMap::new();
            for (metric, members) in &groups {
                for step in 0..g.n {
                    for &i in members {
                        let Some(v) = input[i].vals[step] else {
                            continue;
                        };
                        let mut m = metric.clone();
                        set_label(&mut m, label, &format_float(v));
                        let oi = *index.entry(m.clone()).or_insert_with(|| {
                            out.push(Series {
                                metric: m,
                                vals: vec![None; g.n],
                            });
                            out.len() - 1
                        });
                        let slot = &mut out[oi].vals[step];
                        *slot = Some(slot.unwrap_or(0.0) + 1.0);
                    }
                }
            }
            Ok(Val::Vector(out))
        }
        _ => {
            let q = if op == "quantile" {
                scalar_param(&param)?
            } else {
                Vec::new()
            };
            let mut out = Vec::with_capacity(groups.len());
            let mut buf: Vec<f64> = Vec::new();
            for (metric, members) in groups {
                let mut vals = vec![None; g.n];
                for (step, slot) in vals.iter_mut().enumerate() {
                    buf.clear();
                    buf.extend(members.iter().filter_map(|&i| input[i].vals[step]));
                    if buf.is_empty() {
                        continue;
                    }
                    *slot = Some(aggregate_values(op, &mut buf, q.get(step).copied())?);
                }
                out.push(Series { metric, vals });
            }
            Ok(Val::Vector(out))
        }
    }
}

/// The aggregations that are not a fold over a step's values (see
/// [`crate::aggregate::Op`] for those): `quantile`.
fn aggregate_values(op: &str, vals: &mut [f64], q: Option<f64>) -> Result<f64> {
    match op {
        "quantile" => Ok(quantile(q.unwrap_or(f64::NAN), vals)),
        other => Err(PromError::BadData(format!(
            "aggregation \"{other}\" is not supported"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantile_interpolates() {
        let mut b = vec![(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (f64::INFINITY, 40.0)];
        // rank 20 falls in (0.1, 0.5]: 0.1 + 0.4 * (10/20).
        assert!((bucket_quantile(0.5, &mut b) - 0.3).abs() < 1e-12);
        assert_eq!(bucket_quantile(1.0, &mut b), 1.0);
        let mut no_inf = vec![(1.0, 3.0)];
        assert!(bucket_quantile(0.5, &mut no_inf).is_nan());
    }

    #[test]
    fn quantile_matches_prometheus() {
        assert_eq!(quantile(0.5, &mut [1.0, 3.0, 2.0, 4.0]), 2.5);
        assert_eq!(quantile(0.0, &mut [5.0, 1.0]), 1.0);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
    }

    #[test]
    fn rate_extrapolates_to_window_edges() {
        // Samples every 10 s from 10 to 50 s, counter +1/s, window [0, 60].
        let ts = [10_000, 20_000, 30_000, 40_000, 50_000];
        let vals = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert_eq!(reset_prefix(&vals), None, "no reset");
        let mut ex = Extrapolation::new(true, false, 60.0);
        let r = extrapolated(&mut ex, &ts, &vals, None, 0, 60_000).unwrap();
        // Both gaps (10 s) are below 1.1x the sample interval: extrapolated to both edges.
        assert!((r - 60.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn a_kept_factor_gives_what_a_fresh_one_gives() {
        // Windows of 300 s, samples every 15 s, each window placed alike; the values
        // change, and the fourth window's counter starts near zero, so its start is
        // clamped even though it sits like the others.
        let windows = [
            (12.0, 1_000.0),
            (7.5, 1_012.0),
            (30.0, 2_000.0),
            (10.0, 0.1),
            (10.0, 5_000.0),
        ];
        for (counter, rate) in [(true, true), (true, false), (false, false)] {
            let mut kept = Extrapolation::new(counter, rate, 300.0);
            let mut answers = Vec::new();
            for (i, &(result, v0)) in windows.iter().enumerate() {
                let at = i as i64 * 60_000;
                let w = (at, at + 300_000);
                let a = kept.apply(result, (at + 15_000, v0), at + 285_000, 19, w);
                let fresh = Extrapolation::new(counter, rate, 300.0).apply(
                    result,
                    (at + 15_000, v0),
                    at + 285_000,
                    19,
                    w,
                );
                assert_eq!(a.to_bits(), fresh.to_bits(), "window {i}");
                answers.push(a / result);
            }
            // The clamp applies to counters only.
            assert_eq!(answers[3] < answers[0], counter, "{answers:?}");
            assert!((answers[0] - answers[4]).abs() < 1e-12, "{answers:?}");
        }
    }

    #[test]
    fn resets_add_the_value_before_the_drop() {
        let vals = [5.0, 8.0, 2.0, 4.0, 1.0];
        let r = reset_prefix(&vals).unwrap();
        assert_eq!(r, [0.0, 0.0, 8.0, 8.0, 12.0]);
        // Window 1..4: 8 → 2 → 4 is one reset: 4 - 8 + 8 = 4.
        let ts = [0, 10_000, 20_000, 30_000, 40_000];
        let mut ex = Extrapolation::new(true, false, 20.0);
        let inc = extrapolated(
            &mut ex,
            &ts[1..4],
            &vals[1..4],
            Some(&r[1..4]),
            10_000,
            30_000,
        );
        assert_eq!(inc, Some(4.0));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(date_part("day_of_week", 0.0), 4.0);
        assert_eq!(date_part("days_in_month", 19_782.0 * 86_400.0), 29.0);
    }
}
