//! Little binary encoding helpers (LEB128 varints, length-prefixed strings) and the
//! persisted form of a write batch, used by WAL records.
//!
//! The persisted form is separate from the runtime [`WriteBatch`]: the first byte of
//! every encoded batch is [`BATCH_FORMAT`], so the runtime type can change without
//! making old WAL files unreadable.

use sonde_types::{
    FieldColumn, FieldDef, FieldType, Labels, MetricKind, Samples, SeriesBatch, SmallVec,
    TableBatch, WriteBatch,
};

/// Version of the persisted write-batch encoding. Format 4 writes each series' labels
/// as their differences from the previous series' labels (see [`encode_labels`]);
/// format 2 (labels in full) and format 1 (format 2 without the write time and the
/// deduplication keys) are still read. Format 3 is the zstd wrapper
/// ([`COMPRESSED_FORMAT`]).
pub const BATCH_FORMAT: u8 = 4;

/// A decoding failure: what was being read when the bytes ran out or made no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed {what}")]
pub struct DecodeError {
    pub what: &'static str,
}

fn bad(what: &'static str) -> DecodeError {
    DecodeError { what }
}

/// Appends little-endian primitives and varints to a `Vec<u8>`.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn uvar(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn ivar(&mut self, v: i64) {
        self.uvar(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn str(&mut self, s: &str) {
        self.uvar(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.uvar(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Enc`] wrote.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(bad(what))?;
        self.buf = rest;
        Ok(b)
    }
    pub fn uvar(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(bad(what))
    }
    pub fn ivar(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let u = self.uvar(what)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    /// A length that must fit in what is left of the buffer (each item at least
    /// `min_item` bytes), so corrupt input cannot trigger a huge allocation.
    pub fn len(&mut self, what: &'static str, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.uvar(what)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() && min_item > 0 {
            return Err(bad(what));
        }
        Ok(n)
    }
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(bad(what));
        }
        let (a, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(a)
    }
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(what, 1)?;
        self.take(n, what)
    }
    pub fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(what))
    }
}

/// Bytes of the header shared by the index, catalog and manifest files:
/// magic (8), version u32, CRC32C of the body u32, body length u64.
pub const FILE_HEADER_LEN: usize = 24;

/// Prefixes `body` with the shared file header.
pub fn seal_file(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The version in a sealed file's header, for readers of more than one version
/// (`None` when the file is too short to have one; [`open_sealed`] then says so).
pub fn sealed_version(data: &[u8]) -> Option<u32> {
    data.get(8..12)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
}

/// Checks the shared file header (magic, version, length, checksum) and returns the
/// body; errors name the file and what is wrong with it.
pub fn open_sealed<'a>(
    data: &'a [u8],
    magic: &[u8; 8],
    version: u32,
    kind: &str,
    path: &std::path::Path,
) -> crate::Result<&'a [u8]> {
    if data.len() < FILE_HEADER_LEN || &data[..8] != magic {
        return Err(crate::Error::format(
            path,
            format!("not a Sonde {kind} (bad magic or too short)"),
        ));
    }
    let v = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if v != version {
        return Err(crate::Error::format(
            path,
            format!("{kind} version {v}, this build reads {version}"),
        ));
    }
    let crc = u32::from_le_bytes(data[12..16].try_into().unwrap());
    let len = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let body = &data[FILE_HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(crate::Error::format(
            path,
            format!(
                "{kind} truncated: body is {} bytes, header says {len}",
                body.len()
            ),
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err(crate::Error::format(
            path,
            format!("{kind} checksum mismatch"),
        ));
    }
    Ok(body)
}

/// What a WAL record carries besides the batch: when it was written (server clock)
/// and the deduplication keys it claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordKeys {
    pub written_ms: i64,
    pub keys: Vec<String>,
}

/// Encodes `(tenant, batch, keys)` as a WAL record payload.
pub fn encode_batch(tenant: &str, batch: &WriteBatch, keys: &RecordKeys) -> Vec<u8> {
    encode_batch_as(BATCH_FORMAT, tenant, batch, keys)
}

/// [`encode_batch`] in `format` 4 ([`BATCH_FORMAT`]) or 2 (labels in full, as written
/// before format 4; the tests read WAL payloads of earlier versions through it).
fn encode_batch_as(format: u8, tenant: &str, batch: &WriteBatch, keys: &RecordKeys) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(64 + batch.sample_count() * 9));
    e.u8(format);
    e.str(tenant);
    e.uvar(batch.tables.len() as u64);
    for t in &batch.tables {
        e.str(&t.table);
        e.u8(t.kind as u8);
        e.uvar(t.fields.len() as u64);
        for f in &t.fields {
            e.str(&f.name);
            e.u8(f.ty as u8);
        }
        e.uvar(t.series.len() as u64);
        let mut prev = None;
        for s in &t.series {
            if format == BATCH_FORMAT {
                encode_labels(&mut e, &s.labels, prev);
                prev = Some(&s.labels);
            } else {
                e.uvar(s.labels.len() as u64);
                for (k, v) in s.labels.iter() {
                    e.str(k);
                    e.str(v);
                }
            }
            e.uvar(s.timestamps.len() as u64);
            let mut prev = 0i64;
            for &ts in &s.timestamps {
                e.ivar(ts.wrapping_sub(prev));
                prev = ts;
            }
            for col in &s.fields {
                match col {
                    FieldColumn::F64(v) => v
                        .iter()
                        .for_each(|x| e.0.extend_from_slice(&x.to_bits().to_le_bytes())),
                    FieldColumn::I64(v) => v.iter().for_each(|&x| e.ivar(x)),
                }
            }
        }
    }
    e.ivar(keys.written_ms);
    e.uvar(keys.keys.len() as u64);
    for k in &keys.keys {
        e.str(k);
    }
    e.0
}

/// Label sets of at most this many labels are written against the previous series'
/// set (one bit per label in each mask); larger ones are written in full.
const MASK_LABELS: usize = 64;

fn bit(mask: u64, i: usize) -> bool {
    i < MASK_LABELS && (mask >> i) & 1 == 1
}

/// Writes `labels` as format 4 does: the label count `n`; a mask of the labels equal,
/// name and value, to the previous series' label at the same position (in the same
/// table); a mask of the others whose name is equal; then, per label not in the first
/// mask, its name (unless in the second mask) and its value. A request's series mostly
/// share all labels but one or two (a remote-write request names every label of every
/// series), which were three quarters of the WAL bytes and of the time zstd spent on
/// them. With no previous series, or more than [`MASK_LABELS`] labels, both masks are 0.
fn encode_labels(e: &mut Enc, labels: &Labels, prev: Option<&Labels>) {
    let n = labels.len();
    e.uvar(n as u64);
    let (same, same_name) = match prev {
        Some(p) if n <= MASK_LABELS => labels.diff_masks(p),
        _ => (0, 0),
    };
    e.uvar(same);
    e.uvar(same_name);
    for i in (0..n).filter(|&i| !bit(same, i)) {
        let (k, v) = labels.pair(i);
        if !bit(same_name, i) {
            e.str(k);
        }
        e.str(v);
    }
}

/// Reads what [`encode_labels`] wrote; `prev` is the previous series' label set (empty
/// for a table's first series).
fn decode_labels(d: &mut Dec<'_>, prev: &Labels) -> Result<Vec<(String, String)>, DecodeError> {
    let n = d.uvar("label count")? as usize;
    // Every label not taken from `prev` needs at least two bytes.
    if n > MASK_LABELS && n.saturating_mul(2) > d.remaining() {
        return Err(bad("label count"));
    }
    let same = d.uvar("label mask")?;
    let same_name = d.uvar("label mask")?;
    let usable = n.min(prev.len()).min(MASK_LABELS);
    let in_range = |m: u64| usable == MASK_LABELS || m >> usable == 0;
    if same & same_name != 0 || !in_range(same) || !in_range(same_name) {
        return Err(bad("label mask"));
    }
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        // A set bit is below `prev.len()`: the masks were checked above.
        pairs.push(if bit(same, i) {
            let (k, v) = prev.pair(i);
            (k.to_string(), v.to_string())
        } else {
            let name = if bit(same_name, i) {
                prev.pair(i).0.to_string()
            } else {
                d.str("label name")?
            };
            (name, d.str("label value")?)
        });
    }
    Ok(pairs)
}

/// Payload format of a zstd-compressed encoded batch: `u8 3 | zstd frame` whose
/// content is a format-4 payload (format 1 or 2 in WAL files of earlier versions).
pub const COMPRESSED_FORMAT: u8 = 3;

/// zstd level of WAL payloads: the fastest setting that still shares the repeated
/// label strings of a remote-write request (they make up most of its bytes).
const WAL_ZSTD_LEVEL: i32 = 1;

/// [`encode_batch`] compressed (format 3) when that saves at least an eighth; small
/// payloads, which seldom shrink, stay as they are.
pub fn encode_batch_compressed(tenant: &str, batch: &WriteBatch, keys: &RecordKeys) -> Vec<u8> {
    let raw = encode_batch(tenant, batch, keys);
    if raw.len() < 1024 {
        return raw;
    }
    // One compression context per thread, kept: making a fresh one for every
    // payload (zeroing its tables) cost a third as much as compressing.
    thread_local! {
        static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = ZSTD.with_borrow_mut(|c| {
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(WAL_ZSTD_LEVEL).ok();
        }
        let mut out = Vec::with_capacity(1 + zstd::zstd_safe::compress_bound(raw.len()));
        c.as_mut()?
            .compress_to_buffer(raw.as_slice(), &mut out)
            .ok()?;
        // The format byte in front: a move of the (small) compressed bytes.
        out.insert(0, COMPRESSED_FORMAT);
        Some(out)
    });
    match compressed {
        Some(out) if out.len() < raw.len() - raw.len() / 8 => out,
        _ => raw,
    }
}

/// Decodes what [`encode_batch`] or [`encode_batch_compressed`] wrote.
pub fn decode_batch(buf: &[u8]) -> Result<(String, WriteBatch, RecordKeys), DecodeError> {
    if buf.first() == Some(&COMPRESSED_FORMAT) {
        let raw = zstd::stream::decode_all(&buf[1..]).map_err(|_| bad("compressed payload"))?;
        if raw.first() == Some(&COMPRESSED_FORMAT) {
            return Err(bad("batch format version"));
        }
        return decode_batch(&raw);
    }
    let mut d = Dec::new(buf);
    let format = d.u8("batch format")?;
    if !matches!(format, 1 | 2 | BATCH_FORMAT) {
        return Err(bad("batch format version"));
    }
    let tenant = d.str("tenant")?;
    let n_tables = d.len("table count", 3)?;
    let mut tables = Vec::with_capacity(n_tables);
    for _ in 0..n_tables {
        let table = d.str("table name")?;
        let kind = MetricKind::from_u8(d.u8("kind")?).ok_or(bad("kind"))?;
        let n_fields = d.len("field count", 2)?;
        let mut fields = Vec::with_capacity(n_fields);
        for _ in 0..n_fields {
            let name = d.str("field name")?;
            let ty = FieldType::from_u8(d.u8("field type")?).ok_or(bad("field type"))?;
            fields.push(FieldDef { name, ty });
        }
        let n_series = d.len("series count", 2)?;
        let mut series = Vec::with_capacity(n_series);
        let mut prev = Labels::default();
        for _ in 0..n_series {
            let pairs = if format == BATCH_FORMAT {
                decode_labels(&mut d, &prev)?
            } else {
                let n_labels = d.len("label count", 2)?;
                let mut pairs = Vec::with_capacity(n_labels);
                for _ in 0..n_labels {
                    pairs.push((d.str("label name")?, d.str("label value")?));
                }
                pairs
            };
            let labels = Labels::new(pairs).map_err(|_| bad("labels"))?;
            prev = labels.clone();
            let n = d.len("row count", 1)?;
            let mut timestamps = Samples::with_capacity(n);
            let mut prev = 0i64;
            for _ in 0..n {
                prev = prev.wrapping_add(d.ivar("timestamp")?);
                timestamps.push(prev);
            }
            let mut cols = SmallVec::with_capacity(fields.len());
            for f in &fields {
                cols.push(match f.ty {
                    FieldType::F64 => {
                        let raw = d.take(n * 8, "f64 values")?;
                        FieldColumn::F64(
                            raw.chunks_exact(8)
                                .map(|c| f64::from_bits(u64::from_le_bytes(c.try_into().unwrap())))
                                .collect(),
                        )
                    }
                    FieldType::I64 => FieldColumn::I64(
                        (0..n)
                            .map(|_| d.ivar("i64 value"))
                            .collect::<Result<_, _>>()?,
                    ),
                    FieldType::Bytes => return Err(bad("field type")),
                });
            }
            series.push(SeriesBatch {
                labels,
                timestamps,
                fields: cols,
            });
        }
        tables.push(TableBatch {
            table,
            kind,
            fields,
            series,
        });
    }
    let mut keys = RecordKeys::default();
    if format >= 2 {
        keys.written_ms = d.ivar("written time")?;
        let n = d.len("key count", 1)?;
        for _ in 0..n {
            keys.keys.push(d.str("key")?);
        }
    }
    if !d.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((tenant, WriteBatch { tables }, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip() {
        let mut t = TableBatch::single("m", MetricKind::Gauge, FieldType::F64);
        t.series.push(SeriesBatch::f64(
            Labels::new([("a", "x")]).unwrap(),
            vec![-5, 1000, 999],
            vec![1.5, f64::NAN, -0.0],
        ));
        let mut t2 = TableBatch::single("n", MetricKind::DeltaSum, FieldType::I64);
        t2.series
            .push(SeriesBatch::i64(Labels::default(), vec![1], vec![i64::MIN]));
        let b = WriteBatch {
            tables: vec![t, t2],
        };
        let keys = RecordKeys {
            written_ms: 42,
            keys: vec!["req:abc".into()],
        };
        let enc = encode_batch("acme", &b, &keys);
        let (tenant, got, got_keys) = decode_batch(&enc).unwrap();
        assert_eq!(tenant, "acme");
        assert_eq!(got_keys, keys);
        assert_eq!(format!("{got:?}"), format!("{b:?}")); // NaN != NaN, compare text
        for cut in 0..enc.len() {
            assert!(decode_batch(&enc[..cut]).is_err());
        }
    }

    #[test]
    fn compressed_batch_roundtrip() {
        // A remote-write-like batch: many series, long repeated label values.
        let mut t = TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::I64);
        for i in 0..200 {
            let labels = Labels::new([
                ("model", format!("model-{}", i % 8)),
                ("tenant", format!("tenant-{}", i % 50)),
                ("user_id", format!("user-{i:06}")),
            ])
            .unwrap();
            t.series.push(SeriesBatch::i64(
                labels,
                vec![1_700_000_000_000 + i],
                vec![i * 37],
            ));
        }
        let b = WriteBatch { tables: vec![t] };
        let keys = RecordKeys {
            written_ms: 7,
            keys: vec!["k".into()],
        };
        let raw = encode_batch("acme", &b, &keys);
        let enc = encode_batch_compressed("acme", &b, &keys);
        assert_eq!(enc[0], COMPRESSED_FORMAT);
        assert!(enc.len() * 3 < raw.len(), "{} vs {}", enc.len(), raw.len());
        let (tenant, got, got_keys) = decode_batch(&enc).unwrap();
        assert_eq!((tenant.as_str(), &got_keys), ("acme", &keys));
        assert_eq!(format!("{got:?}"), format!("{b:?}"));
        // Damage inside the compressed frame is an error, never a panic.
        for cut in [1, 2, enc.len() / 2, enc.len() - 1] {
            assert!(decode_batch(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = enc.clone();
        flipped[enc.len() / 2] ^= 0x5a;
        let _ = decode_batch(&flipped);
        // A tiny batch stays uncompressed (format 4).
        let small = WriteBatch { tables: Vec::new() };
        assert_eq!(encode_batch_compressed("a", &small, &keys)[0], BATCH_FORMAT);
    }

    /// Label sets written against the previous series': equal sets, one value
    /// changed, labels added and removed, names shifted to other positions, sets of
    /// more than 64 labels, and a second table starting afresh, all read back; the
    /// same batch in format 2 reads the same, and takes several times the bytes.
    #[test]
    fn labels_written_against_the_previous_series() {
        let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied()).unwrap();
        let wide = |v: &str| {
            Labels::new((0..70).map(|i| (format!("k{i:02}"), format!("{v}{i}")))).unwrap()
        };
        let sets = [
            l(&[("model", "a"), ("tenant", "t1"), ("user_id", "u1")]),
            l(&[("model", "a"), ("tenant", "t1"), ("user_id", "u1")]),
            l(&[("model", "a"), ("tenant", "t1"), ("user_id", "u2")]),
            l(&[("model", "b"), ("tenant", "t1"), ("user_id", "u3")]),
            l(&[("model", "b"), ("user_id", "u3")]),
            l(&[("a", "x"), ("model", "b"), ("user_id", "u3")]),
            l(&[("model", "b")]),
            Labels::default(),
            l(&[
                ("model", "b"),
                ("tenant", "t2"),
                ("user_id", "u4"),
                ("zone", "z"),
            ]),
            wide("x"),
            wide("x"),
            wide("y"),
            l(&[("k00", "x0"), ("k01", "y1")]),
        ];
        let mut t = TableBatch::single("m", MetricKind::Counter, FieldType::F64);
        for (i, labels) in sets.iter().enumerate() {
            t.series.push(SeriesBatch::f64(
                labels.clone(),
                vec![i as i64 * 15_000],
                vec![i as f64],
            ));
        }
        let mut t2 = t.clone();
        t2.table = "n".into();
        t2.series.reverse();
        let mut rw = TableBatch::single("llm_tokens_total", MetricKind::Counter, FieldType::F64);
        for i in 0..500 {
            let labels = Labels::new([
                ("model", format!("gpt-{}", i / 100)),
                ("provider", "openai".to_string()),
                ("tenant", format!("tenant-{:03}", i / 20)),
                ("token_type", ["input", "output"][i / 10 % 2].to_string()),
                ("user_id", format!("user-{i:06}")),
            ])
            .unwrap();
            rw.series.push(SeriesBatch::f64(
                labels,
                vec![1_800_000_000_000],
                vec![i as f64],
            ));
        }
        let b = WriteBatch {
            tables: vec![t, t2, rw],
        };
        let keys = RecordKeys {
            written_ms: 3,
            keys: vec!["k".into()],
        };
        let enc = encode_batch("acme", &b, &keys);
        let old = encode_batch_as(2, "acme", &b, &keys);
        for payload in [&enc, &old] {
            let (tenant, got, got_keys) = decode_batch(payload).unwrap();
            assert_eq!((tenant.as_str(), &got_keys), ("acme", &keys));
            assert_eq!(format!("{got:?}"), format!("{b:?}"));
        }
        assert!(enc.len() * 2 < old.len(), "{} vs {}", enc.len(), old.len());
        for cut in 0..enc.len() {
            assert!(decode_batch(&enc[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Masks that name labels the previous series does not have, or a label as both
    /// equal and renamed, are malformed payloads, not panics.
    #[test]
    fn bad_label_masks_are_errors() {
        let series = |labels: &[u8]| {
            let mut e = Enc::default();
            e.u8(BATCH_FORMAT);
            e.str("t");
            e.uvar(1);
            e.str("m");
            e.u8(0);
            e.uvar(0);
            e.uvar(2);
            // First series: one label, in full.
            e.0.extend_from_slice(&[1, 0, 0, 1, b'a', 1, b'x', 0]);
            e.0.extend_from_slice(labels);
            e.0.push(0);
            e.ivar(0);
            e.uvar(0);
            e.0
        };
        // Second series: two labels, the first equal to the previous series' first.
        let good = series(&[2, 0b01, 0, 1, b'b', 1, b'y']);
        let (_, got, _) = decode_batch(&good).unwrap();
        assert_eq!(
            got.tables[0].series[1].labels,
            Labels::new([("a", "x"), ("b", "y")]).unwrap()
        );
        for bad_labels in [
            &[2, 0b10, 0, 1, b'b', 1, b'y'][..], // position 1: the previous set has one label
            &[1, 0, 0b10, 1, b'y'],              // a renamed label beyond it
            &[1, 0b01, 0b01],                    // equal and renamed at once
            &[0xc8, 0x01, 0, 0],                 // 200 labels in a few bytes
            &[2, 0b01, 0, 1, b'a', 1, b'y'],     // a duplicate name
        ] {
            let payload = series(bad_labels);
            assert!(decode_batch(&payload).is_err(), "{bad_labels:?}");
        }
    }
}
