//! Block exchange: fetching a DAG from peers, block by block, and serving
//! ours. Every block that arrives is hash-checked against the CID we asked
//! for before it is stored; a peer that sends a wrong block is skipped.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use libp2p::PeerId;
use shoal_scheduler::net::proto::{self, BlockRequest, BlockResponse};
use shoal_scheduler::net::Client;
use shoal_storage::block::{DAG_PB, RAW};
use shoal_storage::pb::PbNode;
use shoal_storage::{Block, BlockStore, Cid, PinMode};

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
pub async fn fetch_dag(
    client: &Client,
    store: &Arc<dyn BlockStore>,
    root: Cid,
    providers: &[PeerId],
) -> anyhow::Result<usize> {
    let st = store.clone();
    if let Ok(true) = tokio::task::spawn_blocking(move || held(&*st, &root)).await {
        return Ok(0);
    }
    let mut frontier = VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    let mut fetched = 0usize;
    while !frontier.is_empty() {
        if seen.len() > MAX_FETCH_BLOCKS {
            bail!("dag {root} has more than {MAX_FETCH_BLOCKS} blocks; refusing to fetch it");
        }
        // Split the frontier into what we hold and what we must ask for.
        let batch: Vec<Cid> = frontier.drain(..frontier.len().min(proto::MAX_WANT)).collect();
        let st = store.clone();
        let (local, want) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<Block>, Vec<Cid>)> {
            let mut local = Vec::new();
            let mut want = Vec::new();
            for cid in batch {
                match st.get(&cid) {
                    Ok(b) => local.push(b),
                    Err(shoal_storage::Error::NotFound { .. }) => want.push(cid),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((local, want))
        })
        .await??;
        let mut got = local;
        if !want.is_empty() {
            let blocks = fetch_blocks(client, &want, providers).await?;
            fetched += blocks.len();
            let st = store.clone();
            let stored = blocks.clone();
            tokio::task::spawn_blocking(move || st.put_many(&stored)).await??;
            got.extend(blocks);
        }
        for b in &got {
            for l in links(b.cid(), b.data())? {
                if seen.insert(l) {
                    frontier.push_back(l);
                }
            }
        }
    }
    let st = store.clone();
    tokio::task::spawn_blocking(move || shoal_storage::pin::add(&*st, &root, PinMode::Recursive))
        .await?
        .with_context(|| format!("cannot pin {root} after fetching it"))?;
    Ok(fetched)
}

/// Gets exactly `want` from the providers, verifying each block.
async fn fetch_blocks(client: &Client, want: &[Cid], providers: &[PeerId]) -> anyhow::Result<Vec<Block>> {
    let mut missing: Vec<Cid> = want.to_vec();
    let mut out = Vec::with_capacity(want.len());
    let mut errors = Vec::new();
    for peer in providers {
        // A provider may answer in several rounds (size budget); stop asking
        // it once it makes no progress.
        loop {
            if missing.is_empty() {
                return Ok(out);
            }
            let request = BlockRequest { want: missing.iter().map(|c| c.to_bytes()).collect() };
            let response = match client.blocks(*peer, request).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e.to_string());
                    break;
                }
            };
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
    if missing.is_empty() {
        return Ok(out);
    }
    let detail = if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) };
    bail!(
        "block {} not found on {} peer(s){detail}; pin it on a node of the network (shoal add / shoal pin add) and retry",
        missing[0],
        providers.len()
    )
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
    fn links_of_raw_and_dag_pb() {
        let store = MemStore::new();
        let root = Importer::new(&store, Options::default()).add_bytes(&vec![1u8; 600_000]).unwrap().root;
        let b = store.get(&root).unwrap();
        assert_eq!(links(&root, b.data()).unwrap().len(), 3);
        let raw = Block::new(shoal_storage::CidVersion::V1, RAW, b"x".to_vec());
        assert!(links(raw.cid(), raw.data()).unwrap().is_empty());
    }
}
