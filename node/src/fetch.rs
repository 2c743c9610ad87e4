//! Block exchange: fetching a DAG from peers, block by block, and serving
//! ours. Every block that arrives is hash-checked against the CID we asked
//! for before it is stored; a peer that sends a wrong block is skipped.

use std::collections::{HashSet, VecDeque};

use anyhow::{bail, Context as _};
use libp2p::PeerId;
use shoal_scheduler::net::proto::{self, BlockRequest, BlockResponse};
use shoal_scheduler::net::Client;
use shoal_storage::block::{DAG_PB, RAW};
use shoal_storage::pb::PbNode;
use shoal_storage::{Block, BlockStore, Cid, PinMode};

use crate::Node;

/// Most blocks one fetch may move; bounds a malicious DAG (about 1 TiB
/// of 256 KiB chunks, far past any job's input limit).
pub const MAX_FETCH_BLOCKS: usize = 4 << 20;

fn links(cid: &Cid, data: &[u8]) -> anyhow::Result<Vec<Cid>> {
    match cid.codec() {
        DAG_PB => {
            let node = PbNode::decode(data).with_context(|| format!("block {cid} is not valid dag-pb"))?;
            Ok(node.links.into_iter().map(|l| l.hash).collect())
        }
        RAW => Ok(Vec::new()),
        other => bail!("block {cid} has codec {other:#x}, which shoal cannot walk (only dag-pb and raw)"),
    }
}

/// Whether the whole DAG under `root` is here: a recursive pin is only
/// taken once the whole DAG was here and checked, and gc never removes
/// pinned blocks.
pub fn held(store: &dyn BlockStore, root: &Cid) -> bool {
    matches!(store.pin_mode(root), Ok(Some(PinMode::Recursive)))
}

/// Makes the whole DAG under `root` local, asking `providers` in order for
/// what is missing, then pins it recursively. Returns the number of blocks
/// fetched.
pub async fn fetch_dag(node: &Node, root: Cid, providers: &[PeerId]) -> anyhow::Result<usize> {
    fetch_dag_via(node, root, providers, Reach::Ipfs).await
}

/// [`fetch_dag`] from the Shoal `providers` only: for looks that must stay
/// cheap and local to them (the result cache asking a peer).
pub async fn fetch_dag_from_peers(node: &Node, root: Cid, providers: &[PeerId]) -> anyhow::Result<usize> {
    fetch_dag_via(node, root, providers, Reach::ShoalPeers).await
}

/// How far a fetch looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The given Shoal peers only.
    ShoalPeers,
    /// Then the IPFS network.
    Ipfs,
}

async fn fetch_dag_via(node: &Node, root: Cid, providers: &[PeerId], reach: Reach) -> anyhow::Result<usize> {
    let store = &node.store;
    let mut frontier = VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    let mut fetched = 0usize;
    let mut first = true;
    loop {
        // Each round walks, on one blocking thread, everything reachable
        // through blocks held here (a result just computed on this node is
        // all here): one thread hand-off per round, not one per level.
        let st = store.clone();
        let check_pin = std::mem::take(&mut first);
        let round = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Explored>> {
            if check_pin && held(&*st, &root) {
                return Ok(None);
            }
            explore(&*st, root, frontier, seen).map(Some)
        })
        .await??;
        let Some(round) = round else { return Ok(0) };
        if round.want.is_empty() {
            // `explore` pinned it.
            return Ok(fetched);
        }
        (frontier, seen) = (round.frontier, round.seen);
        let blocks = fetch_blocks(node, &round.want, providers, reach).await?;
        fetched += blocks.len();
        for b in &blocks {
            add_links(&root, b, &mut seen, &mut frontier)?;
        }
        let st = store.clone();
        tokio::task::spawn_blocking(move || st.put_many(&blocks)).await??;
    }
}

/// One round of [`fetch_dag`] on a blocking thread.
struct Explored {
    /// Blocks to ask peers for (at most [`proto::MAX_WANT`]); none: the
    /// whole DAG is here and pinned.
    want: Vec<Cid>,
    /// Blocks still to look at.
    frontier: VecDeque<Cid>,
    /// Every CID met so far.
    seen: HashSet<Cid>,
}

/// Walks from `frontier` through the blocks `store` holds, collecting the
/// missing ones up to a request's worth; pins `root` once nothing is.
fn explore(
    store: &dyn BlockStore,
    root: Cid,
    mut frontier: VecDeque<Cid>,
    mut seen: HashSet<Cid>,
) -> anyhow::Result<Explored> {
    let mut want = Vec::new();
    while want.len() < proto::MAX_WANT {
        let Some(cid) = frontier.pop_front() else { break };
        match store.get(&cid) {
            Ok(b) => add_links(&root, &b, &mut seen, &mut frontier)?,
            Err(shoal_storage::Error::NotFound { .. }) => want.push(cid),
            Err(e) => return Err(e.into()),
        }
    }
    if want.is_empty() {
        shoal_storage::pin::add(store, &root, PinMode::Recursive)
            .with_context(|| format!("cannot pin {root} after fetching it"))?;
    }
    Ok(Explored { want, frontier, seen })
}

/// Queues the links of `b` not met before.
fn add_links(root: &Cid, b: &Block, seen: &mut HashSet<Cid>, frontier: &mut VecDeque<Cid>) -> anyhow::Result<()> {
    for l in links(b.cid(), b.data())? {
        if seen.insert(l) {
            if seen.len() > MAX_FETCH_BLOCKS {
                bail!("dag {root} has more than {MAX_FETCH_BLOCKS} blocks; refusing to fetch it");
            }
            frontier.push_back(l);
        }
    }
    Ok(())
}

/// Finds `root` on a provider without fetching its DAG: asks for its
/// root block alone (the first provider that has it answers), verifies
/// it and stores it unpinned, so that its kind (file or directory) can be
/// read here. The DAG stays where it is, for the executions to fetch.
pub async fn locate(node: &Node, root: Cid, providers: &[PeerId]) -> anyhow::Result<()> {
    locate_via(node, root, providers, Reach::Ipfs).await
}

/// [`locate`] on the Shoal `providers` only.
pub async fn locate_on_peers(node: &Node, root: Cid, providers: &[PeerId]) -> anyhow::Result<()> {
    locate_via(node, root, providers, Reach::ShoalPeers).await
}

async fn locate_via(node: &Node, root: Cid, providers: &[PeerId], reach: Reach) -> anyhow::Result<()> {
    let blocks = fetch_blocks(node, &[root], providers, reach).await?;
    let st = node.store.clone();
    tokio::task::spawn_blocking(move || st.put_many(&blocks)).await.context("the storing thread panicked")??;
    Ok(())
}

/// Gets exactly `want`, verifying each block, from the first of these
/// sources that has them, each within its own deadline: the Shoal
/// `providers` (the requester and peers, over `/shoal/blocks`), then the
/// connected IPFS peers over Bitswap, then the providers the IPFS DHT
/// names (dialed, then asked over Bitswap), then the gateways. The error names the first CID
/// missing and every place asked.
async fn fetch_blocks(node: &Node, want: &[Cid], providers: &[PeerId], reach: Reach) -> anyhow::Result<Vec<Block>> {
    let mut missing: Vec<Cid> = want.to_vec();
    let mut out = Vec::with_capacity(want.len());
    let mut errors = Vec::new();
    let answered = from_shoal_peers(&node.client, providers, &mut missing, &mut out, &mut errors).await;
    if missing.is_empty() {
        return Ok(out);
    }
    if reach == Reach::ShoalPeers {
        let detail = if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) };
        bail!("block {} not found on {} shoal peer(s){detail}", missing[0], providers.len());
    }
    // The Shoal peers that answered said what they lack already.
    match node.bitswap.fetch(&missing, &answered, node.ipfs_fetch_timeout).await {
        Ok(blocks) => {
            missing.retain(|c| !blocks.iter().any(|b| b.cid() == c));
            out.extend(blocks);
        }
        Err(e) => errors.push(format!("bitswap: {}", crate::message(&e))),
    }
    if missing.is_empty() {
        return Ok(out);
    }
    from_dht_providers(node, &mut missing, &mut out, &mut errors).await;
    if missing.is_empty() {
        return Ok(out);
    }
    for base in &node.gateways {
        from_gateway(base, node.ipfs_fetch_timeout, &mut missing, &mut out, &mut errors).await;
        if missing.is_empty() {
            return Ok(out);
        }
    }
    let detail = if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) };
    bail!(
        "block {} not found on {} shoal peer(s), the connected ipfs peers, providers found through the ipfs dht nor {} \
         gateway(s){detail}; upload the data to a node of the network with `shoal push`, or connect a node that has \
         it (`--ipfs-peer`), and retry",
        missing[0],
        providers.len(),
        node.gateways.len()
    )
}

/// Providers of one CID dialed at most, per DHT lookup.
const DHT_PROVIDERS: usize = 8;

/// Looks up, on the IPFS DHT, providers of the first `missing` block
/// (within [`Node::ipfs_dht_timeout`]; a zero timeout skips the DHT), and
/// asks those connected for everything missing over Bitswap (within
/// [`Node::ipfs_fetch_timeout`]). The providers of a DAG's root usually
/// hold the rest of it: one lookup per round, not one per block.
async fn from_dht_providers(node: &Node, missing: &mut Vec<Cid>, out: &mut Vec<Block>, errors: &mut Vec<String>) {
    if node.ipfs_dht_timeout.is_zero() {
        return;
    }
    let Some(first) = missing.first().copied() else { return };
    let key = first.hash().to_bytes();
    let found = match node.client.find_providers(key, DHT_PROVIDERS, node.ipfs_dht_timeout).await {
        Ok(found) => found,
        Err(e) => {
            errors.push(format!("ipfs dht, asked for providers of {first}: {e}"));
            return;
        }
    };
    if found.is_empty() {
        errors.push(format!(
            "ipfs dht, asked for providers of {first}: none reachable within {:?}",
            node.ipfs_dht_timeout
        ));
        return;
    }
    tracing::debug!(cid = %first, providers = ?found, "ipfs dht: providers found");
    match node.bitswap.fetch_from(missing, found.clone(), node.ipfs_fetch_timeout).await {
        Ok(blocks) => {
            missing.retain(|c| !blocks.iter().any(|b| b.cid() == c));
            out.extend(blocks);
        }
        Err(e) => errors.push(format!(
            "ipfs dht: {} provider(s) of {first} found, but bitswap from them failed: {}",
            found.len(),
            crate::message(&e)
        )),
    }
}

/// Requests to one gateway at once.
const GATEWAY_CONCURRENCY: usize = 8;
/// Largest answer read for one block (a CAR of one block: the block, its
/// CID and the header).
const GATEWAY_MAX_BYTES: u64 = 4 << 20;

/// Asks the trustless gateway at `base` for each `missing` block (a CAR
/// of `dag-scope=block`, verified by [`crate::gateway::fetch_car`]).
async fn from_gateway(
    base: &str,
    timeout: std::time::Duration,
    missing: &mut Vec<Cid>,
    out: &mut Vec<Block>,
    errors: &mut Vec<String>,
) {
    use futures::StreamExt;
    let scope = crate::gateway::Scope::Block;
    let answers: Vec<(Cid, anyhow::Result<Vec<Block>>)> = futures::stream::iter(missing.clone())
        .map(|cid| async move { (cid, crate::gateway::fetch_car(base, &cid, scope, GATEWAY_MAX_BYTES, timeout).await) })
        .buffer_unordered(GATEWAY_CONCURRENCY)
        .collect()
        .await;
    let mut first_error = None;
    for (cid, answer) in answers {
        match answer {
            Ok(blocks) => {
                if let Some(b) = blocks.into_iter().find(|b| *b.cid() == cid) {
                    missing.retain(|c| *c != cid);
                    out.push(b);
                }
            }
            Err(e) => {
                first_error.get_or_insert_with(|| crate::message(&e));
            }
        }
    }
    if let Some(e) = first_error {
        errors.push(format!("gateway {base}: {e}"));
    }
}

/// Asks each Shoal provider in turn for what is still `missing`; returns
/// the providers that answered (the others may be IPFS peers, which do not
/// speak `/shoal/blocks`).
async fn from_shoal_peers(
    client: &Client,
    providers: &[PeerId],
    missing: &mut Vec<Cid>,
    out: &mut Vec<Block>,
    errors: &mut Vec<String>,
) -> Vec<PeerId> {
    let mut answered = Vec::new();
    for peer in providers {
        // A provider may answer in several rounds (size budget); stop asking
        // it once it makes no progress.
        loop {
            if missing.is_empty() {
                return answered;
            }
            let request = BlockRequest { want: missing.iter().map(|c| c.to_bytes()).collect() };
            let response = match client.blocks(*peer, request).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e.to_string());
                    break;
                }
            };
            if !answered.contains(peer) {
                answered.push(*peer);
            }
            let before = missing.len();
            for (cid, data) in response.blocks {
                let Ok(cid) = Cid::try_from(cid.as_slice()) else { continue };
                if !missing.contains(&cid) {
                    continue;
                }
                match Block::verified(cid, data) {
                    Ok(b) => {
                        missing.retain(|c| *c != cid);
                        out.push(b);
                    }
                    Err(e) => {
                        tracing::warn!("peer {peer} sent a corrupt block {cid}: {e}");
                        errors.push(format!("peer {peer} sent a corrupt block {cid}"));
                    }
                }
            }
            let answered_missing = !response.missing.is_empty();
            if missing.len() == before || answered_missing {
                break;
            }
        }
    }
    answered
}

/// Answers a block request from `store` within the response budget.
pub fn serve(store: &dyn BlockStore, request: &BlockRequest) -> BlockResponse {
    let mut response = BlockResponse::default();
    let mut budget = proto::BLOCK_RESPONSE_BUDGET;
    for raw in request.want.iter().take(proto::MAX_WANT) {
        let Ok(cid) = Cid::try_from(raw.as_slice()) else {
            response.missing.push(raw.clone());
            continue;
        };
        match store.get(&cid) {
            Ok(b) if b.len() <= budget => {
                budget -= b.len();
                response.blocks.push((raw.clone(), b.into_data()));
            }
            // Over budget: leave it for the next round, unless nothing was
            // sent yet (a block larger than the budget is never stored by
            // shoal's importer, but a CAR import may bring one).
            Ok(b) if response.blocks.is_empty() => response.blocks.push((raw.clone(), b.into_data())),
            Ok(_) => break,
            Err(_) => response.missing.push(raw.clone()),
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::importer::{Importer, Options};
    use shoal_storage::MemStore;

    #[test]
    fn serve_answers_within_budget_and_lists_missing() {
        let store = MemStore::new();
        let data = vec![7u8; 3 << 20];
        let root = Importer::new(&store, Options::default()).add_bytes(&data).unwrap().root;
        let mut want = vec![root.to_bytes()];
        let mut leaves = Vec::new();
        shoal_storage::exporter::walk(&store, &root, &mut |c, _| {
            leaves.push(c.to_bytes());
            Ok(())
        })
        .unwrap();
        want.extend(leaves);
        want.push(b"not a cid".to_vec());
        let r = serve(&store, &BlockRequest { want: want.clone() });
        assert!(!r.blocks.is_empty());
        let bytes: usize = r.blocks.iter().map(|(_, d)| d.len()).sum();
        assert!(bytes <= proto::BLOCK_RESPONSE_BUDGET);
        for (cid, data) in &r.blocks {
            let cid = Cid::try_from(cid.as_slice()).unwrap();
            Block::verified(cid, data.clone()).unwrap();
        }
        let unknown = Block::new(shoal_storage::CidVersion::V1, RAW, b"elsewhere".to_vec());
        let r = serve(&store, &BlockRequest { want: vec![unknown.cid().to_bytes()] });
        assert_eq!(r.missing, vec![unknown.cid().to_bytes()]);
    }

    #[test]
    fn explore_pins_a_dag_held_whole_and_lists_what_is_missing_otherwise() {
        let store = MemStore::new();
        // 600 distinct leaves of 1 KiB and the nodes above them.
        let opts = Options { chunk_size: 1024, ..Options::default() };
        let data: Vec<u8> = (0..600u32).flat_map(|i| std::iter::repeat_n(i.to_le_bytes(), 256).flatten()).collect();
        let root = Importer::new(&store, opts.clone()).add_bytes(&data).unwrap().root;
        let start = || (VecDeque::from([root]), HashSet::from([root]));
        let mut leaves = Vec::new();
        shoal_storage::exporter::walk(&store, &root, &mut |c, data| {
            if links(c, data.data()).unwrap().is_empty() {
                leaves.push(*c);
            }
            Ok(())
        })
        .unwrap();
        assert!(leaves.len() > proto::MAX_WANT, "{}", leaves.len());
        for c in &leaves {
            store.delete(c).unwrap();
        }
        let (frontier, seen) = start();
        let x = explore(&store, root, frontier, seen).unwrap();
        assert_eq!(x.want.len(), proto::MAX_WANT, "one request's worth at a time");
        assert!(x.want.iter().all(|c| leaves.contains(c)));
        assert!(!held(&store, &root), "not pinned while blocks are missing");
        assert_eq!(x.seen.len(), store_len(&store) + leaves.len());
        // Once they are back, one round walks it all and pins it.
        let again = Importer::new(&store, opts).add_bytes(&data).unwrap().root;
        assert_eq!(again, root);
        let (frontier, seen) = start();
        let x = explore(&store, root, frontier, seen).unwrap();
        assert!(x.want.is_empty() && x.frontier.is_empty());
        assert!(held(&store, &root));
    }

    fn store_len(store: &MemStore) -> usize {
        store.list().unwrap().len()
    }

    #[test]
    fn links_of_raw_and_dag_pb() {
        let store = MemStore::new();
        let root = Importer::new(&store, Options::default()).add_bytes(&vec![1u8; 600_000]).unwrap().root;
        let b = store.get(&root).unwrap();
        assert_eq!(links(&root, b.data()).unwrap().len(), 3);
        let raw = Block::new(shoal_storage::CidVersion::V1, RAW, b"x".to_vec());
        assert!(links(raw.cid(), raw.data()).unwrap().is_empty());
    }
}
