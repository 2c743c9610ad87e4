//! The block store contract, run against every implementation: in memory,
//! the embedded on-disk store, and the Kubo RPC store talking to a real
//! js-ipfs daemon on loopback (Kubo's own binary cannot be installed here;
//! js-ipfs serves the same `/api/v0`).

mod common;

use shoal_storage::block::{DAG_PB, RAW};
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{
    car, exporter, pin, repo, Block, BlockStore, CidVersion, Error, FsStore, KuboStore, MemStore, PinMode,
};

fn contract(store: &dyn BlockStore) {
    // put / get / has / size, keyed by multihash across CID versions.
    let raw = Block::new(CidVersion::V1, RAW, b"contract raw block".to_vec());
    assert!(!store.has(raw.cid()).unwrap());
    assert!(matches!(store.get(raw.cid()), Err(Error::NotFound { .. })));
    store.put(&raw).unwrap();
    store.put(&raw).unwrap(); // idempotent
    assert!(store.has(raw.cid()).unwrap());
    assert_eq!(store.size(raw.cid()).unwrap(), Some(raw.len() as u64));
    assert_eq!(store.get(raw.cid()).unwrap(), raw);

    let v0 = Block::new(CidVersion::V0, DAG_PB, vec![0x0a, 0x02, 0x08, 0x01]);
    let v1 = Block::new(CidVersion::V1, DAG_PB, vec![0x0a, 0x02, 0x08, 0x01]);
    store.put(&v0).unwrap();
    assert_eq!(store.get(v1.cid()).unwrap().data(), v0.data());

    // list names every stored multihash.
    let listed: Vec<_> = store.list().unwrap().iter().map(|c| c.hash().to_bytes()).collect();
    assert!(listed.contains(&raw.cid().hash().to_bytes()));
    assert!(listed.contains(&v0.cid().hash().to_bytes()));

    // Import a real DAG, pin it, export it back byte for byte.
    let data = common::pseudo_random(700_000, 42);
    let added = Importer::new(store, Options::with_version(CidVersion::V1)).add_bytes(&data).unwrap();
    store.flush().unwrap();
    let mut out = Vec::new();
    exporter::cat(store, &added.root, &mut out).unwrap();
    assert_eq!(out, data);
    pin::add(store, &added.root, PinMode::Recursive).unwrap();
    assert!(store.pin_ls().unwrap().iter().any(|(c, m)| c == &added.root && *m == PinMode::Recursive));
    assert_eq!(store.pin_mode(&added.root).unwrap(), Some(PinMode::Recursive));

    // An incomplete DAG cannot be pinned recursively.
    let partial =
        Importer::new(&MemStore::new(), Options::default()).add_bytes(&common::pseudo_random(600_000, 9)).unwrap();
    let root_only = MemStore::new();
    let full = MemStore::new();
    Importer::new(&full, Options::default()).add_bytes(&common::pseudo_random(600_000, 9)).unwrap();
    root_only.put(&full.get(&partial.root).unwrap()).unwrap();
    store.put(&full.get(&partial.root).unwrap()).unwrap();
    assert!(matches!(pin::add(store, &partial.root, PinMode::Recursive), Err(Error::Incomplete { .. })));

    // gc keeps pinned DAGs and removes the rest.
    let report = repo::gc(store).unwrap();
    assert!(report.removed >= 2, "{report:?}");
    assert!(!store.has(raw.cid()).unwrap());
    let mut out = Vec::new();
    exporter::cat(store, &added.root, &mut out).unwrap();
    assert_eq!(out, data);

    // CAR round trip through another store.
    let mut car_bytes = Vec::new();
    car::export(store, &added.root, &mut car_bytes).unwrap();
    let other = MemStore::new();
    let stats = car::import(&other, &car_bytes[..], "mem").unwrap();
    assert_eq!(stats.pinned, vec![added.root]);

    // Unpin; a second unpin says it is not pinned.
    store.pin_rm(&added.root).unwrap();
    assert!(matches!(store.pin_rm(&added.root), Err(Error::NotPinned { .. })));
    repo::gc(store).unwrap();
    assert!(!store.has(&added.root).unwrap());
}

#[test]
fn mem_store() {
    contract(&MemStore::new());
}

#[test]
fn fs_store() {
    let dir = tempfile::tempdir().unwrap();
    contract(&FsStore::open(dir.path()).unwrap());
    // Pins survive reopening.
    let s = FsStore::open(dir.path()).unwrap();
    let b = Block::new(CidVersion::V1, RAW, b"kept".to_vec());
    s.put(&b).unwrap();
    s.flush().unwrap();
    s.pin_add(b.cid(), PinMode::Direct).unwrap();
    drop(s);
    let s = FsStore::open(dir.path()).unwrap();
    assert_eq!(s.pin_ls().unwrap(), vec![(*b.cid(), PinMode::Direct)]);
    assert_eq!(s.pin_mode(b.cid()).unwrap(), Some(PinMode::Direct));
    let unpinned = Block::new(CidVersion::V1, RAW, b"not pinned".to_vec());
    assert_eq!(s.pin_mode(unpinned.cid()).unwrap(), None);
    assert_eq!(s.get(b.cid()).unwrap(), b);
}

#[test]
fn kubo_store_against_a_real_rpc_server() {
    let daemon = common::Daemon::start();
    let store = KuboStore::connect(&daemon.api).unwrap();
    contract(&store);
}

#[test]
fn unreachable_kubo_api_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let err = KuboStore::connect("http://127.0.0.1:1").unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("cannot reach the daemon"), "{err}");
    let err = KuboStore::connect("not a url").unwrap_err().to_string();
    assert!(err.contains("not a valid url"), "{err}");
}
