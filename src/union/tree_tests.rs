//! Table tests for the merge rules of [`MergedTree`]: whiteouts, opaque directories, replace
//! vs merge, implicit directories, hard links and inode stability.

use super::tree::MergedTree;
use super::FileKind;
use crate::layer::{Entry, EntryKind};

fn e(path: &str, kind: EntryKind) -> Entry {
    let mut e = Entry::new(path, kind);
    if kind == EntryKind::File {
        e.size = path.len() as u64;
    }
    e
}
fn d(path: &str) -> Entry {
    e(path, EntryKind::Dir)
}
fn f(path: &str) -> Entry {
    e(path, EntryKind::File)
}
fn wh(path: &str) -> Entry {
    e(path, EntryKind::Whiteout)
}
fn opq(path: &str) -> Entry {
    let mut x = d(path);
    x.opaque = true;
    x
}
fn hl(path: &str, target: &str) -> Entry {
    let mut x = e(path, EntryKind::Hardlink);
    x.hardlink_target = target.to_string();
    x
}
fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
    v.sort_by(|a, b| a.split().cmp(&b.split()));
    v
}

/// All paths of the tree with kind and nlink, depth-first.
fn listing(t: &MergedTree) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(super::ROOT_INO, String::new())];
    while let Some((ino, path)) = stack.pop() {
        for c in t.children(ino).rev() {
            let p = if path.is_empty() {
                c.name.to_string()
            } else {
                format!("{path}/{}", c.name)
            };
            stack.push((c.ino, p));
        }
        if let Some(n) = t.node(ino) {
            if !path.is_empty() {
                let k = match n.kind {
                    FileKind::Dir => "d",
                    FileKind::File => "f",
                    FileKind::Symlink => "l",
                    _ => "o",
                };
                out.push(format!(
                    "{k} {path} {}",
                    if n.kind == FileKind::Dir { 0 } else { n.nlink }
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn merge_rules_table() {
    struct Case {
        name: &'static str,
        layers: Vec<Vec<Entry>>,
        want: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "whiteout removes a lower file",
            layers: vec![vec![d(""), f("a"), f("b")], vec![d(""), wh("a")]],
            want: vec!["f b 1"],
        },
        Case {
            name: "whiteout removes a lower directory subtree",
            layers: vec![
                vec![d(""), d("x"), f("x/1"), d("x/y"), f("x/y/2")],
                vec![d(""), wh("x")],
            ],
            want: vec![],
        },
        Case {
            name: "directories merge",
            layers: vec![vec![d(""), d("x"), f("x/1")], vec![d(""), d("x"), f("x/2")]],
            want: vec!["d x 0", "f x/1 1", "f x/2 1"],
        },
        Case {
            name: "opaque directory hides lower children but keeps its own",
            layers: vec![
                vec![d(""), d("x"), f("x/1")],
                vec![d(""), opq("x"), f("x/2")],
            ],
            want: vec!["d x 0", "f x/2 1"],
        },
        Case {
            name: "file replaces directory",
            layers: vec![vec![d(""), d("x"), f("x/1")], vec![d(""), f("x")]],
            want: vec!["f x 1"],
        },
        Case {
            name: "directory replaces file, no merge",
            layers: vec![vec![d(""), f("x")], vec![d(""), d("x"), f("x/2")]],
            want: vec!["d x 0", "f x/2 1"],
        },
        Case {
            name: "whiteout then re-create in a higher layer",
            layers: vec![
                vec![d(""), f("a")],
                vec![d(""), wh("a")],
                vec![d(""), d("a")],
            ],
            want: vec!["d a 0"],
        },
        Case {
            name: "whiteout of a missing name is harmless",
            layers: vec![vec![d(""), f("a")], vec![d(""), wh("zzz")]],
            want: vec!["f a 1"],
        },
        Case {
            name: "hard links share a node, nlink counts names",
            layers: vec![sorted(vec![
                d(""),
                f("z"),
                hl("a", "z"),
                d("s"),
                hl("s/b", "z"),
            ])],
            want: vec!["d s 0", "f a 3", "f s/b 3", "f z 3"],
        },
        Case {
            name: "whiteout of one hard link name lowers nlink",
            layers: vec![vec![d(""), hl("a", "z"), f("z")], vec![d(""), wh("z")]],
            want: vec!["f a 1"],
        },
        Case {
            name: "hard link to a missing target is skipped",
            layers: vec![vec![d(""), hl("a", "nope")]],
            want: vec![],
        },
        Case {
            name: "opaque root",
            layers: vec![vec![d(""), f("a")], vec![opq(""), f("b")]],
            want: vec!["f b 1"],
        },
    ];
    for c in cases {
        let t = MergedTree::build(&c.layers).unwrap();
        let mut want: Vec<String> = c.want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listing(&t), want, "{}", c.name);
    }
}

#[test]
fn implicit_directory_keeps_lower_attributes() {
    let mut x = d("x");
    x.mode = 0o700;
    x.uid = 7;
    let mut imp = d("x");
    imp.implicit = true;
    let t = MergedTree::build(&[vec![d(""), x], vec![d(""), imp, f("x/1")]]).unwrap();
    let n = t.node(t.resolve("x").unwrap()).unwrap();
    assert_eq!((n.mode, n.uid), (0o700, 7));
    assert!(t.resolve("x/1").is_some());
}

#[test]
fn inode_numbers_are_deterministic_and_dense() {
    let layers = vec![
        sorted(vec![d(""), d("b"), f("b/2"), f("a"), f("c")]),
        sorted(vec![d(""), wh("c"), f("b/1")]),
    ];
    let t1 = MergedTree::build(&layers).unwrap();
    let t2 = MergedTree::build(&layers).unwrap();
    for p in ["", "a", "b", "b/1", "b/2"] {
        assert_eq!(t1.resolve(p), t2.resolve(p), "{p}");
    }
    assert_eq!(t1.resolve(""), Some(1));
    assert_eq!(t1.len(), 5);
    let mut inos: Vec<u64> = ["", "a", "b", "b/1", "b/2"]
        .iter()
        .filter_map(|p| t1.resolve(p))
        .collect();
    inos.sort();
    assert_eq!(inos, vec![1, 2, 3, 4, 5]);
    assert!(t1.resolve("c").is_none());
}

#[test]
fn content_comes_from_the_top_layer_and_overlay_xattrs_are_hidden() {
    let mut low = f("a");
    low.offset = 100;
    let mut high = f("a");
    high.offset = 200;
    high.xattrs = vec![
        ("user.k".into(), b"v".to_vec()),
        ("trusted.overlay.opaque".into(), b"y".to_vec()),
    ];
    let t = MergedTree::build(&[vec![d(""), low], vec![d(""), high]]).unwrap();
    let n = t.node(t.resolve("a").unwrap()).unwrap();
    let c = n.content().unwrap();
    assert_eq!((c.layer(), c.offset()), (1, 200));
    assert_eq!(n.xattrs().collect::<Vec<_>>(), vec![("user.k", &b"v"[..])]);
}

#[test]
fn directory_nlink_counts_subdirectories() {
    let t =
        MergedTree::build(&[sorted(vec![d(""), d("a"), d("a/x"), d("a/y"), f("a/f")])]).unwrap();
    assert_eq!(t.node(t.resolve("a").unwrap()).unwrap().nlink, 4);
    assert_eq!(t.node(1).unwrap().nlink, 3);
}

#[test]
fn layer_view_shows_whiteouts_and_opaque_directories_in_overlay_format() {
    let layer = sorted(vec![
        d(""),
        opq("etc"),
        f("etc/new"),
        wh("gone"),
        d("usr"),
        f("usr/a"),
        hl("usr/b", "usr/a"),
    ]);
    let t = MergedTree::build_layer_view(&layer).unwrap();
    let gone = t.node(t.resolve("gone").unwrap()).unwrap();
    assert_eq!(
        (gone.kind, gone.dev_major, gone.dev_minor, gone.mode),
        (FileKind::CharDev, 0, 0, 0)
    );
    let etc = t.node(t.resolve("etc").unwrap()).unwrap();
    assert_eq!(etc.kind, FileKind::Dir);
    assert_eq!(
        etc.xattrs().collect::<Vec<_>>(),
        vec![("trusted.overlay.opaque", &b"y"[..])]
    );
    assert!(t.resolve("etc/new").is_some());
    let usr = t.node(t.resolve("usr").unwrap()).unwrap();
    assert_eq!(usr.xattrs().count(), 0);
    assert_eq!(t.node(t.resolve("usr/b").unwrap()).unwrap().nlink, 2);
    // The same layer merged as an image hides the whiteout and keeps no marker.
    let merged = MergedTree::build(&[layer]).unwrap();
    assert!(merged.resolve("gone").is_none());
    let etc = merged.node(merged.resolve("etc").unwrap()).unwrap();
    assert_eq!(etc.xattrs().count(), 0);
}

#[test]
fn hard_links_know_all_their_paths_in_visit_order() {
    let layers = [
        sorted(vec![
            d(""),
            d("a"),
            d("a/b"),
            f("a/b/t"),
            hl("a/u", "a/b/t"),
            d("z"),
            hl("z/v", "a/b/t"),
            f("single"),
        ]),
        sorted(vec![d(""), d("z"), hl("w", "a/b/t"), wh("z/v")]),
    ];
    let t = MergedTree::build(&layers).unwrap();
    let ino = t.resolve("a/b/t").unwrap();
    assert_eq!(t.resolve("a/u"), Some(ino));
    assert_eq!(t.resolve("w"), Some(ino));
    assert_eq!(t.resolve("z/v"), None, "whited out");
    let paths: Vec<String> = t.aliases(ino).map(|p| p.to_string()).collect();
    assert_eq!(paths, vec!["a/b/t", "a/u", "w"]);
    let single = t.resolve("single").unwrap();
    assert_eq!(t.aliases(single).count(), 0);
}

#[test]
fn an_opaque_root_in_a_later_layer_hides_a_directory_the_layer_before_filled() {
    let layers = vec![
        sorted(vec![d(""), d("a"), f("a/x"), f("a/z")]),
        sorted(vec![opq(""), f("a/y")]),
    ];
    let t = MergedTree::build(&layers).unwrap();
    assert_eq!(t.resolve("a/x"), None);
    assert!(t.resolve("a/y").is_some());
    assert_eq!(t.resolve("a/z"), None);
}

#[test]
fn a_tree_built_from_layer_indexes_is_the_tree_built_from_their_entries() {
    use crate::layer::index;
    use crate::layer::{Compression, LayerIndex, LayerMeta};
    let mut ln = e("l", EntryKind::Symlink);
    ln.link_target = "../far/target".into();
    let mut dev = e("dev/null", EntryKind::CharDev);
    (dev.dev_major, dev.dev_minor) = (1, 3);
    let mut x = f("a/b/t");
    x.xattrs = vec![
        ("user.z".into(), b"1".to_vec()),
        ("user.a".into(), vec![0, 255]),
        ("trusted.overlay.opaque".into(), b"y".to_vec()),
    ];
    (x.mode, x.uid, x.gid, x.offset) = (0o4755, 5, 6, 512);
    let mut imp = d("a");
    imp.implicit = true;
    let layers = [
        sorted(vec![
            d(""),
            d("a"),
            d("a/b"),
            x,
            hl("a/u", "a/b/t"),
            d("z"),
            f("z/1"),
            f("z/2"),
            hl("z/v", "a/b/t"),
            f("single"),
            ln,
            d("dev"),
            dev,
        ]),
        sorted(vec![d(""), imp, f("a/c"), wh("z/1"), d("n"), f("n/m")]),
        sorted(vec![
            opq(""),
            d("z"),
            hl("w", "a/b/t"),
            f("a/b/t2"),
            wh("single"),
        ]),
    ];
    // An eStargz layer's index: no seek table needed (its chunks are not read here).
    let meta = LayerMeta {
        compression: Compression::Gzip,
        estargz: true,
        whole: false,
        uncompressed_size: 0,
        compressed_size: 0,
    };
    let dir = tempfile::tempdir().unwrap();
    let indexes: Vec<LayerIndex> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.path().join(format!("ix{i}"));
            index::write_atomic(&p, &index::encode(&meta, l, None, &[]).unwrap()).unwrap();
            LayerIndex::open(&p).unwrap()
        })
        .collect();
    for n in 1..=layers.len() {
        let from_entries = MergedTree::build(&layers[..n]).unwrap();
        let from_indexes = MergedTree::build_indexes(&indexes[..n]).unwrap();
        assert_eq!(from_entries.encode(), from_indexes.encode(), "{n} layers");
        assert_eq!(listing(&from_entries), listing(&from_indexes));
    }
    let t = MergedTree::build_indexes(&indexes[..2]).unwrap();
    assert!(t.resolve("z/1").is_none() && t.resolve("a/c").is_some());
    assert_eq!(t.aliases(t.resolve("a/b/t").unwrap()).count(), 3);
}
