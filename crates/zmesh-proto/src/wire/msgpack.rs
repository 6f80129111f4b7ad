//! Provides the few low-level MessagePack reads the event codec needs: markers, lengths,
//! strings and integers read from a byte slice, and an allocation-free `skip_value` that
//! finds where one value ends without decoding it.
//!
//! Everything here works on untrusted bytes: lengths read off the wire are checked against
//! the bytes actually present before anything is sliced, nothing is pre-allocated from a
//! length, and nesting is walked iteratively so deep input cannot overflow the stack.

use super::DecodeError;

/// A read position over a borrowed byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes read so far: the offset of the next value in the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Reads an array header; `None` (position unchanged) when the next value is not an array.
    pub fn array_len(&mut self) -> Result<Option<u64>, DecodeError> {
        self.container_len(0x90, 0xdc, 0xdd)
    }

    /// Reads a map header; `None` (position unchanged) when the next value is not a map.
    pub fn map_len(&mut self) -> Result<Option<u64>, DecodeError> {
        self.container_len(0x80, 0xde, 0xdf)
    }

    /// Reads a container header in its fix (`fix..=fix + 15`), 16-bit or 32-bit form.
    fn container_len(
        &mut self,
        fix: u8,
        wide16: u8,
        wide32: u8,
    ) -> Result<Option<u64>, DecodeError> {
        let m = self.peek()?;
        let len = if (fix..=fix + 0x0f).contains(&m) {
            self.pos += 1;
            u64::from(m & 0x0f)
        } else if m == wide16 {
            self.pos += 1;
            self.be(2)?
        } else if m == wide32 {
            self.pos += 1;
            self.be(4)?
        } else {
            return Ok(None);
        };
        Ok(Some(len))
    }

    /// Reads a msgpack str; `None` (position unchanged) when the next value is not a str.
    pub fn str(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.str_bytes()? {
            Some(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| DecodeError::InvalidUtf8),
            None => Ok(None),
        }
    }

    /// Reads a str's bytes without checking that they are UTF-8 (`None` if the next value
    /// is not a str), for comparing against known ASCII names before paying for the check.
    pub fn str_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let m = self.peek()?;
        let len = match m {
            0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xda => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdb => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    /// Reads a non-negative integer; `None` (position unchanged) for any other value,
    /// including negative integers.
    pub fn uint(&mut self) -> Result<Option<u64>, DecodeError> {
        let m = self.peek()?;
        let value = match m {
            0x00..=0x7f => {
                self.pos += 1;
                u64::from(m)
            }
            0xcc..=0xcf => {
                self.pos += 1;
                self.be(1 << (m - 0xcc))?
            }
            0xd0..=0xd3 => {
                let start = self.pos;
                self.pos += 1;
                let width = 1usize << (m - 0xd0);
                let raw = self.be(width)?;
                // Sign-extend, then accept only non-negative values.
                let shift = 64 - 8 * width as u32;
                let signed = ((raw << shift) as i64) >> shift;
                if signed < 0 {
                    self.pos = start;
                    return Ok(None);
                }
                signed as u64
            }
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    /// Skips one complete value and returns the slice it occupied.
    pub fn value(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        self.pos = skip_value(self.buf, self.pos)?;
        Ok(&self.buf[start..self.pos])
    }
}

/// Kind of the msgpack value starting at `buf[0]`, as far as message ids care.
pub fn is_id_kind(value: &[u8]) -> bool {
    matches!(
        value.first(),
        Some(0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 | 0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6)
    )
}

/// Returns the position just past the msgpack value that starts at `pos`.
///
/// Iterative: containers add their element count to a pending counter instead of recursing,
/// so adversarial nesting costs one byte per level and never touches the stack. Every length
/// is checked against the buffer before it is used, so truncated input is `Truncated`, never
/// a panic or an out-of-bounds slice.
pub fn skip_value(buf: &[u8], mut pos: usize) -> Result<usize, DecodeError> {
    let mut pending: u64 = 1;
    let read_be = |pos: usize, n: usize| -> Result<u64, DecodeError> {
        let bytes = buf.get(pos..pos + n).ok_or(DecodeError::Truncated)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = *buf.get(pos).ok_or(DecodeError::Truncated)?;
        pos += 1;
        // `skip` is the payload length that follows the marker (and any length field).
        let skip: u64 = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => {
                pending = pending.saturating_add(2 * u64::from(marker & 0x0f));
                0
            }
            0x90..=0x9f => {
                pending = pending.saturating_add(u64::from(marker & 0x0f));
                0
            }
            0xa0..=0xbf => u64::from(marker & 0x1f),
            0xc1 => return Err(DecodeError::ReservedMarker),
            0xc4 | 0xd9 => {
                let n = read_be(pos, 1)?;
                pos += 1;
                n
            }
            0xc5 | 0xda => {
                let n = read_be(pos, 2)?;
                pos += 2;
                n
            }
            0xc6 | 0xdb => {
                let n = read_be(pos, 4)?;
                pos += 4;
                n
            }
            // ext 8/16/32: length, then a type byte, then the data.
            0xc7 => {
                let n = read_be(pos, 1)?;
                pos += 1;
                n + 1
            }
            0xc8 => {
                let n = read_be(pos, 2)?;
                pos += 2;
                n + 1
            }
            0xc9 => {
                let n = read_be(pos, 4)?;
                pos += 4;
                n + 1
            }
            0xca => 4,
            0xcb => 8,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xce | 0xd2 => 4,
            0xcf | 0xd3 => 8,
            // fixext 1/2/4/8/16: a type byte plus the data.
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xdc => {
                let n = read_be(pos, 2)?;
                pos += 2;
                pending = pending.saturating_add(n);
                0
            }
            0xdd => {
                let n = read_be(pos, 4)?;
                pos += 4;
                pending = pending.saturating_add(n);
                0
            }
            0xde => {
                let n = read_be(pos, 2)?;
                pos += 2;
                pending = pending.saturating_add(2 * n);
                0
            }
            0xdf => {
                let n = read_be(pos, 4)?;
                pos += 4;
                pending = pending.saturating_add(2 * n);
                0
            }
        };
        let end = (pos as u64).saturating_add(skip);
        if end > buf.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        pos = end as usize;
    }
    Ok(pos)
}

/// Appends a msgpack str header and the text.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len < 65_536 {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// Bytes [`write_str`] appends for a str of `len` bytes.
pub fn str_encoded_len(len: usize) -> usize {
    len + match len {
        0..32 => 1,
        32..256 => 2,
        256..65_536 => 3,
        _ => 5,
    }
}

/// Bytes [`write_uint`] appends for `v`.
pub fn uint_encoded_len(v: u64) -> usize {
    match v {
        0..128 => 1,
        128..256 => 2,
        256..65_536 => 3,
        65_536..0x1_0000_0000 => 5,
        _ => 9,
    }
}

/// Appends a non-negative integer in its smallest encoding (as msgpack-python does).
pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v < 256 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65_536 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < (1 << 32) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a map header for `n` entries.
pub fn write_map_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
}

/// Appends a msgpack bin header and the bytes.
pub fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    let len = b.len();
    if len < 256 {
        out.extend_from_slice(&[0xc4, len as u8]);
    } else if len < 65_536 {
        out.push(0xc5);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encoding into a Vec cannot fail");
        out
    }

    #[test]
    fn skip_matches_rmpv_for_every_kind() {
        use rmpv::Value as V;
        let values = vec![
            V::Nil,
            V::Boolean(true),
            V::from(5),
            V::from(-3),
            V::from(300),
            V::from(-70_000),
            V::from(u64::MAX),
            V::F32(1.5),
            V::F64(2.5),
            V::from("x".repeat(40)),
            V::from("y".repeat(300)),
            V::Binary(vec![1; 70_000]),
            V::Array(vec![V::from(1), V::Array(vec![V::Nil; 20])]),
            V::Map(vec![(V::from("k"), V::Map(vec![(V::from(1), V::from(2))]))]),
            V::Ext(3, vec![1, 2, 3, 4]),
            V::Ext(3, vec![9; 3]),
            V::Ext(3, vec![9; 300]),
        ];
        for v in values {
            let bytes = enc(&v);
            assert_eq!(skip_value(&bytes, 0), Ok(bytes.len()), "value {v:?}");
            for cut in 0..bytes.len() {
                assert_eq!(skip_value(&bytes[..cut], 0), Err(DecodeError::Truncated));
            }
        }
    }

    #[test]
    fn huge_declared_lengths_are_truncation_not_panics() {
        assert_eq!(
            skip_value(&[0xdd, 0xff, 0xff, 0xff, 0xff], 0),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            skip_value(&[0xc6, 0xff, 0xff, 0xff, 0xff, 1], 0),
            Err(DecodeError::Truncated)
        );
        let nested = [0xdf, 0xff, 0xff, 0xff, 0xff].repeat(10_000);
        assert_eq!(skip_value(&nested, 0), Err(DecodeError::Truncated));
        assert_eq!(skip_value(&[0xc1], 0), Err(DecodeError::ReservedMarker));
    }

    #[test]
    fn uint_accepts_non_negative_signed_encodings_only() {
        assert_eq!(Cursor::new(&[0xd0, 0x05]).uint(), Ok(Some(5)));
        let mut c = Cursor::new(&[0xd0, 0xff]);
        assert_eq!(c.uint(), Ok(None));
        assert_eq!(c.position(), 0);
        assert_eq!(
            Cursor::new(&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]).uint(),
            Ok(Some(1 << 32))
        );
    }

    #[test]
    fn writers_match_rmpv_encodings() {
        for n in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, n);
            assert_eq!(out, enc(&rmpv::Value::from(n)));
        }
        for len in [0usize, 31, 32, 255, 256, 70_000] {
            let s = "a".repeat(len);
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, enc(&rmpv::Value::from(s.as_str())));
            let mut out = Vec::new();
            write_bin(&mut out, s.as_bytes());
            assert_eq!(out, enc(&rmpv::Value::Binary(s.into_bytes())));
        }
    }
}
