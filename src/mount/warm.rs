//! Launch warm-up: the files every container start reads before its command does anything of
//! its own — the launcher's /etc/passwd and /etc/group, the command (resolved through PATH),
//! its `#!` interpreter, its ELF interpreter and the shared libraries it names (DT_NEEDED,
//! found along DT_RUNPATH and the standard library directories) — are read through the cache
//! as soon as the image is open, all at once, instead of one after another as the loader
//! discovers them (each discovery a round trip to the registry). No access profile needed.
//!
//! Calls `cache` (demand-class reads) and `union` (the merged tree: path and symlink
//! resolution); no FUSE, no network of its own.

use super::lazy::LazyImage;
use crate::cache::{ChunkCache, Read};
use crate::union::{FileKind, LowerBackend, MergedTree, ROOT_INO};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;

/// Most files one warm-up reads (the command, its interpreters and libraries).
const MAX_FILES: usize = 48;
/// Bytes read of one file at most (headers, dynamic section and what the loader maps first
/// are at the start).
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Symlinks followed while resolving one path.
const MAX_HOPS: usize = 40;
/// docker's default PATH (for `#!/usr/bin/env CMD`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to warm: each entry is a list of alternatives, the first that exists in the image is
/// read (a command's candidates along PATH, for one).
pub type WarmList = Vec<Vec<String>>;

/// The warm list of a container start: the user database and `argv0` (through `path`, the
/// process PATH, and `cwd` when it has no `/`).
pub fn for_command(argv0: &str, path: &str, cwd: &str) -> WarmList {
    let mut out = vec![
        vec!["/etc/passwd".to_string()],
        vec!["/etc/group".to_string()],
    ];
    out.push(command_candidates(argv0, path, cwd));
    out
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
fn resolve(tree: &MergedTree, path: &str) -> Option<(u64, String)> {
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

/// Read up to [`MAX_FILE_BYTES`] of the regular file at `ino` through the cache, as a read on
/// demand would.
async fn read_file(cache: &Arc<ChunkCache>, image: &LazyImage, ino: u64) -> Option<Bytes> {
    let file = image.tree.content(ino)?;
    let layer = image.layers.get(file.layer())?;
    let ext = layer.file_extent(file.path()).ok()?;
    let end = ext.end.min(ext.start + MAX_FILE_BYTES);
    if end <= ext.start {
        return Some(Bytes::new());
    }
    match cache.start_read_file(layer, ext.start..end, ext.end) {
        Read::Local(r) => r.ok(),
        Read::Fetch(f) => match f.await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(path = file.path(), "warm-up read failed: {e}");
                None
            }
        },
    }
}

async fn job(
    cache: Arc<ChunkCache>,
    image: Arc<LazyImage>,
    ino: u64,
    path: String,
) -> (String, Option<Bytes>) {
    let bytes = read_file(&cache, &image, ino).await;
    (path, bytes)
}

/// Warm the files of `list` and what they need; returns how many files were read.
pub async fn warm(cache: Arc<ChunkCache>, image: Arc<LazyImage>, list: WarmList) -> usize {
    let t0 = std::time::Instant::now();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut reads = FuturesUnordered::new();
    let start = |alts: &[String], seen: &mut HashSet<u64>| -> Option<(u64, String)> {
        let (ino, path) = alts.iter().find_map(|p| {
            let (ino, path) = resolve(&image.tree, p)?;
            (image.tree.kind(ino)? == FileKind::File).then_some((ino, path))
        })?;
        (seen.len() < MAX_FILES && seen.insert(ino)).then_some((ino, path))
    };
    for alts in &list {
        if let Some((ino, path)) = start(alts, &mut seen) {
            reads.push(job(cache.clone(), image.clone(), ino, path));
        }
    }
    let mut done = 0;
    while let Some((path, bytes)) = reads.next().await {
        done += 1;
        let Some(bytes) = bytes else { continue };
        for alts in needs(&path, &bytes) {
            if let Some((ino, p)) = start(&alts, &mut seen) {
                reads.push(job(cache.clone(), image.clone(), ino, p));
            }
        }
    }
    tracing::debug!(
        files = done,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "launch warm-up done"
    );
    done
}

/// The files the file at `path` with contents `b` needs to start: a script's interpreter, an
/// ELF object's interpreter and libraries (each a list of alternatives).
fn needs(path: &str, b: &[u8]) -> Vec<Vec<String>> {
    if let Some(rest) = b.strip_prefix(b"#!") {
        let line = rest.split(|&c| c == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let Some(interp) = words.next() else {
            return Vec::new();
        };
        let mut out = vec![vec![interp.to_string()]];
        if interp.ends_with("/env") {
            if let Some(cmd) = words.find(|w| !w.starts_with('-')) {
                out.push(command_candidates(cmd, DEFAULT_PATH, "/"));
            }
        }
        return out;
    }
    let Some(elf) = Elf::parse(b) else {
        return Vec::new();
    };
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
    out
}

/// What the dynamic loader reads of a 64-bit little-endian ELF object.
#[derive(Debug, Default, PartialEq)]
struct Elf {
    machine: u16,
    interp: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
}

/// `N` bytes of `b` at `at + off` (`None` past the end or on overflow).
fn bytes_at<const N: usize>(b: &[u8], at: usize, off: usize) -> Option<[u8; N]> {
    let s = at.checked_add(off)?;
    b.get(s..s.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], at: usize, off: usize) -> Option<u16> {
    bytes_at(b, at, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize, off: usize) -> Option<u32> {
    bytes_at(b, at, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize, off: usize) -> Option<u64> {
    bytes_at(b, at, off).map(u64::from_le_bytes)
}
fn cstr(b: &[u8], at: usize) -> Option<String> {
    let s = b.get(at..)?;
    let end = s.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&s[..end]).ok().map(str::to_string)
}

impl Elf {
    /// Parse the program headers and the dynamic section; `None` for anything that is not a
    /// well-formed 64-bit little-endian ELF object within `b`. Bounded: hostile headers only
    /// make it give up.
    fn parse(b: &[u8]) -> Option<Elf> {
        if b.get(0..4)? != b"\x7fELF" || b.get(4)? != &2 || b.get(5)? != &1 {
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
        for i in 0..phnum {
            let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
            let off = u64_at(b, p, 8)?;
            let vaddr = u64_at(b, p, 16)?;
            let filesz = u64_at(b, p, 32)?;
            match u32_at(b, p, 0)? {
                1 => loads.push((vaddr, off, filesz)),
                2 => dynamic = Some((off, filesz)),
                3 => interp = cstr(b, usize::try_from(off).ok()?),
                _ => {}
            }
        }
        let mut elf = Elf {
            machine,
            interp,
            ..Elf::default()
        };
        let Some((doff, dsize)) = dynamic else {
            return Some(elf);
        };
        let (mut needed, mut runpath, mut strtab) = (Vec::new(), Vec::new(), None);
        let doff = usize::try_from(doff).ok()?;
        for i in 0..usize::try_from(dsize / 16).ok()?.min(4096) {
            let at = doff.checked_add(i * 16)?;
            let (tag, val) = (u64_at(b, at, 0)?, u64_at(b, at, 8)?);
            match tag {
                0 => break,
                1 => needed.push(val),
                5 => strtab = Some(val),
                15 | 29 => runpath.push(val),
                _ => {}
            }
        }
        let Some(strtab) = strtab else {
            return Some(elf);
        };
        let (lv, lo, _) = *loads
            .iter()
            .find(|(v, _, sz)| *v <= strtab && strtab < v.saturating_add(*sz))?;
        let base = usize::try_from((strtab - lv).checked_add(lo)?).ok()?;
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
        let e = Elf::parse(&tiny_elf()).expect("parses");
        assert_eq!(e.machine, 62);
        assert_eq!(e.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(e.needed, vec!["libc.so.6", "libm.so.6"]);
        assert_eq!(e.runpath, vec!["$ORIGIN/../lib"]);
        let n = needs("/opt/app/bin/tool", &tiny_elf());
        assert_eq!(n[0], vec!["/lib64/ld-linux-x86-64.so.2"]);
        assert_eq!(n[1][0], "/opt/app/bin/../lib/libc.so.6");
        assert!(n[1].contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()));
        assert_eq!(n.len(), 3);
    }

    #[test]
    fn hostile_or_truncated_elf_gives_nothing_and_never_panics() {
        let good = tiny_elf();
        for cut in 0..good.len() {
            let _ = Elf::parse(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&bad), None);
        let mut bad = good;
        bad[0x308..0x310].copy_from_slice(&u64::MAX.to_le_bytes()); // DT_NEEDED offset
        let e = Elf::parse(&bad).expect("the rest parses");
        assert_eq!(e.needed, vec!["libm.so.6"]);
    }

    #[test]
    fn scripts_name_their_interpreter() {
        assert_eq!(needs("/x", b"#!/bin/sh -e\necho"), vec![vec!["/bin/sh"]]);
        let n = needs("/x", b"#!/usr/bin/env python3\n");
        assert_eq!(n[0], vec!["/usr/bin/env"]);
        assert!(n[1].contains(&"/usr/bin/python3".to_string()));
        assert!(needs("/x", b"plain text").is_empty());
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
