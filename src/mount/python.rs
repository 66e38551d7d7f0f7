//! Python import prediction for the warm-up: the modules a Python module imports when it runs,
//! read from its compiled form (`.pyc`: the module-level `IMPORT_NAME`s of its code object,
//! CPython 3.7–3.13) or its source (`import` / `from` statements outside function bodies),
//! and found in the merged tree as the interpreter's path finder would (the standard library
//! and `lib-dynload`, the importer's own package root, `site-packages` / `dist-packages`; a
//! package's `__pycache__/__init__`, a module's `__pycache__` file, an extension module).
//! Python discovers its imports one module at a time, each a round trip on a cold mount; the
//! warm-up ([`super::warm`]) reads a module's imports as soon as its bytes are in, so the
//! next levels are on their way while the interpreter still runs the first. Also the launch
//! list of a `python` command (the modules every start imports, `-c` code, `-m` module).
//! Only decides what is read early: a wrong guess costs bytes, never a wrong byte.
//!
//! Pure parsing and tree lookups: calls `union` (the merged tree) and `elf` (where glibc's
//! charset cache is) only.

use crate::union::{FileKind, MergedTree};

/// One import: the dotted name, its level (0 absolute, 1 = `from .`), and the names of a
/// `from NAME import a, b` (submodules if such files exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub name: String,
    pub level: u32,
    pub from: Vec<String>,
}

impl Import {
    /// `import NAME`.
    fn absolute(name: &str) -> Import {
        Import {
            name: name.to_string(),
            level: 0,
            from: Vec::new(),
        }
    }
}

/// Python 3 minor versions whose `.pyc` files are understood.
const MINORS: std::ops::RangeInclusive<u32> = 7..=13;
/// Standard-library modules 3.11+ runs from frozen copies at start (their files are never read).
const FROZEN: [&str; 11] = [
    "abc",
    "codecs",
    "io",
    "_collections_abc",
    "_sitebuiltins",
    "genericpath",
    "ntpath",
    "posixpath",
    "os",
    "site",
    "stat",
];
/// Modules every interpreter start imports from files (3.11+ froze the rest of its start).
const START: [&str; 5] = [
    "encodings",
    "encodings.aliases",
    "encodings.utf_8",
    "sitecustomize",
    "usercustomize",
];
/// What older interpreters (3.7–3.10) also import from files at start.
const START_OLD: [&str; 10] = [
    "site",
    "os",
    "codecs",
    "io",
    "abc",
    "stat",
    "posixpath",
    "genericpath",
    "_collections_abc",
    "_sitebuiltins",
];
/// Where interpreters keep their standard library (official images, Debian and Alpine,
/// Fedora).
const PREFIXES: [&str; 3] = ["/usr/local/lib", "/usr/lib", "/usr/lib64"];

/// Whether `path` names a Python module file (`.py` source or `.pyc`).
pub fn is_module_path(path: &str) -> bool {
    path.ends_with(".pyc") || path.ends_with(".py")
}

/// The minor version of a `.pyc` header (`3.minor`), if it is one this module understands.
pub fn pyc_minor(b: &[u8]) -> Option<u32> {
    if b.len() < 16 || &b[2..4] != b"\r\n" {
        return None;
    }
    let magic = u16::from_le_bytes([b[0], b[1]]);
    let minor = match magic {
        3390..=3399 => 7,
        3400..=3419 => 8,
        3420..=3429 => 9,
        3430..=3449 => 10,
        3450..=3499 => 11,
        3500..=3549 => 12,
        3550..=3599 => 13,
        _ => return None,
    };
    Some(minor)
}

/// Whether the first bytes `b` of the file at `path` are a Python module this module reads.
pub fn is_module(path: &str, b: &[u8]) -> bool {
    if path.ends_with(".pyc") {
        pyc_minor(b).is_some()
    } else {
        path.ends_with(".py")
    }
}

/// The imports of the module file `path` whose bytes are `b` and the Python minor version the
/// file tells (a `.pyc`'s header); `None` when it is neither a module nor readable.
pub fn imports_of(path: &str, b: &[u8]) -> Option<(Option<u32>, Vec<Import>)> {
    if path.ends_with(".pyc") {
        let minor = pyc_minor(b)?;
        return Some((Some(minor), pyc_imports(b)?));
    }
    if path.ends_with(".py") {
        return Some((None, source_imports(&String::from_utf8_lossy(b))));
    }
    None
}

// ---- .pyc: marshal ----

/// A marshalled object, as far as imports need it.
#[derive(Clone, Debug)]
enum Obj {
    Null,
    None,
    Int(i64),
    Str(std::rc::Rc<str>),
    Bytes(std::rc::Rc<[u8]>),
    Tuple(std::rc::Rc<Vec<Obj>>),
    Code(std::rc::Rc<Code>),
    Other,
}

#[derive(Debug)]
struct Code {
    code: std::rc::Rc<[u8]>,
    consts: std::rc::Rc<Vec<Obj>>,
    names: std::rc::Rc<Vec<Obj>>,
}

/// Deepest nesting of marshalled objects read (hostile input must not exhaust the stack).
const MAX_DEPTH: u32 = 64;
/// Most objects read from one file.
const MAX_OBJECTS: u32 = 2_000_000;

struct Marshal<'a> {
    b: &'a [u8],
    at: usize,
    minor: u32,
    refs: Vec<Obj>,
    depth: u32,
    objects: u32,
}

impl Marshal<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<Obj> {
        self.take(n).map(|_| Obj::Other)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u32(&mut self) -> Option<u32> {
        let s = self.take(4)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    /// A count of items that follow: never more than the bytes left (each item takes one).
    fn count(&mut self, n: u32) -> Option<usize> {
        let n = n as usize;
        (n <= self.b.len() - self.at).then_some(n)
    }
    fn str(&mut self, n: usize) -> Option<Obj> {
        let s = self.take(n)?;
        Some(Obj::Str(String::from_utf8_lossy(s).into()))
    }
    fn items(&mut self, n: usize) -> Option<Vec<Obj>> {
        (0..n).map(|_| self.obj()).collect()
    }

    fn obj(&mut self) -> Option<Obj> {
        self.objects += 1;
        if self.depth >= MAX_DEPTH || self.objects > MAX_OBJECTS {
            return None;
        }
        self.depth += 1;
        let t = self.u8()?;
        // Flagged objects get a reference slot before their content (CPython's order).
        let slot = (t & 0x80 != 0).then(|| {
            self.refs.push(Obj::Other);
            self.refs.len() - 1
        });
        let v = self.content(t & 0x7f);
        self.depth -= 1;
        let v = v?;
        if let Some(i) = slot {
            self.refs[i] = v.clone();
        }
        Some(v)
    }

    fn content(&mut self, ty: u8) -> Option<Obj> {
        Some(match ty {
            b'0' => Obj::Null,
            b'N' => Obj::None,
            b'F' | b'T' | b'S' | b'.' | b'?' => Obj::Other,
            b'i' => Obj::Int(i64::from(self.i32()?)),
            b'I' => {
                let s = self.take(8)?;
                Obj::Int(i64::from_le_bytes(s.try_into().ok()?))
            }
            // Numbers: skipped (a long's 15-bit digits; floats and complexes as text or
            // binary).
            b'l' => {
                let n = self.i32()?.unsigned_abs() as usize;
                self.skip(n.checked_mul(2)?)?
            }
            b'f' => {
                let n = self.u8()? as usize;
                self.skip(n)?
            }
            b'x' => {
                let n = self.u8()? as usize;
                self.skip(n)?;
                let n = self.u8()? as usize;
                self.skip(n)?
            }
            b'g' => self.skip(8)?,
            b'y' => self.skip(16)?,
            b's' => {
                let n = self.u32()? as usize;
                Obj::Bytes(self.take(n)?.into())
            }
            b't' | b'u' | b'a' | b'A' => {
                let n = self.u32()? as usize;
                self.str(n)?
            }
            b'z' | b'Z' => {
                let n = self.u8()? as usize;
                self.str(n)?
            }
            b'(' => {
                let n = self.u32()?;
                let n = self.count(n)?;
                Obj::Tuple(self.items(n)?.into())
            }
            b')' => {
                let n = self.u8()? as usize;
                Obj::Tuple(self.items(n)?.into())
            }
            b'[' | b'<' | b'>' => {
                let n = self.u32()?;
                let n = self.count(n)?;
                self.items(n)?;
                Obj::Other
            }
            b'{' => {
                while !matches!(self.obj()?, Obj::Null) {
                    self.obj()?;
                }
                Obj::Other
            }
            b'c' => Obj::Code(self.code()?.into()),
            b'r' => {
                let i = self.u32()? as usize;
                self.refs.get(i)?.clone()
            }
            _ => return None,
        })
    }

    /// A code object's fields (3.7: 5 counts; 3.8–3.10: 6; 3.11+: 5 and another layout).
    fn code(&mut self) -> Option<Code> {
        let counts = if (8..=10).contains(&self.minor) { 6 } else { 5 };
        self.take(4 * counts)?;
        let Obj::Bytes(code) = self.obj()? else {
            return None;
        };
        let Obj::Tuple(consts) = self.obj()? else {
            return None;
        };
        let Obj::Tuple(names) = self.obj()? else {
            return None;
        };
        // 3.7–3.10: varnames, freevars, cellvars, filename, name; firstlineno; lnotab.
        // 3.11+: localsplusnames, localspluskinds, filename, name, qualname; firstlineno;
        // linetable, exceptiontable.
        for _ in 0..5 {
            self.obj()?;
        }
        self.take(4)?;
        let tail = if self.minor >= 11 { 2 } else { 1 };
        for _ in 0..tail {
            self.obj()?;
        }
        Some(Code {
            code,
            consts,
            names,
        })
    }
}

/// (LOAD_CONST, IMPORT_NAME, EXTENDED_ARG) of a minor version.
fn opcodes(minor: u32) -> (u8, u8, u8) {
    if minor >= 13 {
        (83, 75, 71)
    } else {
        (100, 108, 144)
    }
}

/// The module-level imports of a `.pyc` file (imports inside functions run only when called:
/// left out).
pub fn pyc_imports(b: &[u8]) -> Option<Vec<Import>> {
    let minor = pyc_minor(b)?;
    let mut m = Marshal {
        b,
        at: 16,
        minor,
        refs: Vec::new(),
        depth: 0,
        objects: 0,
    };
    let Obj::Code(code) = m.obj()? else {
        return None;
    };
    Some(code_imports(&code, minor))
}

fn code_imports(code: &Code, minor: u32) -> Vec<Import> {
    let (load_const, import_name, extended) = opcodes(minor);
    let mut out = Vec::new();
    // The last two instructions (EXTENDED_ARG and inline caches skipped).
    let mut prev: [Option<(u8, usize)>; 2] = [None, None];
    let mut ext = 0usize;
    for unit in code.code.chunks_exact(2) {
        let (op, arg) = (unit[0], (ext << 8) | unit[1] as usize);
        if op == extended {
            ext = arg;
            continue;
        }
        ext = 0;
        if op == 0 {
            continue; // CACHE
        }
        if op == import_name {
            let name = match code.names.get(arg) {
                Some(Obj::Str(s)) => s.to_string(),
                _ => continue,
            };
            let konst = |p: Option<(u8, usize)>| {
                p.filter(|(o, _)| *o == load_const)
                    .and_then(|(_, a)| code.consts.get(a))
            };
            let level = match konst(prev[0]) {
                Some(Obj::Int(l)) => u32::try_from(*l).unwrap_or(0),
                _ => 0,
            };
            let from = match konst(prev[1]) {
                Some(Obj::Tuple(t)) => t
                    .iter()
                    .filter_map(|o| match o {
                        Obj::Str(s) if &**s != "*" => Some(s.to_string()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            out.push(Import { name, level, from });
        }
        prev = [prev[1], Some((op, arg))];
    }
    out
}

// ---- source ----

/// The imports of Python source `src` outside function bodies (`import a.b as c, d`,
/// `from .x import (y, z)`; `;`-separated statements, parenthesised and `\` continuations).
pub fn source_imports(src: &str) -> Vec<Import> {
    let mut out = Vec::new();
    let mut in_def: Option<usize> = None;
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let t = t.split('#').next().unwrap_or("").trim_end();
        if t.is_empty() {
            continue;
        }
        match in_def {
            Some(d) if indent > d => continue,
            _ => in_def = None,
        }
        if t.starts_with("def ") || t.starts_with("async def ") {
            in_def = Some(indent);
            continue;
        }
        if !t.contains("import") {
            continue;
        }
        // An import statement's continuation lines (a parenthesised name list, `\`), up to
        // a bound: a hostile file must not make this quadratic.
        let mut stmt = t.to_string();
        let joins = t.starts_with("from ") || t.starts_with("import ");
        while joins
            && stmt.len() < MAX_STATEMENT
            && (stmt.ends_with('\\') || (stmt.contains('(') && !stmt.contains(')')))
        {
            if stmt.ends_with('\\') {
                stmt.pop();
            }
            let Some(next) = lines.next() else { break };
            stmt.push(' ');
            stmt.push_str(next.split('#').next().unwrap_or("").trim());
        }
        for s in stmt.split(';') {
            out.extend(statement(s.trim()));
        }
    }
    out
}

/// Longest import statement joined from continuation lines.
const MAX_STATEMENT: usize = 16 << 10;

fn dotted(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c == '_' || c.is_alphanumeric()))
}

fn statement(s: &str) -> Vec<Import> {
    if let Some(rest) = s.strip_prefix("import ") {
        return rest
            .split(',')
            .filter_map(|p| p.split_whitespace().next())
            .filter(|n| dotted(n))
            .map(Import::absolute)
            .collect();
    }
    let Some(rest) = s.strip_prefix("from ") else {
        return Vec::new();
    };
    let Some((module, names)) = rest.split_once(" import ") else {
        return Vec::new();
    };
    let module = module.trim();
    let name = module.trim_start_matches('.');
    let level = (module.len() - name.len()) as u32;
    if !(name.is_empty() || dotted(name)) || (name.is_empty() && level == 0) {
        return Vec::new();
    }
    let from = names
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| p.split_whitespace().next())
        .filter(|n| dotted(n) && !n.contains('.'))
        .map(str::to_string)
        .collect();
    vec![Import {
        name: name.to_string(),
        level,
        from,
    }]
}

// ---- finding the files ----

/// This machine's multiarch triple (extension modules' and glibc's directory names).
fn triple() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    }
}

/// A directory of the tree: its inode and absolute path.
type Dir = (u64, String);

/// What finding one module gives: the file read to import it (if any), and its directory
/// when it is a package.
type Found = (Option<String>, Option<Dir>);

/// How module files of one interpreter are named.
struct Names {
    tag: String,
    ext: [String; 3],
}

impl Names {
    fn new(minor: u32) -> Names {
        let triple = triple();
        Names {
            tag: format!("cpython-3{minor}"),
            ext: [
                format!(".cpython-3{minor}-{triple}.so"),
                ".abi3.so".into(),
                ".so".into(),
            ],
        }
    }
}

fn child(tree: &MergedTree, dir: &Dir, name: &str) -> Option<(u64, String)> {
    let ino = tree.lookup(dir.0, name)?;
    Some((ino, format!("{}/{name}", dir.1.trim_end_matches('/'))))
}

fn is(tree: &MergedTree, ino: u64, kind: FileKind) -> bool {
    tree.kind(ino) == Some(kind)
}

/// Module `name` (one component) in directory `dir`, as the path finder looks for it.
fn find(tree: &MergedTree, dir: &Dir, name: &str, n: &Names) -> Option<Found> {
    let pyc = |d: &Dir, stem: &str| {
        let cache = child(tree, d, "__pycache__")?;
        child(tree, &cache, &format!("{stem}.{}.pyc", n.tag))
            .filter(|f| is(tree, f.0, FileKind::File))
    };
    if let Some(pkg) = child(tree, dir, name).filter(|d| is(tree, d.0, FileKind::Dir)) {
        // Without `__init__.py`, a namespace package: nothing to read.
        let file =
            child(tree, &pkg, "__init__.py").map(|src| pyc(&pkg, "__init__").unwrap_or(src).1);
        return Some((file, Some(pkg)));
    }
    for ext in &n.ext {
        if let Some(f) = child(tree, dir, &format!("{name}{ext}")) {
            return Some((Some(f.1), None));
        }
    }
    let src = child(tree, dir, &format!("{name}.py"))?;
    Some((Some(pyc(dir, name).unwrap_or(src).1), None))
}

/// Follow dotted `name` down from `dir`: the files of every package on the way and of the
/// module itself; then the names of `from` found as submodules of the last package.
fn walk(
    tree: &MergedTree,
    dir: Dir,
    name: &str,
    from: &[String],
    n: &Names,
    out: &mut Vec<String>,
) {
    let mut cur = Some(dir);
    for comp in name.split('.').filter(|c| !c.is_empty()) {
        let Some(d) = cur.take() else { return };
        let Some((file, pkg)) = find(tree, &d, comp, n) else {
            return;
        };
        out.extend(file);
        cur = pkg;
    }
    let Some(pkg) = cur else { return };
    for f in from {
        if let Some((file, _)) = find(tree, &pkg, f, n) {
            out.extend(file);
        }
    }
}

fn resolve_dir(tree: &MergedTree, path: &str) -> Option<Dir> {
    let (ino, canon) = super::warm::resolve(tree, path)?;
    is(tree, ino, FileKind::Dir).then_some((ino, canon))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p })
}

/// The minor version of the interpreter a module at `path` belongs to: a `pythonX.Y`
/// component of its path, else the newest standard library the image has.
fn minor_of(tree: &MergedTree, path: &str) -> Option<u32> {
    let from_path = path.split('/').find_map(|c| {
        let m = c.strip_prefix("python3.")?.parse::<u32>().ok()?;
        MINORS.contains(&m).then_some(m)
    });
    from_path.or_else(|| {
        MINORS.rev().find(|m| {
            PREFIXES
                .iter()
                .any(|p| resolve_dir(tree, &format!("{p}/python3.{m}")).is_some())
        })
    })
}

/// The files that importing `imports` (found in the module file at `importer`, an absolute
/// path of the tree; `minor` when the file told it) reads, in import order, without
/// duplicates and without `importer` itself.
pub fn files_for(
    tree: &MergedTree,
    importer: &str,
    minor: Option<u32>,
    imports: &[Import],
) -> Vec<String> {
    let Some(minor) = minor.or_else(|| minor_of(tree, importer)) else {
        return Vec::new();
    };
    let n = Names::new(minor);
    let mut dir = parent(importer).to_string();
    if dir.ends_with("/__pycache__") {
        dir = parent(&dir).to_string();
    }
    // sys.path: the standard library, its extension modules, the importer's own root (the
    // directory above its top-most package), the site directories.
    let std: Vec<String> = PREFIXES
        .iter()
        .map(|p| format!("{p}/python3.{minor}"))
        .collect();
    let mut roots: Vec<String> = std.clone();
    roots.extend(std.iter().map(|s| format!("{s}/lib-dynload")));
    let mut top = dir.clone();
    while top != "/"
        && resolve_dir(tree, &top).is_some_and(|d| child(tree, &d, "__init__.py").is_some())
    {
        top = parent(&top).to_string();
    }
    roots.push(top);
    // Site directories: the official images' and pip's, Debian's (not /usr/lib/python3.Y/
    // dist-packages: Debian keeps that one off sys.path), Alpine's and Fedora's.
    roots.extend([
        format!("/usr/local/lib/python3.{minor}/site-packages"),
        format!("/usr/local/lib/python3.{minor}/dist-packages"),
        "/usr/lib/python3/dist-packages".into(),
        format!("/usr/lib/python3.{minor}/site-packages"),
        format!("/usr/lib64/python3.{minor}/site-packages"),
    ]);
    let roots: Vec<Dir> = roots.iter().filter_map(|r| resolve_dir(tree, r)).collect();
    tracing::trace!(importer, minor, ?roots, ?imports, "python imports");
    let std: Vec<String> = std
        .iter()
        .filter_map(|s| resolve_dir(tree, s).map(|d| d.1))
        .collect();

    let mut out = Vec::new();
    for imp in imports {
        if imp.level > 0 {
            let mut base = dir.clone();
            for _ in 1..imp.level {
                base = parent(&base).to_string();
            }
            if let Some(b) = resolve_dir(tree, &base) {
                walk(tree, b, &imp.name, &imp.from, &n, &mut out);
            }
            continue;
        }
        // The first root with a module or regular package of that name; a namespace
        // package (a directory without `__init__`) only when no root has one.
        let top_name = imp.name.split('.').next().unwrap_or("");
        let mut namespace = None;
        let found = roots
            .iter()
            .find(|root| match find(tree, root, top_name, &n) {
                Some((Some(_), _)) => true,
                Some((None, _)) => {
                    namespace = namespace.or(Some(*root));
                    false
                }
                None => false,
            });
        let Some(root) = found.or(namespace) else {
            continue;
        };
        let frozen = minor >= 11 && std.contains(&root.1) && FROZEN.contains(&imp.name.as_str());
        if !frozen {
            walk(tree, root.clone(), &imp.name, &imp.from, &n, &mut out);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| f != importer && seen.insert(f.clone()));
    out
}

// ---- launch ----

/// Whether `argv0` runs a Python interpreter (`python`, `python3`, `python3.11`, a path to one).
pub fn is_python(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base.strip_prefix("python")
        .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// How a warm list names a Python module to find in the image's `sys.path` (the launch list
/// is made before the image's tree is known): `py:json`.
pub const MODULE_PREFIX: &str = "py:";

/// `list` with its `py:NAME` entries replaced by the files importing those modules reads in
/// `tree` (the newest standard library the image has decides the interpreter version).
pub fn expand(tree: &MergedTree, list: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let (py, mut out): (Vec<_>, Vec<_>) = list
        .into_iter()
        .partition(|alts| alts.first().is_some_and(|a| a.starts_with(MODULE_PREFIX)));
    let imports: Vec<Import> = py
        .iter()
        .flatten()
        .filter_map(|a| a.strip_prefix(MODULE_PREFIX))
        .filter(|n| dotted(n))
        .map(Import::absolute)
        .collect();
    if !imports.is_empty() {
        let files = files_for(tree, "/", None, &imports);
        out.extend(files.into_iter().map(|f| vec![f]));
    }
    out
}

/// What a Python command's start will import, from its arguments (`argv[0]` is the
/// interpreter): the modules of every start, the imports of `-c` code, the `-m` module, a
/// script (read, its imports follow when its bytes are in). `cwd` for a relative script.
pub fn launch(argv: &[String], cwd: &str) -> Vec<Vec<String>> {
    if !argv.first().is_some_and(|a| is_python(a)) {
        return Vec::new();
    }
    let mut modules: Vec<String> = START.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    let mut args = argv[1..].iter();
    while let Some(a) = args.next() {
        if a == "-c" {
            for imp in args.next().map(|c| source_imports(c)).unwrap_or_default() {
                if imp.level == 0 {
                    modules.push(imp.name.clone());
                    modules.extend(imp.from.iter().map(|f| format!("{}.{f}", imp.name)));
                }
            }
            break;
        } else if a == "-m" {
            modules.extend(args.next().cloned());
            break;
        } else if a.starts_with('-') {
            continue;
        } else {
            let script = if a.starts_with('/') {
                a.clone()
            } else {
                format!("{}/{a}", cwd.trim_end_matches('/'))
            };
            out.push(vec![script]);
            break;
        }
    }
    // glibc's charset cache: the interpreter's locale set-up reads it.
    out.push(super::elf::gconv_cache(triple()));
    // The start of older interpreters too (3.11+ froze those: `expand` leaves them out).
    modules.extend(START_OLD.iter().map(|s| s.to_string()));
    out.extend(modules.iter().map(|m| vec![format!("{MODULE_PREFIX}{m}")]));
    out
}

#[cfg(test)]
#[path = "python_tests.rs"]
mod tests;
