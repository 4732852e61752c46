//! [`Labels`]: a series' tag set, sorted by name, names unique.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{Error, Limits, Result, validate_identifier};

/// The pseudo-label that carries the table (metric) name in indexes and PromQL.
pub const NAME_LABEL: &str = "__name__";
/// The reserved column name for timestamps; no label or field may use it.
pub const TIME_COLUMN: &str = "time";

/// A sorted set of `(name, value)` pairs identifying one series within a table.
/// The table name is *not* part of it. Empty values are dropped on construction,
/// as in Prometheus, where a label with an empty value is the same as no label.
///
/// Stored compactly — all names and values in one string buffer plus end offsets —
/// and shared: a clone is a reference-count increment, so the head, its indexes and
/// the decoders' series caches hold one copy of each label set. The set's hash is
/// computed once, when it is built (seeded per process, so crafted label sets cannot
/// predict collisions), and equality checks identity before content: looking up a
/// series the head already holds costs neither a hash of its text nor a comparison.
#[derive(Clone)]
pub struct Labels(Arc<Packed>);

struct Packed {
    /// Hash of `buf` and `ends`, seeded per process.
    hash: u64,
    /// The label limits this set passed [`Labels::validate`] under, packed by
    /// [`validated_key`] (0: none yet): validating a set the head already holds
    /// again, at every write, cost more than storing its sample.
    validated: AtomicU64,
    /// Where an index last put this set (see [`Labels::slot`]); `u32::MAX`: nowhere.
    slot: AtomicU32,
    /// `name0 value0 name1 value1 …` concatenated.
    buf: Box<str>,
    /// End offset in `buf` of each name and value, in order.
    ends: Box<[u32]>,
}

/// The per-process seed of every label set's hash.
fn hash_state() -> &'static foldhash::fast::RandomState {
    static STATE: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

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
        let pairs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::from_sorted(&pairs)
    }

    /// Packs sorted pairs, refusing a name that appears twice.
    fn from_sorted(pairs: &[(&str, &str)]) -> Result<Self> {
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid(
                format!("label {:?}", w[0].0),
                "appears more than once in one series",
            ));
        }
        Ok(Self::pack(pairs.iter().copied()))
    }

    /// Like [`Labels::new`] from borrowed pairs (sorted in place): one allocation,
    /// for decoders that read names and values straight out of a request buffer.
    pub fn from_strs(pairs: &mut Vec<(&str, &str)>) -> Result<Self> {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.sort_unstable();
        Self::from_sorted(pairs)
    }

    /// Builds from pairs already sorted by name with unique names and non-empty values.
    /// Used by decoders of Sonde's own files, which only ever contain such sets.
    pub fn from_sorted_unchecked(pairs: Vec<(String, String)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        Self::pack(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn pack<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let total: usize = pairs.clone().map(|(k, v)| k.len() + v.len()).sum();
        let mut buf = String::with_capacity(total);
        let mut ends = Vec::with_capacity(2 * pairs.clone().count());
        for (k, v) in pairs {
            buf.push_str(k);
            ends.push(buf.len() as u32);
            buf.push_str(v);
            ends.push(buf.len() as u32);
        }
        let mut h = hash_state().build_hasher();
        h.write(buf.as_bytes());
        for e in &ends {
            h.write_u32(*e);
        }
        Labels(Arc::new(Packed {
            hash: h.finish(),
            validated: AtomicU64::new(0),
            slot: AtomicU32::new(u32::MAX),
            buf: buf.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }))
    }

    /// Whether `self` and `other` are the same shared copy (not merely equal).
    pub fn same(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A hint an index keeps on the shared copy: the position it last stored this
    /// set at, so the next write of the same copy can go straight there. Only a
    /// hint — several indexes may overwrite it, so a reader must confirm the
    /// position holds [`Labels::same`] set before using it.
    pub fn slot(&self) -> Option<u32> {
        let s = self.0.slot.load(Ordering::Relaxed);
        (s != u32::MAX).then_some(s)
    }

    /// Sets the hint read by [`Labels::slot`].
    pub fn set_slot(&self, slot: u32) {
        self.0.slot.store(slot, Ordering::Relaxed);
    }

    /// Checks names, reserved names, count and lengths against `limits`. A set that
    /// passed under the same label limits is not checked again.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let key = validated_key(limits);
        if key != 0 && self.0.validated.load(Ordering::Relaxed) == key {
            return Ok(());
        }
        self.check(limits)?;
        self.0.validated.store(key, Ordering::Relaxed);
        Ok(())
    }

    fn check(&self, limits: &Limits) -> Result<()> {
        if self.len() > limits.max_labels {
            return Err(Error::limit("labels count", self.len(), limits.max_labels));
        }
        for (k, v) in self.iter() {
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

    /// The `i`-th label (in name order) as `(name, value)`; panics when `i >= len()`.
    pub fn pair(&self, i: usize) -> (&str, &str) {
        let Packed { buf, ends, .. } = &*self.0;
        let start = if i == 0 { 0 } else { ends[2 * i - 1] as usize };
        let mid = ends[2 * i] as usize;
        let end = ends[2 * i + 1] as usize;
        (&buf[start..mid], &buf[mid..end])
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, v) = self.pair(mid);
            match k.cmp(name) {
                std::cmp::Ordering::Equal => return Some(v),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        (0..self.len()).map(move |i| self.pair(i))
    }

    /// The label names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.iter().map(|(k, _)| k)
    }

    /// Whether both sets have the same names in the same order (values may differ):
    /// `self.names().eq(other.names())`, as a byte comparison of the packed names.
    /// The series of one request mostly share their names, and the checks that
    /// depend on names alone (schema registration, labels named like fields) are
    /// skipped for a set whose names equal the previous set's.
    pub fn same_names(&self, other: &Labels) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        if a.ends.len() != b.ends.len() {
            return false;
        }
        let (ab, bb) = (a.buf.as_bytes(), b.buf.as_bytes());
        let (mut sa, mut sb) = (0usize, 0usize);
        for (ae, be) in a.ends.chunks_exact(2).zip(b.ends.chunks_exact(2)) {
            if ab[sa..ae[0] as usize] != bb[sb..be[0] as usize] {
                return false;
            }
            (sa, sb) = (ae[1] as usize, be[1] as usize);
        }
        true
    }

    pub fn len(&self) -> usize {
        self.0.ends.len() / 2
    }

    /// How this set differs from `prev`, label by label at equal positions (of the
    /// first 64): bit `i` of the first mask is set when label `i` equals `prev`'s label
    /// `i` in name and value, of the second when only the name is equal. Compares the
    /// packed bytes (a WAL record compares every series with the one before it).
    pub fn diff_masks(&self, prev: &Labels) -> (u64, u64) {
        let (a, p) = (&*self.0, &*prev.0);
        let (ab, pb) = (a.buf.as_bytes(), p.buf.as_bytes());
        let (mut same, mut same_name) = (0u64, 0u64);
        let (mut sa, mut sp) = (0usize, 0usize);
        for (i, (ae, pe)) in a
            .ends
            .chunks_exact(2)
            .zip(p.ends.chunks_exact(2))
            .enumerate()
            .take(64)
        {
            let (ma, ea, mp, ep) = (
                ae[0] as usize,
                ae[1] as usize,
                pe[0] as usize,
                pe[1] as usize,
            );
            if ab[sa..ma] == pb[sp..mp] {
                if ab[ma..ea] == pb[mp..ep] {
                    same |= 1 << i;
                } else {
                    same_name |= 1 << i;
                }
            }
            (sa, sp) = (ea, ep);
        }
        (same, same_name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.ends.is_empty()
    }

    /// The pairs as owned strings.
    pub fn into_inner(self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Bytes of label text, a proxy for memory use.
    pub fn text_len(&self) -> usize {
        self.0.buf.len()
    }
}

/// The limits [`Labels::validate`] depends on, packed exactly into one word (bit 63
/// set so that no key is 0); 0 when they do not fit, which turns the memo off.
fn validated_key(limits: &Limits) -> u64 {
    let (a, b, c) = (
        limits.max_labels as u64,
        limits.max_name_len as u64,
        limits.max_label_value_len as u64,
    );
    if a >= 1 << 16 || b >= 1 << 16 || c >= 1 << 31 {
        return 0;
    }
    1 << 63 | c << 32 | b << 16 | a
}

impl Default for Labels {
    /// The empty set (no labels).
    fn default() -> Self {
        Self::pack(std::iter::empty())
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
            || (self.0.hash == other.0.hash
                && self.0.buf == other.0.buf
                && self.0.ends == other.0.ends)
    }
}

impl Eq for Labels {}

/// The hash computed when the set was built: hash maps keyed by label sets hash
/// eight bytes, not the text.
impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// Ordered pair by pair (name, then value), like a sorted list of pairs.
impl Ord for Labels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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
        for (i, (k, v)) in self.iter().enumerate() {
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
    fn same_names_compares_names_only() {
        let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied()).unwrap();
        let a = l(&[("job", "api"), ("model", "m1")]);
        assert!(a.same_names(&a.clone()), "one shared copy");
        assert!(a.same_names(&l(&[("job", "worker"), ("model", "m22")])));
        // A name that moves into the value, another name, another count.
        assert!(!l(&[("a", "bc")]).same_names(&l(&[("ab", "c")])));
        assert!(!a.same_names(&l(&[("job", "api"), ("mode", "m1")])));
        assert!(!a.same_names(&l(&[("job", "api")])));
        assert!(!a.same_names(&l(&[("job", "api"), ("model", "m1"), ("zone", "z")])));
        // Always what comparing the name iterators says.
        let sets = [
            a.clone(),
            l(&[("a", "bc")]),
            l(&[("ab", "c")]),
            l(&[("job", "x"), ("model", "y")]),
        ];
        for x in &sets {
            for y in &sets {
                assert_eq!(x.same_names(y), x.names().eq(y.names()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn sorted_and_empty_values_dropped() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn order_is_pairwise() {
        let a = Labels::new([("a", "z")]).unwrap();
        let b = Labels::new([("ab", "a")]).unwrap();
        let c = Labels::new([("a", "z"), ("b", "1")]).unwrap();
        assert!(a < b, "name a < ab even though buffers compare az > aba");
        assert!(a < c);
        assert_eq!(Labels::default().len(), 0);
        assert_eq!(c.get("b"), Some("1"));
        assert_eq!(
            c.into_inner(),
            vec![("a".into(), "z".into()), ("b".into(), "1".into())]
        );
    }

    #[test]
    fn shared_equal_and_hashed_once() {
        use std::hash::BuildHasher;
        let a = Labels::new([("job", "x"), ("host", "h")]).unwrap();
        let b = Labels::new([("host", "h"), ("job", "x")]).unwrap();
        let c = a.clone();
        assert!(a == b && !a.same(&b), "equal content, separate copies");
        assert!(a.same(&c));
        let s = std::collections::hash_map::RandomState::new();
        assert_eq!(s.hash_one(&a), s.hash_one(&b));
        let ab = Labels::new([("a", "b")]).unwrap();
        let a_b = Labels::new([("ab", "")]).unwrap();
        assert_ne!(ab, a_b);
        assert_ne!(
            Labels::new([("a", "bc")]).unwrap(),
            Labels::new([("ab", "c")]).unwrap()
        );
        assert_eq!(
            Labels::default(),
            Labels::new(Vec::<(String, String)>::new()).unwrap()
        );
        assert_eq!(a.slot(), None);
        c.set_slot(7);
        assert_eq!(a.slot(), Some(7), "the hint lives on the shared copy");
        assert_eq!(b.slot(), None);
    }

    #[test]
    fn validation_is_remembered_per_limits() {
        let l = Labels::new([("a", "1"), ("b", "2")]).unwrap();
        l.validate(&Limits::default()).unwrap();
        l.validate(&Limits::default()).unwrap();
        let strict = Limits {
            max_labels: 1,
            ..Limits::default()
        };
        assert!(l.validate(&strict).is_err(), "other limits: checked again");
        l.validate(&Limits::default()).unwrap();
        let huge = Limits {
            max_label_value_len: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(validated_key(&huge), 0);
        l.validate(&huge).unwrap();
        assert!(l.validate(&strict).is_err());
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
