//! What the warm-up reads of the files it warms: an ELF object's program headers, writable
//! segment, interpreter, dynamic section and the libraries it names (DT_NEEDED, found along
//! DT_RUNPATH and the standard library directories), the files a few well-known libraries
//! read as they load ([`LOAD_READS`]: OpenSSL's configuration) and those the C library reads
//! for an executable that calls `setlocale` or `localtime` ([`SYMBOL_READS`]), the read-only
//! data where a Cython extension module names its imports, a script's `#!` interpreter —
//! from pieces of the file read so far, in any order. Hostile or truncated bytes give nothing,
//! never a panic. Pure parsing: calls nothing outside `mount/`.

use super::warm::{command_candidates, DEFAULT_PATH, HEAD};
use bytes::Bytes;

/// Most bytes of a string table read to name an ELF object's libraries.
const MAX_STRTAB: u64 = 1 << 20;

/// Pieces of one file read so far: (offset in the file, bytes), in any order.
#[derive(Default)]
pub(super) struct Pieces(pub(super) Vec<(u64, Bytes)>);

impl Pieces {
    /// The first `len` bytes of the file, when the pieces read so far cover them.
    pub(super) fn contiguous(&self, len: u64) -> Option<Vec<u8>> {
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
pub(super) fn needs(path: &str, got: &Pieces) -> (bool, Vec<Vec<String>>) {
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
    let dirs = search_dirs(path, elf.machine, &elf.runpath);
    let mut out: Vec<Vec<String>> = elf.interp.into_iter().map(|i| vec![i]).collect();
    for lib in elf.needed {
        if lib.contains('/') {
            out.push(vec![lib]);
        } else {
            out.push(dirs.iter().map(|d| format!("{d}/{lib}")).collect());
        }
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    for f in &elf.symbol_reads {
        if *f == LOCALE_CTYPE && !super::python::is_python(file) {
            out.extend(locale_all(elf.machine));
        } else {
            out.push(vec![f.to_string()]);
        }
    }
    for (lib, reads) in LOAD_READS {
        if file.starts_with(lib) {
            out.push(reads.iter().map(|r| r.to_string()).collect());
        }
    }
    (true, out)
}

/// Where the loader looks for the libraries of the object at `path` (machine `machine`,
/// DT_RUNPATH / DT_RPATH `runpath`): the run path (`$ORIGIN` expanded), the multiarch and
/// standard directories.
fn search_dirs(path: &str, machine: u16, runpath: &[String]) -> Vec<String> {
    let origin = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let mut dirs: Vec<String> = runpath
        .iter()
        .flat_map(|r| r.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
        .collect();
    if let Some(t) = machine_triple(machine) {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"] {
        dirs.push(d.to_string());
    }
    dirs
}

/// The libraries an ELF object probably needs, before its dynamic section is read: the
/// names that look like a shared object's (`libX.so`, `libX.so.N...`, `ld-*.so.N`) among
/// the strings of the piece read at `at` that lie in its first loadable segment (the
/// dynamic string table is there), found in the object's own directory and the standard
/// ones. Called once per arriving piece, so each piece is scanned once. A guess that saves
/// the loader's chain a round trip per level (the dynamic section is at the far end of the
/// file); [`needs`] still gives the real list once it is read.
pub(super) fn guessed_needs(path: &str, got: &Pieces, at: u64) -> Vec<Vec<String>> {
    let Some(elf) = Elf::parse(got) else {
        return Vec::new();
    };
    let Some(first) = elf.first_load.clone() else {
        return Vec::new();
    };
    let origin = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let own = path.rsplit('/').next().unwrap_or(path);
    let mut dirs = vec![origin.to_string()];
    dirs.extend(search_dirs(path, elf.machine, &[]));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (_, b) in got.0.iter().filter(|(a, _)| *a == at && at < first.end) {
        let end = usize::try_from(first.end - at).unwrap_or(usize::MAX);
        for s in b[..b.len().min(end)].split(|&c| c == 0) {
            let Some(name) = std::str::from_utf8(s).ok().filter(|n| soname_like(n)) else {
                continue;
            };
            if name != own && seen.insert(name) && out.len() < MAX_GUESSES {
                out.push(dirs.iter().map(|d| format!("{d}/{name}")).collect());
            }
        }
    }
    out
}

/// Most libraries guessed for one object.
const MAX_GUESSES: usize = 64;

fn soname_like(n: &str) -> bool {
    let Some((stem, ver)) = n.split_once(".so") else {
        return false;
    };
    (n.starts_with("lib") || n.starts_with("ld-"))
        && stem.len() > 3
        && stem.len() < 128
        && stem
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_+-.".contains(&c))
        && (ver.is_empty()
            || (ver.starts_with('.')
                && ver[1..]
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))))
}

/// Files a library reads as it loads (its initialiser), by file name prefix: OpenSSL's
/// libcrypto reads its configuration (where Debian and Alpine, Fedora, a source build keep
/// it; the first that exists is warmed).
const LOAD_READS: [(&str, &[&str]); 1] = [(
    "libcrypto.so.",
    &[
        "/usr/lib/ssl/openssl.cnf",
        "/etc/ssl/openssl.cnf",
        "/etc/pki/tls/openssl.cnf",
        "/usr/local/ssl/openssl.cnf",
    ],
)];

/// What the dynamic loader reads of a 64-bit little-endian ELF object.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Elf {
    machine: u16,
    interp: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
    /// File range of the writable segments and the dynamic section (from the first to the
    /// last byte of any of them).
    pub(super) writable: Option<std::ops::Range<u64>>,
    /// File range of the read-only data: the first loadable segment after the first one
    /// that is neither writable nor executable (GNU ld's `-z separate-code` layout: headers,
    /// code, read-only data, writable data); `None` in other layouts.
    pub(super) rodata: Option<std::ops::Range<u64>>,
    /// File range of the loadable segment at offset 0 (headers, dynamic symbol and string
    /// tables, relocations: what the loader reads first).
    pub(super) first_load: Option<std::ops::Range<u64>>,
    /// The dynamic section and the names it points to were read (or there is none).
    complete: bool,
    /// File range of the string table when the dynamic section was read but not the names.
    pub(super) strtab_missing: Option<std::ops::Range<u64>>,
    /// What the C library will read for this program ([`SYMBOL_READS`]), when it is an
    /// executable (`ET_EXEC`, or `DF_1_PIE`: not a library, though the C library has an
    /// interpreter too) whose string table names those functions.
    symbol_reads: Vec<&'static str>,
}

/// Files the C library reads when a program calls a function, under what a container
/// usually has (`LANG=C.UTF-8` in the image's Env, no `TZ`): the locale's character
/// classes at `setlocale`, the time zone at the first `localtime` or `tzset`. Looked for
/// among the names of an executable's string table only (a library's names are mostly
/// what it defines: the C library's own name them all). `dash` names none of them and
/// reads neither; `bash`, `ls`, `python3` name both.
const SYMBOL_READS: [(&str, &str); 4] = [
    ("setlocale", LOCALE_CTYPE),
    ("localtime", "/etc/localtime"),
    ("localtime_r", "/etc/localtime"),
    ("tzset", "/etc/localtime"),
];

/// The locale's character classes: all that Python's `setlocale(LC_CTYPE, "")` reads.
const LOCALE_CTYPE: &str = "/usr/lib/locale/C.utf8/LC_CTYPE";

/// What glibc's `setlocale(LC_ALL, "")` under `LANG=C.UTF-8` opens (strace of coreutils'
/// `echo`), in its order: the alias table, every category of the locale, and the charset
/// cache (after the first category). A program calling `setlocale` other than Python (which
/// asks for `LC_CTYPE` only) is taken to ask for them all, as coreutils, bash and most C
/// programs do: debian-minbase's `echo` waited twice for them (20 and 36 ms) after its
/// `LC_CTYPE` was warm.
fn locale_all(machine: u16) -> Vec<Vec<String>> {
    const CATEGORIES: [&str; 12] = [
        "LC_IDENTIFICATION",
        "LC_MEASUREMENT",
        "LC_TELEPHONE",
        "LC_ADDRESS",
        "LC_NAME",
        "LC_PAPER",
        "LC_MESSAGES/SYS_LC_MESSAGES",
        "LC_MONETARY",
        "LC_COLLATE",
        "LC_TIME",
        "LC_NUMERIC",
        "LC_CTYPE",
    ];
    let mut out = vec![vec!["/usr/share/locale/locale.alias".to_string()]];
    out.extend(
        CATEGORIES
            .iter()
            .map(|c| vec![format!("/usr/lib/locale/C.utf8/{c}")]),
    );
    out.push(gconv_cache(
        machine_triple(machine).unwrap_or("x86_64-linux-gnu"),
    ));
    out
}

/// The multiarch triple of ELF machine `machine` (x86-64, AArch64), for library directories.
fn machine_triple(machine: u16) -> Option<&'static str> {
    match machine {
        62 => Some("x86_64-linux-gnu"),
        183 => Some("aarch64-linux-gnu"),
        _ => None,
    }
}

/// Where glibc's charset cache may be (alternatives) on a system of multiarch `triple`.
pub(super) fn gconv_cache(triple: &str) -> Vec<String> {
    [format!("/usr/lib/{triple}"), "/usr/lib64".into()]
        .iter()
        .map(|d| format!("{d}/gconv/gconv-modules.cache"))
        .collect()
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
    pub(super) fn parse(b: &Pieces) -> Option<Elf> {
        let ident = b.get(0, 6)?;
        if &ident[0..4] != b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
            return None;
        }
        let machine = u16_at(b, 0, 18)?;
        // ET_EXEC: a position-dependent executable (a PIE one says so in DT_FLAGS_1).
        let mut executable = u16_at(b, 0, 16)? == 2;
        let phoff = usize::try_from(u64_at(b, 0, 32)?).ok()?;
        let phentsize = usize::from(u16_at(b, 0, 54)?);
        let phnum = usize::from(u16_at(b, 0, 56)?).min(256);
        if phentsize < 56 {
            return None;
        }
        let (mut loads, mut dynamic, mut interp) = (Vec::new(), None, None);
        let mut writable: Option<std::ops::Range<u64>> = None;
        let mut rodata: Option<std::ops::Range<u64>> = None;
        let mut seen_load = false;
        let mut first_load = None;
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
            if typ == 1 {
                if off == 0 && first_load.is_none() {
                    first_load = Some(0..filesz);
                }
                if seen_load && rodata.is_none() && flags & 3 == 0 && filesz > 0 {
                    rodata = Some(off..off.saturating_add(filesz));
                }
                seen_load = true;
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
            rodata,
            first_load,
            ..Elf::default()
        };
        let Some((doff, dsize)) = dynamic else {
            elf.complete = true;
            return Some(elf);
        };
        let (mut needed, mut runpath, mut strtab, mut strsz) = (Vec::new(), Vec::new(), None, 0);
        /// DT_FLAGS_1 and its DF_1_PIE bit.
        const FLAGS_1: u64 = 0x6fff_fffb;
        const PIE: u64 = 0x0800_0000;
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
                FLAGS_1 => executable |= val & PIE != 0,
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
        if executable {
            let len = match strsz {
                0 => MAX_STRTAB,
                n => n.min(MAX_STRTAB),
            };
            let len = usize::try_from(len).unwrap_or(0);
            let table = b.tail(base).unwrap_or_default();
            for name in table[..table.len().min(len)].split(|&c| c == 0) {
                for (sym, file) in SYMBOL_READS {
                    if name == sym.as_bytes() && !elf.symbol_reads.contains(&file) {
                        elf.symbol_reads.push(file);
                    }
                }
            }
        }
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
            let _ = guessed_needs("/x", &Pieces::one(&good[..cut]), 0);
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
    fn read_only_data_is_the_first_segment_after_the_headers_that_is_neither_w_nor_x() {
        let mut b = tiny_elf();
        let ph = |b: &mut Vec<u8>, i: usize, flags: u32, off: u64, sz: u64| {
            let p = 64 + i * 56;
            b[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            b[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&(0x10000 + off).to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&sz.to_le_bytes());
        };
        // tiny_elf's one PT_LOAD (R, the headers) is index 0: no read-only data after it.
        assert_eq!(Elf::parse(&Pieces::one(&b)).expect("parses").rodata, None);
        b[56..58].copy_from_slice(&6u16.to_le_bytes());
        ph(&mut b, 3, 4 | 1, 0x100, 0x40); // R+X: code
        ph(&mut b, 4, 4, 0x140, 0x30); // R: read-only data
        ph(&mut b, 5, 4, 0x170, 0x10); // a second R segment: not taken
        let e = Elf::parse(&Pieces::one(&b)).expect("parses");
        assert_eq!(e.rodata, Some(0x140..0x170));
        // Old layout (code and read-only data in one R+X segment): none.
        ph(&mut b, 4, 4 | 2, 0x140, 0x30);
        ph(&mut b, 5, 4 | 1, 0x170, 0x10);
        assert_eq!(Elf::parse(&Pieces::one(&b)).expect("parses").rodata, None);
    }

    #[test]
    fn libraries_are_guessed_from_the_string_table_before_the_dynamic_section() {
        let b = tiny_elf();
        // Headers and the string table, not the dynamic section.
        let got = Pieces(vec![(0, Bytes::copy_from_slice(&b[..0x2c0]))]);
        assert!(!needs("/opt/app/lib/libtool.so.1", &got).0);
        let g = guessed_needs("/opt/app/lib/libtool.so.1", &got, 0);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[0][0], "/opt/app/lib/libc.so.6");
        assert!(g[1].contains(&"/usr/lib/x86_64-linux-gnu/libm.so.6".to_string()));
        // Not ELF: nothing.
        assert!(guessed_needs("/x", &Pieces::one(b"libc.so.6\0"), 0).is_empty());
        for ok in [
            "libc.so.6",
            "libstdc++.so.6.0.30",
            "ld-linux-x86-64.so.2",
            "libfoo.so",
        ] {
            assert!(soname_like(ok), "{ok}");
        }
        for bad in [
            "lib.so",
            "libc.so.",
            "libc.so.6a",
            "GLIBC_2.2.5",
            "libc.so.6 x",
            "foo.so.1",
        ] {
            assert!(!soname_like(bad), "{bad}");
        }
    }

    /// An executable that names `setlocale` and `tzset` needs the locale and the time zone
    /// the C library will read; one that names neither, or a library naming them (with an
    /// interpreter, as the C library has), does not.
    #[test]
    fn an_executable_calling_setlocale_or_tzset_needs_the_locale_and_the_time_zone() {
        // An executable (ET_EXEC) or a library with an interpreter, as the C library is.
        let named = |exec: bool, path: &str| {
            let mut b = tiny_elf();
            b[0x2b0..0x2b0 + 16].copy_from_slice(b"setlocale\0tzset\0");
            if exec {
                b[16..18].copy_from_slice(&2u16.to_le_bytes());
            }
            needs(path, &Pieces::one(&b)).1
        };
        let with_names = |exec: bool| named(exec, "/usr/bin/tool");
        let has = |n: &[Vec<String>], f: &str| n.iter().any(|alts| alts == &[f.to_string()]);
        let n = with_names(true);
        assert!(has(&n, "/usr/lib/locale/C.utf8/LC_CTYPE"), "{n:?}");
        assert!(has(&n, "/etc/localtime"), "{n:?}");
        assert_eq!(n.iter().filter(|a| a[0] == "/etc/localtime").count(), 1);
        // `setlocale(LC_ALL, "")`: every category, the alias table and the charset cache.
        let all = "/usr/lib/locale/C.utf8/";
        assert_eq!(
            n.iter().filter(|a| a[0].starts_with(all)).count(),
            12,
            "{n:?}"
        );
        assert!(
            has(&n, "/usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES"),
            "{n:?}"
        );
        assert!(has(&n, "/usr/share/locale/locale.alias"), "{n:?}");
        let gconv = "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache";
        assert!(n.iter().any(|alts| alts[0] == gconv), "{n:?}");
        // Python asks for the character classes only.
        let py = named(true, "/usr/bin/python3.11");
        assert_eq!(
            py.iter().filter(|a| a[0].starts_with(all)).count(),
            1,
            "{py:?}"
        );
        assert!(has(&py, "/usr/lib/locale/C.utf8/LC_CTYPE"), "{py:?}");
        let lib = with_names(false);
        assert!(!has(&lib, "/usr/lib/locale/C.utf8/LC_CTYPE") && !has(&lib, "/etc/localtime"));
        let mut plain = tiny_elf();
        plain[16..18].copy_from_slice(&2u16.to_le_bytes());
        let plain = needs("/usr/bin/tool", &Pieces::one(&plain)).1;
        assert!(!has(&plain, "/etc/localtime") && !has(&plain, "/usr/lib/locale/C.utf8/LC_CTYPE"));
    }

    #[test]
    fn libcrypto_needs_its_configuration() {
        let (done, n) = needs(
            "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
            &Pieces::one(&tiny_elf()),
        );
        assert!(done);
        let last = n.last().expect("needs");
        assert!(last.contains(&"/etc/ssl/openssl.cnf".to_string()), "{n:?}");
        let (_, n) = needs(
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            &Pieces::one(&tiny_elf()),
        );
        assert!(!n.iter().flatten().any(|p| p.ends_with("openssl.cnf")));
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
}
