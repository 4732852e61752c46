//! Decodes the Parquet offset index (page locations) of a column chunk (Thrift compact
//! protocol, `OffsetIndex` / `PageLocation` of parquet-format).
//! [`super::reader::load_footer`] reads the indexes of every chunk of a segment in one
//! read, decodes each here, and the engine keeps them with the segment's footer.

use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};

/// A decoding failure (the caller adds the file name).
#[derive(Debug, thiserror::Error)]
#[error("malformed offset index: {0}")]
pub struct OffsetIndexError(&'static str);

type R<T> = Result<T, OffsetIndexError>;

struct Compact<'a> {
    buf: &'a [u8],
}

const T_STOP: u8 = 0;
const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

impl Compact<'_> {
    fn byte(&mut self) -> R<u8> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(OffsetIndexError("truncated"))?;
        self.buf = rest;
        Ok(b)
    }
    fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(OffsetIndexError("varint too long"))
    }
    fn zigzag(&mut self) -> R<i64> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    /// Field header → (field id, type); `last` is the previous field id.
    fn field(&mut self, last: i16) -> R<(i16, u8)> {
        let b = self.byte()?;
        let ty = b & 0x0f;
        if ty == T_STOP {
            return Ok((0, T_STOP));
        }
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            self.zigzag()? as i16
        } else {
            last + delta
        };
        Ok((id, ty))
    }
    fn list_header(&mut self) -> R<(usize, u8)> {
        let b = self.byte()?;
        let size = if b >> 4 == 15 {
            self.varint()? as usize
        } else {
            (b >> 4) as usize
        };
        if size > self.buf.len() {
            return Err(OffsetIndexError("list longer than the buffer"));
        }
        Ok((size, b & 0x0f))
    }
    fn skip(&mut self, ty: u8) -> R<()> {
        match ty {
            T_BOOL_TRUE | T_BOOL_FALSE => Ok(()),
            T_BYTE => self.byte().map(|_| ()),
            T_I16 | T_I32 | T_I64 => self.varint().map(|_| ()),
            T_DOUBLE => (0..8).try_for_each(|_| self.byte().map(|_| ())),
            T_BINARY => {
                let n = self.varint()? as usize;
                if n > self.buf.len() {
                    return Err(OffsetIndexError("truncated binary"));
                }
                self.buf = &self.buf[n..];
                Ok(())
            }
            T_LIST | T_SET => {
                let (n, et) = self.list_header()?;
                (0..n).try_for_each(|_| self.skip(et))
            }
            T_MAP => {
                let n = self.varint()? as usize;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                (0..n).try_for_each(|_| {
                    self.skip(kv >> 4)?;
                    self.skip(kv & 0x0f)
                })
            }
            T_STRUCT => {
                let mut last = 0;
                loop {
                    let (id, t) = self.field(last)?;
                    if t == T_STOP {
                        return Ok(());
                    }
                    self.skip(t)?;
                    last = id;
                }
            }
            _ => Err(OffsetIndexError("unknown type")),
        }
    }
    fn page_location(&mut self) -> R<PageLocation> {
        let (mut offset, mut size, mut first) = (None, None, None);
        let mut last = 0;
        loop {
            let (id, ty) = self.field(last)?;
            match (id, ty) {
                (_, T_STOP) => break,
                (1, T_I64) => offset = Some(self.zigzag()?),
                (2, T_I32) => size = Some(self.zigzag()? as i32),
                (3, T_I64) => first = Some(self.zigzag()?),
                (_, t) => self.skip(t)?,
            }
            last = id;
        }
        Ok(PageLocation {
            offset: offset.ok_or(OffsetIndexError("page offset missing"))?,
            compressed_page_size: size.ok_or(OffsetIndexError("page size missing"))?,
            first_row_index: first.ok_or(OffsetIndexError("first row missing"))?,
        })
    }
}

/// Decodes one column chunk's serialized `OffsetIndex`.
pub fn decode(buf: &[u8]) -> R<OffsetIndexMetaData> {
    let mut c = Compact { buf };
    let mut pages = None;
    let mut last = 0;
    loop {
        let (id, ty) = c.field(last)?;
        match (id, ty) {
            (_, T_STOP) => break,
            (1, T_LIST) => {
                let (n, et) = c.list_header()?;
                if et != T_STRUCT {
                    return Err(OffsetIndexError("page locations are not structs"));
                }
                pages = Some((0..n).map(|_| c.page_location()).collect::<R<Vec<_>>>()?);
            }
            (_, t) => c.skip(t)?,
        }
        last = id;
    }
    Ok(OffsetIndexMetaData {
        page_locations: pages.ok_or(OffsetIndexError("page locations missing"))?,
        unencoded_byte_array_data_bytes: None,
    })
}
