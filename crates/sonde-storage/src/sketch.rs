//! A mergeable quantile sketch with a relative-error guarantee (the DDSketch idea:
//! logarithmic bins), stored per rollup bucket for the float fields of event tables,
//! so p50/p95/p99 of many buckets come from the tiers.
//!
//! A value `x > 0` lands in bin `i = ceil(ln(x) / ln(γ))` with `γ = (1 + α) / (1 − α)`,
//! so bin `i` holds `(γ^(i−1), γ^i]`; the bin's estimate `2γ^i / (γ + 1)` is within
//! `α` (relative) of every value in it. Negative values use the same bins on `−x`;
//! values with `|x| < MIN_VALUE` (and zero) are counted apart. Merging adds counts, so
//! the sketch of many buckets is the sketch of all their values: the quantile of a
//! merged sketch is within `α` of the exact order statistic it picks.
//!
//! Encoding (little-endian varints, see `codec`): `u8` version (1), `uvar` zero count,
//! then for the negative bins and then the positive ones: `uvar` number of bins, and
//! per bin in ascending index order `ivar` index delta (from the previous index, the
//! first from 0) and `uvar` count.

use std::collections::BTreeMap;

use crate::codec::{Dec, DecodeError, Enc};

/// The relative accuracy: a quantile is within 1 % of the order statistic it picks.
pub const ALPHA: f64 = 0.01;
/// Magnitudes below this count as zero.
pub const MIN_VALUE: f64 = 1e-9;
const VERSION: u8 = 1;

fn ln_gamma() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

/// The sketch (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    zero: u64,
    pos: BTreeMap<i32, u64>,
    neg: BTreeMap<i32, u64>,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value; NaN and infinities are not counted.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if x.abs() < MIN_VALUE {
            self.zero += 1;
            return;
        }
        let i = (x.abs().ln() / ln_gamma()).ceil() as i32;
        let bins = if x > 0.0 {
            &mut self.pos
        } else {
            &mut self.neg
        };
        *bins.entry(i).or_insert(0) += 1;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        self.zero += other.zero;
        for (i, c) in &other.pos {
            *self.pos.entry(*i).or_insert(0) += c;
        }
        for (i, c) in &other.neg {
            *self.neg.entry(*i).or_insert(0) += c;
        }
    }

    /// The number of non-empty bins (what the sketch's size grows with).
    pub fn bins(&self) -> usize {
        self.pos.len() + self.neg.len() + usize::from(self.zero > 0)
    }

    /// The number of values.
    pub fn count(&self) -> u64 {
        self.zero + self.pos.values().sum::<u64>() + self.neg.values().sum::<u64>()
    }

    /// The estimate of the value of rank `floor(q · (n − 1))` (0-based, ascending);
    /// `None` without values or when `q` is outside `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (n - 1) as f64).floor() as u64;
        let g = ln_gamma().exp();
        let estimate = |i: i32| 2.0 * g.powi(i) / (g + 1.0);
        let mut seen = 0u64;
        // Ascending: the largest negative magnitudes first.
        for (&i, &c) in self.neg.iter().rev() {
            seen += c;
            if seen > rank {
                return Some(-estimate(i));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (&i, &c) in &self.pos {
            seen += c;
            if seen > rank {
                return Some(estimate(i));
            }
        }
        None
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(
            4 + 3 * (self.pos.len() + self.neg.len()),
        ));
        e.u8(VERSION);
        e.uvar(self.zero);
        for bins in [&self.neg, &self.pos] {
            e.uvar(bins.len() as u64);
            let mut prev = 0i64;
            for (&i, &c) in bins {
                e.ivar(i64::from(i) - prev);
                e.uvar(c);
                prev = i64::from(i);
            }
        }
        e.0
    }

    pub fn decode(buf: &[u8]) -> Result<Sketch, DecodeError> {
        let mut d = Dec::new(buf);
        let v = d.u8("sketch version")?;
        if v != VERSION {
            return Err(DecodeError {
                what: "sketch version",
            });
        }
        let mut s = Sketch {
            zero: d.uvar("sketch zero count")?,
            ..Default::default()
        };
        for neg in [true, false] {
            let n = d.len("sketch bins", 2)?;
            let mut prev = 0i64;
            for _ in 0..n {
                prev += d.ivar("sketch bin")?;
                let i = i32::try_from(prev).map_err(|_| DecodeError { what: "sketch bin" })?;
                let c = d.uvar("sketch count")?;
                let bins = if neg { &mut s.neg } else { &mut s.pos };
                *bins.entry(i).or_insert(0) += c;
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every quantile of a merged sketch is within α of the exact order statistic
    /// of rank floor(q (n − 1)), and encoding round-trips.
    #[test]
    fn quantiles_are_within_alpha_of_the_order_statistic() {
        let mut all: Vec<f64> = Vec::new();
        let mut merged = Sketch::new();
        let mut x = 0.37_f64;
        for part in 0..10 {
            let mut s = Sketch::new();
            for k in 0..500 {
                // A spread over 7 decades, some negatives and zeros.
                x = (x * 7919.0 + 0.123).fract();
                let v = match k % 50 {
                    0 => 0.0,
                    1 => -x * 10.0,
                    _ => 10f64.powf(x * 7.0 - 4.0),
                };
                all.push(v);
                s.add(v);
            }
            let s = Sketch::decode(&s.encode()).unwrap();
            assert!(part > 0 || s.count() == 500);
            merged.merge(&s);
        }
        all.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = all[(q * (all.len() - 1) as f64).floor() as usize];
            let got = merged.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= ALPHA * exact.abs() + 1e-12,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(merged.quantile(1.5), None);
        assert_eq!(Sketch::new().quantile(0.5), None);
        assert!(Sketch::decode(&[9]).is_err());
    }
}
