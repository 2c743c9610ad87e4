//! The in-process network of real nodes (`shoal_sim::net`), kept short for
//! `make test`: 100 compute nodes on libp2p's memory transport, each
//! with its real behaviours, planner, agreement, database and memory
//! store, and a requester that hears of most of them only through gossip
//! (every compute node dials four random peers, not the requester).

use std::time::Duration;

use shoal_sim::net::{run, Config};

/// 500 redundancy-3 jobs while a tenth of the nodes are stopped and
/// started again: every job completes, and all of them with one result
/// (every job runs the same module, whose output does not depend on its
/// argument), so no execution of a restarted node or a replacement was
/// taken for another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_complete_500_redundant_jobs_through_restarts() {
    let mut cfg = Config::new(100, 500, 3);
    cfg.churn = 0.1;
    cfg.rate = 100.0;
    cfg.idle = Duration::from_secs(2);
    cfg.deadline = Duration::from_secs(300);
    let r = run(&cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{r}");
    assert_eq!(r.restarted, 10, "{r}");
    assert_eq!(r.completed, 500, "every job completes: {r}");
    assert_eq!(r.disagreeing, 0, "{r}");
    // The requester knew the compute nodes through gossip and their
    // direct announcements, not through connections of its own.
    assert!(r.known_at_start >= 90, "{r}");
    // The connection manager keeps nodes from holding a connection to
    // every peer a DHT query ever reached (without it, 100 of 100), even
    // this soon after the start (it trims connections idle for 20 s).
    assert!(r.connections_per_node < 90.0, "{r}");
}
