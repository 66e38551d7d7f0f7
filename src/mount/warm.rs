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
//! What a file needs is read from its bytes by [`super::elf`] (ELF objects, scripts) and
//! [`super::python`] (imports). Calls `cache` (demand-class reads) and `union` (the merged
//! tree: path and symlink resolution); no FUSE, no network of its own.

use super::cython;
use super::elf::{guessed_needs, needs, Elf, Pieces};
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
/// Most bytes of an extension module found by following imports (and of the libraries it
/// needs) read ahead: its body's pages are touched only as its code runs.
const PY_ELF_MAX_BYTES: u64 = 4 << 20;
/// Most bytes of one Python module read to find its imports.
const PY_MAX_BYTES: u64 = 4 << 20;
/// Bytes read of one file at most at a launch (headers, dynamic section and what the loader
/// maps first are at the start).
pub const LAUNCH_MAX_BYTES: u64 = 16 << 20;
/// The same for an object opened later: less, since the container's own reads share the
/// link with it by then (measured: 16 MiB of a 37 MB library delayed the loader's reads).
const LOADED_MAX_BYTES: u64 = 4 << 20;
/// Most bytes of an ELF object's first segment read with its writable segment.
const MAX_FIRST_SEGMENT: u64 = 1 << 20;
/// Bytes of a large object's read-only data fetched beside its body (its `.rodata` section
/// comes first there, its unwinding tables after).
const RODATA_HEAD: u64 = 256 << 10;
/// Most bytes of an extension module's read-only data read to find its imports.
const MAX_RODATA: u64 = 2 << 20;
/// Symlinks followed while resolving one path.
const MAX_HOPS: usize = 40;
/// What the launcher reads before the runtime starts: warmed first, alone.
pub const BEFORE_START: [&str; 2] = ["/etc/passwd", "/etc/group"];
/// docker's default PATH (for `#!/usr/bin/env CMD`).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    // The user database (the launcher) and the loader's cache. The C.UTF-8 locale and the
    // local time zone only for a program that loads them: Python (it coerces the C locale
    // to C.UTF-8 at start), or an executable whose string table names `setlocale` or
    // `localtime` (`elf::SYMBOL_READS`, once its dynamic section is read): `sh -c` under
    // dash reads neither (213 KB of debian-minbase's 2.09 MB cold start were those two).
    let mut out: WarmList = ["/etc/passwd", "/etc/group", "/etc/ld.so.cache"]
        .iter()
        .map(|p| vec![p.to_string()])
        .collect();
    if super::python::is_python(argv0) {
        out.push(vec!["/usr/lib/locale/C.utf8/LC_CTYPE".to_string()]);
    }
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

pub(super) fn command_candidates(argv0: &str, path: &str, cwd: &str) -> Vec<String> {
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

    /// Whether a recorded profile guides the image's fetches now (then neither this warm-up
    /// nor the sibling fetch runs: `prefetch.rs` [`ProfilePrefetch::guided`](super::prefetch::ProfilePrefetch::guided)).
    pub fn guided(&self) -> bool {
        self.image
            .get()
            .and_then(|(image, _, _)| image.upgrade())
            .is_some_and(|i| i.profile_prefetch.guided())
    }

    /// The first read of the file at `path` (layer-relative, as the image's tree names it)
    /// began with an ELF header, or it is a Python module. Spawns the warm-up; never waits
    /// (nothing while a recorded profile guides the fetches).
    pub fn loaded(&self, path: &str) {
        let Some((image, cache, rt)) = self.image.get() else {
            return;
        };
        let Some(image) = image.upgrade() else {
            return;
        };
        if image.profile_prefetch.guided() {
            return;
        }
        let list = vec![vec![format!("/{path}")]];
        rt.spawn(warm(cache.clone(), image, list, LOADED_MAX_BYTES));
    }
}

/// Bytes of a file read first (headers; a script's `#!` line); the rest of the file (up to
/// `max_bytes`) is then fetched in the cache's background lane, in small requests, so
/// a read on demand of one part waits for that part only.
pub(super) const HEAD: u64 = 64 << 10;

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
    /// Bytes of the file read at most (an ELF object's body beyond [`HEAD`] in the
    /// background); the libraries it needs get the same.
    max: u64,
    /// A Python extension module's read-only data, asked for (its imports are named there).
    rodata: Option<std::ops::Range<u64>>,
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
    let start = |alts: &[String], max: u64, files: &mut std::collections::HashMap<u64, Warming>| {
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
        tracing::trace!(path, max, "warm-up reads");
        files.insert(
            ino,
            Warming {
                path,
                got: Pieces::default(),
                strtab_asked: false,
                needs_started: false,
                python,
                max,
                rodata: None,
            },
        );
        Some(piece(cache.clone(), image.clone(), ino, 0..HEAD))
    };
    // Python modules wait in `py_queue` (the order the interpreter imports them) and are read
    // [`PY_IN_FLIGHT`] at a time, once the user database is in (like the rest of the list).
    // Measured: holding them back until the loader's own reads are in was slower (the link
    // is what bounds both; python/import-json 0.66 -> 0.78 s).
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
        reads.extend(start(alts, max_bytes, &mut files));
    }
    let mut waiting_first: HashSet<u64> = files.keys().copied().collect();
    loop {
        if waiting_first.is_empty() {
            for alts in rest.drain(..) {
                reads.extend(start(&alts, max_bytes, &mut files));
            }
            while py_in_flight < PY_IN_FLIGHT {
                let Some(p) = py_queue.pop_front() else { break };
                let python = super::python::is_module_path(&p);
                let r = start(&[p], max_bytes.min(PY_ELF_MAX_BYTES), &mut files);
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
                    elf_next(&image.tree, w, at, size)
                }
            }
            _ => Next::default(),
        };
        for r in next.reads {
            py_in_flight += usize::from(python);
            reads.push(piece(cache.clone(), image.clone(), ino, r));
        }
        for r in next.background {
            background(&cache, &image, ino, r);
        }
        let max = files.get(&ino).map_or(max_bytes, |w| w.max);
        for alts in next.wanted {
            reads.extend(start(&alts, max, &mut files));
        }
        // Depth first, as the interpreter runs them: a module's imports before the rest of
        // its importer's.
        for f in next.python.into_iter().rev() {
            py_queue.push_front(f);
        }
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
    /// The rest of the file (and the start of a large object's read-only data), fetched
    /// in the background lane.
    background: Vec<std::ops::Range<u64>>,
    /// Files it needs (alternatives each): its interpreter, its libraries.
    wanted: Vec<Vec<String>>,
    /// Python modules it imports.
    python: Vec<String>,
}

/// An ELF object's (or script's) piece at `at` arrived (the file is `size` bytes).
fn elf_next(tree: &MergedTree, w: &mut Warming, at: u64, size: u64) -> Next {
    let mut next = Next::default();
    if at == 0 {
        // An ELF object's writable segment and dynamic section (what the loader reads
        // next) as a read; the rest of the file in the background.
        let elf = Elf::parse(&w.got);
        let rw = elf.as_ref().and_then(|e| e.writable.clone());
        if let Some(rw) = rw.clone().filter(|rw| rw.end > HEAD) {
            next.reads.push(rw.start.max(HEAD)..rw.end);
        }
        // The rest of the first segment (the dynamic string table with the names of the
        // libraries; the symbols and relocations the loader reads next) with it, not after.
        let first = elf.as_ref().and_then(|e| e.first_load.clone());
        if let Some(first) = first.filter(|f| f.end > HEAD) {
            let mut end = first.end.min(MAX_FIRST_SEGMENT).min(size);
            if let Some(rw) = rw.as_ref().filter(|rw| rw.start > HEAD) {
                end = end.min(rw.start);
            }
            if end > HEAD {
                next.reads.push(HEAD..end);
            }
        }
        // A Python extension module's read-only data, where a Cython module names what it
        // imports (the read joins the background fetch of the same bytes).
        let ro = elf.and_then(|e| e.rodata);
        let body = HEAD..size.min(w.max);
        if let Some(ro) = ro.clone().filter(|_| cython::is_extension_path(&w.path)) {
            let ro = ro.start..ro.end.min(ro.start.saturating_add(MAX_RODATA)).min(size);
            if ro.start > 0 && ro.start < ro.end {
                w.rodata = Some(ro.clone());
                next.reads.push(ro);
            }
        } else if let Some(ro) = ro.filter(|r| r.start >= body.end) {
            // A large object's constants (its code's tables, strings) past the body read:
            // its initialisers read them before anything else of its far end.
            let end = ro.end.min(ro.start.saturating_add(RODATA_HEAD)).min(size);
            next.background.push(ro.start..end);
        }
        next.background.push(body);
    }
    if w.rodata.as_ref().is_some_and(|r| r.start == at) {
        w.rodata = None;
        let imports = w.got.0.iter().rev().find(|(a, _)| *a == at);
        if let Some(imports) = imports.and_then(|(_, b)| cython::imports(b)) {
            let minor = cython::minor_of_name(&w.path);
            next.python = super::python::files_for(tree, &w.path, minor, &imports);
            tracing::trace!(
                path = w.path,
                files = next.python.len(),
                "extension module imports"
            );
        }
    }
    if w.needs_started {
        return next;
    }
    let (done, wanted) = needs(&w.path, &w.got);
    if !done {
        // The libraries its string table names, started now (the real list follows).
        next.wanted = guessed_needs(&w.path, &w.got, at);
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The locale and the time zone are not warmed for every command: Python loads the
    /// locale at start, a shell under dash neither (an executable that calls them gets them
    /// from its string table, `elf.rs`).
    #[test]
    fn only_python_gets_the_locale_with_the_command() {
        let has = |l: &WarmList, p: &str| l.iter().any(|alts| alts.iter().any(|a| a == p));
        let sh = for_command(&["sh".into(), "-c".into(), "echo hi".into()], "/bin", "/");
        assert!(!has(&sh, "/usr/lib/locale/C.utf8/LC_CTYPE") && !has(&sh, "/etc/localtime"));
        assert!(has(&sh, "/etc/passwd") && has(&sh, "/etc/ld.so.cache"));
        let py = for_command(
            &["python3".into(), "-c".into(), "import json".into()],
            "/usr/bin",
            "/",
        );
        assert!(has(&py, "/usr/lib/locale/C.utf8/LC_CTYPE"));
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
