//! The messages nodes exchange. Everything is CBOR on the wire (libp2p's
//! request-response `cbor` codec) with explicit size caps, so a peer cannot
//! make another buffer an unbounded message.
//!
//! Two request-response protocols and one gossip topic:
//! - [`EXEC_PROTOCOL`]: the execution conversation between a requester and
//!   a compute node ([`Request`] / [`Response`]): bid, run, commit, reveal,
//!   cancel, fail.
//! - [`BLOCKS_PROTOCOL`]: block exchange ([`BlockRequest`] /
//!   [`BlockResponse`]); the receiver hash-checks every block.
//! - [`ANNOUNCE_TOPIC`]: gossipsub announcements ([`Announcement`]) of each
//!   node's capacity, labels and GPU, at a period that grows with the
//!   network; the requesters a node works with get them directly and
//!   often ([`Request::Announce`]).

use serde::{Deserialize, Serialize};

/// The execution protocol's name (bumped on incompatible changes).
pub const EXEC_PROTOCOL: &str = "/shoal/exec/1";
/// The block exchange protocol's name.
pub const BLOCKS_PROTOCOL: &str = "/shoal/blocks/1";
/// Shoal's own Kademlia (peer routing between Shoal nodes).
pub const KAD_PROTOCOL: &str = "/shoal/kad/1";
/// The gossipsub topic node announcements travel on (2: signed inside the
/// message, see [`super::signed`]; nodes of version 1 would refuse them).
pub const ANNOUNCE_TOPIC: &str = "shoal/nodes/2";

/// Largest execution-protocol message: a spec is small, a reveal carries at
/// most [`MAX_LOG_BYTES`] of each stream.
pub const MAX_EXEC_MESSAGE: u64 = 1 << 20;
/// Largest block request: at most [`MAX_WANT`] CIDs.
pub const MAX_BLOCK_REQUEST: u64 = 64 << 10;
/// Largest block response. A responder stops adding blocks before this and
/// leaves the rest for the next request.
pub const MAX_BLOCK_RESPONSE: u64 = 9 << 20;
/// The byte budget a responder fills (below [`MAX_BLOCK_RESPONSE`], leaving
/// room for framing).
pub const BLOCK_RESPONSE_BUDGET: usize = 8 << 20;
/// Most CIDs one block request may ask for.
pub const MAX_WANT: usize = 256;
/// How much of an execution's stdout and stderr travels with its reveal.
pub const MAX_LOG_BYTES: usize = 64 << 10;
/// Largest announcement accepted from gossip: room for both filters at
/// their largest (holds and receipts, 6 KiB of hex each), both allow
/// lists full (64 peer ids each) and the rest (see the test below).
pub const MAX_ANNOUNCEMENT: usize = 32 << 10;

/// A request on [`EXEC_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Requester → compute: run this execution if you can. The spec is the
    /// job spec as JSON. Accepting starts it at once: the planner has
    /// already chosen this node, so a separate "run" message would only add
    /// a round trip to every execution (the latency of a redundant job is
    /// that of its slowest node).
    /// `submitter`: the submission's signed claim, checked by nodes that
    /// work only for some submitters.
    Bid {
        job: String,
        exec: String,
        spec: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        submitter: Option<crate::model::Submitter>,
    },
    /// Compute → requester: the execution finished; `commitment` binds its
    /// result CID without revealing it (see `commit`).
    /// `signature`: the node's signature (hex) of
    /// [`crate::receipt::commit_statement`], for the job's receipt.
    Commit {
        exec: String,
        commitment: [u8; 32],
        exit_code: i32,
        #[serde(default)]
        signature: String,
    },
    /// Compute → requester: the execution could not run (host-side error).
    Failed {
        exec: String,
        error: String,
        /// An input (module, data, model) that could not be fetched from
        /// any provider: the submitter's problem, not counted against the
        /// node. Absent from nodes that predate it.
        #[serde(default)]
        missing: Option<String>,
    },
    /// Requester → compute: reveal the result behind your commitment.
    Reveal { exec: String },
    /// Requester → compute: stop and forget this execution.
    Cancel { exec: String },
    /// Any node → any node: the receipts you hold of completed runs of the
    /// job with this CID (a result cache hit from another requester). Asked
    /// of peers whose announced receipts filter names the job.
    Receipts { job_cid: String },
    /// Compute → requester: this node's announcement, sent directly to the
    /// requesters it works with (its watchers) every
    /// [`Announcement::every_ms`], while gossip carries it to everyone
    /// else far less often. `watching: false` is the last one of a watch:
    /// the next comes by gossip.
    Announce { announcement: Announcement, watching: bool },
}

impl Request {
    /// The execution a request is about.
    pub fn exec(&self) -> &str {
        match self {
            Request::Bid { exec, .. }
            | Request::Commit { exec, .. }
            | Request::Failed { exec, .. }
            | Request::Reveal { exec }
            | Request::Cancel { exec } => exec,
            Request::Receipts { job_cid } => job_cid,
            Request::Announce { .. } => "",
        }
    }
}

/// A response on [`EXEC_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to `Bid`.
    Bid { accepted: bool, reason: Option<String> },
    /// Done (Commit recorded, Cancel applied...).
    Ok,
    /// The answer to `Reveal`: the result CID, the nonce that opens the
    /// commitment, and the head of each output stream.
    Revealed {
        result: String,
        nonce: [u8; 32],
        exit_code: i32,
        stdout: String,
        stderr: String,
        /// How it ran (absent from nodes that predate it).
        #[serde(default)]
        meta: crate::model::ExecMeta,
        /// The node's signature (hex) of
        /// [`crate::receipt::reveal_statement`].
        #[serde(default)]
        signature: String,
    },
    /// The answer to `Receipts`: receipt CIDs, newest first (at most
    /// [`MAX_RECEIPTS_ANSWER`]).
    Receipts { receipts: Vec<String> },
    /// The request was refused; the message says why.
    Error { message: String },
}

/// Most receipts one answer to [`Request::Receipts`] names (each one the
/// asker may fetch and verify).
pub const MAX_RECEIPTS_ANSWER: usize = 4;

/// A request on [`BLOCKS_PROTOCOL`]: CIDs in binary form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    #[serde(with = "byte_strings")]
    pub want: Vec<Vec<u8>>,
}

/// A response on [`BLOCKS_PROTOCOL`]. CIDs the responder neither sent nor
/// listed as missing were left out for size: ask again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BlockResponse {
    /// `(cid, data)` pairs; the receiver verifies each.
    #[serde(with = "byte_string_pairs")]
    pub blocks: Vec<(Vec<u8>, Vec<u8>)>,
    /// CIDs the responder does not have.
    #[serde(with = "byte_strings")]
    pub missing: Vec<Vec<u8>>,
}

// Bytes go on the wire as CBOR byte strings: serde's default for a
// `Vec<u8>` is an array of integers, where every byte of 24 or more takes
// two, so a block answer filled to its 8 MiB budget with random data came
// to ~15 MiB, past MAX_BLOCK_RESPONSE, and could not be read.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

mod byte_string_pairs {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::type_complexity)]
    pub fn serialize<S: Serializer>(v: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(a, b)| (serde_bytes::Bytes::new(a), serde_bytes::Bytes::new(b))))
    }

    #[allow(clippy::type_complexity)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Vec<u8>, Vec<u8>)>, D::Error> {
        let v: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|(a, b)| (a.into_vec(), b.into_vec())).collect())
    }
}

/// A node's GPU as announced: the model's own record (same fields on the
/// wire), so that a view needs no copy field by field.
pub use crate::model::Gpu;

/// What a node tells the network about itself: by gossip once per gossip
/// period (which grows with the network), and directly, every second, to
/// the requesters it works with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Random per process start: a new value tells requesters that the
    /// node restarted and has forgotten what it was running.
    pub boot: u64,
    /// What it offers (fields at the top level on the wire).
    #[serde(flatten)]
    pub capacity: crate::model::Capacity,
    /// The node's HTTP API, if it serves one (for `shoal nodes`).
    pub api: Option<String>,
    /// The only requesters it runs executions for (peer ids); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The roots it holds whole, as a hex Bloom filter
    /// ([`crate::holds::Holds`]); absent from nodes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<String>,
    /// The job CIDs it holds completed receipts of (its most recent
    /// [`crate::holds::SIZED_FOR`]), as a hex Bloom filter: other
    /// requesters ask it ([`Request::Receipts`]) before running one again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<String>,
    /// The longest the receiver waits for this node's next announcement
    /// (ms): its period by gossip, which grows with the network, or the
    /// period of its direct announcements to a watcher. The receiver
    /// counts the node gone after three of them missed (never sooner than
    /// the node ttl). Zero (nodes that predate it): the node ttl.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub every_ms: u64,
    /// Where to dial it (at most [`MAX_ANNOUNCED_ADDRS`]): a requester that
    /// heard of it through gossip has no other way to reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Most addresses an announcement carries (more are ignored).
pub const MAX_ANNOUNCED_ADDRS: usize = 4;

impl std::ops::Deref for Announcement {
    type Target = crate::model::Capacity;

    fn deref(&self) -> &crate::model::Capacity {
        &self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::{cbor::codec::Codec, Codec as _};
    use libp2p::StreamProtocol;

    /// A block answer filled to its budget with random bytes fits the
    /// response limit and reads back whole.
    #[tokio::test]
    async fn a_full_block_answer_of_random_bytes_fits_the_limit() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..BLOCK_RESPONSE_BUDGET)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let answer = BlockResponse { blocks: vec![(vec![1, 85, 18, 32], data)], missing: vec![vec![7; 36]] };
        let p = StreamProtocol::new(BLOCKS_PROTOCOL);
        let mut wire = Vec::new();
        let mut c = Codec::<BlockRequest, BlockResponse>::default()
            .set_response_size_maximum(MAX_BLOCK_RESPONSE)
            .set_request_size_maximum(MAX_BLOCK_REQUEST);
        c.write_response(&p, &mut futures::io::Cursor::new(&mut wire), answer.clone()).await.unwrap();
        assert!((wire.len() as u64) < MAX_BLOCK_RESPONSE, "{} bytes on the wire", wire.len());
        let back = c.read_response(&p, &mut futures::io::Cursor::new(&wire)).await.unwrap();
        assert_eq!(back, answer);
        // Requests too: 256 CIDs of 36 bytes.
        let want = BlockRequest { want: vec![vec![200; 36]; MAX_WANT] };
        let mut wire = Vec::new();
        c.write_request(&p, &mut futures::io::Cursor::new(&mut wire), want.clone()).await.unwrap();
        assert!((wire.len() as u64) < MAX_BLOCK_REQUEST, "{} bytes on the wire", wire.len());
        assert_eq!(c.read_request(&p, &mut futures::io::Cursor::new(&wire)).await.unwrap(), want);
    }

    /// The largest announcement a node can make fits the limit: both
    /// filters full, both allow lists at their 64 entries, 32 labels.
    #[test]
    fn the_largest_announcement_fits() {
        let cids: Vec<shoal_storage::Cid> = (0..5000u32).map(|i| crate::receipt::raw_cid(&i.to_le_bytes())).collect();
        let filter = crate::holds::Holds::of(&cids).to_hex();
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".to_string();
        let mut capacity = crate::model::Capacity {
            version: "0.1.0".into(),
            compute: true,
            slots_total: 64,
            slots_free: 64,
            memory_bytes: u64::MAX,
            submitters: vec![peer.clone(); 64],
            ..Default::default()
        };
        for i in 0..32 {
            capacity.labels.insert(format!("label-{i:02}-name"), format!("a-value-of-label-{i:02}"));
        }
        let a = Announcement {
            boot: u64::MAX,
            capacity,
            api: Some("http://[2001:db8::1]:65535".into()),
            allow: vec![peer; 64],
            holds: Some(filter.clone()),
            receipts: Some(filter),
            every_ms: u64::MAX,
            addrs: vec![format!("/ip6/2001:db8::1/tcp/65535/p2p/{}", "x".repeat(52)); MAX_ANNOUNCED_ADDRS],
        };
        let bytes = serde_json::to_vec(&a).unwrap();
        assert!(bytes.len() < MAX_ANNOUNCEMENT, "{} bytes", bytes.len());
    }

    /// `Revealed` as nodes sent it before execution metadata existed.
    #[derive(Serialize, Deserialize)]
    enum Before {
        Revealed { result: String, nonce: [u8; 32], exit_code: i32, stdout: String, stderr: String },
    }

    #[tokio::test]
    async fn a_reveal_without_metadata_still_decodes_on_the_wire() {
        let p = StreamProtocol::new(EXEC_PROTOCOL);
        let mut wire = Vec::new();
        let old = Before::Revealed {
            result: "bafy".into(),
            nonce: [3; 32],
            exit_code: 0,
            stdout: "out".into(),
            stderr: String::new(),
        };
        Codec::<Before, Before>::default()
            .write_response(&p, &mut futures::io::Cursor::new(&mut wire), old)
            .await
            .unwrap();
        let got = Codec::<Request, Response>::default()
            .read_response(&p, &mut futures::io::Cursor::new(&wire))
            .await
            .unwrap();
        match got {
            Response::Revealed { result, meta, .. } => {
                assert_eq!(result, "bafy");
                assert_eq!(meta, crate::model::ExecMeta::default());
            }
            other => panic!("{other:?}"),
        }
        // And the new form carries it.
        let meta = crate::model::ExecMeta { nn_devices: vec!["cpu: tract".into()], wall_ms: 4, fuel: 5 };
        let new = Response::Revealed {
            result: "bafy".into(),
            nonce: [3; 32],
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            meta: meta.clone(),
            signature: "ab".into(),
        };
        let mut wire = Vec::new();
        let mut c = Codec::<Request, Response>::default();
        c.write_response(&p, &mut futures::io::Cursor::new(&mut wire), new).await.unwrap();
        match c.read_response(&p, &mut futures::io::Cursor::new(&wire)).await.unwrap() {
            Response::Revealed { meta: got, .. } => assert_eq!(got, meta),
            other => panic!("{other:?}"),
        }
    }
}
