//! Aggregations step by step, and evaluated as their selection streams.
//!
//! `sum`, `avg`, `count`, `group`, `min`, `max`, `stddev` and `stdvar` fold each
//! step's values one at a time in series order ([`Op::push`]), so a group's state
//! can take a series as soon as its values are known. Over a plain selector or a
//! range function of one ([`try_streamed`]), each part of the selection is
//! evaluated on the worker pool into its series' group keys and step values — no
//! per-series label set is built — and the parts are folded in series order, so the
//! answer is bit for bit the one of evaluating the argument first.

use std::time::Instant;

use foldhash::{HashMap, HashMapExt};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use crate::Result;
use crate::eval::{
    Evaluator, Grid, Metric, Raw, Series, Val, instant_values, selector_matchers, signature_into,
    strip_parens, within,
};
use crate::select::Selected;
use sonde_types::NAME_LABEL;

/// An aggregation whose value at a step is a fold over the step's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Sum,
    Avg,
    Count,
    Group,
    Min,
    Max,
    Stddev,
    Stdvar,
}

/// A fold's state: the values seen, and two running figures (sum, mean, extreme,
/// or mean and sum of squared deviations).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct State {
    n: f64,
    a: f64,
    b: f64,
}

impl Op {
    pub fn parse(op: &str) -> Option<Op> {
        Some(match op {
            "sum" => Op::Sum,
            "avg" => Op::Avg,
            "count" => Op::Count,
            "group" => Op::Group,
            "min" => Op::Min,
            "max" => Op::Max,
            "stddev" => Op::Stddev,
            "stdvar" => Op::Stdvar,
            _ => return None,
        })
    }

    /// Folds `v` into `st`, with Prometheus' arithmetic (e.g. `avg`'s incremental
    /// mean, which keeps an infinite mean from turning into NaN).
    #[inline]
    pub fn push(self, st: &mut State, v: f64) {
        let first = st.n == 0.0;
        st.n += 1.0;
        match self {
            Op::Count | Op::Group => {}
            Op::Sum => st.a = if first { v } else { st.a + v },
            Op::Min => {
                if first || st.a > v || st.a.is_nan() {
                    st.a = v;
                }
            }
            Op::Max => {
                if first || st.a < v || st.a.is_nan() {
                    st.a = v;
                }
            }
            Op::Avg => {
                if first {
                    st.a = v;
                    return;
                }
                let mean = st.a;
                if mean.is_infinite()
                    && ((v.is_infinite() && (mean > 0.0) == (v > 0.0))
                        || (!v.is_infinite() && !v.is_nan()))
                {
                    return;
                }
                st.a += v / st.n - mean / st.n;
            }
            Op::Stddev | Op::Stdvar => {
                let delta = v - st.a;
                st.a += delta / st.n;
                st.b += delta * (v - st.a);
            }
        }
    }

    /// The aggregate of what was folded; `None` when nothing was.
    pub fn value(self, st: &State) -> Option<f64> {
        (st.n > 0.0).then(|| match self {
            Op::Count => st.n,
            Op::Group => 1.0,
            Op::Sum | Op::Min | Op::Max | Op::Avg => st.a,
            Op::Stdvar => st.b / st.n,
            Op::Stddev => (st.b / st.n).sqrt(),
        })
    }
}

/// Groups in order of first appearance, each with one fold state per step.
pub(crate) struct Groups {
    op: Op,
    n: usize,
    index: HashMap<Metric, usize>,
    metrics: Vec<Metric>,
    states: Vec<State>,
}

impl Groups {
    pub fn new(op: Op, g: &Grid) -> Self {
        Groups {
            op,
            n: g.n,
            index: HashMap::new(),
            metrics: Vec::new(),
            states: Vec::new(),
        }
    }

    /// The index of the group `metric`, added when new.
    pub fn group(&mut self, metric: Metric) -> usize {
        if let Some(&i) = self.index.get(&metric) {
            return i;
        }
        let i = self.metrics.len();
        self.index.insert(metric.clone(), i);
        self.metrics.push(metric);
        self.states
            .resize(self.states.len() + self.n, State::default());
        i
    }

    /// Folds one series' step values into group `i`.
    pub fn add(&mut self, i: usize, vals: &[Option<f64>]) {
        #[inline(always)]
        fn fold(op: Op, states: &mut [State], vals: &[Option<f64>]) {
            for (st, v) in states.iter_mut().zip(vals) {
                if let Some(v) = *v {
                    op.push(st, v);
                }
            }
        }
        let states = &mut self.states[i * self.n..(i + 1) * self.n];
        // `sum` (the usual dashboard aggregation) gets a loop of its own, without a
        // branch on the operation per value.
        match self.op {
            Op::Sum => fold(Op::Sum, states, vals),
            op => fold(op, states, vals),
        }
    }

    pub fn finish(self) -> Vec<Series> {
        let op = self.op;
        let n = self.n.max(1);
        self.metrics
            .into_iter()
            .zip(self.states.chunks(n))
            .map(|(metric, states)| Series {
                metric,
                vals: states.iter().map(|st| op.value(st)).collect(),
            })
            .collect()
    }
}

/// One part of a streamed selection, evaluated: the part's groups (in order of
/// first appearance) and, per series with a value at some step, its group and its
/// step values (`n` per series).
struct Part {
    groups: Vec<Metric>,
    series: Vec<u32>,
    vals: Vec<Option<f64>>,
}

/// `a` evaluated as its argument's selection streams, when its argument is a plain
/// instant selector (without `@`) or a range function of a plain matrix selector
/// that no rollup tier answers, and `a` is one of [`Op`]'s aggregations. `None`
/// otherwise (then nothing was read).
pub(crate) fn try_streamed(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    g: &Grid,
) -> Result<Option<Val>> {
    let Some(op) = Op::parse(&a.op.to_string()) else {
        return Ok(None);
    };
    if a.param.is_some() {
        return Ok(None);
    }
    let deadline = ev.deadline();
    let budget = ev.budget;
    let modifier = &a.modifier;
    let parts = match strip_parens(&a.expr) {
        Expr::VectorSelector(vs) if vs.at.is_none() => {
            let (off, lookback, span) = ev.instant_spec(vs, g);
            let matchers = selector_matchers(vs)?;
            let (parts, _) = ev.stream(&matchers, span, |sel| {
                evaluate_part(sel, modifier, true, deadline, |raw| {
                    instant_values(raw, g, off, lookback, false)
                })
            })?;
            parts
        }
        Expr::Call(c) => {
            let Some((f, arg, matchers, span)) = crate::funcs::streamed_call(ev, c, g)? else {
                return Ok(None);
            };
            let (parts, names) = ev.stream(&matchers, span, |sel| {
                evaluate_part(sel, modifier, f.keeps_name(), deadline, |raw| {
                    f.values(&arg, g, raw)
                })
            })?;
            if names > 1 && !f.keeps_name() {
                // Series of different names may become equal without `__name__`,
                // which is an error the function itself reports: evaluate it.
                ev.budget = budget;
                return Ok(None);
            }
            parts
        }
        _ => return Ok(None),
    };
    ev.check_deadline("aggregation")?;
    let mut groups = Groups::new(op, g);
    for part in parts {
        let ids: Vec<usize> = part.groups.into_iter().map(|m| groups.group(m)).collect();
        for (s, vals) in part.series.iter().zip(part.vals.chunks(g.n.max(1))) {
            groups.add(ids[*s as usize], vals);
        }
    }
    Ok(Some(Val::Vector(groups.finish())))
}

/// Evaluates one part of a selection with `values` (checking the deadline once per
/// 1,024 series) and keys each series with a value by its group's labels.
fn evaluate_part(
    sel: &mut dyn Iterator<Item = Selected<'_>>,
    modifier: &Option<LabelModifier>,
    with_name: bool,
    deadline: Instant,
    values: impl Fn(&mut Raw) -> Vec<Option<f64>>,
) -> Result<Part> {
    // Group key → group id (ids in order of first appearance).
    let mut index: HashMap<Vec<(&str, &str)>, u32> = HashMap::new();
    // The series' group key, built in one buffer (allocated again only for a new group).
    let mut key: Vec<(&str, &str)> = Vec::new();
    let mut series = Vec::new();
    let mut vals = Vec::new();
    for (i, mut s) in sel.enumerate() {
        if i % 1024 == 0 {
            within(deadline, "aggregation")?;
        }
        let v = values(&mut s.raw);
        if v.iter().all(Option::is_none) {
            continue;
        }
        // Without `by` or `without` every series is in one group.
        if modifier.is_some() {
            signature_into(
                modifier,
                |l| {
                    if l == NAME_LABEL {
                        with_name.then_some(s.name)
                    } else {
                        s.labels.get(l)
                    }
                },
                || s.pairs(with_name),
                &mut key,
            );
        }
        let id = match index.get(key.as_slice()) {
            Some(&id) => id,
            None => {
                let id = index.len() as u32;
                index.insert(key.clone(), id);
                id
            }
        };
        series.push(id);
        vals.extend(v);
    }
    let mut groups: Vec<Metric> = vec![Vec::new(); index.len()];
    for (k, id) in index {
        groups[id as usize] = k
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    Ok(Part {
        groups,
        series,
        vals,
    })
}
