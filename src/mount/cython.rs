//! Imports of Cython-compiled Python extension modules, for the warm-up. A compiled
//! extension imports modules from C (`numpy.random.bit_generator` imports `secrets`, which
//! imports `hmac`, `hashlib`, `_hashlib` and so libcrypto), so there is no `.pyc` to read its
//! imports from; but Cython keeps every name it uses, the imported modules' among them, as
//! NUL-terminated C strings in the module's read-only data. The names there that the path
//! finder finds as modules ([`super::python::files_for`]) are what the module imports, with
//! few extras (names of attributes that happen to be modules, e.g. `copy`): a wrong guess
//! costs a small read, never a wrong byte. Objects without Cython's marker give nothing.
//!
//! Pure parsing: calls nothing outside `mount/`.

use super::python::Import;

/// A string every Cython-generated module holds (the name of the module object Cython's
/// runtime looks up), from 0.29 through 3.x.
const MARKER: &[u8] = b"cython_runtime";
/// Longest name considered (a dotted module path), and most components in it.
const MAX_NAME: usize = 200;
const MAX_DEPTH: usize = 8;
/// Most names taken from one module (each is looked up in the tree, a few dozen lookups
/// at most: a hostile module's strings cost bounded work).
const MAX_NAMES: usize = 2048;

/// Whether `path` names a CPython extension module (`NAME.cpython-3NN-TRIPLE.so`,
/// `NAME.abi3.so`).
pub fn is_extension_path(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.ends_with(".so") && (file.contains(".cpython-3") || file.ends_with(".abi3.so"))
}

/// The Python minor version an extension module's file name is built for (`.cpython-311-`).
pub fn minor_of_name(path: &str) -> Option<u32> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let rest = file.split(".cpython-3").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The module names among the C strings of `rodata` (an extension module's read-only data),
/// as absolute imports; `None` unless the bytes hold Cython's marker. A name is a dotted
/// identifier without `__` (Cython's own and Python's special names have it).
pub fn imports(rodata: &[u8]) -> Option<Vec<Import>> {
    if !rodata.windows(MARKER.len()).any(|w| w == MARKER) {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for s in rodata.split(|&c| c == 0) {
        if out.len() >= MAX_NAMES {
            break;
        }
        let depth = s.iter().filter(|&&c| c == b'.').count() + 1;
        if s.len() < 2 || s.len() > MAX_NAME || depth > MAX_DEPTH || !name_like(s) {
            continue;
        }
        let Ok(name) = std::str::from_utf8(s) else {
            continue;
        };
        if seen.insert(name) {
            out.push(Import {
                name: name.to_string(),
                level: 0,
                from: Vec::new(),
            });
        }
    }
    Some(out)
}

fn name_like(s: &[u8]) -> bool {
    let ident_start = |c: u8| c == b'_' || c.is_ascii_alphabetic();
    let ident = |c: u8| c == b'_' || c.is_ascii_alphanumeric();
    s.split(|&c| c == b'.')
        .all(|p| !p.is_empty() && ident_start(p[0]) && p.iter().all(|&c| ident(c)))
        && !s.windows(2).any(|w| w == b"__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(b: &[u8]) -> Option<Vec<String>> {
        imports(b).map(|v| v.into_iter().map(|i| i.name).collect())
    }

    #[test]
    fn cython_strings_give_dotted_names_without_special_ones() {
        let rodata = b"\0bit_generator.pyx\0secrets\0numpy.random._common\0__pyx_capi__\0\
            cython_runtime\0_cython_0_29_32\0a\0x y\0numpy..core\0.rel\0trail.\09lives\0\
            secrets\0randbits\0";
        assert_eq!(
            names(rodata).expect("a Cython module"),
            vec![
                "bit_generator.pyx",
                "secrets",
                "numpy.random._common",
                "cython_runtime",
                "_cython_0_29_32",
                "randbits"
            ]
        );
    }

    #[test]
    fn names_are_bounded_in_depth_and_number() {
        let mut b = b"cython_runtime\0a.b.c.d.e.f.g.h\0a.b.c.d.e.f.g.h.i\0".to_vec();
        for k in 0..5000 {
            b.extend_from_slice(format!("m{k}\0").as_bytes());
        }
        let n = names(&b).expect("a Cython module");
        assert!(n.contains(&"a.b.c.d.e.f.g.h".to_string()));
        assert!(!n.contains(&"a.b.c.d.e.f.g.h.i".to_string()));
        assert_eq!(n.len(), MAX_NAMES);
    }

    #[test]
    fn objects_without_the_marker_give_nothing() {
        assert_eq!(names(b"\0secrets\0hashlib\0"), None);
        assert_eq!(names(b""), None);
    }

    #[test]
    fn extension_file_names() {
        let p =
            "/usr/lib/python3/dist-packages/numpy/random/mtrand.cpython-311-x86_64-linux-gnu.so";
        assert!(is_extension_path(p));
        assert_eq!(minor_of_name(p), Some(11));
        assert!(is_extension_path("/x/_cffi.abi3.so"));
        assert_eq!(minor_of_name("/x/_cffi.abi3.so"), None);
        assert!(!is_extension_path(
            "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
        ));
        assert!(!is_extension_path("/usr/lib/libfoo.so"));
    }
}
