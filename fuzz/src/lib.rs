//! Fuzz entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! stable, deterministic smoke run in `fuse-tests/hostile.rs` (which includes this file with
//! `#[path]`). Each function takes arbitrary bytes, feeds them to one strata parser and
//! exercises what the parser returns; any panic, hang or unbounded allocation is a bug.
//! Errors are the expected outcome for most inputs and are ignored.
//!
//! Only `strata` and `tempfile` are used, so the file compiles in both crates.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Decompression cap for layer scans: small, so a fuzzed bomb stops quickly.
pub const FUZZ_LIMIT: u64 = 8 << 20;
/// Span size for layer scans (small, so several checkpoints appear in small inputs).
pub const FUZZ_SPAN: u64 = 4096;

/// Raw tar member reader: read every member header until the end or an error.
pub fn tar_reader(data: &[u8]) {
    let mut r = strata::layer::TarReader::new(Cursor::new(data));
    for _ in 0..10_000 {
        match r.next_entry() {
            Ok(Some(e)) => {
                let _ = (e.path.len(), e.size, e.offset);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = r.position();
}

/// A whole layer scan (tar reader + entry table + seek table) for one compression kind
/// chosen by the first byte; the rest is the layer stream.
pub fn layer_scan(data: &[u8]) {
    use strata::layer::{BuildOptions, Compression};
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let compression = match kind % 3 {
        0 => Compression::Tar,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let opts = BuildOptions {
        span: FUZZ_SPAN,
        max_uncompressed: FUZZ_LIMIT,
    };
    if let Ok((entries, table)) = strata::layer::scan(Cursor::new(rest), compression, &opts) {
        for e in &entries {
            let _ = e.split();
        }
        // The table we just built must round-trip and plan every span.
        let enc = table.encode();
        let back =
            strata::layer::SeekTable::decode(&enc, &table.tail()).expect("own seek table decodes");
        assert_eq!(back.encode(), enc, "seek table round trip");
        let size = back.uncompressed_size;
        let _ = back.span_plan(0..size);
        let _ = back.span_plan(size / 2..size);
    }
}

/// Seek table decoder, then planning and decoding against the input itself.
pub fn seek_table(data: &[u8]) {
    let Ok(t) = strata::layer::SeekTable::decode(data, &[]) else {
        return;
    };
    let size = t.uncompressed_size;
    for r in [
        0..size,
        size / 3..size / 2,
        size.saturating_sub(1)..size,
        0..0,
    ] {
        if let Ok(plan) = t.span_plan(r) {
            let want = plan.compressed.end.saturating_sub(plan.compressed.start);
            if want <= 1 << 20 {
                let _ = t.decode_spans(&plan, &vec![0u8; want as usize]);
            }
        }
    }
    let n = t.checkpoints.len();
    for i in [0, n / 2, n.saturating_sub(1)] {
        if i < n {
            let _ = t.span_range(i);
            let _ = t.window(i);
        }
    }
}

/// A scratch directory for entry points that need a file (index files are mmap-ed).
pub struct Scratch {
    dir: tempfile::TempDir,
    n: u64,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("strata-fuzz-")
                .tempdir()
                .expect("fuzz tempdir"),
            n: 0,
        }
    }

    fn next(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("f{}", self.n))
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Walk an opened index the way a mount does: every entry, lookups, the cache layout
/// (span count and ranges), read plans of every file.
fn exercise_index(ix: strata::layer::LayerIndex) {
    use strata::layer::EntryKind;
    let ix = std::sync::Arc::new(ix);
    let mut files = Vec::new();
    for e in ix.entries().take(10_000) {
        let p = e.path();
        let _ = (
            e.kind(),
            e.mode(),
            e.size(),
            e.offset(),
            e.link(),
            e.mtime(),
        );
        let _ = e.xattrs().count();
        let _ = ix.lookup(&p);
        let _ = ix.list_dir(&p).take(100).count();
        if matches!(e.kind(), EntryKind::File | EntryKind::Hardlink) {
            files.push(p);
        }
    }
    let layout = strata::cache::Layout::new(ix.clone());
    let n = layout.count();
    for i in [0, n / 2, n.saturating_sub(1)] {
        if i < n {
            let r = layout.span_range(i);
            let _ = layout.locate(r);
            let _ = layout.compressed(i..i + 1);
            let _ = layout.verify(i, b"");
            let _ = layout.adjacent(i);
        }
    }
    for p in files.iter().take(1000) {
        if let Some(e) = ix.lookup(p) {
            if let Ok(r) = layout.file_range(&e, 0..u64::MAX) {
                if let Ok(spans) = layout.locate(r) {
                    if !spans.is_empty() {
                        let _ = layout.compressed(spans);
                    }
                }
            }
            if let Ok(plan) = ix.plan_read(&e, 0..4096) {
                let len = plan.compressed.end.saturating_sub(plan.compressed.start);
                if len <= 1 << 20 {
                    let _ = ix.decode_read(&plan, &vec![0u8; len as usize]);
                }
            }
        }
    }
}

/// Index file decoder (`LayerIndex::open` on a file holding `data`), then a walk of it.
pub fn index_open(scratch: &mut Scratch, data: &[u8]) {
    let p = scratch.next();
    if std::fs::write(&p, data).is_err() {
        return;
    }
    if let Ok(ix) = strata::layer::LayerIndex::open(&p) {
        exercise_index(ix);
    }
    let _ = std::fs::remove_file(&p);
}

/// Stored merged tree (`trees/*.tree`): the first byte is the layer count the caller expects,
/// the rest the file. Decoded as given and again with its checksum recomputed (so mutations
/// reach the structural checks), then everything the accessors show is walked.
pub fn tree_decode(data: &[u8]) {
    use strata::union::MergedTree;
    let Some((&layers, rest)) = data.split_first() else {
        return;
    };
    let mut sealed = rest.to_vec();
    MergedTree::reseal(&mut sealed);
    for bytes in [rest, &sealed[..]] {
        let Ok(t) = MergedTree::decode(bytes, usize::from(layers % 8)) else {
            continue;
        };
        for ino in 0..=t.len().min(100_000) + 1 {
            if let Some(n) = t.node(ino) {
                let _ = (
                    n.xattrs().count(),
                    n.xattr("user.a"),
                    n.content(),
                    n.link_target,
                );
            }
            let _ = (t.kind(ino), t.name(ino), t.aliases(ino).count());
            for d in t.children(ino).take(1000) {
                let _ = t.lookup(ino, d.name);
            }
        }
        let _ = t.resolve("a/b/c");
    }
}

/// eStargz: the footer parser on the last 51 bytes, the TOC parser on the rest (its digest
/// taken from the input so parsing goes past the check), and the index built from that TOC.
pub fn estargz(scratch: &mut Scratch, data: &[u8]) {
    use strata::layer::estargz;
    let foot = data.len().saturating_sub(estargz::FOOTER_SIZE as usize);
    let (body, footer) = data.split_at(foot);
    let _ = estargz::parse_footer(footer);
    let blob_size = u64::from_le_bytes({
        let mut b = [0u8; 8];
        let n = body.len().min(8);
        b[..n].copy_from_slice(&body[..n]);
        b
    }) % (1 << 40);
    let _ = estargz::toc_range(footer, blob_size);
    let _ = estargz::footer_range(blob_size);
    // Digest of the TOC JSON is unknown here: this covers the gzip and tar framing; the
    // JSON and index building are reached by `estargz_toc_json`.
    let digest = strata::digest::Digest::of(body);
    if let Ok(toc) = estargz::parse_toc(body, &digest) {
        let out = scratch.next();
        let toc_offset = blob_size / 2;
        if let Ok(ix) = estargz::index_from_toc(&toc, toc_offset, blob_size, &out) {
            exercise_index(ix);
        }
        let _ = std::fs::remove_file(&out);
    }
}

/// eStargz TOC JSON straight into the index builder (skips gzip and tar framing, so the
/// fuzzer reaches offset/size/chunk validation quickly). The first 8 bytes are the blob size.
pub fn estargz_toc_json(scratch: &mut Scratch, data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (head, json) = data.split_at(8);
    let blob_size = u64::from_le_bytes(head.try_into().unwrap_or([0; 8])) % (1 << 40);
    let Ok(toc) = serde_json_from_slice(json) else {
        return;
    };
    let out = scratch.next();
    if let Ok(ix) = strata::layer::estargz::index_from_toc(&toc, blob_size / 2, blob_size, &out) {
        exercise_index(ix);
    }
    let _ = std::fs::remove_file(&out);
}

/// zstd:chunked TOC JSON (after its checksum and decompression) -> index, then reads: the
/// first 8 bytes are the blob size (LE), the TOC sits in its second half.
pub fn zchunked_toc_json(scratch: &mut Scratch, data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (head, json) = data.split_at(8);
    let blob_size = u64::from_le_bytes(head.try_into().unwrap_or([0; 8])) % (1 << 40);
    let Ok(toc) = strata::layer::zchunked::parse_toc_json(json) else {
        return;
    };
    let pos = strata::layer::zchunked::Position {
        offset: blob_size / 2,
        length: 1,
        uncompressed: json.len() as u64,
    };
    let out = scratch.next();
    if let Ok(ix) = strata::layer::zchunked::index_from_toc(&toc, &pos, blob_size, &out) {
        exercise_index(ix);
    }
    let _ = std::fs::remove_file(&out);
}

/// Parse TOC JSON through strata's own `parse_toc`: the TOC travels as a gzip member holding
/// a tar with one `stargz.index.json` entry, built here in memory (stored deflate blocks).
fn serde_json_from_slice(json: &[u8]) -> Result<strata::layer::estargz::Toc, ()> {
    let gz = wrap_toc(json);
    let d = strata::digest::Digest::of(json);
    strata::layer::estargz::parse_toc(&gz, &d).map_err(|_| ())
}

/// `json` as the published TOC member: gzip(tar(stargz.index.json)).
pub fn wrap_toc(json: &[u8]) -> Vec<u8> {
    let mut tar = Vec::with_capacity(json.len() + 2048);
    let mut h = [0u8; 512];
    let name = strata::layer::estargz::TOC_NAME.as_bytes();
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", json.len());
    h[124..136].copy_from_slice(size.as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&h);
    tar.extend_from_slice(json);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    gzip_stored(&tar)
}

/// A valid gzip member holding `data` in stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Manifest / index parser, with each content type a registry might send.
pub fn manifest(data: &[u8]) {
    use strata::oci::{AnyManifest, DOCKER_MANIFEST, OCI_INDEX};
    for ct in [
        None,
        Some(OCI_INDEX),
        Some(DOCKER_MANIFEST),
        Some("application/json"),
    ] {
        if let Ok(m) = AnyManifest::parse(ct, data) {
            match m {
                AnyManifest::Image(i) => {
                    for l in &i.layers {
                        let _ = l.annotation("containerd.io/snapshot/stargz/toc.digest");
                    }
                }
                AnyManifest::Index(i) => {
                    let host = strata::oci::Platform::host();
                    for d in &i.manifests {
                        if let Some(p) = &d.platform {
                            let _ = host.matches(p);
                            let _ = p.to_string();
                        }
                    }
                }
            }
        }
    }
}

/// Image reference parser; a parsed reference must print and re-parse to itself.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = s.parse::<strata::reference::Reference>() {
        let printed = r.to_string();
        let again: strata::reference::Reference = printed
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} parsed, printed as {printed:?}, which fails: {e}"));
        assert_eq!(again.to_string(), printed, "reference round trip of {s:?}");
        let _ = (r.name(), r.familiar_name(), r.api_reference());
    }
}

/// SOCI zTOC (first byte: 0 gzip layer, else uncompressed) into the index converter, at the
/// blob size the zTOC claims (so the checks past the size comparison are reached), then a
/// walk of the index.
pub fn ztoc(scratch: &mut Scratch, data: &[u8]) {
    use strata::layer::{soci, Compression};
    let Some((&kind, z)) = data.split_first() else {
        return;
    };
    let c = if kind == 0 {
        Compression::Gzip
    } else {
        Compression::Tar
    };
    let size = soci::described_size(z).unwrap_or(0) % (1 << 40);
    let out = scratch.next();
    if let Ok(ix) = soci::index_from_ztoc(z, c, size, &out) {
        exercise_index(ix);
    }
    let _ = std::fs::remove_file(&out);
    let mut blocks = out.into_os_string();
    blocks.push(".blocks");
    let _ = std::fs::remove_file(blocks);
}

/// Every target by name, for the smoke run: (name, function).
pub fn run_target(name: &str, scratch: &mut Scratch, data: &[u8]) {
    match name {
        "tar_reader" => tar_reader(data),
        "layer_scan" => layer_scan(data),
        "seek_table" => seek_table(data),
        "index_open" => index_open(scratch, data),
        "tree_decode" => tree_decode(data),
        "estargz" => estargz(scratch, data),
        "estargz_toc_json" => estargz_toc_json(scratch, data),
        "zchunked_toc_json" => zchunked_toc_json(scratch, data),
        "manifest" => manifest(data),
        "reference" => reference(data),
        "ztoc" => ztoc(scratch, data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Names of all targets (the cargo-fuzz binaries have the same names).
pub const TARGETS: &[&str] = &[
    "tar_reader",
    "layer_scan",
    "seek_table",
    "index_open",
    "tree_decode",
    "estargz",
    "estargz_toc_json",
    "zchunked_toc_json",
    "manifest",
    "reference",
    "ztoc",
];

/// Write `data` as corpus seed file `name` under `dir/target/`.
pub fn write_seed(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    let _ = std::fs::create_dir_all(&d);
    let _ = std::fs::write(d.join(name), data);
}
