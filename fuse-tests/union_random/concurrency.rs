//! Concurrency: lazy lower reads checked byte for byte while the upper changes, under a
//! watchdog.

use super::*;

/// Readers check every byte of random ranges of lazily fetched lower files (some of which
/// get copied up by chmod/setxattr meanwhile: same bytes, new home), while writers create,
/// write, append, rename and unlink upper files in the same mount and check their own
/// content. A watchdog kills the daemon if it all takes too long, so a deadlock fails the
/// test instead of hanging it.
#[test]
fn concurrent_lazy_reads_and_upper_writes_are_exact_and_finish() {
    let reg = Registry::start();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut l0 = Layer::new().dir("ro").dir("cu");
    let mut l1 = Layer::new().dir("ro").dir("cu");
    for i in 0..24 {
        let size = match i % 4 {
            0 => 3000,
            1 => 200_000,
            2 => 1 << 20,
            _ => (2 << 20) + 123,
        };
        let dir = if i % 3 == 0 { "cu" } else { "ro" };
        let path = format!("{dir}/f{i}");
        let data = union_common::pseudo(size, 100 + i as u64);
        if i % 2 == 0 {
            l0 = l0.file(&path, data.clone());
        } else {
            l1 = l1.file(&path, data.clone());
        }
        files.push((path, data));
    }
    // A file in the lower layer replaced by the upper one: readers must see the top one.
    l0 = l0.file("ro/f1", b"shadowed".to_vec());
    let img = ImageBuilder::new().layer(l0).layer(l1).build("v1");
    let reference = publish_indexed(&reg, &img, "union/conc:v1");
    let env = StrataEnv::new();
    let (u, w) = (env.scratch().join("upper"), env.scratch().join("work"));
    let m = LazyMount::new(&env, &reference, "mnt", Some((&u, &w)));
    let root = m.dir.clone();
    let files = std::sync::Arc::new(files);
    let budget = Duration::from_secs(
        std::env::var("STRATA_CONC_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let mut handles = Vec::new();
    for r in 0..4u64 {
        let (files, root, tx) = (files.clone(), root.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let out = std::panic::catch_unwind(move || {
                let mut rng = SplitMix64::new(1000 + r);
                let end = Instant::now() + budget;
                let mut checked = 0u64;
                while Instant::now() < end {
                    let (path, data) = rng.pick(&files);
                    let f =
                        // Odd readers bypass the page cache, so every read reaches strata.
                        std::fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(if r % 2 == 1 { libc::O_DIRECT } else { 0 })
                            .open(root.join(path))
                            .unwrap_or_else(|e| panic!("open {path}: {e}"));
                    for _ in 0..8 {
                        let off = rng.below(data.len() as u64 + 10);
                        let len = 1 + rng.below(300_000) as usize;
                        let mut buf = vec![0u8; len];
                        let mut got = 0;
                        while got < len {
                            let n = f
                                .read_at(&mut buf[got..], off + got as u64)
                                .unwrap_or_else(|e| panic!("read {path} at {off}: {e}"));
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        let lo = (off as usize).min(data.len());
                        let hi = (off as usize + len).min(data.len());
                        assert_eq!(got, hi - lo, "{path}: short read at {off}+{len}");
                        assert!(
                            buf[..got] == data[lo..hi],
                            "{path}: wrong bytes at {off}+{len}"
                        );
                        checked += got as u64;
                    }
                }
                format!("reader {r}: {checked} bytes checked")
            });
            let _ = tx.send(out.map_err(|e| panic_text(&e)));
        }));
    }
    // Copy-up without content change, under the readers' feet.
    {
        let (files, root, tx) = (files.clone(), root.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let out = std::panic::catch_unwind(move || {
                let mut n = 0;
                for (path, data) in files.iter().filter(|(p, _)| p.starts_with("cu/")) {
                    let p = root.join(path);
                    union_common::set_xattr(&p, "user.copied", b"1")
                        .unwrap_or_else(|e| panic!("setxattr {path}: {e}"));
                    std::fs::set_permissions(
                        &p,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .unwrap();
                    assert!(
                        std::fs::read(&p).unwrap() == *data,
                        "{path} changed by copy-up"
                    );
                    n += 1;
                }
                // Then keep changing metadata of the copies while readers read them.
                let mut rng = SplitMix64::new(3000);
                let cu: Vec<&(String, Vec<u8>)> =
                    files.iter().filter(|(p, _)| p.starts_with("cu/")).collect();
                let end = Instant::now() + budget;
                while Instant::now() < end {
                    let (path, _) = rng.pick(&cu);
                    let mode = *rng.pick(&[0o600, 0o644, 0o640]);
                    std::fs::set_permissions(
                        root.join(path),
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                    .unwrap_or_else(|e| panic!("chmod {path}: {e}"));
                    n += 1;
                }
                format!("copy-up and chmod: {n} operations")
            });
            let _ = tx.send(out.map_err(|e| panic_text(&e)));
        }));
    }
    for wi in 0..2u64 {
        let (root, tx) = (root.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let out = std::panic::catch_unwind(move || {
                let mut rng = SplitMix64::new(2000 + wi);
                let dir = root.join(format!("w{wi}"));
                std::fs::create_dir(&dir).unwrap();
                let end = Instant::now() + budget;
                let mut model: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
                let mut ops = 0;
                while Instant::now() < end {
                    let name = format!("f{}", rng.below(6));
                    let p = dir.join(&name);
                    match rng.below(5) {
                        0 => {
                            let n = rng.below(100_000) as usize;
                            let d = rng.bytes(n);
                            std::fs::write(&p, &d).unwrap();
                            model.insert(name, d);
                        }
                        1 if model.contains_key(&name) => {
                            let n = rng.below(50_000) as usize;
                            let d = rng.bytes(n);
                            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                            std::io::Write::write_all(&mut f, &d).unwrap();
                            model.get_mut(&name).unwrap().extend_from_slice(&d);
                        }
                        2 if model.contains_key(&name) => {
                            let to = format!("f{}", rng.below(6));
                            std::fs::rename(&p, dir.join(&to)).unwrap();
                            let d = model.remove(&name).unwrap();
                            model.insert(to, d);
                        }
                        3 if model.contains_key(&name) => {
                            std::fs::remove_file(&p).unwrap();
                            model.remove(&name);
                        }
                        _ => {
                            for (n, d) in &model {
                                let got = std::fs::read(dir.join(n)).unwrap();
                                assert!(got == *d, "w{wi}/{n}: content differs");
                            }
                        }
                    }
                    ops += 1;
                }
                let mut names: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                assert_eq!(names, model.keys().cloned().collect::<Vec<_>>());
                format!("writer {wi}: {ops} ops")
            });
            let _ = tx.send(out.map_err(|e| panic_text(&e)));
        }));
    }
    drop(tx);
    let deadline = Instant::now() + budget + Duration::from_secs(45);
    let mut failures = Vec::new();
    for _ in 0..handles.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(s)) => println!("{s}"),
            Ok(Err(e)) => failures.push(e),
            Err(_) => {
                // Deadlock or a hung request: kill the daemon so blocked threads return.
                m.kill();
                panic!(
                    "watchdog: workers still running 45 s after their {budget:?} budget \
                     (deadlock or a request that never got a reply); daemon killed"
                );
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    assert!(failures.is_empty(), "workers failed: {failures:#?}");
    // The copied-up files kept their content and all readers' files are intact at the end.
    for (path, data) in files.iter() {
        assert!(
            std::fs::read(root.join(path)).unwrap() == *data,
            "{path} after the run"
        );
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
