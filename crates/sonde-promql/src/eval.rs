//! The evaluator: every expression is evaluated over a whole step grid at once.

use foldhash::{HashMap, HashMapExt};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher as PMatcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    SubqueryExpr, VectorMatchCardinality, VectorSelector,
};
use sonde_storage::Storage;
use sonde_types::NAME_LABEL;

use crate::funcs;
use crate::select::{STALE_NAN_BITS, Selected, fetch_map};
use crate::{PromConfig, PromError, Result};

/// A label set, sorted by name; `__name__` is one of the labels.
pub type Metric = Vec<(String, String)>;

/// A series of a step grid: one optional value per step.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub metric: Metric,
    pub vals: Vec<Option<f64>>,
}

/// A series' raw samples, sorted by time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Raw {
    pub metric: Metric,
    pub ts: Vec<i64>,
    pub vals: Vec<f64>,
    /// Samples are deltas (OTLP delta temporality), not a cumulative counter.
    pub delta: bool,
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    Scalar(i64, f64),
    String(i64, String),
    /// An instant vector: (labels, time, value).
    Vector(Vec<(Metric, i64, f64)>),
    /// A range query's result, or an instant query of a range vector.
    Matrix(Vec<Raw>),
}

/// Evaluation times: `start + i * step` for `i < n`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub start: i64,
    pub step: i64,
    pub n: usize,
}

impl Grid {
    pub fn t(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }
    pub fn last(&self) -> i64 {
        self.t(self.n.saturating_sub(1))
    }
}

/// An evaluated expression.
#[derive(Debug)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<Series>),
    Str(String),
}

/// The samples a range function works on, with the window placement.
#[derive(Debug)]
pub(crate) struct RangeArg {
    pub raws: Vec<Raw>,
    pub range: i64,
    pub offset: i64,
    /// Fixed evaluation time (`@`).
    pub at: Option<i64>,
}

impl RangeArg {
    /// Calls `f(step, first index, times, values, window start, window end)` with
    /// each step's window `[t - offset - range, t - offset]` of `raw` (both ends
    /// included, as in Prometheus 2.x); empty windows give `None`.
    pub fn windows(
        &self,
        raw: &Raw,
        g: &Grid,
        mut f: impl FnMut(usize, usize, &[i64], &[f64], i64, i64) -> Option<f64>,
    ) -> Vec<Option<f64>> {
        let window = |end: i64| -> (usize, usize) {
            let start = end - self.range;
            let lo = raw.ts.partition_point(|&t| t < start);
            let hi = raw.ts.partition_point(|&t| t <= end);
            (lo, hi)
        };
        if let Some(at) = self.at {
            let end = at - self.offset;
            let (lo, hi) = window(end);
            let v = if lo < hi {
                f(
                    0,
                    lo,
                    &raw.ts[lo..hi],
                    &raw.vals[lo..hi],
                    end - self.range,
                    end,
                )
            } else {
                None
            };
            return vec![v; g.n];
        }
        let mut out = vec![None; g.n];
        let (mut lo, mut hi) = (0usize, 0usize);
        let n = raw.ts.len();
        for (i, o) in out.iter_mut().enumerate() {
            let end = g.t(i) - self.offset;
            let start = end - self.range;
            while hi < n && raw.ts[hi] <= end {
                hi += 1;
            }
            while lo < hi && raw.ts[lo] < start {
                lo += 1;
            }
            if lo < hi {
                *o = f(i, lo, &raw.ts[lo..hi], &raw.vals[lo..hi], start, end);
            }
        }
        out
    }
}

pub(crate) struct Evaluator<'a> {
    pub storage: &'a Storage,
    pub tenant: &'a str,
    pub cfg: &'a PromConfig,
    query_start: i64,
    query_end: i64,
    pub budget: usize,
    deadline: Instant,
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

pub(crate) fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub(crate) fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

pub(crate) fn drop_name(m: &mut Metric) {
    m.retain(|(k, _)| k != NAME_LABEL);
}

pub(crate) fn get<'m>(m: &'m Metric, name: &str) -> &'m str {
    get_opt(m, name).unwrap_or("")
}

fn get_opt<'m>(m: &'m Metric, name: &str) -> Option<&'m str> {
    m.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(crate) fn set_label(m: &mut Metric, name: &str, value: &str) {
    m.retain(|(k, _)| k != name);
    if !value.is_empty() {
        m.push((name.to_string(), value.to_string()));
        m.sort();
    }
}

pub(crate) fn metric_string(m: &Metric) -> String {
    let name = get(m, NAME_LABEL);
    let rest: Vec<String> = m
        .iter()
        .filter(|(k, _)| k != NAME_LABEL)
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// Merges series with equal label sets; two values at one step are an error.
pub(crate) fn merge_same(series: Vec<Series>) -> Result<Vec<Series>> {
    let mut index: HashMap<Metric, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for s in series {
        match index.get(&s.metric) {
            None => {
                index.insert(s.metric.clone(), out.len());
                out.push(s);
            }
            Some(&i) => {
                let dst = &mut out[i].vals;
                for (d, v) in dst.iter_mut().zip(s.vals) {
                    if v.is_some() {
                        if d.is_some() {
                            return Err(PromError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *d = v;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A timeout error naming `stage` once `deadline` has passed (for work that runs
/// away from the [`Evaluator`], e.g. on the worker pool).
pub(crate) fn within(deadline: Instant, stage: &'static str) -> Result<()> {
    if Instant::now() > deadline {
        Err(PromError::Timeout(stage))
    } else {
        Ok(())
    }
}

/// Removes stale markers: range functions never see them.
pub(crate) fn drop_stale(r: &mut Raw) {
    // Folds, not `any`: without the early exit the scan vectorizes; a NaN test
    // vectorizes on every x86-64 (a 64-bit equality needs SSE4.1), so the exact
    // bit pattern is looked for only when there is a NaN.
    if r.vals.iter().fold(false, |seen, v| seen | v.is_nan())
        && r.vals.iter().fold(false, |seen, v| seen | is_stale(*v))
    {
        let (ts, vals): (Vec<i64>, Vec<f64>) =
            r.ts.iter()
                .zip(&r.vals)
                .filter(|(_, v)| !is_stale(**v))
                .unzip();
        r.ts = ts;
        r.vals = vals;
    }
}

/// An instant selector's value at each step of `g` from a series' samples: the
/// latest sample at or before `t - off`, unless older than `lookback` or stale (the
/// sample's time in seconds when `timestamps`).
pub(crate) fn instant_values(
    r: &Raw,
    g: &Grid,
    off: i64,
    lookback: i64,
    timestamps: bool,
) -> Vec<Option<f64>> {
    let mut vals = vec![None; g.n];
    let n = r.ts.len();
    let mut j = 0;
    for (i, o) in vals.iter_mut().enumerate() {
        let te = g.t(i) - off;
        while j < n && r.ts[j] <= te {
            j += 1;
        }
        if j > 0 {
            let k = j - 1;
            if r.ts[k] >= te - lookback && !is_stale(r.vals[k]) {
                *o = Some(if timestamps {
                    r.ts[k] as f64 / 1000.0
                } else {
                    r.vals[k]
                });
            }
        }
    }
    vals
}

fn nonempty(series: Vec<Series>) -> Vec<Series> {
    series
        .into_iter()
        .filter(|s| s.vals.iter().any(Option::is_some))
        .collect()
}

pub(crate) fn strip_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip_parens(&p.expr),
        e => e,
    }
}

pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<PMatcher>> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(PromError::BadData(
            "\"or\" in label matchers is not supported".into(),
        ));
    }
    let mut ms = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        ms.push(PMatcher::new(MatchOp::Equal, NAME_LABEL, name));
    }
    Ok(ms)
}

impl<'a> Evaluator<'a> {
    pub fn new(
        storage: &'a Storage,
        tenant: &'a str,
        cfg: &'a PromConfig,
        query_start: i64,
        query_end: i64,
    ) -> Self {
        Evaluator {
            storage,
            tenant,
            cfg,
            query_start,
            query_end,
            budget: cfg.max_samples,
            deadline: Instant::now() + cfg.timeout,
        }
    }

    /// When the query runs out of time.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn check_deadline(&self, stage: &'static str) -> Result<()> {
        within(self.deadline, stage)
    }

    /// The series matching `matchers` in `span`, handed to `f` part by part as they
    /// are read (see [`fetch_map`]), within this query's sample budget and threads.
    /// Returns `f`'s results in order and how many metric names were read.
    pub fn stream<U: Send>(
        &mut self,
        matchers: &[PMatcher],
        span: (i64, i64),
        f: impl for<'s> Fn(&mut dyn Iterator<Item = Selected<'s>>) -> Result<U> + Sync,
    ) -> Result<(Vec<U>, usize)> {
        fetch_map(
            self.storage,
            self.tenant,
            matchers,
            span,
            &mut self.budget,
            self.cfg.threads,
            f,
        )
    }

    /// Evaluates `expr` at `n` steps from `start` (`step` 0 for an instant query).
    pub fn run(mut self, expr: &Expr, start: i64, step: i64, n: usize) -> Result<QueryValue> {
        let g = Grid { start, step, n };
        let instant = step == 0;
        if expr.value_type() == ValueType::Matrix {
            if !instant {
                return Err(PromError::BadData(
                    "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
                ));
            }
            let arg = self.range_arg(expr, &g)?;
            let t = arg.at.unwrap_or(start);
            let end = t - arg.offset;
            let mut out: Vec<Raw> = Vec::new();
            for mut r in arg.raws {
                let lo = r.ts.partition_point(|&x| x < end - arg.range);
                let hi = r.ts.partition_point(|&x| x <= end);
                if lo < hi {
                    r.ts = r.ts[lo..hi].to_vec();
                    r.vals = r.vals[lo..hi].to_vec();
                    out.push(r);
                }
            }
            out.sort_by(|a, b| a.metric.cmp(&b.metric));
            return Ok(QueryValue::Matrix(out));
        }
        let keep_order = matches!(strip_parens(expr), Expr::Call(c) if c.func.name == "sort" || c.func.name == "sort_desc");
        let val = self.eval(expr, &g)?;
        Ok(match val {
            Val::Str(s) => QueryValue::String(start, s),
            Val::Scalar(v) if instant => QueryValue::Scalar(start, v[0]),
            Val::Scalar(v) => QueryValue::Matrix(vec![Raw {
                metric: Vec::new(),
                ts: (0..n).map(|i| g.t(i)).collect(),
                vals: v,
                delta: false,
            }]),
            Val::Vector(mut series) if instant => {
                if !keep_order {
                    series.sort_by(|a, b| a.metric.cmp(&b.metric));
                }
                QueryValue::Vector(
                    series
                        .into_iter()
                        .filter_map(|s| s.vals[0].map(|v| (s.metric, start, v)))
                        .collect(),
                )
            }
            Val::Vector(series) => {
                let mut out: Vec<Raw> = series
                    .into_iter()
                    .filter_map(|s| {
                        let mut ts = Vec::new();
                        let mut vals = Vec::new();
                        for (i, v) in s.vals.iter().enumerate() {
                            if let Some(v) = v {
                                ts.push(g.t(i));
                                vals.push(*v);
                            }
                        }
                        (!ts.is_empty()).then_some(Raw {
                            metric: s.metric,
                            ts,
                            vals,
                            delta: false,
                        })
                    })
                    .collect();
                out.sort_by(|a, b| a.metric.cmp(&b.metric));
                QueryValue::Matrix(out)
            }
        })
    }

    fn at_time(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::Start) => Some(self.query_start),
            Some(AtModifier::End) => Some(self.query_end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
        }
    }

    pub fn eval(&mut self, e: &Expr, g: &Grid) -> Result<Val> {
        self.check_deadline("query evaluation")?;
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; g.n])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, g),
            Expr::Unary(u) => match self.eval(&u.expr, g)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(series) => {
                    let series = series
                        .into_iter()
                        .map(|mut s| {
                            drop_name(&mut s.metric);
                            for v in s.vals.iter_mut().flatten() {
                                *v = -*v;
                            }
                            s
                        })
                        .collect();
                    Ok(Val::Vector(merge_same(series)?))
                }
                Val::Str(_) => Err(PromError::BadData(
                    "unary expression only allowed on expressions of type scalar or vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.selector(vs, g, false)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(PromError::BadData(
                "a range vector is only allowed as a function argument".into(),
            )),
            Expr::Call(c) => self.call(c, g),
            Expr::Aggregate(a) => self.aggregate(a, g),
            Expr::Binary(b) => self.binary(b, g),
            Expr::Extension(_) => Err(PromError::BadData("unsupported expression".into())),
        }
    }

    /// An instant selector: each step's latest sample within the lookback window.
    /// With `timestamps`, the value is the sample's time in seconds (`timestamp()`).
    pub fn selector(
        &mut self,
        vs: &VectorSelector,
        g: &Grid,
        timestamps: bool,
    ) -> Result<Vec<Series>> {
        if let Some(at) = self.at_time(&vs.at) {
            let one = Grid {
                start: at,
                step: 0,
                n: 1,
            };
            let mut vs2 = vs.clone();
            vs2.at = None;
            let series = self.selector(&vs2, &one, timestamps)?;
            return Ok(series
                .into_iter()
                .map(|s| Series {
                    metric: s.metric,
                    vals: vec![s.vals[0]; g.n],
                })
                .collect());
        }
        let (off, lookback, span) = self.instant_spec(vs, g);
        let matchers = selector_matchers(vs)?;
        // Streamed: each part of the selection becomes step values and is dropped.
        let (parts, _) = self.stream(&matchers, span, |sel| {
            let mut out = Vec::new();
            for s in sel {
                let vals = instant_values(&s.raw, g, off, lookback, timestamps);
                if vals.iter().any(Option::is_some) {
                    out.push(Series {
                        metric: s.metric(),
                        vals,
                    });
                }
            }
            Ok(out)
        })?;
        self.check_deadline("reading series")?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Where an instant selector (without `@`) looks on grid `g`: its offset, the
    /// lookback, and the span of samples it reads.
    pub fn instant_spec(&self, vs: &VectorSelector, g: &Grid) -> (i64, i64, (i64, i64)) {
        let off = offset_ms(&vs.offset);
        let lookback = self.cfg.lookback_delta.as_millis() as i64;
        (off, lookback, (g.start - off - lookback, g.last() - off))
    }

    /// The samples of a range-vector expression (matrix selector or subquery) that
    /// the windows of grid `g` need.
    pub fn range_arg(&mut self, e: &Expr, g: &Grid) -> Result<RangeArg> {
        match e {
            Expr::Paren(p) => self.range_arg(&p.expr, g),
            Expr::MatrixSelector(ms) => {
                let (mut arg, matchers, span) = self.matrix_spec(ms, g)?;
                let (parts, _) = self.stream(&matchers, span, |sel| {
                    Ok(sel.map(Selected::into_raw).collect::<Vec<_>>())
                })?;
                arg.raws = parts.into_iter().flatten().collect();
                arg.raws.iter_mut().for_each(drop_stale);
                Ok(arg)
            }
            Expr::Subquery(sq) => self.subquery(sq, g),
            other => Err(PromError::BadData(format!(
                "expected type range vector, got {}",
                crate::type_name(other.value_type())
            ))),
        }
    }

    /// A matrix selector's window placement (with no samples yet), its matchers and
    /// the time span its windows over grid `g` need.
    pub fn matrix_spec(
        &self,
        ms: &MatrixSelector,
        g: &Grid,
    ) -> Result<(RangeArg, Vec<PMatcher>, (i64, i64))> {
        let at = self.at_time(&ms.vs.at);
        let offset = offset_ms(&ms.vs.offset);
        let range = ms.range.as_millis() as i64;
        let (tmin, tmax) = at.map(|a| (a, a)).unwrap_or((g.start, g.last()));
        let arg = RangeArg {
            raws: Vec::new(),
            range,
            offset,
            at,
        };
        Ok((
            arg,
            selector_matchers(&ms.vs)?,
            (tmin - offset - range, tmax - offset),
        ))
    }

    fn subquery(&mut self, sq: &SubqueryExpr, g: &Grid) -> Result<RangeArg> {
        let at = self.at_time(&sq.at);
        let offset = offset_ms(&sq.offset);
        let range = sq.range.as_millis() as i64;
        let step = sq
            .step
            .unwrap_or(self.cfg.default_subquery_step)
            .as_millis() as i64;
        if step <= 0 {
            return Err(PromError::BadData("subquery step must be positive".into()));
        }
        let (tmin, tmax) = at.map(|a| (a, a)).unwrap_or((g.start, g.last()));
        let lo = tmin - offset - range;
        let mut start = step * lo.div_euclid(step);
        if start < lo {
            start += step;
        }
        let end = tmax - offset;
        let n = if end < start {
            0
        } else {
            ((end - start) / step + 1) as usize
        };
        if n > self.cfg.max_samples {
            return Err(PromError::Execution(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            ));
        }
        let inner = Grid { start, step, n };
        let raws = match self.eval(&sq.expr, &inner)? {
            Val::Vector(series) => series
                .into_iter()
                .map(|s| {
                    let mut ts = Vec::new();
                    let mut vals = Vec::new();
                    for (i, v) in s.vals.iter().enumerate() {
                        if let Some(v) = v {
                            ts.push(inner.t(i));
                            vals.push(*v);
                        }
                    }
                    Raw {
                        metric: s.metric,
                        ts,
                        vals,
                        delta: false,
                    }
                })
                .collect(),
            Val::Scalar(v) => vec![Raw {
                metric: Vec::new(),
                ts: (0..n).map(|i| inner.t(i)).collect(),
                vals: v,
                delta: false,
            }],
            Val::Str(_) => {
                return Err(PromError::BadData(
                    "subquery is only allowed on instant vector".into(),
                ));
            }
        };
        Ok(RangeArg {
            raws,
            range,
            offset,
            at,
        })
    }

    pub fn scalar_arg(&mut self, e: &Expr, g: &Grid) -> Result<Vec<f64>> {
        match self.eval(e, g)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(PromError::BadData("expected a scalar argument".into())),
        }
    }

    pub fn vector_arg(&mut self, e: &Expr, g: &Grid) -> Result<Vec<Series>> {
        match self.eval(e, g)? {
            Val::Vector(v) => Ok(v),
            _ => Err(PromError::BadData(
                "expected an instant vector argument".into(),
            )),
        }
    }

    fn call(&mut self, c: &Call, g: &Grid) -> Result<Val> {
        funcs::call(self, c, g)
    }

    fn aggregate(&mut self, a: &AggregateExpr, g: &Grid) -> Result<Val> {
        if let Some(v) = crate::aggregate::try_streamed(self, a, g)? {
            return Ok(v);
        }
        let op = a.op.to_string();
        let input = self.vector_arg(&a.expr, g)?;
        let param = match &a.param {
            None => None,
            Some(p) => Some(self.eval(p, g)?),
        };
        // `by`/`without` keep what vector matching's `on`/`ignoring` keep.
        let grouping = |m: &Metric| -> Metric {
            match &a.modifier {
                None => Vec::new(),
                modifier => signature(m, modifier),
            }
        };
        if let Some(op) = crate::aggregate::Op::parse(&op) {
            let mut groups = crate::aggregate::Groups::new(op, g);
            for s in &input {
                let i = groups.group(grouping(&s.metric));
                groups.add(i, &s.vals);
            }
            self.check_deadline("aggregation")?;
            return Ok(Val::Vector(groups.finish()));
        }
        let mut groups: Vec<(Metric, Vec<usize>)> = Vec::new();
        let mut index: HashMap<Metric, usize> = HashMap::new();
        for (i, s) in input.iter().enumerate() {
            let key = grouping(&s.metric);
            match index.get(&key) {
                Some(&gi) => groups[gi].1.push(i),
                None => {
                    index.insert(key.clone(), groups.len());
                    groups.push((key, vec![i]));
                }
            }
        }
        self.check_deadline("aggregation")?;
        funcs::aggregate(&op, &input, groups, param, g)
    }

    fn binary(&mut self, b: &BinaryExpr, g: &Grid) -> Result<Val> {
        let op = b.op.to_string();
        let lhs = self.eval(&b.lhs, g)?;
        let rhs = self.eval(&b.rhs, g)?;
        let return_bool = b.return_bool();
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let v = l
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| {
                        let (v, keep) = funcs::binop(&op, *a, *b)?;
                        Ok(if funcs::is_comparison(&op) {
                            if keep { 1.0 } else { 0.0 }
                        } else {
                            v
                        })
                    })
                    .collect::<Result<Vec<f64>>>()?;
                Ok(Val::Scalar(v))
            }
            (Val::Vector(v), Val::Scalar(s)) => {
                Ok(Val::Vector(vector_scalar(&op, v, &s, false, return_bool)?))
            }
            (Val::Scalar(s), Val::Vector(v)) => {
                Ok(Val::Vector(vector_scalar(&op, v, &s, true, return_bool)?))
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let modifier = b.modifier.clone().unwrap_or_default();
                let out = match op.as_str() {
                    "and" | "or" | "unless" => set_op(&op, l, r, &modifier.matching, g),
                    _ => vector_vector(&op, l, r, &modifier, return_bool, g)?,
                };
                Ok(Val::Vector(out))
            }
            _ => Err(PromError::BadData(format!(
                "binary operator \"{op}\" not allowed on strings"
            ))),
        }
    }
}

fn vector_scalar(
    op: &str,
    series: Vec<Series>,
    scalar: &[f64],
    swap: bool,
    return_bool: bool,
) -> Result<Vec<Series>> {
    let comparison = funcs::is_comparison(op);
    let drop = funcs::drops_name(op) || return_bool;
    let mut out = Vec::with_capacity(series.len());
    for mut s in series {
        for (i, slot) in s.vals.iter_mut().enumerate() {
            let Some(x) = *slot else { continue };
            let (lv, rv) = if swap { (scalar[i], x) } else { (x, scalar[i]) };
            let (mut value, keep) = funcs::binop(op, lv, rv)?;
            if comparison && swap {
                value = rv;
            }
            *slot = if return_bool {
                Some(if keep { 1.0 } else { 0.0 })
            } else if keep {
                Some(value)
            } else {
                None
            };
        }
        if drop {
            drop_name(&mut s.metric);
        }
        out.push(s);
    }
    merge_same(nonempty(out))
}

/// The labels of a metric kept by `on`/`by` (those listed, when not empty) or
/// `ignoring`/`without` (all but those listed and `__name__`): the matching
/// signature of vector matching and the group of an aggregation.
fn signature(m: &Metric, matching: &Option<LabelModifier>) -> Metric {
    signature_with(
        matching,
        |l| get_opt(m, l),
        || m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// [`signature`] of a label set given by a lookup (`get`, used for `on`/`by`) and
/// its pairs sorted by name (`pairs`, asked for only by `ignoring`/`without`),
/// borrowing from them.
pub(crate) fn signature_with<'a>(
    matching: &'a Option<LabelModifier>,
    get: impl Fn(&str) -> Option<&'a str>,
    pairs: impl FnOnce() -> Vec<(&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    signature_into(matching, get, pairs, &mut out);
    out
}

/// [`signature_with`] written into `out` (cleared first), so a caller keying many
/// series reuses one buffer: with `by`, nothing is allocated per series.
pub(crate) fn signature_into<'a>(
    matching: &'a Option<LabelModifier>,
    get: impl Fn(&str) -> Option<&'a str>,
    pairs: impl FnOnce() -> Vec<(&'a str, &'a str)>,
    out: &mut Vec<(&'a str, &'a str)>,
) {
    out.clear();
    match matching {
        Some(LabelModifier::Include(ls)) => {
            out.extend(
                ls.labels
                    .iter()
                    .filter_map(|l| Some((l.as_str(), get(l)?)))
                    .filter(|(_, v)| !v.is_empty()),
            );
            out.sort_unstable();
            out.dedup();
        }
        Some(LabelModifier::Exclude(ls)) => out.extend(
            pairs()
                .into_iter()
                .filter(|(k, _)| *k != NAME_LABEL && !ls.labels.iter().any(|l| l == k)),
        ),
        None => out.extend(pairs().into_iter().filter(|(k, _)| *k != NAME_LABEL)),
    }
}

fn set_op(
    op: &str,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    matching: &Option<LabelModifier>,
    g: &Grid,
) -> Vec<Series> {
    // Per step: which signatures the other side has.
    let rsig: Vec<Metric> = rhs.iter().map(|s| signature(&s.metric, matching)).collect();
    let lsig: Vec<Metric> = lhs.iter().map(|s| signature(&s.metric, matching)).collect();
    let mut sig_ids: HashMap<&Metric, usize> = HashMap::new();
    for s in lsig.iter().chain(&rsig) {
        let next = sig_ids.len();
        sig_ids.entry(s).or_insert(next);
    }
    let present = |series: &[Series], sigs: &[Metric]| -> Vec<Vec<bool>> {
        let mut p = vec![vec![false; g.n]; sig_ids.len()];
        for (s, sig) in series.iter().zip(sigs) {
            let id = sig_ids[sig];
            for (i, v) in s.vals.iter().enumerate() {
                if v.is_some() {
                    p[id][i] = true;
                }
            }
        }
        p
    };
    match op {
        "and" | "unless" => {
            let rp = present(&rhs, &rsig);
            let want = op == "and";
            let out: Vec<Series> = lhs
                .into_iter()
                .zip(&lsig)
                .map(|(mut s, sig)| {
                    let id = sig_ids[sig];
                    for (i, v) in s.vals.iter_mut().enumerate() {
                        if rp[id][i] != want {
                            *v = None;
                        }
                    }
                    s
                })
                .collect();
            nonempty(out)
        }
        _ => {
            let lp = present(&lhs, &lsig);
            let mut out = lhs;
            for (mut s, sig) in rhs.into_iter().zip(&rsig) {
                let id = sig_ids[sig];
                for (i, v) in s.vals.iter_mut().enumerate() {
                    if lp[id][i] {
                        *v = None;
                    }
                }
                out.push(s);
            }
            // An `or` may list one label set from both sides at different steps.
            merge_same(nonempty(out)).unwrap_or_default()
        }
    }
}

fn vector_vector(
    op: &str,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    modifier: &promql_parser::parser::BinModifier,
    return_bool: bool,
    g: &Grid,
) -> Result<Vec<Series>> {
    let matching = &modifier.matching;
    let (include, one_to_many, one_to_one) = match &modifier.card {
        VectorMatchCardinality::ManyToOne(ls) => (ls.labels.clone(), false, false),
        VectorMatchCardinality::OneToMany(ls) => (ls.labels.clone(), true, false),
        _ => (Vec::new(), false, true),
    };
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let one_sig: Vec<Metric> = one.iter().map(|s| signature(&s.metric, matching)).collect();
    let many_sig: Vec<Metric> = many
        .iter()
        .map(|s| signature(&s.metric, matching))
        .collect();
    let mut by_sig: HashMap<&Metric, Vec<usize>> = HashMap::new();
    for (i, s) in one_sig.iter().enumerate() {
        by_sig.entry(s).or_default().push(i);
    }
    let drop = funcs::drops_name(op);
    let comparison = funcs::is_comparison(op);
    let result_metric = |l: &Metric, r: &Metric| -> Metric {
        let mut m = l.clone();
        if drop {
            drop_name(&mut m);
        }
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(ls)) => m.retain(|(k, _)| ls.labels.contains(k)),
                Some(LabelModifier::Exclude(ls)) => m.retain(|(k, _)| !ls.labels.contains(k)),
                None => {}
            }
        }
        for ln in &include {
            set_label(&mut m, ln, get(r, ln));
        }
        if return_bool {
            drop_name(&mut m);
        }
        m
    };
    let mut out: Vec<Series> = Vec::new();
    let mut out_index: HashMap<Metric, usize> = HashMap::new();
    let mut pair_out: HashMap<(usize, usize), usize> = HashMap::new();
    let side = |many_side: bool| {
        if many_side == one_to_many {
            "left"
        } else {
            "right"
        }
    };
    for step in 0..g.n {
        // The "one" side's member of each signature at this step.
        let mut one_at: HashMap<&Metric, usize> = HashMap::new();
        for (sig, members) in &by_sig {
            let mut found: Option<usize> = None;
            for &j in members {
                if one[j].vals[step].is_some() {
                    if let Some(prev) = found {
                        return Err(PromError::Execution(format!(
                            "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                            metric_string(sig),
                            side(false),
                            metric_string(&one[prev].metric),
                            metric_string(&one[j].metric)
                        )));
                    }
                    found = Some(j);
                }
            }
            if let Some(j) = found {
                one_at.insert(sig, j);
            }
        }
        if one_at.is_empty() {
            continue;
        }
        let mut matched: HashMap<&Metric, Vec<usize>> = HashMap::new();
        for (i, s) in many.iter().enumerate() {
            let Some(lv) = s.vals[step] else { continue };
            let Some(&j) = one_at.get(&many_sig[i]) else {
                continue;
            };
            let rv = one[j].vals[step].unwrap();
            let (vl, vr) = if one_to_many { (rv, lv) } else { (lv, rv) };
            let (mut value, keep) = funcs::binop(op, vl, vr)?;
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let _ = comparison;
            let oi = match pair_out.get(&(i, j)) {
                Some(&oi) => oi,
                None => {
                    let m = result_metric(&s.metric, &one[j].metric);
                    let oi = *out_index.entry(m.clone()).or_insert_with(|| {
                        out.push(Series {
                            metric: m,
                            vals: vec![None; g.n],
                        });
                        out.len() - 1
                    });
                    pair_out.insert((i, j), oi);
                    oi
                }
            };
            let entry = matched.entry(&many_sig[i]).or_default();
            if one_to_one {
                if !entry.is_empty() {
                    return Err(PromError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
            } else if entry.contains(&oi) {
                return Err(PromError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            entry.push(oi);
            if out[oi].vals[step].is_some() {
                return Err(PromError::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
            out[oi].vals[step] = Some(value);
        }
    }
    Ok(nonempty(out))
}
