//! zran-style random access into gzip layers (single- or multi-member, e.g. eStargz).
//!
//! [`GzipIndexer`] inflates the compressed stream once (read through `codec::IndexReader`, so
//! the tar reader can parse the uncompressed bytes at the same time), in bounded memory: a
//! 64 KiB input and a 64 KiB output buffer plus zlib's 32 KiB window. Every SPAN bytes of output
//! it records a checkpoint at a deflate block boundary (compressed byte offset, unused bit count,
//! the 32 KiB window, trimmed to the bytes the checkpoint's matches use (`trim.rs`) and
//! compressed with deflate) or, for free, at the start of a gzip member (no
//! window needed), closer together among small files (`SpanHasher::spacing`). The `Gzip` codec restarts the inflater from a
//! checkpoint (`inflatePrime` + `inflateSetDictionary`), crosses member boundaries, stops each
//! span at its known length and verifies it. Implements the `codec.rs` traits; uses `seek.rs`,
//! `spans.rs`, `trim.rs` and the layer error type. The only `unsafe` in `layer/` is the small
//! [`Inflater`] wrapper around the libz-rs-sys C API.

use super::codec::{self, Codec, Indexer};
use super::error::{Error, Result};
use super::seek::{Compression, SeekTable, SpanPlan, Window};
use super::spans::SpanHasher;
use super::trim::Pending;
use libz_rs_sys as z;
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;

const BUF: usize = 64 << 10;
/// gzip-only window bits (15 + 16): refuse zlib streams and raw deflate.
const GZIP_BITS: i32 = 15 + 16;
const RAW_BITS: i32 = -15;

/// Safe wrapper over a zlib inflate stream.
pub(crate) struct Inflater {
    // Boxed: zlib keeps a pointer back to the stream, so it must not move after init.
    strm: Box<z::z_stream>,
    raw: bool,
}

/// Result of one inflate call.
pub(crate) struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub code: i32,
}

impl Inflater {
    pub(crate) fn new(raw: bool) -> std::result::Result<Self, String> {
        let mut strm = Box::new(z::z_stream::default());
        let bits = if raw { RAW_BITS } else { GZIP_BITS };
        // SAFETY: `strm` is a valid, default-initialised z_stream (allocator fields set by
        // Default), boxed so its address is stable; the version string is zlib's own.
        let code = unsafe {
            z::inflateInit2_(
                &mut *strm,
                bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if code != z::Z_OK {
            return Err(format!("inflateInit2 failed ({code})"));
        }
        Ok(Inflater { strm, raw })
    }

    pub(crate) fn is_raw(&self) -> bool {
        self.raw
    }

    /// Start a new gzip member with the same stream.
    pub(crate) fn reset_gzip(&mut self) -> std::result::Result<(), String> {
        // SAFETY: the stream was initialised by `new` and not ended.
        let code = unsafe { z::inflateReset2(&mut *self.strm, GZIP_BITS) };
        self.raw = false;
        if code != z::Z_OK {
            return Err(format!("inflateReset2 failed ({code})"));
        }
        Ok(())
    }

    pub(crate) fn prime(&mut self, bits: u8, value: u8) -> std::result::Result<(), String> {
        // SAFETY: initialised stream; bits is 0..=7 (checked by callers / table validation).
        let code = unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), i32::from(value)) };
        if code != z::Z_OK {
            return Err(format!("inflatePrime failed ({code})"));
        }
        Ok(())
    }

    pub(crate) fn set_dictionary(&mut self, dict: &[u8]) -> std::result::Result<(), String> {
        if dict.is_empty() {
            return Ok(());
        }
        // SAFETY: initialised stream; `dict` is valid for `dict.len()` bytes (<= 32 KiB).
        let code =
            unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        if code != z::Z_OK {
            return Err(format!("inflateSetDictionary failed ({code})"));
        }
        Ok(())
    }

    /// The current 32 KiB (or shorter) window.
    pub(crate) fn dictionary(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 32 << 10];
        let mut len: u32 = 0;
        // SAFETY: initialised stream; `buf` is writable for 32 KiB, the maximum window.
        let code = unsafe { z::inflateGetDictionary(&*self.strm, buf.as_mut_ptr(), &mut len) };
        if code != z::Z_OK {
            return Vec::new();
        }
        buf.truncate((len as usize).min(32 << 10));
        buf
    }

    pub(crate) fn data_type(&self) -> i32 {
        self.strm.data_type
    }

    pub(crate) fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: i32) -> Step {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as u32;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as u32;
        // SAFETY: next_in/next_out point into live slices of the stated lengths for the
        // duration of the call; the pointers are cleared before the borrows end.
        let code = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = in_len - self.strm.avail_in as usize;
        let produced = out_len - self.strm.avail_out as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        Step {
            consumed,
            produced,
            code,
        }
    }

    fn message(&self, code: i32) -> String {
        if self.strm.msg.is_null() {
            return format!("inflate error {code}");
        }
        // SAFETY: zlib sets `msg` to a static NUL-terminated string or leaves it null.
        let msg = unsafe { std::ffi::CStr::from_ptr(self.strm.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new`; inflateEnd is called exactly once.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

#[derive(PartialEq, Eq)]
enum State {
    InMember,
    BetweenMembers,
    Done,
}

/// Inflating indexer that builds the gzip seek table; see the module docs.
pub struct GzipIndexer<R> {
    input: R,
    inbuf: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Compressed bytes consumed by the inflater (or skipped as trailing zeros).
    cin: u64,
    eof: bool,
    inflater: Inflater,
    state: State,
    spans: SpanHasher,
    span: u64,
    /// The last checkpoint, until its window can be trimmed (`trim.rs`).
    pending: Option<Pending>,
    /// The last compressed byte consumed (a checkpoint's partial byte).
    last_byte: u8,
}

impl<R: Read> GzipIndexer<R> {
    /// `span`: checkpoint distance; `limit`: maximum total uncompressed output (bomb guard).
    pub fn new(input: R, span: u64, limit: u64) -> Result<Self> {
        let inflater = Inflater::new(false).map_err(|reason| Error::Gzip { offset: 0, reason })?;
        Ok(GzipIndexer {
            input,
            inbuf: vec![0; BUF],
            in_pos: 0,
            in_len: 0,
            cin: 0,
            eof: false,
            inflater,
            state: State::BetweenMembers,
            spans: SpanHasher::new(limit),
            span: span.max(1),
            pending: None,
            last_byte: 0,
        })
    }

    /// Store the pending checkpoint's window (trimmed once its output is all seen, `ended`:
    /// the member ended; see `trim.rs`).
    fn settle(&mut self, ended: bool) {
        if let Some(p) = self.pending.take() {
            let at = p.at;
            let packed = p.pack(ended);
            self.spans.set_window(at, &packed);
        }
    }

    fn refill(&mut self) -> Result<()> {
        if self.in_pos < self.in_len || self.eof {
            return Ok(());
        }
        loop {
            match self.input.read(&mut self.inbuf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.in_pos = 0;
                    self.in_len = n;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Gzip {
                        offset: self.cin,
                        reason: format!("read error: {e}"),
                    })
                }
            }
        }
        Ok(())
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Gzip {
            offset: self.cin,
            reason: reason.into(),
        }
    }

    /// Produce the next batch of output into `out`; 0 at the end of the stream.
    fn inflate_some(&mut self, out: &mut [u8]) -> Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::BetweenMembers => {
                    self.refill()?;
                    if self.in_pos == self.in_len {
                        if self.spans.checkpoints.is_empty() {
                            return Err(self.err("empty gzip stream"));
                        }
                        self.state = State::Done;
                        return Ok(0);
                    }
                    if self.inbuf[self.in_pos] == 0 && !self.spans.checkpoints.is_empty() {
                        // Trailing zero padding after the last member (tolerated, as gzip -d).
                        let rest = &self.inbuf[self.in_pos..self.in_len];
                        if rest.iter().any(|&b| b != 0) {
                            return Err(self.err("garbage after a gzip member"));
                        }
                        self.cin += rest.len() as u64;
                        self.in_pos = self.in_len;
                        continue;
                    }
                    if self.inbuf[self.in_pos] != 0x1f {
                        return Err(self.err("not a gzip member (bad magic)"));
                    }
                    if self.spans.since_last() >= self.span {
                        self.spans.checkpoint(self.cin, 0, true, &[]);
                    }
                    self.inflater.reset_gzip().map_err(|r| Error::Gzip {
                        offset: self.cin,
                        reason: r,
                    })?;
                    self.state = State::InMember;
                }
                State::InMember => {
                    self.refill()?;
                    if self.in_pos == self.in_len {
                        return Err(self.err("truncated gzip stream (ends inside a member)"));
                    }
                    let step = self.inflater.inflate(
                        &self.inbuf[self.in_pos..self.in_len],
                        out,
                        z::Z_BLOCK,
                    );
                    self.in_pos += step.consumed;
                    self.cin += step.consumed as u64;
                    self.spans.output(&out[..step.produced], self.cin)?;
                    if step.consumed > 0 {
                        self.last_byte = self.inbuf[self.in_pos - 1];
                    }
                    if let Some(p) = &mut self.pending {
                        p.feed(
                            &self.inbuf[self.in_pos - step.consumed..self.in_pos],
                            &out[..step.produced],
                        );
                    }
                    match step.code {
                        z::Z_STREAM_END => {
                            // Matches never cross a member's end: the window is settled.
                            self.settle(true);
                            self.state = State::BetweenMembers
                        }
                        z::Z_OK | z::Z_BUF_ERROR => {
                            let dt = self.inflater.data_type();
                            if dt & 128 != 0
                                && dt & 64 == 0
                                && self.spans.since_last() >= self.spans.spacing(self.span)
                            {
                                self.settle(false);
                                let bits = (dt & 7) as u8;
                                let at = self.spans.checkpoints.len();
                                self.spans.checkpoint(self.cin, bits, false, &[]);
                                self.pending = Some(Pending::new(
                                    at,
                                    self.inflater.dictionary(),
                                    bits,
                                    self.last_byte,
                                ));
                            }
                        }
                        code => {
                            let msg = self.inflater.message(code);
                            return Err(self.err(format!("corrupt deflate data: {msg}")));
                        }
                    }
                    if step.produced > 0 {
                        return Ok(step.produced);
                    }
                }
            }
        }
    }
}

impl<R: Read> Indexer for GzipIndexer<R> {
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.inflate_some(out).map_err(std::io::Error::other)
    }

    fn finish(mut self) -> Result<SeekTable> {
        self.settle(true);
        if self.state != State::Done {
            return Err(Error::Gzip {
                offset: self.cin,
                reason: "seek table requested before the end of the stream".into(),
            });
        }
        Ok(self
            .spans
            .finish(Compression::Gzip, self.span, self.cin, false))
    }
}

/// The gzip [`Codec`]: restarts the inflater at a checkpoint; decodes span prefixes.
pub(crate) struct Gzip;

impl Codec for Gzip {
    fn decode_spans(
        &self,
        table: &SeekTable,
        plan: &SpanPlan,
        compressed: &[u8],
        window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        decode_spans(table, plan, compressed, window, None, out)
    }

    fn decodes_prefix(&self) -> bool {
        true
    }

    fn decode_prefix(
        &self,
        table: &SeekTable,
        i: usize,
        n: u64,
        crange: Range<u64>,
        compressed: &[u8],
        window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = table.span_range(i).start;
        let plan = SpanPlan {
            spans: i..i + 1,
            compressed: crange,
            uncompressed: start..start + n,
        };
        decode_spans(table, &plan, compressed, window, Some(n), out)
    }
}

/// Decode the spans of `plan` (gzip table) from `compressed` into `out`, verifying each.
/// With `prefix = Some(n)` (a one-span plan) only the span's first `n` bytes are decoded, a
/// whole number of blocks, and only those blocks verified (partial span fetch).
fn decode_spans(
    table: &SeekTable,
    plan: &SpanPlan,
    compressed: &[u8],
    window: Option<Window<'_>>,
    prefix: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let first = plan.spans.start;
    let cp = table
        .checkpoints
        .get(first)
        .ok_or_else(|| table.decode_err(first, "no such checkpoint"))?;
    let derr = |reason: String| table.decode_err(first, reason);
    let mut input = compressed;
    let mut inf = if cp.member_start {
        Inflater::new(false).map_err(derr)?
    } else {
        let mut inf = Inflater::new(true).map_err(derr)?;
        if cp.bits > 0 {
            let (&byte, rest) = input
                .split_first()
                .ok_or_else(|| table.decode_err(first, "no compressed bytes"))?;
            inf.prime(cp.bits, byte >> (8 - cp.bits)).map_err(derr)?;
            input = rest;
        }
        let window = table.window_for(first, window)?;
        inf.set_dictionary(&window).map_err(derr)?;
        inf
    };
    let mut buf = vec![0u8; BUF];
    for i in plan.spans.clone() {
        let r = table.span_range(i);
        let len = prefix.unwrap_or(r.end - r.start).min(r.end - r.start);
        let start = out.len();
        let mut filled: u64 = 0;
        while filled < len {
            let room = (len - filled).min(BUF as u64) as usize;
            let step = inf.inflate(input, &mut buf[..room], z::Z_NO_FLUSH);
            input = &input[step.consumed..];
            out.extend_from_slice(&buf[..step.produced]);
            filled += step.produced as u64;
            match step.code {
                z::Z_STREAM_END => {
                    if inf.is_raw() {
                        // Raw inflate stops before the member's 8-byte trailer. A prefix whose
                        // bound is the member's end has all its bytes without it.
                        if input.len() < 8 && prefix.is_some() && filled == len {
                            break;
                        }
                        if input.len() < 8 {
                            return Err(table.decode_err(i, "gzip trailer missing"));
                        }
                        input = &input[8..];
                    }
                    // Start the next member right away (even if this span is complete), so
                    // the ended stream is never called again.
                    if !input.is_empty() {
                        inf.reset_gzip().map_err(|r| table.decode_err(i, r))?;
                    } else if filled < len {
                        return Err(table.decode_err(i, "compressed bytes end early"));
                    }
                }
                z::Z_OK => {}
                z::Z_BUF_ERROR if step.produced > 0 || step.consumed > 0 => {}
                z::Z_BUF_ERROR => {
                    return Err(table.decode_err(i, "compressed bytes end early"));
                }
                code => {
                    let msg = inf.message(code);
                    return Err(table.decode_err(i, format!("corrupt deflate data: {msg}")));
                }
            }
        }
        match prefix {
            Some(_) => table.verify_prefix(i, &out[start..])?,
            None => table.verify(i, &out[start..])?,
        }
    }
    Ok(())
}

/// Build a gzip seek table by reading `input` to the end (tests and tools).
pub fn build_seek_table(input: impl Read, span: u64, limit: u64) -> Result<SeekTable> {
    codec::index_stream(GzipIndexer::new(input, span, limit)?)
}

/// Deflate-compress a window for storage.
pub(crate) fn pack_window(window: &[u8]) -> Vec<u8> {
    pack_window_at(window, flate2::Compression::default())
}

/// The same at the best compression (a trimmed window: mostly zeroes, `trim.rs`).
pub(crate) fn pack_window_best(window: &[u8]) -> Vec<u8> {
    pack_window_at(window, flate2::Compression::best())
}

fn pack_window_at(window: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), level);
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(window);
    enc.finish().unwrap_or_default()
}

/// Inflate a stored window, refusing anything over 32 KiB.
pub(crate) fn unpack_window(packed: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(32 << 10);
    flate2::read::DeflateDecoder::new(packed)
        .take((32 << 10) + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("stored window is corrupt: {e}"))?;
    if out.len() > 32 << 10 {
        return Err("stored window is larger than 32 KiB".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_text;
    use flate2::write::GzEncoder;
    use std::io::Write;
    use std::ops::Range;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn random_reads_multi_member() {
        let a = pseudo_text(700_000, 1);
        let b = pseudo_text(500_000, 2);
        let mut blob = gz(&a);
        blob.extend(gz(&b));
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let t = build_seek_table(&blob[..], 32 << 10, u64::MAX).unwrap();
        assert_eq!(t.uncompressed_size, all.len() as u64);
        assert!(t.checkpoints.len() > 3, "{:?}", t.checkpoints);
        let t = SeekTable::decode(&t.encode(), &t.tail()).unwrap();
        let mut ranges = vec![0..1, 0..all.len() as u64, 699_990..700_010];
        for c in &t.checkpoints {
            let u = c.uout;
            ranges.push(u.saturating_sub(3)..(u + 3).min(all.len() as u64));
        }
        let mut s = 99u64;
        for _ in 0..40 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            let start = (s >> 20) % all.len() as u64;
            let len = (s >> 5) % 200_000;
            ranges.push(start..(start + len).min(all.len() as u64));
        }
        for r in ranges {
            let got = t
                .read_range(r.clone(), |c| {
                    Ok(blob[c.start as usize..c.end as usize].to_vec())
                })
                .unwrap();
            assert_eq!(got, &all[r.start as usize..r.end as usize], "{r:?}");
        }
    }

    /// Inflate span `i` from its checkpoint, fed only `input`; returns what came out.
    fn inflate_from(t: &SeekTable, i: usize, mut input: &[u8], want: usize) -> Vec<u8> {
        let cp = &t.checkpoints[i];
        let mut inf = Inflater::new(!cp.member_start).unwrap();
        if !cp.member_start {
            if cp.bits > 0 {
                inf.prime(cp.bits, input[0] >> (8 - cp.bits)).unwrap();
                input = &input[1..];
            }
            inf.set_dictionary(&unpack_window(t.window(i)).unwrap())
                .unwrap();
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while out.len() < want {
            let step = inf.inflate(input, &mut buf, z::Z_NO_FLUSH);
            input = &input[step.consumed..];
            out.extend_from_slice(&buf[..step.produced]);
            if step.produced == 0 && step.consumed == 0 || step.code == z::Z_STREAM_END {
                break;
            }
        }
        out
    }

    #[test]
    fn block_bounds_are_enough_to_decode_each_block() {
        let data = pseudo_text(2_000_000, 9);
        let blob = gz(&data);
        let t = build_seek_table(&blob[..], 128 << 10, u64::MAX).unwrap();
        assert!(t.checkpoints.len() >= 3, "{}", t.checkpoints.len());
        let mut checked = 0;
        for i in 0..t.checkpoints.len() {
            let span = t.span_range(i);
            let cp = &t.checkpoints[i];
            let cstart = (cp.cin - u64::from(cp.bits > 0)) as usize;
            let blocks = t.blocks_of(i);
            assert_eq!(
                blocks.len() as u64,
                (span.end - span.start).div_ceil(t.block)
            );
            for (k, b) in t.blocks[blocks].iter().enumerate() {
                let end = t.block_range(i, k).end;
                let want = (end - span.start) as usize;
                let got = inflate_from(&t, i, &blob[cstart..b.cend as usize], want);
                assert!(
                    got.len() >= want,
                    "span {i} block {k}: {} < {want}",
                    got.len()
                );
                assert_eq!(&got[..want], &data[span.start as usize..end as usize]);
                checked += 1;
            }
        }
        assert!(checked > 20);
    }

    #[test]
    fn every_block_prefix_decodes_exactly_from_its_bound_and_is_verified() {
        let data = pseudo_text(1_500_000, 21);
        let blob = gz(&data);
        let t = build_seek_table(&blob[..], 128 << 10, u64::MAX).unwrap();
        let mut head_only = t.clone();
        head_only.windows.clear();
        let (mut saved, mut flipped_errors) = (0u64, 0);
        for i in 0..t.checkpoints.len() {
            let span = t.span_range(i);
            let whole = t.span_plan(span.clone()).unwrap().compressed;
            for k in 0..t.blocks_of(i).len() {
                let c = t.prefix_plan(i, k).unwrap();
                assert!(
                    c.start == whole.start && c.end <= whole.end,
                    "{c:?} {whole:?}"
                );
                let bytes = &blob[c.start as usize..c.end as usize];
                let got = t.decode_prefix(i, k, bytes, None).unwrap();
                let end = t.block_range(i, k).end;
                assert_eq!(
                    got,
                    &data[span.start as usize..end as usize],
                    "span {i} block {k}"
                );
                // The same with the window supplied (head-only index).
                let w = t.needs_window(i).then(|| Window::Stored(t.window(i)));
                assert_eq!(head_only.decode_prefix(i, k, bytes, w).unwrap(), got);
                // One flipped byte: an error, never wrong bytes (a byte past what the decoder
                // needed may go unnoticed, the output is still right).
                let mut bad = bytes.to_vec();
                let mid = bad.len() / 3;
                bad[mid] ^= 0x08;
                match t.decode_prefix(i, k, &bad, None) {
                    Ok(b) => assert_eq!(b, got, "span {i} block {k}"),
                    Err(_) => flipped_errors += 1,
                }
                // Too few bytes: an error.
                assert!(t
                    .decode_prefix(i, k, &bytes[..bytes.len() - 1], None)
                    .is_err());
                saved += whole.end - c.end;
            }
            assert!(t.prefix_plan(i, t.blocks_of(i).len()).is_none());
        }
        assert!(saved > 0);
        assert!(flipped_errors > t.blocks.len() / 2, "{flipped_errors}");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let blob = gz(&pseudo_text(200_000, 3));
        let err = build_seek_table(&blob[..blob.len() / 2], 64 << 10, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(build_seek_table(&b"not gzip"[..], 64 << 10, u64::MAX).is_err());
        assert!(build_seek_table(&b""[..], 64 << 10, u64::MAX).is_err());
    }

    #[test]
    fn gzip_bomb_hits_the_limit() {
        let blob = gz(&vec![0u8; 10 << 20]);
        assert!(blob.len() < 64 << 10);
        let err = build_seek_table(&blob[..], 1 << 20, 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::OutputLimit { limit } if limit == 1 << 20),
            "{err}"
        );
    }

    #[test]
    fn corrupt_window_or_byte_is_an_error_not_wrong_data() {
        let data = pseudo_text(1_000_000, 4);
        let blob = gz(&data);
        let t = build_seek_table(&blob[..], 100 << 10, u64::MAX).unwrap();
        let (i, cp) = t
            .checkpoints
            .iter()
            .enumerate()
            .find(|(_, c)| !c.member_start && !c.window.is_empty())
            .unwrap();
        // Corrupt the stored window of checkpoint i.
        let mut bad = t.clone();
        let mut w = unpack_window(t.window(i)).unwrap();
        for b in w.iter_mut().step_by(97) {
            *b ^= 0x55;
        }
        let packed = pack_window(&w);
        let start = bad.windows.len() as u64;
        bad.windows.extend(packed);
        bad.checkpoints[i].window = start..bad.windows.len() as u64;
        bad.window_bytes = bad.windows.len() as u64;
        let r = cp.uout..cp.uout + 10;
        let fetch = |c: Range<u64>| Ok(blob[c.start as usize..c.end as usize].to_vec());
        // No sha256 of its own (format 4): the blocks it decodes to catch it, no wrong data.
        let err = bad.read_range(r.clone(), fetch).unwrap_err();
        assert!(
            matches!(err, Error::SpanDigest { span, .. } | Error::SpanDecode { span, .. } if span == i),
            "{err}"
        );
        // Without its window section the table says so instead of guessing.
        let mut head_only = t.clone();
        head_only.windows.clear();
        let err = head_only.read_range(r.clone(), fetch).unwrap_err();
        assert!(
            matches!(err, Error::WindowMissing { span } if span == i),
            "{err}"
        );
        // ... and decodes with the window supplied by the caller.
        let plan = t.span_plan(r.clone()).unwrap();
        let c = &blob[plan.compressed.start as usize..plan.compressed.end as usize];
        let got = head_only
            .decode_spans_with(&plan, c, Some(Window::Stored(t.window(i))))
            .unwrap();
        assert_eq!(
            got,
            &data[plan.uncompressed.start as usize..plan.uncompressed.end as usize]
        );
        // A supplied window of another length is refused before use; one of the right
        // length but wrong is caught by the blocks it decodes to.
        assert!(matches!(
            head_only.decode_spans_with(&plan, c, Some(Window::Stored(bad.window(i)))),
            Err(Error::SpanDecode { .. })
        ));
        let mut same_len = t.window(i).to_vec();
        let k = same_len.len() / 2;
        same_len[k] ^= 0x21;
        assert!(matches!(
            head_only.decode_spans_with(&plan, c, Some(Window::Stored(&same_len))),
            Err(Error::SpanDigest { .. } | Error::SpanDecode { .. })
        ));
        // Flip one compressed byte in the middle of span i.
        let plan = t.span_plan(r.clone()).unwrap();
        let mut flipped = blob.clone();
        let mid = ((plan.compressed.start + plan.compressed.end) / 2) as usize;
        flipped[mid] ^= 0x10;
        let err = t
            .read_range(
                r,
                |c| Ok(flipped[c.start as usize..c.end as usize].to_vec()),
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::SpanDigest { .. } | Error::SpanDecode { .. }),
            "{err}"
        );
    }
}
