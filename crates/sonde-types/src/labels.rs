//! [`Labels`]: a series' tag set, sorted by name, names unique.

use std::fmt;

use crate::{Error, Limits, Result, validate_identifier};

/// The pseudo-label that carries the table (metric) name in indexes and PromQL.
pub const NAME_LABEL: &str = "__name__";
/// The reserved column name for timestamps; no label or field may use it.
pub const TIME_COLUMN: &str = "time";

/// A sorted set of `(name, value)` pairs identifying one series within a table.
/// The table name is *not* part of it. Empty values are dropped on construction,
/// as in Prometheus, where a label with an empty value is the same as no label.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set from pairs in any order; empty values are dropped.
    /// Duplicate names are an error (use [`Labels::validate`] for the full checks).
    pub fn new<I, K, V>(pairs: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        v.sort();
        for w in v.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(Error::invalid(
                    format!("label {:?}", w[0].0),
                    "appears more than once in one series",
                ));
            }
        }
        Ok(Labels(v))
    }

    /// Builds from pairs already sorted by name with unique names and non-empty values.
    /// Used by decoders of Sonde's own files, which only ever contain such sets.
    pub fn from_sorted_unchecked(pairs: Vec<(String, String)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        Labels(pairs)
    }

    /// Checks names, reserved names, count and lengths against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.0.len() > limits.max_labels {
            return Err(Error::limit(
                "labels count",
                self.0.len(),
                limits.max_labels,
            ));
        }
        for (k, v) in &self.0 {
            validate_identifier("label", k, limits)?;
            if k == crate::NAME_LABEL || k == crate::TIME_COLUMN {
                return Err(Error::invalid(
                    format!("label {k:?}"),
                    "is reserved (the table name and the time column)",
                ));
            }
            if v.len() > limits.max_label_value_len {
                return Err(Error::limit(
                    format!("label {k:?} value length"),
                    v.len(),
                    limits.max_label_value_len,
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_inner(self) -> Vec<(String, String)> {
        self.0
    }

    /// Bytes of label text, a proxy for memory use.
    pub fn text_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_empty_values_dropped() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn duplicates_rejected() {
        let e = Labels::new([("a", "1"), ("a", "2")]).unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[test]
    fn validation_names_field_and_limit() {
        let limits = Limits {
            max_labels: 1,
            ..Limits::default()
        };
        let e = Labels::new([("a", "1"), ("b", "2")])
            .unwrap()
            .validate(&limits)
            .unwrap_err();
        assert_eq!(e.to_string(), "labels count: 2 exceeds the limit of 1");
        let e = Labels::new([("9x", "1")])
            .unwrap()
            .validate(&Limits::default())
            .unwrap_err();
        assert!(e.to_string().contains("[a-zA-Z_][a-zA-Z0-9_]*"), "{e}");
        let e = Labels::new([("time", "1")])
            .unwrap()
            .validate(&Limits::default())
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        let long = "x".repeat(5000);
        let e = Labels::new([("a", long.as_str())])
            .unwrap()
            .validate(&Limits::default())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "label \"a\" value length: 5000 exceeds the limit of 4096"
        );
    }
}
