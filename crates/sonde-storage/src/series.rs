//! [`SeriesData`]: the rows of one series as columns, the unit the head stores, the
//! segment writer consumes and readers merge.
//!
//! Columns are indexed by the table's field position; a field a series never had is
//! `None` (all null). Duplicate timestamps are resolved by [`SeriesData::normalized`]
//! according to the table's [`MetricKind`]: the later write wins (gauges, counters,
//! histograms), values add up (delta sums), or every row stays (events).

use std::borrow::Cow;

use sonde_types::{FieldColumn, FieldType, MetricKind, TimestampMs};

/// The values of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F64(Vec<f64>),
    I64(Vec<i64>),
    /// Opaque values (rollup sketches); an empty vector stands for a null.
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    pub fn new(ty: FieldType) -> Self {
        match ty {
            FieldType::F64 => Values::F64(Vec::new()),
            FieldType::I64 => Values::I64(Vec::new()),
            FieldType::Bytes => Values::Bytes(Vec::new()),
        }
    }
    pub fn ty(&self) -> FieldType {
        match self {
            Values::F64(_) => FieldType::F64,
            Values::I64(_) => FieldType::I64,
            Values::Bytes(_) => FieldType::Bytes,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn push_default(&mut self, n: usize) {
        match self {
            Values::F64(v) => v.resize(v.len() + n, 0.0),
            Values::I64(v) => v.resize(v.len() + n, 0),
            Values::Bytes(v) => v.resize(v.len() + n, Vec::new()),
        }
    }
    fn take(&self, idx: &[usize]) -> Values {
        match self {
            Values::F64(v) => Values::F64(idx.iter().map(|&i| v[i]).collect()),
            Values::I64(v) => Values::I64(idx.iter().map(|&i| v[i]).collect()),
            Values::Bytes(v) => Values::Bytes(idx.iter().map(|&i| v[i].clone()).collect()),
        }
    }
    fn slice(&self, r: std::ops::Range<usize>) -> Values {
        match self {
            Values::F64(v) => Values::F64(v[r].to_vec()),
            Values::I64(v) => Values::I64(v[r].to_vec()),
            Values::Bytes(v) => Values::Bytes(v[r].to_vec()),
        }
    }
    fn view(&self) -> ValuesRef<'_> {
        match self {
            Values::F64(v) => ValuesRef::F64(v),
            Values::I64(v) => ValuesRef::I64(v),
            Values::Bytes(v) => ValuesRef::Bytes(v),
        }
    }
    fn extend(&mut self, other: ValuesRef<'_>) {
        match (self, other) {
            (Values::F64(a), ValuesRef::F64(b)) => a.extend_from_slice(b),
            (Values::I64(a), ValuesRef::I64(b)) => a.extend_from_slice(b),
            (Values::F64(a), ValuesRef::I64(b)) => a.extend(b.iter().map(|&x| x as f64)),
            (a @ Values::I64(_), ValuesRef::F64(b)) => {
                // A field widened to f64 in a later write: widen what we have.
                let Values::I64(old) = a else { unreachable!() };
                let mut w: Vec<f64> = old.iter().map(|&x| x as f64).collect();
                w.extend_from_slice(b);
                *a = Values::F64(w);
            }
            (Values::Bytes(a), ValuesRef::Bytes(b)) => a.extend_from_slice(b),
            (a, b) => panic!(
                "a bytes field mixed with numbers: {:?}, {:?}",
                a.ty(),
                b.ty()
            ),
        }
    }
}

/// Borrowed values of one field, from a column or a write: what
/// [`Column::extend`] appends without an intermediate copy.
#[derive(Debug, Clone, Copy)]
enum ValuesRef<'a> {
    F64(&'a [f64]),
    I64(&'a [i64]),
    Bytes(&'a [Vec<u8>]),
}

impl ValuesRef<'_> {
    fn len(&self) -> usize {
        match self {
            ValuesRef::F64(v) => v.len(),
            ValuesRef::I64(v) => v.len(),
            ValuesRef::Bytes(v) => v.len(),
        }
    }
    fn ty(&self) -> FieldType {
        match self {
            ValuesRef::F64(_) => FieldType::F64,
            ValuesRef::I64(_) => FieldType::I64,
            ValuesRef::Bytes(_) => FieldType::Bytes,
        }
    }
}

impl<'a> From<&'a FieldColumn> for ValuesRef<'a> {
    fn from(c: &'a FieldColumn) -> Self {
        match c {
            FieldColumn::F64(v) => ValuesRef::F64(v),
            FieldColumn::I64(v) => ValuesRef::I64(v),
        }
    }
}

/// One field's values plus validity (`None` = all valid).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub values: Values,
    pub valid: Option<Vec<bool>>,
}

impl Column {
    fn nulls(ty: FieldType, n: usize) -> Column {
        let mut values = Values::new(ty);
        values.push_default(n);
        Column {
            values,
            valid: Some(vec![false; n]),
        }
    }
    pub fn is_valid(&self, i: usize) -> bool {
        self.valid.as_ref().is_none_or(|v| v[i])
    }
    fn push_nulls(&mut self, n: usize) {
        let len = self.values.len();
        self.values.push_default(n);
        let valid = self.valid.get_or_insert_with(|| vec![true; len]);
        valid.resize(len + n, false);
    }
    /// Appends `values` with their validity (`None`: all valid), in place — a
    /// write's field goes straight from the batch into the head's column.
    fn extend(&mut self, values: ValuesRef<'_>, valid: Option<&[bool]>) {
        let len = self.values.len();
        self.values.extend(values);
        match (&mut self.valid, valid) {
            (None, None) => {}
            (Some(a), None) => a.resize(len + values.len(), true),
            (a, b) => {
                let a = a.get_or_insert_with(|| vec![true; len]);
                match b {
                    Some(b) => a.extend_from_slice(b),
                    None => a.resize(len + values.len(), true),
                }
            }
        }
    }
    fn take(&self, idx: &[usize]) -> Column {
        Column {
            values: self.values.take(idx),
            valid: self
                .valid
                .as_ref()
                .map(|v| idx.iter().map(|&i| v[i]).collect()),
        }
    }
    fn slice(&self, r: std::ops::Range<usize>) -> Column {
        Column {
            values: self.values.slice(r.clone()),
            valid: self.valid.as_ref().map(|v| v[r].to_vec()),
        }
    }
}

/// Rows of one series: timestamps plus one optional column per table field.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub ts: Vec<TimestampMs>,
    pub cols: Vec<Option<Column>>,
    /// Timestamps strictly increasing (no sort or dedup needed to read).
    pub ordered: bool,
}

impl Default for SeriesData {
    fn default() -> Self {
        Self::new()
    }
}

impl SeriesData {
    pub fn new() -> Self {
        SeriesData {
            ts: Vec::new(),
            cols: Vec::new(),
            ordered: true,
        }
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Appends the rows of a write. `field_map[i]` is the table field index of the
    /// batch's i-th column; `field_types` are the table's field types.
    pub fn append(
        &mut self,
        ts: &[TimestampMs],
        columns: &[FieldColumn],
        field_map: &[usize],
        field_types: &[FieldType],
    ) {
        let old = self.ts.len();
        let n = ts.len();
        if let (Some(&last), Some(&first)) = (self.ts.last(), ts.first())
            && first <= last
        {
            self.ordered = false;
        }
        if self.ordered && ts.windows(2).any(|w| w[1] <= w[0]) {
            self.ordered = false;
        }
        self.ts.extend_from_slice(ts);
        if self.cols.len() < field_types.len() {
            self.cols.resize(field_types.len(), None);
        }
        for (col, &j) in columns.iter().zip(field_map) {
            let c = self.cols[j].get_or_insert_with(|| Column::nulls(field_types[j], old));
            c.extend(col.into(), None);
        }
        for (j, c) in self.cols.iter_mut().enumerate() {
            if let Some(c) = c
                && !field_map.contains(&j)
            {
                c.push_nulls(n);
            }
        }
    }

    /// Appends another chunk of the same series (same field indexing).
    pub fn extend(&mut self, other: &SeriesData) {
        let old = self.ts.len();
        if let (Some(&last), Some(&first)) = (self.ts.last(), other.ts.first())
            && first <= last
        {
            self.ordered = false;
        }
        self.ordered &= other.ordered;
        self.ts.extend_from_slice(&other.ts);
        let width = self.cols.len().max(other.cols.len());
        self.cols.resize(width, None);
        for j in 0..width {
            match (
                &mut self.cols[j],
                other.cols.get(j).and_then(|c| c.as_ref()),
            ) {
                (Some(a), Some(b)) => a.extend(b.values.view(), b.valid.as_deref()),
                (Some(a), None) => a.push_nulls(other.len()),
                (a @ None, Some(b)) => {
                    let mut c = Column::nulls(b.values.ty(), old);
                    c.extend(b.values.view(), b.valid.as_deref());
                    *a = Some(c);
                }
                (None, None) => {}
            }
        }
    }

    /// Rows sorted by time with duplicate timestamps resolved per `kind`; borrowed
    /// when they already are (the common case: no copy).
    pub fn normalized(&self, kind: MetricKind) -> Cow<'_, SeriesData> {
        Cow::Owned(match self.ordered {
            true => return Cow::Borrowed(self),
            false => self.normalize_owned(kind),
        })
    }

    fn normalize_owned(&self, kind: MetricKind) -> SeriesData {
        let mut idx: Vec<usize> = (0..self.ts.len()).collect();
        idx.sort_by_key(|&i| self.ts[i]); // stable: equal timestamps keep write order
        if kind == MetricKind::Event {
            return self.take(&idx, false);
        }
        let mut groups: Vec<(usize, usize)> = Vec::new(); // [start, end) into idx
        let mut s = 0;
        for e in 1..=idx.len() {
            if e == idx.len() || self.ts[idx[e]] != self.ts[idx[s]] {
                groups.push((s, e));
                s = e;
            }
        }
        if kind != MetricKind::DeltaSum || groups.iter().all(|(s, e)| e - s == 1) {
            let last: Vec<usize> = groups.iter().map(|&(_, e)| idx[e - 1]).collect();
            return self.take(&last, true);
        }
        let first: Vec<usize> = groups.iter().map(|&(s, _)| idx[s]).collect();
        let mut out = self.take(&first, true);
        for (j, col) in self.cols.iter().enumerate() {
            let Some(src) = col else { continue };
            let dst = out.cols[j].as_mut().unwrap();
            for (g, &(s, e)) in groups.iter().enumerate() {
                let rows = idx[s..e].iter().copied().filter(|&i| src.is_valid(i));
                let any = rows.clone().next().is_some();
                match (&mut dst.values, &src.values) {
                    (Values::F64(d), Values::F64(v)) => d[g] = rows.map(|i| v[i]).sum(),
                    (Values::I64(d), Values::I64(v)) => {
                        d[g] = rows.fold(0i64, |a, i| a.wrapping_add(v[i]))
                    }
                    _ => unreachable!("a column has one type"),
                }
                if let Some(valid) = &mut dst.valid {
                    valid[g] = any;
                }
            }
        }
        out
    }

    fn take(&self, idx: &[usize], ordered: bool) -> SeriesData {
        SeriesData {
            ts: idx.iter().map(|&i| self.ts[i]).collect(),
            cols: self
                .cols
                .iter()
                .map(|c| c.as_ref().map(|c| c.take(idx)))
                .collect(),
            ordered,
        }
    }

    /// The rows with `start <= ts <= end` of a time-sorted series.
    pub fn time_slice(&self, start: TimestampMs, end: TimestampMs) -> SeriesData {
        let lo = self.ts.partition_point(|&t| t < start);
        let hi = self.ts.partition_point(|&t| t <= end);
        if lo == 0 && hi == self.ts.len() {
            return self.clone();
        }
        SeriesData {
            ts: self.ts[lo..hi].to_vec(),
            cols: self
                .cols
                .iter()
                .map(|c| c.as_ref().map(|c| c.slice(lo..hi)))
                .collect(),
            ordered: self.ordered,
        }
    }

    /// [`SeriesData::time_slice`] of an owned value: the rows are kept in place (no
    /// copy when every row is inside the range).
    pub fn into_time_slice(mut self, start: TimestampMs, end: TimestampMs) -> SeriesData {
        let lo = self.ts.partition_point(|&t| t < start);
        let hi = self.ts.partition_point(|&t| t <= end);
        if lo == 0 && hi == self.ts.len() {
            return self;
        }
        if hi - lo < self.ts.len() / 2 {
            // Little is kept: copying it beats shifting it.
            return self.time_slice(start, end);
        }
        self.ts.truncate(hi);
        self.ts.drain(..lo);
        for c in self.cols.iter_mut().flatten() {
            match &mut c.values {
                Values::F64(v) => {
                    v.truncate(hi);
                    v.drain(..lo);
                }
                Values::I64(v) => {
                    v.truncate(hi);
                    v.drain(..lo);
                }
                Values::Bytes(v) => {
                    v.truncate(hi);
                    v.drain(..lo);
                }
            }
            if let Some(valid) = &mut c.valid {
                valid.truncate(hi);
                valid.drain(..lo);
            }
        }
        self
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.ts.capacity() * 8
            + self
                .cols
                .iter()
                .flatten()
                .map(|c| c.values.len() * 8 + c.valid.as_ref().map_or(0, |v| v.capacity()))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ts: &[i64], v: &[f64]) -> SeriesData {
        let mut s = SeriesData::new();
        s.append(ts, &[FieldColumn::F64(v.into())], &[0], &[FieldType::F64]);
        s
    }

    fn values(s: &SeriesData) -> Vec<f64> {
        match &s.cols[0].as_ref().unwrap().values {
            Values::F64(v) => v.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn later_write_wins_delta_adds_event_keeps() {
        let mut s = series(&[10, 20], &[1.0, 2.0]);
        s.extend(&series(&[20, 5], &[3.0, 4.0]));
        assert!(!s.ordered);
        let g = s.normalized(MetricKind::Gauge);
        assert_eq!(
            (g.ts.clone(), values(&g)),
            (vec![5, 10, 20], vec![4.0, 1.0, 3.0])
        );
        let d = s.normalized(MetricKind::DeltaSum);
        assert_eq!(values(&d), vec![4.0, 1.0, 5.0]);
        let e = s.normalized(MetricKind::Event);
        assert_eq!(e.ts, vec![5, 10, 20, 20]);
        assert_eq!(g.time_slice(6, 20).ts, vec![10, 20]);
        for (a, b) in [(6, 20), (0, 100), (21, 100), (i64::MIN, 9), (11, 19)] {
            assert_eq!(
                g.clone().into_owned().into_time_slice(a, b),
                g.time_slice(a, b),
                "{a}..{b}"
            );
        }
    }

    #[test]
    fn missing_fields_are_null() {
        let mut s = SeriesData::new();
        let types = [FieldType::I64, FieldType::F64];
        s.append(
            &[1],
            &[FieldColumn::I64(sonde_types::smallvec![7])],
            &[0],
            &types,
        );
        s.append(
            &[2],
            &[FieldColumn::F64(sonde_types::smallvec![0.5])],
            &[1],
            &types,
        );
        let a = s.cols[0].as_ref().unwrap();
        let b = s.cols[1].as_ref().unwrap();
        assert_eq!(a.valid, Some(vec![true, false]));
        assert_eq!(b.valid, Some(vec![false, true]));
    }
}
