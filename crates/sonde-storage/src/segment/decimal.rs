//! Floats as decimals: a value `v` is stored as an integer mantissa `m` and a scale `s`
//! with `v == m / 10^s` *bit for bit*. Values exported with a fixed number of decimals
//! (costs to 1e-6, latencies to 1e-4) become integers whose deltas pack into a few
//! bits, where their binary mantissas would look like noise to any compressor.
//!
//! Decoding divides by an exact power of ten (`10^s` is exact in f64 for s ≤ 22 and
//! IEEE division is correctly rounded), so any engine computing `m / 10^s` in doubles
//! gets the original value back. A value that has no such form (NaN, ∞, -0.0, 1/3,
//! |m| > 2^53) is stored as a plain double instead.

/// Largest scale tried.
pub const MAX_SCALE: u8 = 15;

const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// The mantissa of `v` at `scale`, if `v == m / 10^scale` exactly.
pub fn to_mantissa(v: f64, scale: u8) -> Option<i64> {
    let p = POW10[scale as usize];
    let m = (v * p).round();
    if m.is_nan() || m.abs() > MAX_EXACT {
        return None;
    }
    let m = m as i64;
    // Check through the integer, so -0.0 (whose mantissa would be +0) is refused.
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// The smallest scale at which `v` is an exact decimal.
pub fn min_scale(v: f64) -> Option<u8> {
    (0..=MAX_SCALE).find(|&s| to_mantissa(v, s).is_some())
}

/// One scale for a whole series: the largest of the values' smallest scales, so all
/// mantissas share a unit and delta-code well. Values that are not decimals are
/// ignored here (they go to the double column). `None` when no value is a decimal.
pub fn series_scale(values: impl Iterator<Item = f64>) -> Option<u8> {
    let mut best: Option<u8> = None;
    for v in values {
        if let Some(s) = min_scale(v) {
            best = Some(best.map_or(s, |b| b.max(s)));
            if s == MAX_SCALE {
                break;
            }
        }
    }
    best
}

/// Whether a series' mantissas are cheaper stored as differences from the previous
/// mantissa (counters, histogram buckets) than as they are (gauges), judged by the
/// significant bits each form needs. Negative numbers are charged extra: their
/// two's-complement high bytes (0xFF) break the all-zero byte streams that
/// BYTE_STREAM_SPLIT + zstd compress to almost nothing, which is why a gauge's
/// up-and-down deltas cost more than its values.
pub fn prefers_delta(mants: &[Option<i64>]) -> bool {
    let bits = |x: i64| 64 - x.unsigned_abs().leading_zeros() + if x < 0 { 6 } else { 0 };
    let (mut abs, mut delta, mut prev) = (0u64, 0u64, 0i64);
    for m in mants.iter().flatten() {
        abs += u64::from(bits(*m));
        delta += u64::from(bits(m.wrapping_sub(prev)));
        prev = *m;
    }
    delta * 10 < abs * 9
}

/// Turns a stored `(mantissa, scale)` into the row's absolute mantissa and scale. A
/// negative stored scale `-(s + 1)` marks a series stored as deltas: the mantissa is
/// added to `acc`, the running mantissa of the series (0 at the series' first row).
pub fn resolve(m: i64, stored_scale: i8, acc: &mut i64) -> (i64, i8) {
    if stored_scale < 0 {
        *acc = acc.wrapping_add(m);
        (*acc, scale_of(stored_scale))
    } else {
        (m, stored_scale)
    }
}

/// The value of a mantissa and a (non-negative) scale.
pub fn from_mantissa(m: i64, scale: i8) -> f64 {
    m as f64 / POW10[scale.clamp(0, MAX_SCALE as i8) as usize]
}

/// The stored scale the rows share — as the writer stores every series — if they do.
fn shared_scale(scales: &[i8]) -> Option<i8> {
    let first = *scales.first()?;
    scales.iter().all(|&s| s == first).then_some(first)
}

/// Appends `f(absolute mantissa)` of each row stored at the shared stored scale
/// `stored` to `out` (deltas summed into `acc`, as in [`resolve`]); returns the
/// scale. One `extend` over the slice with the running sum in a local: no capacity
/// check or store through `acc` per row (this loop is most of a segment read's own
/// time).
fn each_mantissa<M: Copy + Into<i64>, T>(
    mants: &[M],
    stored: i8,
    acc: &mut i64,
    out: &mut Vec<T>,
    f: impl Fn(i64) -> T,
) -> i8 {
    if stored < 0 {
        let mut a = *acc;
        out.extend(mants.iter().map(|&m| {
            a = a.wrapping_add(m.into());
            f(a)
        }));
        *acc = a;
    } else {
        out.extend(mants.iter().map(|&m| f(m.into())));
    }
    scale_of(stored)
}

/// The scale of a stored scale: `-(s + 1)` marks a series stored as deltas.
fn scale_of(stored: i8) -> i8 {
    if stored < 0 { -(stored + 1) } else { stored }
}

/// Appends the absolute mantissas of rows stored as `(mantissa, scale)` (all
/// non-null, one series) to `out`; `acc` as in [`resolve`]. Returns the rows' scale
/// when they share one, in which case the loop has no per-row branch; `None`
/// (mixed scales) resolves row by row.
pub fn resolve_rows<M: Copy + Into<i64>>(
    mants: &[M],
    scales: &[i8],
    acc: &mut i64,
    out: &mut Vec<i64>,
) -> Option<i8> {
    match shared_scale(scales) {
        Some(stored) => Some(each_mantissa(mants, stored, acc, out, |m| m)),
        None => {
            out.extend(
                mants
                    .iter()
                    .zip(scales)
                    .map(|(&m, &s)| resolve(m.into(), s, acc).0),
            );
            None
        }
    }
}

/// [`resolve_rows`] as values: appends `m / 10^scale` for each row to `out` (no
/// division at scale 0, where it would change nothing).
pub fn decode_rows<M: Copy + Into<i64>>(
    mants: &[M],
    scales: &[i8],
    acc: &mut i64,
    out: &mut Vec<f64>,
) {
    match shared_scale(scales) {
        Some(stored) if scale_of(stored) == 0 => {
            each_mantissa(mants, stored, acc, out, |m| m as f64);
        }
        Some(stored) => {
            let p = POW10[scale_of(stored).clamp(0, MAX_SCALE as i8) as usize];
            each_mantissa(mants, stored, acc, out, |m| m as f64 / p);
        }
        None => out.extend(mants.iter().zip(scales).map(|(&m, &s)| {
            let (m, s) = resolve(m.into(), s, acc);
            from_mantissa(m, s)
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_values() {
        assert_eq!(min_scale(0.1), Some(1));
        assert_eq!(to_mantissa(0.1, 1), Some(1));
        assert_eq!(min_scale(1234.0), Some(0));
        assert_eq!(min_scale(0.000123), Some(6));
        assert_eq!(min_scale(f64::NAN), None);
        assert_eq!(min_scale(f64::INFINITY), None);
        assert_eq!(min_scale(-0.0), None);
        assert_eq!(min_scale(1.0 / 3.0), None);
        assert_eq!(to_mantissa(2.5, 4), Some(25_000));
        assert_eq!(series_scale([1.0, 0.25, 3.5].into_iter()), Some(2));
        let counter: Vec<Option<i64>> = (0..100).map(|i| Some(1_000_000 + i * 3)).collect();
        assert!(prefers_delta(&counter));
        let gauge: Vec<Option<i64>> = (0..100).map(|i| Some(5000 + (i * 7919) % 1000)).collect();
        assert!(!prefers_delta(&gauge));
    }

    #[test]
    fn rows_decode_like_single_values() {
        // A delta series at scale 2, a plain one at scale 0, and mixed scales.
        let cases: [(&[i64], &[i8]); 3] = [
            (&[150, 25, 0, 7], &[-3, -3, -3, -3]),
            (&[4, 5, 6], &[0, 0, 0]),
            (&[12, 3, 40], &[1, 0, -2]),
        ];
        for (mants, scales) in cases {
            let mut acc = 0;
            let want: Vec<f64> = mants
                .iter()
                .zip(scales)
                .map(|(&m, &s)| {
                    let (m, s) = resolve(m, s, &mut acc);
                    from_mantissa(m, s)
                })
                .collect();
            let (mut acc, mut got) = (0, Vec::new());
            decode_rows(mants, scales, &mut acc, &mut got);
            assert_eq!(got, want, "{mants:?} {scales:?}");
        }
        let mut abs = Vec::new();
        assert_eq!(
            resolve_rows(&[150, 25], &[-3, -3], &mut 0, &mut abs),
            Some(2)
        );
        assert_eq!(abs, [150, 175]);
    }

    proptest! {
        /// Whatever the value, encoding then decoding gives the same bits back.
        #[test]
        fn roundtrip_is_exact(v in any::<f64>(), s in 0u8..=MAX_SCALE) {
            if let Some(m) = to_mantissa(v, s) {
                prop_assert_eq!(from_mantissa(m, s as i8).to_bits(), v.to_bits());
            }
        }

        #[test]
        fn rounded_decimals_are_found(m in -1_000_000_000i64..1_000_000_000, s in 0u8..=6) {
            let v = m as f64 / POW10[s as usize];
            let k = min_scale(v).unwrap();
            prop_assert!(k <= s);
            prop_assert_eq!(from_mantissa(to_mantissa(v, k).unwrap(), k as i8), v);
        }
    }
}
