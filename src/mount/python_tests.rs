//! Tests of `python.rs`: imports read from real `.pyc` files (compiled by the host's
//! interpreter), from source, from hostile bytes; and found in a merged tree as the path
//! finder would.

use super::*;
use crate::layer::{Entry, EntryKind};

fn imp(name: &str, level: u32, from: &[&str]) -> Import {
    Import {
        name: name.into(),
        level,
        from: from.iter().map(|s| s.to_string()).collect(),
    }
}

const SOURCE: &str = "\
import os, json.decoder as jd
from . import sibling
from ..up import (a,
    b)
from collections.abc import Mapping  # a comment
try:
    import _fast
except ImportError:
    _fast = None
class K:
    import inclass
def f():
    import lazy_inside
    from x import y
async def g():
    import lazy_async
import after_def; import second
from weird import *
";

/// The imports of `SOURCE`: from its text (`class_body`: the one in a class body too) or
/// from its compiled form (a class body is a code object of its own: not followed).
fn source_imports_of(class_body: bool) -> Vec<Import> {
    let mut v = vec![
        imp("os", 0, &[]),
        imp("json.decoder", 0, &[]),
        imp("", 1, &["sibling"]),
        imp("up", 2, &["a", "b"]),
        imp("collections.abc", 0, &["Mapping"]),
        imp("_fast", 0, &[]),
        imp("after_def", 0, &[]),
        imp("second", 0, &[]),
        imp("weird", 0, &[]),
    ];
    if class_body {
        v.insert(6, imp("inclass", 0, &[]));
    }
    v
}

#[test]
fn source_imports_outside_functions() {
    assert_eq!(source_imports(SOURCE), source_imports_of(true));
    assert!(source_imports("print('import nothing')\nx = 'from a import b'").is_empty());
    // An unclosed parenthesis: the statement stops at its bound (unbounded, joining a
    // megabyte of lines would be quadratic) and later lines still count.
    let mut big = String::from("from a import (b,\n");
    big.push_str(&"    c,\n".repeat(200_000));
    big.push_str("import after\n");
    let got = source_imports(&big);
    assert_eq!(got.first().map(|i| i.name.as_str()), Some("a"));
    assert_eq!(got.last(), Some(&imp("after", 0, &[])));
}

/// `SOURCE` compiled by the host's `python3` (installed by scripts/install-deps.sh).
fn compiled() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.py");
    std::fs::write(&src, SOURCE).unwrap();
    let out = dir.path().join("m.pyc");
    let st = std::process::Command::new("python3")
        .args([
            "-c",
            "import py_compile,sys; py_compile.compile(sys.argv[1], sys.argv[2], doraise=True)",
        ])
        .arg(&src)
        .arg(&out)
        .status()
        .expect("python3 (scripts/install-deps.sh installs it)");
    assert!(st.success(), "py_compile failed");
    std::fs::read(&out).unwrap()
}

#[test]
fn pyc_imports_are_the_module_level_ones_the_compiler_emitted() {
    let pyc = compiled();
    let minor = pyc_minor(&pyc).expect("the host interpreter's pyc version is understood");
    assert!(MINORS.contains(&minor));
    let got = pyc_imports(&pyc).expect("parsed");
    // What the source says at module level; `from weird import *` has no names.
    assert_eq!(got, source_imports_of(false));
    assert!(is_module("x/__pycache__/m.cpython-311.pyc", &pyc));
    assert_eq!(imports_of("m.pyc", &pyc).map(|(m, _)| m), Some(Some(minor)));
}

#[test]
fn hostile_or_truncated_pyc_gives_nothing_and_never_panics() {
    let pyc = compiled();
    for n in [0, 3, 15, 16, 17, 40, pyc.len() / 2, pyc.len() - 1] {
        let _ = pyc_imports(&pyc[..n]);
    }
    assert!(pyc_imports(&pyc[..pyc.len() / 2]).is_none());
    // Flipped bytes anywhere: never a panic.
    for i in (16..pyc.len()).step_by(7) {
        let mut b = pyc.clone();
        b[i] ^= 0x5a;
        let _ = pyc_imports(&b);
    }
    // Deep nesting and huge counts are refused, not followed.
    let mut deep = pyc[..16].to_vec();
    deep.extend(std::iter::repeat_n(b')', 100_000).flat_map(|t| [t, 1]));
    assert!(pyc_imports(&deep).is_none());
    let mut huge = pyc[..16].to_vec();
    huge.extend([b'(', 0xff, 0xff, 0xff, 0x7f]);
    assert!(pyc_imports(&huge).is_none());
    // An unknown magic is not a pyc this module reads.
    let mut other = pyc.clone();
    other[0..2].copy_from_slice(&3000u16.to_le_bytes());
    assert!(pyc_minor(&other).is_none());
}

fn tree(files: &[&str]) -> MergedTree {
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|p| {
            let mut e = Entry::new(*p, EntryKind::File);
            e.size = 1;
            e
        })
        .collect();
    entries.sort_by(|a, b| a.split().cmp(&b.split()));
    MergedTree::build(&[entries]).unwrap()
}

#[test]
fn imports_are_found_where_the_path_finder_finds_them() {
    let ext = format!(".cpython-311-{}.so", triple());
    let t = tree(&[
        "usr/lib/python3.11/json/__init__.py",
        "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3.11/json/decoder.py",
        "usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc",
        "usr/lib/python3.11/json/scanner.py",
        "usr/lib/python3.11/re/__init__.py",
        "usr/lib/python3.11/re/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3.11/os.py",
        "usr/lib/python3.11/__pycache__/os.cpython-311.pyc",
        "usr/lib/python3.11/enum.py",
        "usr/lib/python3.11/__pycache__/enum.cpython-311.pyc",
        &format!("usr/lib/python3.11/lib-dynload/_json{ext}"),
        "usr/lib/python3/dist-packages/numpy/__init__.py",
        "usr/lib/python3/dist-packages/numpy/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3/dist-packages/numpy/core/__init__.py",
        "usr/lib/python3/dist-packages/numpy/core/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3/dist-packages/numpy/version.py",
        // Off sys.path (Debian's), and a namespace portion earlier on it: the regular package
        // further down sys.path wins over both.
        "usr/lib/python3.11/dist-packages/numpy/core/include/numpy/x.h",
        "usr/local/lib/python3.11/site-packages/numpy/extra.txt",
    ]);
    let importer = "/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc";
    let got = files_for(
        &t,
        importer,
        Some(11),
        &[
            imp("", 1, &["decoder", "scanner", "missing"]),
            imp("re", 0, &[]),
            imp("os", 0, &[]), // frozen in 3.11: its file is never read
            imp("enum", 0, &[]),
            imp("_json", 0, &[]),
            imp("sys", 0, &[]), // built in: no file
            imp("numpy.core", 0, &["version"]),
            imp("json", 0, &[]), // the importer itself
        ],
    );
    let mut want = vec![
        "/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc".to_string(),
        "/usr/lib/python3.11/json/scanner.py".into(),
        "/usr/lib/python3.11/re/__pycache__/__init__.cpython-311.pyc".into(),
        "/usr/lib/python3.11/__pycache__/enum.cpython-311.pyc".into(),
        format!("/usr/lib/python3.11/lib-dynload/_json{ext}"),
        "/usr/lib/python3/dist-packages/numpy/__pycache__/__init__.cpython-311.pyc".into(),
        "/usr/lib/python3/dist-packages/numpy/core/__pycache__/__init__.cpython-311.pyc".into(),
    ];
    assert_eq!(got, want);
    // From inside numpy/core: `from .. import version` is numpy/version.py; the source
    // importer's version comes from the image's standard library.
    let got = files_for(
        &t,
        "/usr/lib/python3/dist-packages/numpy/core/__init__.py",
        None,
        &[imp("", 2, &["version"]), imp("", 1, &["_multiarray_umath"])],
    );
    want = vec!["/usr/lib/python3/dist-packages/numpy/version.py".into()];
    if triple() == "x86_64-linux-gnu" {
        want.push(
            "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so"
                .into(),
        );
    }
    assert_eq!(got, want);
}

#[test]
fn a_python_command_warms_its_start_and_what_its_arguments_import() {
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(launch(&argv(&["sh", "-c", "import json"]), "/").is_empty());
    let has = |l: &Vec<Vec<String>>, p: &str| l.iter().any(|alts| alts.iter().any(|a| a == p));
    let l = launch(
        &argv(&["python3", "-c", "import json; from xml import dom"]),
        "/",
    );
    for m in [
        "py:json",
        "py:xml",
        "py:xml.dom",
        "py:encodings",
        "py:encodings.utf_8",
        "py:site",
    ] {
        assert!(has(&l, m), "{m} in {l:?}");
    }
    assert!(has(
        &l,
        &format!("/usr/lib/{}/gconv/gconv-modules.cache", triple())
    ));
    let l = launch(
        &argv(&["/usr/bin/python3.11", "-u", "-m", "http.server"]),
        "/",
    );
    assert!(has(&l, "py:http.server"));
    let l = launch(&argv(&["python", "app/main.py", "-c", "x"]), "/srv");
    assert!(has(&l, "/srv/app/main.py"));
    assert!(!has(&l, "py:x"));
    assert!(is_python("python") && is_python("/usr/local/bin/python3.12"));
    assert!(!is_python("python-config") && !is_python("ipython"));

    // In an image: the modules found along sys.path (numpy in Debian's dist-packages, each
    // package on the way), the frozen start modules of 3.11 left out, other entries kept.
    let t = tree(&[
        "usr/lib/python3.11/encodings/__init__.py",
        "usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3.11/encodings/utf_8.py",
        "usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc",
        "usr/lib/python3.11/site.py",
        "usr/lib/python3.11/__pycache__/site.cpython-311.pyc",
        "usr/lib/python3/dist-packages/numpy/__init__.py",
        "usr/lib/python3/dist-packages/numpy/__pycache__/__init__.cpython-311.pyc",
        "usr/lib/python3/dist-packages/numpy/linalg/__init__.py",
    ]);
    let l = launch(&argv(&["python3", "-c", "import numpy.linalg"]), "/");
    let got = expand(&t, l);
    let files: Vec<&str> = got.iter().flatten().map(String::as_str).collect();
    assert!(files.contains(&"/usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc"));
    assert!(files.contains(&"/usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc"));
    assert!(files
        .contains(&"/usr/lib/python3/dist-packages/numpy/__pycache__/__init__.cpython-311.pyc"));
    assert!(files.contains(&"/usr/lib/python3/dist-packages/numpy/linalg/__init__.py"));
    assert!(
        !files.iter().any(|f| f.contains("site.cpython")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.starts_with(MODULE_PREFIX)));
    assert!(files.iter().any(|f| f.ends_with("gconv-modules.cache")));
}
