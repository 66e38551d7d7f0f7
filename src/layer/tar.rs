//! Streaming tar reader that reports where each member's content starts.
//!
//! Reads ustar, GNU (`L`/`K` long names, base-256 numbers) and PAX (`x` per entry, `g` global:
//! path, linkpath, size, mtime with fractions, uid, gid, `SCHILY.xattr.*`) from any `Read`,
//! keeping only one header's metadata in memory (capped at [`MAX_META`]). Content is skipped,
//! never buffered: a size claimed beyond the end of the stream is reported as
//! [`Error::Truncated`] when the stream runs out. GNU sparse members are refused. The reader
//! yields members in archive order; duplicate paths are the caller's business (see
//! `entry::EntryTable`: the last one wins). Uses only `entry` (it yields `RawEntry`s) and the
//! layer error type.

use super::entry::{RawEntry, Timestamp};
use super::error::{Error, Result};
use std::io::{ErrorKind, Read};

/// Largest PAX / GNU long-name header body accepted.
pub const MAX_META: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// Pending overrides from PAX and GNU headers.
#[derive(Default, Clone)]
struct Overrides {
    records: Vec<(String, Vec<u8>)>,
}

impl Overrides {
    fn set(&mut self, key: String, value: Vec<u8>) {
        self.records.retain(|(k, _)| *k != key);
        self.records.push((key, value));
    }
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Streaming tar reader; see the module docs.
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    /// Content bytes (plus padding) of the last yielded entry still to skip.
    skip: u64,
    last_path: String,
    last_size: u64,
    last_offset: u64,
    global: Overrides,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            skip: 0,
            last_path: String::new(),
            last_size: 0,
            last_offset: 0,
            global: Overrides::default(),
            done: false,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader (positioned after the end-of-archive block, or wherever reading
    /// stopped).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        offset: self.pos + n as u64,
                        source,
                    })
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn skip_content(&mut self) -> Result<()> {
        let mut buf = [0u8; 8192];
        while self.skip > 0 {
            let want = self.skip.min(buf.len() as u64) as usize;
            let n = self.read_full(&mut buf[..want])?;
            if n == 0 {
                return Err(Error::Truncated {
                    path: self.last_path.clone(),
                    offset: self.last_offset,
                    size: self.last_size,
                    end: self.pos,
                });
            }
            self.skip -= n as u64;
        }
        Ok(())
    }

    /// Read one 512-byte block; `None` at a clean end of stream.
    fn read_block(&mut self, block: &mut [u8; 512]) -> Result<bool> {
        let start = self.pos;
        let n = self.read_full(block)?;
        if n == 0 {
            return Ok(false);
        }
        if n < block.len() {
            return Err(Error::Header {
                offset: start,
                reason: format!("stream ends inside a header ({n} of 512 bytes)"),
            });
        }
        Ok(true)
    }

    /// Read a metadata body (PAX or long name) of `size` bytes plus padding.
    fn read_meta(&mut self, kind: &'static str, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size > MAX_META {
            return Err(Error::MetaTooLarge {
                kind,
                offset,
                size,
                limit: MAX_META,
            });
        }
        let mut body = vec![0u8; size as usize];
        let n = self.read_full(&mut body)?;
        if (n as u64) < size {
            return Err(Error::Truncated {
                path: format!("<{kind} header>"),
                offset,
                size,
                end: self.pos,
            });
        }
        self.last_path = format!("<{kind} header>");
        self.last_offset = offset;
        self.last_size = size;
        self.skip = pad(size);
        self.skip_content()?;
        Ok(body)
    }

    /// The next member, skipping the previous member's content. `None` after the
    /// end-of-archive block (or at a clean end of stream on a header boundary).
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>> {
        self.skip_content()?;
        if self.done {
            return Ok(None);
        }
        let mut local = Overrides::default();
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut first_header: Option<u64> = None;
        let mut block = [0u8; 512];
        loop {
            let hoff = self.pos;
            if !self.read_block(&mut block)? {
                if first_header.is_some() {
                    return Err(Error::Header {
                        offset: hoff,
                        reason: "stream ends after a PAX or long-name header".into(),
                    });
                }
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                // End-of-archive marker (the second zero block and padding are left unread).
                self.done = true;
                return Ok(None);
            }
            let header_offset = *first_header.get_or_insert(hoff);
            check_checksum(&block, hoff)?;
            let typeflag = block[156];
            let hdr_size = numeric(&block[124..136], hoff, "size")?;
            let size = u64::try_from(hdr_size).map_err(|_| Error::Header {
                offset: hoff,
                reason: "negative size".into(),
            })?;
            match typeflag {
                b'x' | b'g' => {
                    let kind = if typeflag == b'x' {
                        "PAX"
                    } else {
                        "PAX global"
                    };
                    let body = self.read_meta(kind, hoff, size)?;
                    let target = if typeflag == b'x' {
                        &mut local
                    } else {
                        &mut self.global
                    };
                    parse_pax(&body, hoff, target)?;
                    continue;
                }
                b'L' | b'K' => {
                    let kind = if typeflag == b'L' {
                        "GNU long name"
                    } else {
                        "GNU long link"
                    };
                    let body = self.read_meta(kind, hoff, size)?;
                    let s = utf8(cstr(&body), hoff, kind)?;
                    if typeflag == b'L' {
                        long_name = Some(s);
                    } else {
                        long_link = Some(s);
                    }
                    continue;
                }
                _ => {}
            }
            return self
                .finish_entry(
                    &block,
                    hoff,
                    header_offset,
                    size,
                    local,
                    long_name,
                    long_link,
                )
                .map(Some);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_entry(
        &mut self,
        block: &[u8; 512],
        hoff: u64,
        header_offset: u64,
        hdr_size: u64,
        local: Overrides,
        long_name: Option<String>,
        long_link: Option<String>,
    ) -> Result<RawEntry> {
        let typeflag = block[156];
        let ustar = &block[257..263] == b"ustar\0";
        let mut path = utf8(cstr(&block[0..100]), hoff, "name")?;
        if ustar {
            let prefix = utf8(cstr(&block[345..500]), hoff, "prefix")?;
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        if let Some(n) = long_name {
            path = n;
        }
        let mut link = utf8(cstr(&block[157..257]), hoff, "linkname")?;
        if let Some(l) = long_link {
            link = l;
        }
        let mut e = RawEntry {
            typeflag,
            mode: (numeric(&block[100..108], hoff, "mode")? & 0o7777_7777) as u32,
            uid: nonneg(numeric(&block[108..116], hoff, "uid")?, hoff, "uid")?,
            gid: nonneg(numeric(&block[116..124], hoff, "gid")?, hoff, "gid")?,
            size: hdr_size,
            mtime: Timestamp {
                sec: i64::try_from(numeric(&block[136..148], hoff, "mtime")?).map_err(|_| {
                    Error::Header {
                        offset: hoff,
                        reason: "mtime out of range".into(),
                    }
                })?,
                nsec: 0,
            },
            header_offset,
            ..RawEntry::default()
        };
        if ustar || &block[257..263] == b"ustar " {
            e.dev_major = nonneg(
                numeric(&block[329..337], hoff, "devmajor")?,
                hoff,
                "devmajor",
            )?;
            e.dev_minor = nonneg(
                numeric(&block[337..345], hoff, "devminor")?,
                hoff,
                "devminor",
            )?;
        }
        // Global records first, then per-entry ones override them.
        for ov in [&self.global, &local] {
            for (key, value) in &ov.records {
                apply_pax(&mut e, &mut path, &mut link, key, value, hoff)?;
            }
        }
        e.path = path;
        e.link = link;
        if typeflag == b'S' || local.get("GNU.sparse.major").is_some() {
            return Err(Error::Sparse {
                path: e.path,
                offset: hoff,
            });
        }
        if matches!(typeflag, b'M' | b'N') {
            return Err(Error::Header {
                offset: hoff,
                reason: format!("unsupported GNU type {:?} for {}", typeflag as char, e.path),
            });
        }
        // Header-only types carry no content whatever the size field says (as Go and GNU tar).
        if matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            e.size = 0;
        }
        e.offset = self.pos;
        self.last_path = e.path.clone();
        self.last_offset = e.offset;
        self.last_size = e.size;
        self.skip = e.size.saturating_add(pad(e.size));
        Ok(e)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn utf8(b: &[u8], offset: u64, field: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::Header {
        offset,
        reason: format!(
            "{field} {:?} is not UTF-8",
            String::from_utf8_lossy(b).into_owned()
        ),
    })
}

fn nonneg(v: i128, offset: u64, field: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Header {
        offset,
        reason: format!("{field} out of range"),
    })
}

/// Octal (NUL/space padded) or GNU base-256 numeric field.
pub(super) fn numeric(field: &[u8], offset: u64, name: &str) -> Result<i128> {
    let err = |reason: &str| Error::Header {
        offset,
        reason: format!("{name} field: {reason}"),
    };
    let Some(&first) = field.first() else {
        return Ok(0);
    };
    if first & 0x80 != 0 {
        // Base-256 (GNU): big-endian two's complement; the first byte's top bit is the marker.
        let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err(err("base-256 value too large"));
            }
            x = (x << 8) | c as u64;
        }
        if x >> 63 != 0 {
            return Err(err("base-256 value too large"));
        }
        return Ok(if inv == 0xff {
            !(x as i64) as i128
        } else {
            x as i128
        });
    }
    let s = cstr(field);
    let s: Vec<u8> = s.iter().copied().filter(|&c| c != b' ').collect();
    if s.is_empty() {
        return Ok(0);
    }
    let mut v: i128 = 0;
    for c in s {
        if !(b'0'..=b'7').contains(&c) {
            return Err(err("not an octal number"));
        }
        v = v * 8 + (c - b'0') as i128;
        if v > i64::MAX as i128 {
            return Err(err("octal value too large"));
        }
    }
    Ok(v)
}

pub(super) fn check_checksum(block: &[u8; 512], offset: u64) -> Result<()> {
    let want = numeric(&block[148..156], offset, "checksum")?;
    let mut unsigned: i128 = 0;
    let mut signed: i128 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as i128;
        signed += (b as i8) as i128;
    }
    if want != unsigned && want != signed {
        return Err(Error::Header {
            offset,
            reason: format!("checksum mismatch (header says {want}, computed {unsigned})"),
        });
    }
    Ok(())
}

/// Parse PAX records `"<len> <key>=<value>\n"` into `out`.
fn parse_pax(body: &[u8], offset: u64, out: &mut Overrides) -> Result<()> {
    let err = |reason: String| Error::Pax { offset, reason };
    let mut rest = body;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| err("record without a length".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("record length is not a number".into()))?;
        if len <= sp + 1 || len > rest.len() {
            return Err(err(format!("record length {len} out of bounds")));
        }
        let rec = &rest[sp + 1..len];
        rest = &rest[len..];
        let Some(rec) = rec.strip_suffix(b"\n") else {
            return Err(err("record does not end in a newline".into()));
        };
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| err("record without '='".into()))?;
        let key = String::from_utf8(rec[..eq].to_vec())
            .map_err(|_| err("record key is not UTF-8".into()))?;
        out.set(key, rec[eq + 1..].to_vec());
    }
    Ok(())
}

fn pax_str(value: &[u8], key: &str, offset: u64) -> Result<String> {
    String::from_utf8(value.to_vec()).map_err(|_| Error::Pax {
        offset,
        reason: format!("{key} is not UTF-8"),
    })
}

fn pax_u64(value: &[u8], key: &str, offset: u64) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Pax {
            offset,
            reason: format!("{key} is not a non-negative integer"),
        })
}

/// `"<sec>[.<frac>]"`, possibly negative.
fn pax_time(value: &[u8], offset: u64) -> Result<Timestamp> {
    let err = || Error::Pax {
        offset,
        reason: "mtime is not a decimal timestamp".into(),
    };
    let s = std::str::from_utf8(value).map_err(|_| err())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let sec: i64 = whole.parse().map_err(|_| err())?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    Ok(if !neg {
        Timestamp { sec, nsec }
    } else if nsec == 0 {
        Timestamp { sec: -sec, nsec: 0 }
    } else {
        Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

fn apply_pax(
    e: &mut RawEntry,
    path: &mut String,
    link: &mut String,
    key: &str,
    value: &[u8],
    offset: u64,
) -> Result<()> {
    if value.is_empty() && !key.starts_with("SCHILY.xattr.") {
        // an empty value unsets a global record: keep the header's field; an empty xattr stays
        // an xattr with an empty value, as containerd and Docker set it (docs/layer-index.md)
        return Ok(());
    }
    match key {
        "path" => *path = pax_str(value, key, offset)?,
        "linkpath" => *link = pax_str(value, key, offset)?,
        "size" => e.size = pax_u64(value, key, offset)?,
        "uid" => e.uid = pax_u64(value, key, offset)?,
        "gid" => e.gid = pax_u64(value, key, offset)?,
        "mtime" => e.mtime = pax_time(value, offset)?,
        "SCHILY.devmajor" => e.dev_major = pax_u64(value, key, offset)?,
        "SCHILY.devminor" => e.dev_minor = pax_u64(value, key, offset)?,
        k if k.starts_with("GNU.sparse.") => {
            return Err(Error::Sparse {
                path: path.clone(),
                offset,
            })
        }
        k => {
            if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                e.xattrs.retain(|(n, _)| n != name);
                e.xattrs.push((name.to_string(), value.to_vec()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0", 0, "m").unwrap(), 0o644);
        assert_eq!(numeric(b"  755 \0\0", 0, "m").unwrap(), 0o755);
        assert_eq!(numeric(b"\0\0\0\0", 0, "m").unwrap(), 0);
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[4..12].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(numeric(&b, 0, "size").unwrap(), 10 << 30);
        let neg = [0xffu8; 8];
        assert_eq!(numeric(&neg, 0, "mtime").unwrap(), -1);
        assert!(numeric(b"12a", 0, "m").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000.123456789123", 0).unwrap(),
            Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789
            }
        );
        assert_eq!(
            pax_time(b"-1.5", 0).unwrap(),
            Timestamp {
                sec: -2,
                nsec: 500_000_000
            }
        );
        assert!(pax_time(b"1.x", 0).is_err());
    }

    #[test]
    fn pax_records_parse() {
        let mut o = Overrides::default();
        parse_pax(b"11 path=ab\n21 SCHILY.xattr.a=\x00\x01\n", 0, &mut o).unwrap();
        assert_eq!(o.get("path"), Some(&b"ab"[..]));
        assert_eq!(o.get("SCHILY.xattr.a"), Some(&b"\x00\x01"[..]));
        assert!(parse_pax(b"99 path=ab\n", 0, &mut o).is_err());
        assert!(parse_pax(b"x path=ab\n", 0, &mut o).is_err());
    }

    #[test]
    fn empty_pax_values() {
        let mut e = RawEntry {
            uid: 7,
            ..RawEntry::default()
        };
        let (mut path, mut link) = ("p".to_string(), String::new());
        // an empty xattr value is an xattr with an empty value (as containerd/Docker set it)
        apply_pax(&mut e, &mut path, &mut link, "SCHILY.xattr.user.e", b"", 0).unwrap();
        assert_eq!(e.xattrs, vec![("user.e".to_string(), Vec::new())]);
        // an empty value of any other key keeps the header's field
        apply_pax(&mut e, &mut path, &mut link, "uid", b"", 0).unwrap();
        apply_pax(&mut e, &mut path, &mut link, "path", b"", 0).unwrap();
        assert_eq!((e.uid, path.as_str()), (7, "p"));
    }
}
