//! # shoal-scheduler
//!
//! The job model, placement, result agreement and the node-to-node protocol
//! of Shoal's peer network. Nothing lives here yet: the crate is laid out so
//! that the workspace has its final shape, and it fills in with the network
//! work (placement as a pure `(job, nodes, executions, now) -> Plan`
//! function, agreement as a pure function over result CIDs, and libp2p
//! behaviours unit-tested without sockets).
//!
//! ## Layout
//! - `lib.rs`: this overview.

pub mod net;
