//! [`HeadSeries`]: how the head keeps one series' samples, compressed.
//!
//! Rows arrive in an open [`SeriesData`] (16 bytes a sample and more); every
//! [`SEAL_ROWS`] rows it is encoded into a compact chunk appended to `sealed`:
//! evenly spaced timestamps as the first and the interval (what Prometheus sends: it
//! aligns scrape timestamps), others as zigzag varints of delta-of-delta, integer
//! fields as varints of deltas, float fields as decimal mantissas when every value of
//! the chunk is a short decimal (what exporters send: token counts, costs rounded to
//! 1e-6, latencies to 0.1 ms) and raw otherwise. The standard dataset takes about
//! 3–5 bytes a sample in sealed chunks instead of ~20 in vectors, which is what keeps
//! the head of 100k series small. Reads decode (the head is read far less often than
//! written); a flush decodes one series at a time.
//!
//! The encoding never leaves memory, so it has no version: it only has to round-trip
//! exactly (bit for bit, NaN and -0.0 included), in append order, so normalization
//! (last write wins, delta sums add) sees exactly the rows that were appended.

use std::borrow::Cow;

use sonde_types::{FieldColumn, FieldType, MetricKind, TimestampMs};

use crate::codec::{Dec, Enc};
use crate::series::{Column, SeriesData, Values};

/// Rows per sealed chunk. The open rows' vectors grow by doubling, so a series holds
/// up to this many rows' worth of capacity uncompressed. A 100k-series remote-write
/// load and flush, four runs each: peak RSS 274–276 MiB at 32 rows, 241–245 at 16,
/// with the same ingest rate and head size.
pub const SEAL_ROWS: usize = 16;

/// One series in the head: sealed compressed chunks plus the open rows.
#[derive(Debug, Clone)]
pub struct HeadSeries {
    sealed: Vec<u8>,
    sealed_rows: usize,
    open: SeriesData,
    min_time: TimestampMs,
    max_time: TimestampMs,
}

impl Default for HeadSeries {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadSeries {
    pub fn new() -> Self {
        HeadSeries {
            sealed: Vec::new(),
            sealed_rows: 0,
            open: SeriesData::new(),
            min_time: i64::MAX,
            max_time: i64::MIN,
        }
    }

    pub fn len(&self) -> usize {
        self.sealed_rows + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Smallest and largest timestamp held (`None` when empty).
    pub fn time_range(&self) -> Option<(TimestampMs, TimestampMs)> {
        (!self.is_empty()).then_some((self.min_time, self.max_time))
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.sealed.capacity() + self.open.heap_bytes()
    }

    /// Appends the rows of a write (see [`SeriesData::append`]); returns the change
    /// of [`HeadSeries::heap_bytes`].
    pub fn append(
        &mut self,
        ts: &[TimestampMs],
        columns: &[FieldColumn],
        field_map: &[usize],
        field_types: &[FieldType],
    ) -> isize {
        let before = self.heap_bytes() as isize;
        for &t in ts {
            self.min_time = self.min_time.min(t);
            self.max_time = self.max_time.max(t);
        }
        self.open.append(ts, columns, field_map, field_types);
        if self.open.len() >= SEAL_ROWS {
            self.seal();
        }
        self.heap_bytes() as isize - before
    }

    fn seal(&mut self) {
        let mut enc = Enc(Vec::new());
        encode_chunk(&self.open, &mut enc);
        self.sealed.reserve_exact(enc.0.len());
        self.sealed.extend_from_slice(&enc.0);
        self.sealed_rows += self.open.len();
        self.open = SeriesData::new();
    }

    /// Every row, in append order (not normalized).
    pub fn rows(&self) -> Cow<'_, SeriesData> {
        if self.sealed_rows == 0 {
            return Cow::Borrowed(&self.open);
        }
        let mut out = SeriesData::new();
        let mut dec = Dec::new(&self.sealed);
        while !dec.is_empty() {
            let chunk = decode_chunk(&mut dec).expect("head chunks round-trip");
            if out.is_empty() {
                out = chunk;
            } else {
                out.extend(&chunk);
            }
        }
        out.extend(&self.open);
        Cow::Owned(out)
    }

    /// Rows sorted by time, duplicates resolved per `kind` ([`SeriesData::normalized`]).
    pub fn normalized(&self, kind: MetricKind) -> Cow<'_, SeriesData> {
        match self.rows() {
            Cow::Borrowed(d) => d.normalized(kind),
            // Decoded rows already in order are the answer: no second copy.
            Cow::Owned(d) if d.ordered => Cow::Owned(d),
            Cow::Owned(d) => Cow::Owned(d.normalized(kind).into_owned()),
        }
    }
}

/// Chunk flags: rows in time order; timestamps evenly spaced (stored as the first
/// and the step, not one delta of deltas per row).
const ORDERED: u8 = 1;
const REGULAR: u8 = 2;
const TAG_F64: u8 = 1;
const TAG_I64: u8 = 2;
const TAG_BYTES: u8 = 3;
const HAS_VALIDITY: u8 = 0x10;
/// Float chunk stored as raw IEEE bits (no common decimal exponent).
const RAW_F64: u8 = 0xFF;

fn encode_chunk(d: &SeriesData, e: &mut Enc) {
    let n = d.len();
    e.uvar(n as u64);
    let step = regular_step(&d.ts);
    e.u8(d.ordered as u8 | if step.is_some() { REGULAR } else { 0 });
    if let Some(step) = step {
        e.ivar(d.ts[0]);
        e.ivar(step);
    } else {
        let (mut prev, mut prev_delta) = (0i64, 0i64);
        for (i, &t) in d.ts.iter().enumerate() {
            let delta = t.wrapping_sub(prev);
            e.ivar(if i == 0 {
                t
            } else {
                delta.wrapping_sub(prev_delta)
            });
            prev_delta = if i == 0 { 0 } else { delta };
            prev = t;
        }
    }
    e.uvar(d.cols.len() as u64);
    for col in &d.cols {
        let Some(c) = col else {
            e.u8(0);
            continue;
        };
        let tag = match c.values {
            Values::F64(_) => TAG_F64,
            Values::I64(_) => TAG_I64,
            Values::Bytes(_) => TAG_BYTES,
        };
        e.u8(tag | if c.valid.is_some() { HAS_VALIDITY } else { 0 });
        if let Some(valid) = &c.valid {
            for byte in valid.chunks(8) {
                e.u8(byte
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| b | (v as u8) << i));
            }
        }
        match &c.values {
            Values::I64(v) => deltas(v.iter().copied(), e),
            Values::F64(v) => match decimal_exponent(v) {
                Some(k) => {
                    e.u8(k);
                    let p = 10f64.powi(k as i32);
                    deltas(v.iter().map(|&x| (x * p).round() as i64), e);
                }
                None => {
                    e.u8(RAW_F64);
                    for x in v {
                        e.0.extend_from_slice(&x.to_bits().to_le_bytes());
                    }
                }
            },
            Values::Bytes(v) => {
                for b in v {
                    e.bytes(b);
                }
            }
        }
    }
}

/// The interval of timestamps evenly spaced (at least two, `t[i] = t[0] + i · step`
/// without overflow), else `None`.
fn regular_step(ts: &[i64]) -> Option<i64> {
    let step = ts.get(1)?.checked_sub(ts[0])?;
    ts.windows(2)
        .all(|w| w[1].checked_sub(w[0]) == Some(step))
        .then_some(step)
}

fn deltas(v: impl Iterator<Item = i64>, e: &mut Enc) {
    let mut prev = 0i64;
    for x in v {
        e.ivar(x.wrapping_sub(prev));
        prev = x;
    }
}

/// The smallest `k ≤ 9` such that every value is exactly `m / 10^k` for an integer
/// `|m| < 2^53` (bit for bit, so -0.0, NaN and infinities take the raw path).
fn decimal_exponent(v: &[f64]) -> Option<u8> {
    let exact = |x: f64, k: u8| {
        let p = 10f64.powi(k as i32);
        let m = (x * p).round();
        m.abs() < 9.0e15 && (m / p).to_bits() == x.to_bits()
    };
    let mut k = 0u8;
    for &x in v {
        if !x.is_finite() || (x == 0.0 && x.is_sign_negative()) {
            return None;
        }
        while !exact(x, k) {
            k += 1;
            if k > 9 {
                return None;
            }
        }
    }
    // A larger k found later must still hold for the earlier values.
    v.iter().all(|&x| exact(x, k)).then_some(k)
}

fn decode_chunk(d: &mut Dec<'_>) -> Result<SeriesData, crate::codec::DecodeError> {
    let n = d.uvar("chunk rows")? as usize;
    let flags = d.u8("chunk flags")?;
    let ordered = flags & ORDERED != 0;
    let mut ts = Vec::with_capacity(n);
    if flags & REGULAR != 0 {
        let (t0, step) = (d.ivar("chunk time")?, d.ivar("chunk step")?);
        ts.extend((0..n as i64).map(|i| t0.wrapping_add(i.wrapping_mul(step))));
    } else {
        let (mut prev, mut prev_delta) = (0i64, 0i64);
        for i in 0..n {
            let v = d.ivar("chunk time")?;
            let t = if i == 0 {
                v
            } else {
                let delta = prev_delta.wrapping_add(v);
                prev_delta = delta;
                prev.wrapping_add(delta)
            };
            ts.push(t);
            prev = t;
        }
    }
    let ncols = d.uvar("chunk columns")? as usize;
    let mut cols = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        let tag = d.u8("column tag")?;
        if tag == 0 {
            cols.push(None);
            continue;
        }
        let valid = if tag & HAS_VALIDITY != 0 {
            let bits = d.take(n.div_ceil(8), "validity")?;
            Some((0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect())
        } else {
            None
        };
        let read_deltas = |d: &mut Dec<'_>| -> Result<Vec<i64>, crate::codec::DecodeError> {
            let mut prev = 0i64;
            (0..n)
                .map(|_| {
                    prev = prev.wrapping_add(d.ivar("chunk value")?);
                    Ok(prev)
                })
                .collect()
        };
        let values = match tag & !HAS_VALIDITY {
            TAG_I64 => Values::I64(read_deltas(d)?),
            TAG_F64 => match d.u8("float encoding")? {
                RAW_F64 => {
                    let raw = d.take(n * 8, "raw floats")?;
                    Values::F64(
                        raw.chunks_exact(8)
                            .map(|b| f64::from_bits(u64::from_le_bytes(b.try_into().unwrap())))
                            .collect(),
                    )
                }
                k => {
                    let p = 10f64.powi(k as i32);
                    Values::F64(read_deltas(d)?.into_iter().map(|m| m as f64 / p).collect())
                }
            },
            _ => Values::Bytes(
                (0..n)
                    .map(|_| d.bytes("chunk bytes").map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()?,
            ),
        };
        cols.push(Some(Column { values, valid }));
    }
    Ok(SeriesData { ts, cols, ordered })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(d: &SeriesData) {
        let mut e = Enc(Vec::new());
        encode_chunk(d, &mut e);
        let mut dec = Dec::new(&e.0);
        let back = decode_chunk(&mut dec).unwrap();
        assert!(dec.is_empty());
        assert_eq!(back.ts, d.ts);
        assert_eq!(back.ordered, d.ordered);
        assert_eq!(back.cols.len(), d.cols.len());
        for (a, b) in back.cols.iter().zip(&d.cols) {
            match (a, b) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    assert_eq!(a.valid, b.valid);
                    match (&a.values, &b.values) {
                        (Values::F64(x), Values::F64(y)) => {
                            let bits =
                                |v: &Vec<f64>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(x), bits(y));
                        }
                        (x, y) => assert_eq!(x, y),
                    }
                }
                _ => panic!("column presence differs"),
            }
        }
    }

    #[test]
    fn chunks_round_trip_bit_for_bit() {
        let ts: Vec<i64> = (0..40)
            .map(|i| 1_700_000_000_000 + i * 15_000 + (i % 3))
            .collect();
        let f = |v: Vec<f64>| {
            Some(Column {
                values: Values::F64(v),
                valid: None,
            })
        };
        let cases = [
            (0..40).map(|i| i as f64 * 0.1).collect::<Vec<_>>(),
            (0..40).map(|i| (i * 1234) as f64 * 1e-6).collect(),
            (0..40)
                .map(|i| if i == 7 { f64::NAN } else { i as f64 })
                .collect(),
            (0..40)
                .map(|i| if i == 3 { -0.0 } else { 1e300 / (i + 1) as f64 })
                .collect(),
            (0..40).map(|i| (i as f64).sqrt()).collect(),
            vec![f64::INFINITY; 40],
        ];
        for v in cases {
            roundtrip(&SeriesData {
                ts: ts.clone(),
                cols: vec![f(v), None],
                ordered: true,
            });
        }
        // Evenly spaced timestamps (stored as first + step), including steps at the
        // ends of the range and single rows; one uneven row falls back to deltas.
        let val = |n: usize| f((0..n).map(|i| i as f64).collect());
        for (ts, step) in [
            (
                (0..16).map(|i| 1_700_000_000_000 + i * 15_000).collect(),
                Some(15_000),
            ),
            (vec![i64::MAX, 0, i64::MIN + 1], Some(i64::MIN + 1)),
            (vec![5, 5, 5], Some(0)),
            // The step overflows; a single row has none.
            (vec![i64::MIN, 0, i64::MAX - 1], None),
            (vec![42], None),
            (
                (0..16)
                    .map(|i| 1_700_000_000_000 + i * 15_000 + i64::from(i == 9))
                    .collect::<Vec<i64>>(),
                None,
            ),
        ] {
            assert_eq!(regular_step(&ts), step, "{ts:?}");
            roundtrip(&SeriesData {
                cols: vec![val(ts.len())],
                ts,
                ordered: true,
            });
        }
        // Out of order, integers with extremes, validity, bytes.
        let mut ts2 = ts.clone();
        ts2.swap(3, 30);
        roundtrip(&SeriesData {
            ts: ts2,
            cols: vec![
                Some(Column {
                    values: Values::I64(
                        (0..40)
                            .map(|i| if i % 2 == 0 { i64::MIN } else { i64::MAX - i })
                            .collect(),
                    ),
                    valid: Some((0..40).map(|i| i % 5 != 0).collect()),
                }),
                Some(Column {
                    values: Values::Bytes((0..40).map(|i| vec![i as u8; i % 4]).collect()),
                    valid: None,
                }),
            ],
            ordered: false,
        });
    }

    #[test]
    fn head_series_matches_plain_appends_and_is_small() {
        let types = [FieldType::F64];
        let mut plain = SeriesData::new();
        let mut hs = HeadSeries::new();
        let mut v = 0.0f64;
        for i in 0..240i64 {
            v += ((i * 7919) % 1000) as f64;
            let t = [1_700_000_000_000 + i * 15_000];
            let col = [FieldColumn::F64(sonde_types::smallvec![v])];
            plain.append(&t, &col, &[0], &types);
            hs.append(&t, &col, &[0], &types);
        }
        // A rewrite of an old timestamp: normalization must still see it last.
        let col = [FieldColumn::F64(sonde_types::smallvec![-1.0])];
        plain.append(&[1_700_000_000_000], &col, &[0], &types);
        hs.append(&[1_700_000_000_000], &col, &[0], &types);
        assert_eq!(hs.len(), plain.len());
        assert_eq!(hs.rows().as_ref(), &plain);
        assert_eq!(
            hs.normalized(MetricKind::Gauge).as_ref(),
            plain.normalized(MetricKind::Gauge).as_ref()
        );
        assert_eq!(
            hs.time_range(),
            Some((1_700_000_000_000, 1_700_000_000_000 + 239 * 15_000))
        );
        // Counter with increments below 1000, every 15 s: the values take ~2 bytes a
        // sample, the timestamps ~9 bytes a chunk of 16.
        // 718 bytes (928 before timestamps were stored as first + step).
        assert!(hs.sealed.len() < 240 * 3, "{} bytes", hs.sealed.len());
    }
}
