//! Provider records on the IPFS DHT for the roots this node pins: results,
//! uploaded inputs and models, DAGs fetched and pinned. A periodic scan
//! compares the recursive pins with what was provided and publishes the
//! new ones, at most [`PROVIDES_PER_SECOND`] started per second and
//! [`MAX_CONCURRENT_PROVIDES`] at once, for at most [`MAX_PROVIDED_ROOTS`]
//! roots; unpinned roots stop being provided. One scan covers every way a
//! root gets pinned (the compute keeper, the requester, the API's imports,
//! `shoal pin add` on the same home) without a hook in each.
//!
//! Re-providing is kad's: it re-publishes every record it provides every
//! [`shoal_scheduler::net::IPFS_REPROVIDE_INTERVAL`] (12 h; records live
//! 48 h). A root whose provide reached no peer (the node was alone) is
//! tried again [`RETRY_AFTER`] later.
//!
//! Nothing is provided while the serve policy is `off`: a record would
//! send peers to a node that refuses them. Provider records tell the
//! network which CIDs this node holds (see docs/ipfs.md, "DHT").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use shoal_storage::{Cid, PinMode};

use crate::serve::Policy;
use crate::Node;

/// Roots provided at most; past it, newer pins are not provided (and a
/// warning says so once per scan). kad's store holds as many keys for
/// others' records too (`net::IPFS_MAX_PROVIDER_KEYS`).
pub const MAX_PROVIDED_ROOTS: usize = 4096;
/// Provides started per second at most: each is a DHT query of tens of
/// messages.
pub const PROVIDES_PER_SECOND: u32 = 10;
/// Provides running at once (a query on the public DHT takes seconds).
pub const MAX_CONCURRENT_PROVIDES: usize = 8;

/// How long a root whose provide reached no peer waits before the next
/// try: a node with no DHT peer does not query in a loop.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Scans the pins every `every` and provides the new roots; runs until
/// the node stops.
pub async fn run(node: Arc<Node>, every: Duration) {
    let mut provided: HashSet<Cid> = HashSet::new();
    // Roots whose last provide reached no peer, and when it ended.
    let mut failed: HashMap<Cid, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_cap = false;
    loop {
        tick.tick().await;
        if node.servable.policy() == Policy::Off {
            continue;
        }
        let store = node.store.clone();
        let pins = match tokio::task::spawn_blocking(move || store.pin_ls()).await {
            Ok(Ok(pins)) => pins,
            Ok(Err(e)) => {
                tracing::warn!("ipfs dht: cannot list pins to provide them: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("ipfs dht: the pin listing thread failed: {e}");
                continue;
            }
        };
        let roots: HashSet<Cid> = pins.into_iter().filter(|(_, m)| *m == PinMode::Recursive).map(|(c, _)| c).collect();
        for gone in provided.difference(&roots).copied().collect::<Vec<_>>() {
            provided.remove(&gone);
            if let Err(e) = node.client.stop_providing(gone.hash().to_bytes()).await {
                tracing::debug!("ipfs dht: cannot stop providing {gone}: {e}");
            }
        }
        failed.retain(|c, at| roots.contains(c) && at.elapsed() < RETRY_AFTER);
        let mut new: Vec<Cid> = roots.difference(&provided).filter(|c| !failed.contains_key(c)).copied().collect();
        new.sort();
        let room = MAX_PROVIDED_ROOTS.saturating_sub(provided.len());
        if new.len() > room {
            if !warned_cap {
                tracing::warn!(
                    "ipfs dht: {} pinned roots are not provided: this node provides at most {MAX_PROVIDED_ROOTS}",
                    new.len() - room
                );
                warned_cap = true;
            }
            new.truncate(room);
        }
        provide_all(&node, new, &mut provided, &mut failed).await;
    }
}

/// Provides `roots` at the bounded rate; those that reached a peer join
/// `provided`, the others `failed`.
async fn provide_all(
    node: &Node,
    roots: Vec<Cid>,
    provided: &mut HashSet<Cid>,
    failed: &mut HashMap<Cid, tokio::time::Instant>,
) {
    let mut rate = tokio::time::interval(Duration::from_secs(1) / PROVIDES_PER_SECOND);
    rate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = FuturesUnordered::new();
    let mut roots = roots.into_iter();
    loop {
        while running.len() < MAX_CONCURRENT_PROVIDES {
            let Some(cid) = roots.next() else { break };
            rate.tick().await;
            let client = node.client.clone();
            running.push(async move { (cid, client.provide(cid.hash().to_bytes()).await) });
        }
        let Some((cid, result)) = running.next().await else { break };
        match result {
            Ok(0) => {
                tracing::debug!("ipfs dht: no peer took the provider record of {cid}; retried later");
                failed.insert(cid, tokio::time::Instant::now());
            }
            Ok(peers) => {
                tracing::debug!(%cid, peers, "ipfs dht: provider record published");
                node.metrics.ipfs_provider_records_published.inc();
                provided.insert(cid);
            }
            Err(e) => {
                tracing::debug!("ipfs dht: cannot provide {cid}: {e}; retried later");
                failed.insert(cid, tokio::time::Instant::now());
            }
        }
    }
}
