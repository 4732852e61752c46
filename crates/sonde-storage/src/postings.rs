//! Label matchers and the inverted index they run against.
//!
//! [`Postings`] maps `label name → label value → bitmap of series ordinals` for one
//! table. The head keeps one per table and every segment index stores one per table,
//! so both answer a tag predicate the same way: [`Postings::select`].
//!
//! Matching follows Prometheus: a series without a label behaves as if the label had
//! the empty value, so `{x=""}` selects series lacking `x` and `{x!=""}` those having it.

use std::collections::BTreeMap;

use croaring::Bitmap;
use regex::Regex;

use crate::{Error, Result};

/// How a matcher compares a label value.
#[derive(Debug, Clone)]
pub enum MatchOp {
    Eq(String),
    Ne(String),
    /// Fully anchored regular expression, as in PromQL `=~`.
    Re(Regex),
    NotRe(Regex),
    /// The value is one of these (SQL `IN`).
    In(Vec<String>),
}

/// A predicate on one label (use [`sonde_types::NAME_LABEL`] for the table name).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
}

impl std::fmt::Display for Matcher {
    /// PromQL-like: `model="gpt-4o"`, `status!="ok"`, `route=~"^(?:/v1/.*)$"`,
    /// `user_id IN ("a", "b")`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = &self.name;
        match &self.op {
            MatchOp::Eq(v) => write!(f, "{n}={v:?}"),
            MatchOp::Ne(v) => write!(f, "{n}!={v:?}"),
            MatchOp::Re(r) => write!(f, "{n}=~{:?}", r.as_str()),
            MatchOp::NotRe(r) => write!(f, "{n}!~{:?}", r.as_str()),
            MatchOp::In(vs) => {
                let vs: Vec<String> = vs.iter().map(|v| format!("{v:?}")).collect();
                write!(f, "{n} IN ({})", vs.join(", "))
            }
        }
    }
}

impl Matcher {
    pub fn eq(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::Eq(value.into()),
        }
    }
    pub fn ne(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::Ne(value.into()),
        }
    }
    pub fn in_list(name: impl Into<String>, values: Vec<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::In(values),
        }
    }
    /// `name =~ pattern`; the pattern is anchored at both ends.
    pub fn re(name: impl Into<String>, pattern: &str) -> Result<Self> {
        let name = name.into();
        let re = anchored(&name, pattern)?;
        Ok(Matcher {
            name,
            op: MatchOp::Re(re),
        })
    }
    /// `name !~ pattern`.
    pub fn not_re(name: impl Into<String>, pattern: &str) -> Result<Self> {
        let name = name.into();
        let re = anchored(&name, pattern)?;
        Ok(Matcher {
            name,
            op: MatchOp::NotRe(re),
        })
    }

    /// Whether a label value (`""` when the series lacks the label) satisfies this.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Eq(v) => value == v,
            MatchOp::Ne(v) => value != v,
            MatchOp::Re(r) => r.is_match(value),
            MatchOp::NotRe(r) => !r.is_match(value),
            MatchOp::In(vs) => vs.iter().any(|v| v == value),
        }
    }
}

impl Matcher {
    /// Whether a series of `table` with `labels` satisfies this matcher
    /// ([`sonde_types::NAME_LABEL`] matches the table name).
    pub fn matches_series(&self, table: &str, labels: &sonde_types::Labels) -> bool {
        if self.name == sonde_types::NAME_LABEL {
            self.matches(table)
        } else {
            self.matches(labels.get(&self.name).unwrap_or(""))
        }
    }
}

fn anchored(label: &str, pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::Matcher {
        label: label.to_string(),
        reason: e.to_string(),
    })
}

/// An inverted index over the series of one table.
#[derive(Debug, Clone, Default)]
pub struct Postings {
    /// Every series ordinal of the table.
    pub all: Bitmap,
    pub labels: BTreeMap<String, BTreeMap<String, Bitmap>>,
}

impl Postings {
    pub fn add(&mut self, ordinal: u32, labels: &sonde_types::Labels) {
        self.all.add(ordinal);
        for (k, v) in labels.iter() {
            let values = match self.labels.get_mut(k) {
                Some(m) => m,
                None => self.labels.entry(k.to_string()).or_default(),
            };
            match values.get_mut(v) {
                Some(b) => b.add(ordinal),
                None => {
                    values.insert(v.to_string(), Bitmap::of(&[ordinal]));
                }
            }
        }
    }

    /// Series ordinals satisfying every matcher. Matchers on
    /// [`sonde_types::NAME_LABEL`] are ignored (the caller already chose the table).
    pub fn select(&self, table: &str, matchers: &[Matcher]) -> Bitmap {
        let mut result = self.all.clone();
        for m in matchers {
            if result.is_empty() {
                break;
            }
            if m.name == sonde_types::NAME_LABEL {
                if !m.matches(table) {
                    return Bitmap::new();
                }
                continue;
            }
            let values = self.labels.get(&m.name);
            let set = match (&m.op, values) {
                (MatchOp::Eq(v), Some(vals)) if !v.is_empty() => {
                    vals.get(v).cloned().unwrap_or_default()
                }
                _ if m.matches("") => {
                    // Series lacking the label match: start from all, remove the
                    // series whose value does not match.
                    let mut s = self.all.clone();
                    for (v, b) in values.into_iter().flatten() {
                        if !m.matches(v) {
                            s.andnot_inplace(b);
                        }
                    }
                    s
                }
                _ => {
                    let mut s = Bitmap::new();
                    for (v, b) in values.into_iter().flatten() {
                        if m.matches(v) {
                            s.or_inplace(b);
                        }
                    }
                    s
                }
            };
            result.and_inplace(&set);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sonde_types::Labels;

    fn label_sets() -> impl Strategy<Value = Vec<Labels>> {
        let one = proptest::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]),
            prop::sample::select(vec!["x", "y", "z", "xy"]),
            0..3,
        )
        .prop_map(|m| Labels::new(m).unwrap());
        proptest::collection::vec(one, 0..60)
    }

    fn matcher() -> impl Strategy<Value = Matcher> {
        (
            prop::sample::select(vec!["a", "b", "c", "d"]),
            0..5u8,
            prop::sample::select(vec!["", "x", "y", "xy", "x.*", "y|z"]),
        )
            .prop_map(|(n, op, v)| match op {
                0 => Matcher::eq(n, v),
                1 => Matcher::ne(n, v),
                2 => Matcher::re(n, v).unwrap(),
                3 => Matcher::not_re(n, v).unwrap(),
                _ => Matcher::in_list(n, vec![v.to_string(), "z".into()]),
            })
    }

    proptest! {
        /// The index agrees with a brute-force scan over the label sets.
        #[test]
        fn select_matches_brute_force(sets in label_sets(), ms in proptest::collection::vec(matcher(), 0..4)) {
            let mut p = Postings::default();
            for (i, l) in sets.iter().enumerate() {
                p.add(i as u32, l);
            }
            let got: Vec<u32> = p.select("t", &ms).iter().collect();
            let want: Vec<u32> = sets
                .iter()
                .enumerate()
                .filter(|(_, l)| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
