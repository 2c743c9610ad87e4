//! DAGs from strangers: names that try to escape, sizes that lie, depth
//! bombs. The exporter refuses them without writing outside its target.

use shoal_storage::block::{DAG_PB, RAW};
use shoal_storage::pb::{DataType, PbLink, PbNode, UnixFs};
use shoal_storage::{exporter, Block, BlockStore, Cid, CidVersion, Error, MemStore};

fn file(store: &MemStore, bytes: &[u8]) -> Cid {
    let b = Block::new(CidVersion::V1, RAW, bytes.to_vec());
    store.put(&b).unwrap();
    *b.cid()
}

fn dir(store: &MemStore, entries: &[(&str, Cid)]) -> Cid {
    let node = PbNode {
        links: entries.iter().map(|(n, c)| PbLink { hash: *c, name: Some(n.to_string()), tsize: Some(1) }).collect(),
        data: Some(UnixFs::new(DataType::Directory).encode()),
    };
    let b = Block::new(CidVersion::V1, DAG_PB, node.encode());
    store.put(&b).unwrap();
    *b.cid()
}

#[test]
fn escaping_names_are_refused() {
    let s = MemStore::new();
    let f = file(&s, b"evil");
    let t = tempfile::tempdir().unwrap();
    for bad in ["..", ".", "../evil", "a/b", ""] {
        let d = dir(&s, &[(bad, f)]);
        let dest = t.path().join("inner").join("out");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let err = exporter::get(&s, &d, &dest).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{bad:?}: {err}");
        assert!(!t.path().join("evil").exists() && !t.path().join("inner/evil").exists());
        let _ = std::fs::remove_dir_all(&dest);
    }
    let d = dir(&s, &[("same", f), ("same", f)]);
    let err = exporter::ls(&s, &d).unwrap_err().to_string();
    assert!(err.contains("two entries named"), "{err}");
}

#[test]
fn lying_sizes_are_caught() {
    let s = MemStore::new();
    let leaf = file(&s, b"abc");
    let mut u = UnixFs::new(DataType::File);
    u.filesize = Some(1000);
    u.blocksizes = vec![1000];
    let node = PbNode {
        links: vec![PbLink { hash: leaf, name: Some(String::new()), tsize: Some(3) }],
        data: Some(u.encode()),
    };
    let b = Block::new(CidVersion::V1, DAG_PB, node.encode());
    s.put(&b).unwrap();
    let err = exporter::cat(&s, b.cid(), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("declares 1000 bytes"), "{err}");
}

#[test]
fn depth_bombs_are_bounded() {
    let s = MemStore::new();
    let mut cur = file(&s, b"x");
    for _ in 0..200 {
        let mut u = UnixFs::new(DataType::File);
        u.filesize = Some(1);
        u.blocksizes = vec![1];
        let node = PbNode {
            links: vec![PbLink { hash: cur, name: Some(String::new()), tsize: Some(1) }],
            data: Some(u.encode()),
        };
        let b = Block::new(CidVersion::V1, DAG_PB, node.encode());
        s.put(&b).unwrap();
        cur = *b.cid();
    }
    let err = exporter::cat(&s, &cur, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("deeper than"), "{err}");
}

#[test]
fn symlinks_are_recreated_not_followed() {
    let s = MemStore::new();
    let mut u = UnixFs::new(DataType::Symlink);
    u.data = Some(b"/etc/passwd".to_vec());
    let node = PbNode { links: vec![], data: Some(u.encode()) };
    let link = Block::new(CidVersion::V1, DAG_PB, node.encode());
    s.put(&link).unwrap();
    let d = dir(&s, &[("l", *link.cid())]);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    exporter::get(&s, &d, &out).unwrap();
    assert_eq!(std::fs::read_link(out.join("l")).unwrap().to_str().unwrap(), "/etc/passwd");
}
