//! A minimal, bounds-checked reader of FlatBuffers binaries (the encoding of SOCI's zTOC), for
//! hostile input: every offset, length and field read is checked against the buffer, and a
//! bad one is a `String` naming what was being read, never a panic or an out-of-bounds read.
//! Only what the zTOC schema uses: tables, scalars, strings, byte vectors and vectors of
//! tables or strings (no structs, unions or nested buffers). Uses nothing else of `layer/`.
//!
//! Layout (FlatBuffers' own): the buffer starts with the u32 offset of the root table; a
//! table starts with an i32 whose subtraction from the table's position gives its vtable; a
//! vtable is u16 vtable size, u16 table size, then one u16 per field (0: field absent, else
//! its offset in the table). Reference fields hold a u32 offset relative to the field's own
//! position; a string or vector is a u32 length followed by its elements. All little endian.

/// Largest vector length accepted (elements), whatever the buffer claims.
const MAX_LEN: u32 = 1 << 28;

/// A table inside a buffer.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vlen: usize,
}

fn u32_at(buf: &[u8], at: usize, what: &str) -> Result<u32, String> {
    buf.get(at..at.wrapping_add(4))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("{what}: offset {at} beyond the buffer"))
}

fn u16_at(buf: &[u8], at: usize, what: &str) -> Result<u16, String> {
    buf.get(at..at.wrapping_add(2))
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| format!("{what}: offset {at} beyond the buffer"))
}

/// The root table of `buf`.
pub(crate) fn root(buf: &[u8]) -> Result<Table<'_>, String> {
    let at = u32_at(buf, 0, "root offset")? as usize;
    Table::at(buf, at, "root table")
}

/// Follow the u32 reference stored at `at` (relative to `at`).
fn follow(buf: &[u8], at: usize, what: &str) -> Result<usize, String> {
    let rel = u32_at(buf, at, what)? as usize;
    at.checked_add(rel)
        .filter(|&p| p < buf.len())
        .ok_or_else(|| format!("{what}: reference beyond the buffer"))
}

impl<'a> Table<'a> {
    fn at(buf: &'a [u8], pos: usize, what: &str) -> Result<Table<'a>, String> {
        let soff = u32_at(buf, pos, what)? as i32;
        let vtable = (pos as i64)
            .checked_sub(i64::from(soff))
            .filter(|&v| v >= 0)
            .ok_or_else(|| format!("{what}: vtable before the buffer"))?
            as usize;
        let vlen = u16_at(buf, vtable, what)? as usize;
        if vlen < 4 || !vlen.is_multiple_of(2) || vtable + vlen > buf.len() {
            return Err(format!("{what}: bad vtable (size {vlen})"));
        }
        let tlen = u16_at(buf, vtable + 2, what)? as usize;
        if pos + tlen.max(4) > buf.len() {
            return Err(format!("{what}: table runs past the buffer"));
        }
        Ok(Table {
            buf,
            pos,
            vtable,
            vlen,
        })
    }

    /// Position of field `id` in the buffer, `None` when absent.
    fn field(&self, id: usize, size: usize, what: &str) -> Result<Option<usize>, String> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vlen {
            return Ok(None);
        }
        let off = u16_at(self.buf, self.vtable + slot, what)? as usize;
        if off == 0 {
            return Ok(None);
        }
        let at = self.pos + off;
        if at + size > self.buf.len() {
            return Err(format!("{what}: field beyond the buffer"));
        }
        Ok(Some(at))
    }

    fn scalar<const N: usize>(&self, id: usize, what: &str) -> Result<Option<[u8; N]>, String> {
        Ok(self
            .field(id, N, what)?
            .and_then(|at| self.buf.get(at..at + N))
            .and_then(|s| s.try_into().ok()))
    }

    pub(crate) fn i64(&self, id: usize, default: i64, what: &str) -> Result<i64, String> {
        Ok(self
            .scalar::<8>(id, what)?
            .map_or(default, i64::from_le_bytes))
    }

    pub(crate) fn i32(&self, id: usize, default: i32, what: &str) -> Result<i32, String> {
        Ok(self
            .scalar::<4>(id, what)?
            .map_or(default, i32::from_le_bytes))
    }

    pub(crate) fn u32(&self, id: usize, default: u32, what: &str) -> Result<u32, String> {
        Ok(self
            .scalar::<4>(id, what)?
            .map_or(default, u32::from_le_bytes))
    }

    pub(crate) fn u8(&self, id: usize, default: u8, what: &str) -> Result<u8, String> {
        Ok(self.scalar::<1>(id, what)?.map_or(default, |b| b[0]))
    }

    /// A sub-table field.
    pub(crate) fn table(&self, id: usize, what: &str) -> Result<Option<Table<'a>>, String> {
        match self.field(id, 4, what)? {
            None => Ok(None),
            Some(at) => Table::at(self.buf, follow(self.buf, at, what)?, what).map(Some),
        }
    }

    /// A vector field: (position of the first element, length).
    fn vector(&self, id: usize, elem: usize, what: &str) -> Result<Option<(usize, usize)>, String> {
        let Some(at) = self.field(id, 4, what)? else {
            return Ok(None);
        };
        let v = follow(self.buf, at, what)?;
        let n = u32_at(self.buf, v, what)?;
        if n > MAX_LEN {
            return Err(format!("{what}: {n} elements is too many"));
        }
        let start = v + 4;
        let end = (n as usize)
            .checked_mul(elem)
            .and_then(|b| start.checked_add(b))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("{what}: vector of {n} runs past the buffer"))?;
        debug_assert!(end >= start);
        Ok(Some((start, n as usize)))
    }

    /// A string field as bytes (absent: empty).
    pub(crate) fn bytes_field(&self, id: usize, what: &str) -> Result<&'a [u8], String> {
        Ok(match self.vector(id, 1, what)? {
            None => &[],
            Some((s, n)) => &self.buf[s..s + n],
        })
    }

    /// A string field (absent: empty); not UTF-8 is an error.
    pub(crate) fn str(&self, id: usize, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes_field(id, what)?).map_err(|_| format!("{what}: not UTF-8"))
    }

    /// A vector of tables (absent: empty).
    pub(crate) fn tables(&self, id: usize, what: &str) -> Result<Vec<Table<'a>>, String> {
        let Some((s, n)) = self.vector(id, 4, what)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|k| Table::at(self.buf, follow(self.buf, s + 4 * k, what)?, what))
            .collect()
    }

    /// A vector of strings (absent: empty).
    pub(crate) fn strs(&self, id: usize, what: &str) -> Result<Vec<&'a str>, String> {
        let Some((s, n)) = self.vector(id, 4, what)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|k| {
                let p = follow(self.buf, s + 4 * k, what)?;
                let len = u32_at(self.buf, p, what)? as usize;
                let b = self
                    .buf
                    .get(p + 4..(p + 4).saturating_add(len))
                    .ok_or_else(|| format!("{what}: string runs past the buffer"))?;
                std::str::from_utf8(b).map_err(|_| format!("{what}: not UTF-8"))
            })
            .collect()
    }
}

/// A small FlatBuffers writer for tests (strata only reads zTOCs; the unit tests and the
/// integration tests' SOCI writer build them with this). Builds back to front like the
/// official builders: children first, then the table that refers to them.
#[doc(hidden)]
pub mod build {
    /// A reference to something already written (its distance from the buffer's end).
    #[derive(Clone, Copy)]
    pub struct Ref(usize);

    /// One table field value.
    pub enum Field {
        I64(i64),
        I32(i32),
        U32(u32),
        U8(u8),
        Ref(Ref),
    }

    /// The buffer under construction (stored reversed: `data[0]` is the last byte).
    #[derive(Default)]
    pub struct Builder {
        rev: Vec<u8>,
    }

    impl Builder {
        fn len(&self) -> usize {
            self.rev.len()
        }

        fn pad_to(&mut self, align: usize, extra: usize) {
            while !(self.rev.len() + extra).is_multiple_of(align) {
                self.rev.push(0);
            }
        }

        /// Prepend bytes (given in forward order).
        fn prepend(&mut self, b: &[u8]) {
            self.rev.extend(b.iter().rev());
        }

        fn prepend_ref(&mut self, r: Ref) {
            self.pad_to(4, 0);
            let rel = (self.len() + 4 - r.0) as u32;
            self.prepend(&rel.to_le_bytes());
        }

        pub fn bytes(&mut self, b: &[u8]) -> Ref {
            self.pad_to(4, b.len() + 1);
            self.rev.push(0);
            self.prepend(b);
            self.prepend(&(b.len() as u32).to_le_bytes());
            Ref(self.len())
        }

        /// A vector of bytes (no trailing NUL needed, but harmless).
        pub fn byte_vec(&mut self, b: &[u8]) -> Ref {
            self.pad_to(4, b.len());
            self.prepend(b);
            self.prepend(&(b.len() as u32).to_le_bytes());
            Ref(self.len())
        }

        pub fn refs(&mut self, items: &[Ref]) -> Ref {
            self.pad_to(4, 0);
            for r in items.iter().rev() {
                self.prepend_ref(*r);
            }
            self.prepend(&(items.len() as u32).to_le_bytes());
            Ref(self.len())
        }

        /// A table with `fields[i]` as field `i` (`None`: absent).
        pub fn table(&mut self, fields: &[Option<Field>]) -> Ref {
            // Table body: scalars and references, 8-byte aligned, after the soffset.
            self.pad_to(8, 0);
            let mut offs = vec![0u16; fields.len()];
            let end = self.len();
            for (i, f) in fields.iter().enumerate().rev() {
                match f {
                    None => {}
                    Some(Field::I64(v)) => {
                        self.pad_to(8, 8);
                        self.prepend(&v.to_le_bytes());
                    }
                    Some(Field::I32(v)) => {
                        self.pad_to(4, 4);
                        self.prepend(&v.to_le_bytes());
                    }
                    Some(Field::U32(v)) => {
                        self.pad_to(4, 4);
                        self.prepend(&v.to_le_bytes());
                    }
                    Some(Field::U8(v)) => self.prepend(&[*v]),
                    Some(Field::Ref(r)) => self.prepend_ref(*r),
                }
                if f.is_some() {
                    offs[i] = self.len() as u16; // fixed up below
                }
            }
            self.pad_to(4, 4);
            let table = self.len() + 4;
            let tsize = (table - end) as u16;
            for o in offs.iter_mut().filter(|o| **o != 0) {
                *o = (table - *o as usize) as u16;
            }
            // vtable directly before the table: soffset = table - vtable > 0.
            let vsize = (4 + 2 * fields.len()) as u16;
            let soff = i32::from(vsize);
            self.prepend(&soff.to_le_bytes());
            let mut vt = Vec::new();
            vt.extend_from_slice(&vsize.to_le_bytes());
            vt.extend_from_slice(&tsize.to_le_bytes());
            for o in &offs {
                vt.extend_from_slice(&o.to_le_bytes());
            }
            self.prepend(&vt);
            Ref(table)
        }

        /// Finish with `root` as the root table; returns the buffer.
        pub fn finish(mut self, root: Ref) -> Vec<u8> {
            self.pad_to(8, 4);
            self.prepend_ref(root);
            self.rev.reverse();
            self.rev
        }
    }
}
