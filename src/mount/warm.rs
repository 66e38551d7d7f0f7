//! Launch warm-up: the files every container start reads before its command does anything of
//! its own — the launcher's /etc/passwd and /etc/group, the command (resolved through PATH),
//! its `#!` interpreter, its ELF interpreter and the shared libraries it names (DT_NEEDED,
//! found along DT_RUNPATH and the standard library directories) — are read through the cache
//! as soon as the image is open, instead of one after another as the loader discovers them
//! (each discovery a round trip to the registry). The user database goes first, alone: the
//! launcher reads it before the runtime can start, so it gets the link to itself; the rest
//! starts when it is in; its bytes are even asked for before the merged tree exists
//! ([`start_user_db`], from the layer indexes alone). No access profile needed.
//! The same happens later for every ELF object a container opens that no warm-up read yet
//! (a `dlopen` of a Python extension and the libraries it needs): [`LoadWarm`], told by the
//! lowers when a file's first read shows an ELF header. Objects larger than the bytes read of
//! one file also get their writable segment and dynamic section read (the loader relocates
//! them before anything runs). A Python module (`.pyc` or source) read the same way has its
//! imports read next ([`super::python`]), level after level, and a `python` command's start
//! warms the modules every interpreter start imports and those its `-c` code or `-m` names.
//!
//! Calls `cache` (demand-class reads) and `union` (the merged tree: path and symlink
//! resolution); no FUSE, no network of its own.

use super::lazy::LazyImage;
use crate::cache::{CachedLayer, ChunkCache, Read};
use crate::union::{FileKind, LowerBackend, MergedTree, ROOT_INO};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;

/// Most files one warm-up reads besides Python modules (the command, its interpreters and
/// libraries; the extension modules of a Python package and theirs).
const MAX_FILES: usize = 96;
/// Most files one warm-up reads following Python imports (a package's closure: numpy's is
/// a few hundred modules).
const MAX_PY_FILES: usize = 600;
/// Python modules being read at once by one warm-up (the rest wait their turn, in import
/// order, so the link is not flooded ahead of the interpreter's own reads).
const PY_IN_FLIGHT: usize = 16;
/// Most bytes of one Python module read to find its imports.
const PY_MAX_BYTES: u64 = 4 << 20;
/// Bytes read of one file at most at a launch (headers, dynamic section and what the loader
/// maps first are at the start).
pub const LAUNCH_MAX_BYTES: u64 = 16 << 20;
/// The same for an object opened later: less, since the container's own reads share the
/// link with it by then (measured: 16 MiB of a 37 MB library delayed the loader's reads).
const LOADED_MAX_BYTES: u64 = 4 << 20;
/// Symlinks followed while resolving one path.
const MAX_HOPS: usize = 40;
/// What the launcher reads before the runtime starts: warmed first, alone.
pub const BEFORE_START: [&str; 2] = ["/etc/passwd", "/etc/group"];
/// docker's default PATH (for `#!/usr/bin/env CMD`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to warm: each entry is a list of alternatives, the first that exists in the image is
/// read (a command's candidates along PATH, for one).
pub type WarmList = Vec<Vec<String>>;

/// Whether warm list `warm` has the user database (a container start's list does).
pub fn has_user_db(warm: &WarmList) -> bool {
    warm.iter()
        .any(|alts| alts.iter().any(|p| BEFORE_START.contains(&p.as_str())))
}

/// Start reading the user database from the layers alone, while the merged tree is still being
/// built: for each file, the top-most layer whose index has it (a whiteout above it would only
/// make this a wasted small fetch; the warm-up proper reads through the tree and joins these
/// fetches). Nothing waits for them. Must run inside the runtime.
pub fn start_user_db(cache: &Arc<ChunkCache>, layers: &[Arc<CachedLayer>]) {
    for p in BEFORE_START {
        let rel = p.trim_start_matches('/');
        let Some(layer) = layers
            .iter()
            .rev()
            .find(|l| l.layout.index().lookup(rel).is_some())
        else {
            continue;
        };
        let Ok(ext) = layer.file_extent(rel) else {
            continue;
        };
        let end = ext.end.min(ext.start + LAUNCH_MAX_BYTES);
        if ext.start >= end {
            continue;
        }
        let (cache, layer) = (cache.clone(), layer.clone());
        tokio::spawn(async move {
            let _ = cache.read_file(&layer, ext.start..end, end).await;
        });
    }
}

/// The warm list of a container start: the user database and `argv0` (through `path`, the
/// process PATH, and `cwd` when it has no `/`).
pub fn for_command(argv: &[String], path: &str, cwd: &str) -> WarmList {
    let argv0 = argv.first().map_or("", String::as_str);
    // The user database (the launcher), the loader's cache and the local time zone (glibc),
    // the C.UTF-8 locale (Python and glibc programs under C.UTF-8 load it at start).
    let mut out: WarmList = [
        "/etc/passwd",
        "/etc/group",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/usr/lib/locale/C.utf8/LC_CTYPE",
    ]
    .iter()
    .map(|p| vec![p.to_string()])
    .collect();
    out.push(command_candidates(argv0, path, cwd));
    // The ELF interpreter and the C library: nearly every dynamic program (and the
    // interpreter of every script) needs both, so they are read with the command instead
    // of after its ELF header named them (a round trip later). Absent in a static image:
    // nothing is read.
    out.extend(c_runtime(std::env::consts::ARCH));
    out.extend(super::python::launch(argv, cwd));
    out
}

/// Where the ELF interpreter and the C library of `arch` (`std::env::consts::ARCH`) are in
/// the common distributions (Debian's multiarch and merged /usr, Fedora's lib64, Alpine's musl,
/// whose interpreter is its C library).
fn c_runtime(arch: &str) -> WarmList {
    let (interp, triple, musl) = match arch {
        "x86_64" => ("ld-linux-x86-64.so.2", "x86_64-linux-gnu", "x86_64"),
        "aarch64" => ("ld-linux-aarch64.so.1", "aarch64-linux-gnu", "aarch64"),
        _ => return Vec::new(),
    };
    let in_dirs = |name: &str| -> Vec<String> {
        [
            format!("/lib/{triple}"),
            format!("/usr/lib/{triple}"),
            "/lib64".into(),
            "/usr/lib64".into(),
            "/lib".into(),
        ]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .collect()
    };
    let mut ld = in_dirs(interp);
    ld.push(format!("/lib/ld-musl-{musl}.so.1"));
    vec![ld, in_dirs("libc.so.6")]
}

fn command_candidates(argv0: &str, path: &str, cwd: &str) -> Vec<String> {
    if argv0.starts_with('/') {
        vec![argv0.to_string()]
    } else if argv0.contains('/') {
        vec![format!("{}/{argv0}", cwd.trim_end_matches('/'))]
    } else {
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
            .collect()
    }
}

/// Resolve `path` in the merged tree, following symlinks (absolute ones from the image's
/// root, never above it); the inode and its canonical path.
pub(super) fn resolve(tree: &MergedTree, path: &str) -> Option<(u64, String)> {
    let mut comps: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut stack: Vec<(u64, String)> = vec![(ROOT_INO, String::new())];
    let mut hops = 0;
    while let Some(c) = comps.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let (cur, _) = stack.last()?;
        let ino = tree.lookup(*cur, &c)?;
        let node = tree.node(ino)?;
        if node.kind == FileKind::Symlink {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            let target = node.link_target;
            if target.starts_with('/') {
                stack.truncate(1);
            }
            comps.extend(
                target
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .rev()
                    .map(str::to_string),
            );
        } else {
            stack.push((ino, c));
        }
    }
    let (ino, _) = *stack.last()?;
    let canon = stack
        .iter()
        .skip(1)
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join("/");
    Some((ino, format!("/{canon}")))
}

/// The image's files already warmed (by inode), shared by the launch warm-up and the
/// [`LoadWarm`] of every ELF object opened later, so each is read once.
#[derive(Default)]
pub struct Warmed(std::sync::Mutex<HashSet<u64>>);

impl Warmed {
    fn insert(&self, ino: u64) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(ino)
    }
}

/// Warm-up of the ELF objects a container opens as it runs, for the lowers of one image: when
/// a file's first read (at offset 0) shows an ELF header, the object (up to
/// `max_bytes`, its writable segment beyond), its interpreter and the libraries it
/// names are read at once. Armed with the image once it is open (a weak reference: the image
/// owns its lowers), when the configuration's `warm-start` is on; until then, and for an
/// image gone, nothing happens.
#[derive(Default)]
pub struct LoadWarm {
    image: std::sync::OnceLock<Armed>,
}

/// What an armed [`LoadWarm`] needs: the image, the cache and the runtime to spawn on.
type Armed = (
    std::sync::Weak<LazyImage>,
    Arc<ChunkCache>,
    tokio::runtime::Handle,
);

impl LoadWarm {
    /// Arm with `image` (call inside the runtime; outside it nothing is armed).
    pub fn arm(&self, image: &Arc<LazyImage>, cache: &Arc<ChunkCache>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let _ = self.image.set((Arc::downgrade(image), cache.clone(), rt));
        }
    }

    /// The first read of the file at `path` (layer-relative, as the image's tree names it)
    /// began with an ELF header, or it is a Python module. Spawns the warm-up; never waits.
    pub fn loaded(&self, path: &str) {
        let Some((image, cache, rt)) = self.image.get() else {
            return;
        };
        let Some(image) = image.upgrade() else {
            return;
        };
        let list = vec![vec![format!("/{path}")]];
        rt.spawn(warm(cache.clone(), image, list, LOADED_MAX_BYTES));
    }
}

/// Bytes of a file read first (headers; a script's `#!` line); the rest of the file (up to
/// `max_bytes`) is then fetched in the cache's background lane, in small requests, so
/// a read on demand of one part waits for that part only.
const HEAD: u64 = 64 << 10;
/// Most bytes of a string table read to name an ELF object's libraries.
const MAX_STRTAB: u64 = 1 << 20;

/// Read `range` (clamped to the file) of the regular file at `ino` through the cache, as a
/// read on demand would; with the file's size.
async fn read_range(
    cache: &Arc<ChunkCache>,
    image: &LazyImage,
    ino: u64,
    range: std::ops::Range<u64>,
) -> Option<(Bytes, u64)> {
    let file = image.tree.content(ino)?;
    let layer = image.layers.get(file.layer())?;
    let ext = layer.file_extent(file.path()).ok()?;
    let start = ext.start.saturating_add(range.start).min(ext.end);
    let end = ext.start.saturating_add(range.end).min(ext.end);
    let size = ext.end - ext.start;
    if end <= start {
        return Some((Bytes::new(), size));
    }
    match cache.start_read_file(layer, start..end, ext.end) {
        Read::Local(r) => r.ok().map(|b| (b, size)),
        Read::Fetch(f) => match f.await {
            Ok(b) => Some((b, size)),
            Err(e) => {
                tracing::debug!(path = file.path(), "warm-up read failed: {e}");
                None
            }
        },
    }
}

/// One piece of a warm-up read: the file's inode, where the piece starts, its bytes and the
/// file's size.
async fn piece(
    cache: Arc<ChunkCache>,
    image: Arc<LazyImage>,
    ino: u64,
    range: std::ops::Range<u64>,
) -> (u64, u64, Option<(Bytes, u64)>) {
    let at = range.start;
    (ino, at, read_range(&cache, &image, ino, range).await)
}

/// Start fetching `range` of the regular file at `ino` in the cache's background lane.
fn background(cache: &Arc<ChunkCache>, image: &LazyImage, ino: u64, range: std::ops::Range<u64>) {
    let Some(file) = image.tree.content(ino) else {
        return;
    };
    let Some(layer) = image.layers.get(file.layer()) else {
        return;
    };
    let Ok(ext) = layer.file_extent(file.path()) else {
        return;
    };
    let start = ext.start.saturating_add(range.start).min(ext.end);
    let end = ext.start.saturating_add(range.end).min(ext.end);
    cache.fetch_background(layer, start..end);
}

/// A file being warmed: its path, the pieces read so far, whether its string table was asked
/// for and what it needs started.
struct Warming {
    path: String,
    got: Pieces,
    strtab_asked: bool,
    needs_started: bool,
    /// A Python module: read whole (up to [`PY_MAX_BYTES`]), then its imports.
    python: bool,
}

/// Warm the files of `list` and what they need (files another warm-up of this image read
/// are skipped); returns how many files were read.
pub async fn warm(
    cache: Arc<ChunkCache>,
    image: Arc<LazyImage>,
    list: WarmList,
    max_bytes: u64,
) -> usize {
    let t0 = std::time::Instant::now();
    let list = super::python::expand(&image.tree, list);
    tracing::trace!(?list, "warm list");
    let mut files: std::collections::HashMap<u64, Warming> = Default::default();
    let mut reads = FuturesUnordered::new();
    // Start reading the first of `alts` that is a regular file of the image; each kind of
    // file (Python modules, the rest) has its own budget.
    let start = |alts: &[String], files: &mut std::collections::HashMap<u64, Warming>| {
        let found = alts.iter().find_map(|p| {
            let (ino, path) = resolve(&image.tree, p)?;
            (image.tree.kind(ino)? == FileKind::File).then_some((ino, path))
        });
        let (ino, path) = found?;
        let python = super::python::is_module_path(&path);
        let (limit, same) = if python {
            (MAX_PY_FILES, files.values().filter(|w| w.python).count())
        } else {
            (MAX_FILES, files.values().filter(|w| !w.python).count())
        };
        if same >= limit || !image.warmed.insert(ino) {
            return None;
        }
        files.insert(
            ino,
            Warming {
                path,
                got: Pieces::default(),
                strtab_asked: false,
                needs_started: false,
                python,
            },
        );
        Some(piece(cache.clone(), image.clone(), ino, 0..HEAD))
    };
    // Python modules wait in `py_queue` (import order) and are read [`PY_IN_FLIGHT`] at a
    // time, once the user database is in (like the rest of the list).
    let mut py_queue: std::collections::VecDeque<String> = Default::default();
    let mut py_in_flight = 0usize;
    let (first, rest): (Vec<_>, Vec<_>) = list
        .into_iter()
        .partition(|alts| alts.iter().all(|p| BEFORE_START.contains(&p.as_str())));
    let (py_first, mut rest): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|alts| alts.len() == 1 && super::python::is_module_path(&alts[0]));
    py_queue.extend(py_first.into_iter().flatten());
    for alts in &first {
        reads.extend(start(alts, &mut files));
    }
    let mut waiting_first: HashSet<u64> = files.keys().copied().collect();
    loop {
        if waiting_first.is_empty() {
            for alts in rest.drain(..) {
                reads.extend(start(&alts, &mut files));
            }
            while py_in_flight < PY_IN_FLIGHT {
                let Some(p) = py_queue.pop_front() else { break };
                let python = super::python::is_module_path(&p);
                let r = start(&[p], &mut files);
                py_in_flight += usize::from(python && r.is_some());
                reads.extend(r);
            }
        }
        let Some((ino, at, got)) = reads.next().await else {
            break;
        };
        let python = files.get(&ino).is_some_and(|w| w.python);
        py_in_flight = py_in_flight.saturating_sub(usize::from(python));
        waiting_first.remove(&ino);
        let next = match (got, files.get_mut(&ino)) {
            (Some((bytes, size)), Some(w)) => {
                w.got.0.push((at, bytes));
                if w.python {
                    python_next(&image.tree, w, at, size)
                } else {
                    elf_next(w, at, size, max_bytes)
                }
            }
            _ => Next::default(),
        };
        for r in next.reads {
            py_in_flight += usize::from(python);
            reads.push(piece(cache.clone(), image.clone(), ino, r));
        }
        if let Some(r) = next.background {
            background(&cache, &image, ino, r);
        }
        for alts in next.wanted {
            reads.extend(start(&alts, &mut files));
        }
        py_queue.extend(next.python);
    }
    tracing::debug!(
        files = files.len(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "warm-up done"
    );
    files.len()
}
/// What one piece read tells the warm-up to do next for its file.
#[derive(Default)]
struct Next {
    /// Further pieces of the file to read (as reads on demand).
    reads: Vec<std::ops::Range<u64>>,
    /// The rest of the file, fetched in the background lane.
    background: Option<std::ops::Range<u64>>,
    /// Files it needs (alternatives each): its interpreter, its libraries.
    wanted: Vec<Vec<String>>,
    /// Python modules it imports.
    python: Vec<String>,
}

/// An ELF object's (or script's) piece at `at` arrived (the file is `size` bytes).
fn elf_next(w: &mut Warming, at: u64, size: u64, max_bytes: u64) -> Next {
    let mut next = Next::default();
    if at == 0 {
        // An ELF object's writable segment and dynamic section (what the loader reads
        // next) as a read; the rest of the file in the background.
        let rw = Elf::parse(&w.got).and_then(|e| e.writable);
        if let Some(rw) = rw.clone().filter(|rw| rw.end > HEAD) {
            next.reads.push(rw.start.max(HEAD)..rw.end);
        }
        next.background = Some(HEAD..size.min(max_bytes));
    }
    if w.needs_started {
        return next;
    }
    let (done, wanted) = needs(&w.path, &w.got);
    if !done {
        let strtab = Elf::parse(&w.got).and_then(|e| e.strtab_missing);
        if let Some(r) = strtab.filter(|_| !w.strtab_asked) {
            w.strtab_asked = true;
            next.reads.push(r);
        }
        return next;
    }
    w.needs_started = true;
    next.wanted = wanted;
    next
}

/// A Python module's piece at `at` arrived (the file is `size` bytes): the rest of it, or,
/// once it is whole, the files of its imports.
fn python_next(tree: &MergedTree, w: &mut Warming, at: u64, size: u64) -> Next {
    let mut next = Next::default();
    let want = size.min(PY_MAX_BYTES);
    if at == 0 && want > HEAD {
        next.reads.push(HEAD..want);
        return next;
    }
    if w.needs_started {
        return next;
    }
    let Some(bytes) = w.got.contiguous(want) else {
        return next;
    };
    w.needs_started = true;
    if let Some((minor, imports)) = super::python::imports_of(&w.path, &bytes) {
        next.python = super::python::files_for(tree, &w.path, minor, &imports);
    }
    next
}

/// Pieces of one file read so far: (offset in the file, bytes), in any order.
#[derive(Default)]
struct Pieces(Vec<(u64, Bytes)>);

impl Pieces {
    /// The first `len` bytes of the file, when the pieces read so far cover them.
    fn contiguous(&self, len: u64) -> Option<Vec<u8>> {
        let mut parts: Vec<&(u64, Bytes)> = self.0.iter().collect();
        parts.sort_by_key(|(at, _)| *at);
        let mut out = Vec::with_capacity(len as usize);
        for (at, b) in parts {
            let have = out.len() as u64;
            if *at > have {
                return None;
            }
            let skip = (have - at) as usize;
            if skip < b.len() {
                out.extend_from_slice(&b[skip..]);
            }
            if out.len() as u64 >= len {
                out.truncate(len as usize);
                return Some(out);
            }
        }
        (out.len() as u64 >= len).then_some(out)
    }

    #[cfg(test)]
    fn one(b: &[u8]) -> Pieces {
        Pieces(vec![(0, Bytes::copy_from_slice(b))])
    }

    /// `n` bytes at file offset `at`, if one piece holds them all.
    fn get(&self, at: usize, n: usize) -> Option<&[u8]> {
        let at = at as u64;
        self.0.iter().find_map(|(o, b)| {
            let s = usize::try_from(at.checked_sub(*o)?).ok()?;
            b.get(s..s.checked_add(n)?)
        })
    }

    /// From file offset `at` to the end of the piece holding it.
    fn tail(&self, at: usize) -> Option<&[u8]> {
        let at = at as u64;
        self.0.iter().find_map(|(o, b)| {
            let s = usize::try_from(at.checked_sub(*o)?).ok()?;
            b.get(s..).filter(|t| !t.is_empty())
        })
    }
}

/// The files the file at `path`, of which `b` was read, needs to start: a script's
/// interpreter, an ELF object's interpreter and libraries (each a list of alternatives); and
/// whether that is all (false while an ELF object's dynamic section or string table is not
/// read yet).
fn needs(path: &str, got: &Pieces) -> (bool, Vec<Vec<String>>) {
    let b = got.tail(0).unwrap_or_default();
    if let Some(rest) = b.strip_prefix(b"#!") {
        let line = rest.split(|&c| c == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let Some(interp) = words.next() else {
            return (true, Vec::new());
        };
        let mut out = vec![vec![interp.to_string()]];
        if interp.ends_with("/env") {
            if let Some(cmd) = words.find(|w| !w.starts_with('-')) {
                out.push(command_candidates(cmd, DEFAULT_PATH, "/"));
            }
        }
        return (true, out);
    }
    let Some(elf) = Elf::parse(got) else {
        return (true, Vec::new());
    };
    if !elf.complete {
        return (false, Vec::new());
    }
    let origin = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let mut dirs: Vec<String> = elf
        .runpath
        .iter()
        .flat_map(|r| r.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
        .collect();
    let triple = match elf.machine {
        62 => Some("x86_64-linux-gnu"),
        183 => Some("aarch64-linux-gnu"),
        _ => None,
    };
    if let Some(t) = triple {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"] {
        dirs.push(d.to_string());
    }
    let mut out: Vec<Vec<String>> = elf.interp.into_iter().map(|i| vec![i]).collect();
    for lib in elf.needed {
        if lib.contains('/') {
            out.push(vec![lib]);
        } else {
            out.push(dirs.iter().map(|d| format!("{d}/{lib}")).collect());
        }
    }
    (true, out)
}

/// What the dynamic loader reads of a 64-bit little-endian ELF object.
#[derive(Debug, Default, PartialEq)]
struct Elf {
    machine: u16,
    interp: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
    /// File range of the writable segments and the dynamic section (from the first to the
    /// last byte of any of them).
    writable: Option<std::ops::Range<u64>>,
    /// The dynamic section and the names it points to were read (or there is none).
    complete: bool,
    /// File range of the string table when the dynamic section was read but not the names.
    strtab_missing: Option<std::ops::Range<u64>>,
}

/// `N` bytes of `b` at `at + off` (`None` past what was read or on overflow).
fn bytes_at<const N: usize>(b: &Pieces, at: usize, off: usize) -> Option<[u8; N]> {
    b.get(at.checked_add(off)?, N)?.try_into().ok()
}
fn u16_at(b: &Pieces, at: usize, off: usize) -> Option<u16> {
    bytes_at(b, at, off).map(u16::from_le_bytes)
}
fn u32_at(b: &Pieces, at: usize, off: usize) -> Option<u32> {
    bytes_at(b, at, off).map(u32::from_le_bytes)
}
fn u64_at(b: &Pieces, at: usize, off: usize) -> Option<u64> {
    bytes_at(b, at, off).map(u64::from_le_bytes)
}
fn cstr(b: &Pieces, at: usize) -> Option<String> {
    let s = b.tail(at)?;
    let end = s.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&s[..end]).ok().map(str::to_string)
}

impl Elf {
    /// Parse the program headers and the dynamic section; `None` for anything that is not a
    /// well-formed 64-bit little-endian ELF object within `b`. Bounded: hostile headers only
    /// make it give up.
    fn parse(b: &Pieces) -> Option<Elf> {
        let ident = b.get(0, 6)?;
        if &ident[0..4] != b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
            return None;
        }
        let machine = u16_at(b, 0, 18)?;
        let phoff = usize::try_from(u64_at(b, 0, 32)?).ok()?;
        let phentsize = usize::from(u16_at(b, 0, 54)?);
        let phnum = usize::from(u16_at(b, 0, 56)?).min(256);
        if phentsize < 56 {
            return None;
        }
        let (mut loads, mut dynamic, mut interp) = (Vec::new(), None, None);
        let mut writable: Option<std::ops::Range<u64>> = None;
        for i in 0..phnum {
            let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
            let typ = u32_at(b, p, 0)?;
            let flags = u32_at(b, p, 4)?;
            let off = u64_at(b, p, 8)?;
            let vaddr = u64_at(b, p, 16)?;
            let filesz = u64_at(b, p, 32)?;
            if (typ == 1 && flags & 2 != 0) || typ == 2 {
                let end = off.saturating_add(filesz);
                writable = Some(match writable {
                    Some(w) => w.start.min(off)..w.end.max(end),
                    None => off..end,
                });
            }
            match typ {
                1 => loads.push((vaddr, off, filesz)),
                2 => dynamic = Some((off, filesz)),
                3 => interp = cstr(b, usize::try_from(off).ok()?),
                _ => {}
            }
        }
        let mut elf = Elf {
            machine,
            interp,
            writable,
            ..Elf::default()
        };
        let Some((doff, dsize)) = dynamic else {
            elf.complete = true;
            return Some(elf);
        };
        let (mut needed, mut runpath, mut strtab, mut strsz) = (Vec::new(), Vec::new(), None, 0);
        let doff = usize::try_from(doff).ok()?;
        for i in 0..usize::try_from(dsize / 16).ok()?.min(4096) {
            let at = doff.checked_add(i * 16)?;
            // Not read yet (or past the file: then it never completes).
            let (Some(tag), Some(val)) = (u64_at(b, at, 0), u64_at(b, at, 8)) else {
                return Some(elf);
            };
            match tag {
                0 => break,
                1 => needed.push(val),
                5 => strtab = Some(val),
                10 => strsz = val,
                15 | 29 => runpath.push(val),
                _ => {}
            }
        }
        let Some(strtab) = strtab else {
            elf.complete = true;
            return Some(elf);
        };
        let (lv, lo, _) = *loads
            .iter()
            .find(|(v, _, sz)| *v <= strtab && strtab < v.saturating_add(*sz))?;
        let base = usize::try_from((strtab - lv).checked_add(lo)?).ok()?;
        if b.get(base, 1).is_none() {
            let len = if strsz == 0 {
                HEAD
            } else {
                strsz.min(MAX_STRTAB)
            };
            elf.strtab_missing = Some(base as u64..(base as u64).saturating_add(len));
            return Some(elf);
        }
        elf.complete = true;
        let name = |off: u64| cstr(b, base.checked_add(usize::try_from(off).ok()?)?);
        elf.needed = needed.into_iter().filter_map(name).collect();
        elf.runpath = runpath.into_iter().filter_map(name).collect();
        Some(elf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object: one PT_LOAD covering the file, PT_INTERP, PT_DYNAMIC with
    /// DT_NEEDED x2, DT_RUNPATH and DT_STRTAB.
    fn tiny_elf() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&3u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, typ: u32, off: u64, vaddr: u64, sz: u64| {
            let p = 64 + i * 56;
            b[p..p + 4].copy_from_slice(&typ.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&sz.to_le_bytes());
        };
        ph(&mut b, 0, 1, 0, 0x1000, 0x400);
        ph(&mut b, 1, 3, 0x200, 0x1200, 28);
        ph(&mut b, 2, 2, 0x300, 0x1300, 5 * 16);
        b[0x200..0x200 + 27].copy_from_slice(b"/lib64/ld-linux-x86-64.so.2");
        let strs = b"\0libc.so.6\0libm.so.6\0$ORIGIN/../lib\0";
        b[0x280..0x280 + strs.len()].copy_from_slice(strs);
        let dyns: [(u64, u64); 5] = [(1, 1), (1, 11), (29, 21), (5, 0x1280), (0, 0)];
        for (i, (t, v)) in dyns.iter().enumerate() {
            let at = 0x300 + i * 16;
            b[at..at + 8].copy_from_slice(&t.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn elf_interpreter_libraries_and_runpath() {
        let e = Elf::parse(&Pieces::one(&tiny_elf())).expect("parses");
        assert!(e.complete);
        assert_eq!(e.writable, Some(0x300..0x350));
        assert_eq!(e.machine, 62);
        assert_eq!(e.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(e.needed, vec!["libc.so.6", "libm.so.6"]);
        assert_eq!(e.runpath, vec!["$ORIGIN/../lib"]);
        let (done, n) = needs("/opt/app/bin/tool", &Pieces::one(&tiny_elf()));
        assert!(done);
        assert_eq!(n[0], vec!["/lib64/ld-linux-x86-64.so.2"]);
        assert_eq!(n[1][0], "/opt/app/bin/../lib/libc.so.6");
        assert!(n[1].contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()));
        assert_eq!(n.len(), 3);
    }

    #[test]
    fn hostile_or_truncated_elf_gives_nothing_and_never_panics() {
        let good = tiny_elf();
        for cut in 0..good.len() {
            let _ = Elf::parse(&Pieces::one(&good[..cut]));
        }
        let mut bad = good.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&Pieces::one(&bad)), None);
        let mut bad = good;
        bad[0x308..0x310].copy_from_slice(&u64::MAX.to_le_bytes()); // DT_NEEDED offset
        let e = Elf::parse(&Pieces::one(&bad)).expect("the rest parses");
        assert_eq!(e.needed, vec!["libm.so.6"]);
    }

    #[test]
    fn an_elf_read_in_pieces_completes_when_its_dynamic_section_and_names_arrive() {
        let b = tiny_elf();
        let mut got = Pieces(vec![(0, Bytes::copy_from_slice(&b[..0x100]))]);
        let e = Elf::parse(&got).expect("headers parse");
        assert!(!e.complete && e.needed.is_empty());
        assert_eq!(needs("/t", &got), (false, vec![]));
        got.0
            .push((0x300, Bytes::copy_from_slice(&b[0x300..0x350])));
        assert!(
            !Elf::parse(&got).expect("parses").complete,
            "names not read"
        );
        got.0
            .push((0x280, Bytes::copy_from_slice(&b[0x280..0x2a8])));
        let e = Elf::parse(&got).expect("parses");
        assert!(e.complete);
        assert_eq!(e.needed, vec!["libc.so.6", "libm.so.6"]);
        assert!(needs("/t", &got).0);
    }

    #[test]
    fn scripts_name_their_interpreter() {
        let n = |b: &[u8]| needs("/x", &Pieces::one(b)).1;
        assert_eq!(n(b"#!/bin/sh -e\necho"), vec![vec!["/bin/sh"]]);
        let n = n(b"#!/usr/bin/env python3\n");
        assert_eq!(n[0], vec!["/usr/bin/env"]);
        assert!(n[1].contains(&"/usr/bin/python3".to_string()));
        assert!(needs("/x", &Pieces::one(b"plain text")).1.is_empty());
    }

    #[test]
    fn the_c_runtime_is_warmed_with_the_command() {
        let l = for_command(&["sh".to_string()], "/bin", "/");
        let has = |p: &str| l.iter().any(|alts| alts.iter().any(|a| a == p));
        if std::env::consts::ARCH == "x86_64" {
            assert!(has("/lib/x86_64-linux-gnu/libc.so.6") && has("/lib64/libc.so.6"));
            assert!(has("/lib64/ld-linux-x86-64.so.2") && has("/lib/ld-musl-x86_64.so.1"));
        }
        let arm = c_runtime("aarch64");
        assert_eq!(arm[0][0], "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1");
        assert!(c_runtime("riscv64").is_empty());
    }

    #[test]
    fn commands_resolve_along_path() {
        assert_eq!(
            command_candidates("/bin/sh", "/usr/bin", "/"),
            vec!["/bin/sh"]
        );
        assert_eq!(
            command_candidates("./run", "/usr/bin", "/app/"),
            vec!["/app/./run"]
        );
        assert_eq!(
            command_candidates("python3", "/usr/local/bin:/usr/bin:rel", "/"),
            vec!["/usr/local/bin/python3", "/usr/bin/python3"]
        );
    }
}
