//! The embedded store is private to its owner: 0700 directories and 0600
//! files whatever the umask, and an older store's tightened on open.
//!
//! A test binary of its own: the umask is the process's, so setting it
//! here cannot reach the other tests.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_storage::importer::{Importer, Options};
use shoal_storage::store::FsLimits;
use shoal_storage::{pin, repo, BlockStore, CidVersion, FsStore, PinMode};

/// Every directory and file under `root` (the root included), with their
/// permission bits.
fn tree(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.is_dir(), m.mode() & 0o7777));
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

fn assert_private(root: &Path, except: &[PathBuf]) {
    for (path, is_dir, mode) in tree(root) {
        if except.contains(&path) {
            continue;
        }
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:04o}, not {want:04o}", path.display());
    }
}

/// Imports a directory, pins it, and makes the store write several packs
/// and compact them, so every kind of file the store makes is there.
fn use_store(s: &FsStore, seed: u64) {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/big.bin"), common::pseudo_random(700_000, seed)).unwrap();
    fs::write(src.path().join("small.txt"), b"small").unwrap();
    let _w = s.write_guard().unwrap();
    let added = Importer::new(s, Options::default()).add_path(src.path()).unwrap();
    s.flush().unwrap();
    pin::add(s, &added.root, PinMode::Recursive).unwrap();
    // Garbage for compaction to rewrite into a new pack.
    Importer::new(s, Options::with_version(CidVersion::V1)).add_bytes(&common::pseudo_random(300_000, 99)).unwrap();
    s.flush().unwrap();
    drop(_w);
    let _gc = s.gc_guard().unwrap();
    repo::gc(s).unwrap();
    assert!(repo::verify(s).unwrap().ok());
}

#[test]
fn a_new_store_is_private_whatever_the_umask() {
    for umask in [0o022, 0o000] {
        let dir = tempfile::tempdir().unwrap();
        // Parents of the home that do not exist yet are the store's too.
        let home = dir.path().join("parent/home");
        // SAFETY: umask has no preconditions; the old one is put back below.
        let old = unsafe { libc::umask(umask) };
        let limits = FsLimits { pack_size: 1 << 20, ..FsLimits::default() };
        let s = FsStore::open_with(&home, limits).unwrap();
        use_store(&s, 7);
        // A second instance writing into its own pack.
        let t = FsStore::open_with(&home, limits).unwrap();
        use_store(&t, 8);
        // The store is still open: SQLite's -wal and -shm files are there.
        let names: Vec<_> = fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name()).collect();
        for f in ["repo.sqlite", "repo.sqlite-wal", "repo.sqlite-shm", "gc.lock", "blocks"] {
            assert!(names.iter().any(|n| n == f), "no {f} in {names:?}");
        }
        assert!(fs::read_dir(home.join("blocks/packs")).unwrap().count() >= 2);
        assert_private(&dir.path().join("parent"), &[]);
        assert!(s.tightened().is_empty() && t.tightened().is_empty());
        drop((s, t));
        unsafe { libc::umask(old) };
    }
}

#[test]
fn an_older_store_is_tightened_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = FsStore::open(&home).unwrap();
    use_store(&s, 3);
    drop(s);
    // What an earlier shoal left: 0755 directories, 0644 files; and a file
    // in the home that is not the store's.
    let config = home.join("config.toml");
    fs::write(&config, b"# not the store's\n").unwrap();
    for (path, is_dir, _) in tree(&home) {
        fs::set_permissions(&path, fs::Permissions::from_mode(if is_dir { 0o755 } else { 0o644 })).unwrap();
    }

    let s = FsStore::open(&home).unwrap();
    let t = s.tightened();
    assert!(t.iter().all(|t| t.done()), "{t:?}");
    let found = |p: &Path| t.iter().find(|t| t.path == p).unwrap_or_else(|| panic!("{} not in {t:?}", p.display()));
    assert_eq!(t[0].path, home, "the root comes first");
    for d in [home.clone(), home.join("blocks"), home.join("blocks/packs")] {
        let e = found(&d);
        assert_eq!((e.old_mode, e.new_mode.as_ref().ok()), (0o755, Some(&0o700)), "{e:?}");
    }
    let pack = fs::read_dir(home.join("blocks/packs")).unwrap().next().unwrap().unwrap().path();
    for f in [home.join("repo.sqlite"), home.join("gc.lock"), pack] {
        let e = found(&f);
        assert_eq!((e.old_mode, e.new_mode.as_ref().ok()), (0o644, Some(&0o600)), "{e:?}");
    }
    assert!(!t.iter().any(|t| t.path == config), "only the store's own paths are touched");
    assert_private(&home, std::slice::from_ref(&config));
    assert_eq!(fs::metadata(&config).unwrap().mode() & 0o777, 0o644);
    assert!(repo::verify(&s).unwrap().ok());
    assert_eq!(s.pin_ls().unwrap().len(), 1);
    drop(s);

    // Nothing left to tighten.
    assert!(FsStore::open(&home).unwrap().tightened().is_empty());
}
