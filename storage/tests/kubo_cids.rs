//! Shoal's importer against real Kubo (CIDv0, Kubo's own code through its
//! shared library) and js-ipfs's importer with Kubo's settings (CIDv1: the
//! Kubo library has no CIDv1 option). Nothing here compares Shoal with its
//! own expectations: every expected CID comes from an oracle process.

mod common;

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use shoal_storage::importer::{Importer, Options, CHUNK_SIZE, MAX_LINKS};
use shoal_storage::{CidVersion, MemStore, NullStore};

fn ours(path: &Path, v: CidVersion) -> String {
    Importer::new(&NullStore, Options::with_version(v)).add_path(path).unwrap().root.to_string()
}

fn check(path: &Path) {
    let p = path.to_str().unwrap();
    let kubo = common::kubo(p);
    assert_eq!(ours(path, CidVersion::V0), kubo, "cidv0 of {p} differs from kubo");
    let js = common::js(&format!("v1 {p}"));
    assert_eq!(ours(path, CidVersion::V1), js, "cidv1 of {p} differs from js-ipfs");
}

#[test]
fn public_vectors_agree_with_kubo() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hello");
    fs::write(&f, b"hello world\n").unwrap();
    assert_eq!(common::kubo(f.to_str().unwrap()), "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o");
    check(&f);
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_eq!(common::kubo(empty.to_str().unwrap()), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
    check(&empty);
}

#[test]
fn file_sizes_at_every_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let c = CHUNK_SIZE;
    let sizes =
        [0, 1, c - 1, c, c + 1, 2 * c, MAX_LINKS * c - 1, MAX_LINKS * c, MAX_LINKS * c + 1, (MAX_LINKS + 1) * c + 17];
    for (i, &n) in sizes.iter().enumerate() {
        let f = dir.path().join(format!("f{i}"));
        fs::write(&f, common::pseudo_random(n, i as u64 + 1)).unwrap();
        check(&f);
    }
}

#[test]
fn a_file_of_hundreds_of_megabytes() {
    // 300 MiB + 1: a two-level tree whose last subtree is a single chunk.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big");
    {
        let mut w = std::io::BufWriter::new(fs::File::create(&f).unwrap());
        for i in 0..300u64 {
            std::io::Write::write_all(&mut w, &common::pseudo_random(1 << 20, i + 7)).unwrap();
        }
        std::io::Write::write_all(&mut w, b"!").unwrap();
    }
    check(&f);
}

#[test]
fn repeated_chunks_and_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("zeros");
    fs::write(&f, vec![0u8; 5 * CHUNK_SIZE + 3]).unwrap();
    check(&f);
}

#[test]
fn symlinks_are_stored_not_followed_and_the_argument_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("file"), b"content").unwrap();
    std::os::unix::fs::symlink("file", d.join("inside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.join("outside")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", d.join("sub/dangling")).unwrap();
    check(&d);
    let arg = dir.path().join("arg");
    std::os::unix::fs::symlink(d.join("file"), &arg).unwrap();
    check(&arg);
}

/// Kubo turns a directory into a HAMT shard once its estimated size
/// (sum of name + CID lengths) reaches 256 KiB: just below, just at and
/// well above the threshold, nested, and read back through the exporter.
#[test]
fn large_directories_become_hamt_shards_like_kubo() {
    let dir = tempfile::tempdir().unwrap();
    // Each entry: 12-byte name + 34-byte CIDv0 = 46 bytes; 262144 / 46 = 5698.7.
    for (n, count) in [("below", 5698usize), ("above", 5699), ("far", 12000)] {
        let d = dir.path().join(n);
        fs::create_dir(&d).unwrap();
        for i in 0..count {
            fs::write(d.join(format!("entry-{i:06}")), i.to_string()).unwrap();
        }
        check(&d);
    }
    let store = MemStore::new();
    let added = Importer::new(&store, Options::default()).add_path(&dir.path().join("far")).unwrap();
    let entries = shoal_storage::exporter::ls(&store, &added.root).unwrap();
    assert_eq!(entries.len(), 12000);
    let cid = shoal_storage::exporter::resolve(&store, &added.root, &["entry-004242".to_string()]).unwrap();
    let mut out = Vec::new();
    shoal_storage::exporter::cat(&store, &cid, &mut out).unwrap();
    assert_eq!(out, b"4242");
}

#[derive(Debug, Clone)]
enum Tree {
    File(usize, u64),
    Link(String),
    Dir(Vec<(String, Tree)>),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[A-Za-z0-9 ._~-]{1,16}".prop_filter("not . or ..", |s| s != "." && s != ".."),
        "[é€日本 a]{1,6}",
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        4 => (prop_oneof![0usize..1000, 0usize..(3 * CHUNK_SIZE)], any::<u64>()).prop_map(|(n, s)| Tree::File(n, s)),
        1 => "[a-z./]{1,20}".prop_map(Tree::Link),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        proptest::collection::btree_map(name(), inner, 0..6).prop_map(|m| Tree::Dir(m.into_iter().collect()))
    })
}

fn write_tree(path: &Path, t: &Tree) {
    match t {
        Tree::File(n, s) => fs::write(path, common::pseudo_random(*n, *s)).unwrap(),
        Tree::Link(target) => std::os::unix::fs::symlink(target, path).unwrap(),
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (n, child) in entries {
                write_tree(&path.join(n), child);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_files_match(n in prop_oneof![0usize..4096, 0usize..(4 * CHUNK_SIZE)], seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, common::pseudo_random(n, seed)).unwrap();
        check(&f);
    }

    #[test]
    fn random_trees_match(entries in proptest::collection::btree_map(name(), tree(), 0..8)) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        write_tree(&root, &Tree::Dir(entries.into_iter().collect()));
        check(&root);
    }
}
