//! Bitswap, IPFS's block exchange (`/ipfs/bitswap/1.2.0`, answering 1.1.0
//! and 1.0.0 too), so that any IPFS peer (Kubo, Helia, boxo) and a Shoal
//! node trade blocks.
//!
//! This module is the wire: a [`Behaviour`] that sends [`Message`]s to
//! peers and reports the ones that arrive. What to answer and what to ask
//! for is the pure logic of [`ledger`] (the server's per-peer wantlists)
//! and [`session`] (the client's wants, which peers to ask, when to give
//! up), driven by the node, which owns the store.
//!
//! ## Why not `beetswap`
//! `beetswap` 0.5 implements the protocol but is built on libp2p-swarm
//! 0.47 (libp2p 0.56); Shoal is on 0.57, and two libp2p versions cannot
//! share one swarm. Bitswap's wire is small (one protobuf message, varint
//! framed), and owning it lets every limit be Shoal's: frame size, streams
//! and queued messages per connection, wants and bytes per peer.
//!
//! ## Layout
//! - `message.rs`: the protobuf message, framing, CID prefixes.
//! - `handler.rs`: one connection's streams.
//! - `ledger.rs`: the server side, pure.
//! - `session.rs`: the client side, pure.
//! - `score.rs`: which peers to cut off for sending junk, pure.

pub mod handler;
pub mod ledger;
pub mod message;
pub mod score;
pub mod session;

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

pub use message::Message;

pub const PROTOCOL_1_2: &str = "/ipfs/bitswap/1.2.0";
pub const PROTOCOL_1_1: &str = "/ipfs/bitswap/1.1.0";
pub const PROTOCOL_1_0: &str = "/ipfs/bitswap/1.0.0";
/// Offered in this order: the newest first.
pub const PROTOCOLS: [&str; 3] = [PROTOCOL_1_2, PROTOCOL_1_1, PROTOCOL_1_0];

/// Names one [`Behaviour::send`], for its [`Event::Sent`].
pub type SendId = u64;

/// What the behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// `peer` sent a message.
    Received { peer: PeerId, message: Message },
    /// The message `id` to `peer` was written (or could not be).
    Sent { id: SendId, peer: PeerId, result: Result<(), String> },
    /// `peer` sent a malformed or oversized frame (its stream was closed).
    Invalid { peer: PeerId, reason: String },
}

/// The Bitswap wire for every connection.
#[derive(Default)]
pub struct Behaviour {
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Sends not yet reported, by connection: a connection that closes
    /// takes its handler's queue with it, and each of those sends must
    /// still be answered (as failed).
    unsent: HashMap<ConnectionId, HashSet<SendId>>,
    pending: VecDeque<ToSwarm<Event, handler::In>>,
    next_id: SendId,
}

impl Behaviour {
    pub fn new() -> Behaviour {
        Behaviour::default()
    }

    /// Queues `message` for `peer` on one of its connections; the outcome
    /// comes back as [`Event::Sent`] with the returned id. `None`: `peer`
    /// is not connected.
    pub fn send(&mut self, peer: PeerId, message: Message) -> Option<SendId> {
        let conn = *self.connections.get(&peer)?.first()?;
        self.next_id += 1;
        let id = self.next_id;
        self.unsent.entry(conn).or_default().insert(id);
        self.pending.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(conn),
            event: handler::In::Send { id, message },
        });
        Some(id)
    }

    /// The peers with at least one connection.
    pub fn connected(&self) -> HashSet<PeerId> {
        self.connections.keys().copied().collect()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = handler::Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(handler::Handler::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(handler::Handler::new())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(c) => {
                self.connections.entry(c.peer_id).or_default().push(c.connection_id);
            }
            FromSwarm::ConnectionClosed(c) => {
                for id in self.unsent.remove(&c.connection_id).unwrap_or_default() {
                    self.pending.push_back(ToSwarm::GenerateEvent(Event::Sent {
                        id,
                        peer: c.peer_id,
                        result: Err("the connection closed before the message was written".into()),
                    }));
                }
                if let Some(conns) = self.connections.get_mut(&c.peer_id) {
                    conns.retain(|id| *id != c.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&c.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, conn: ConnectionId, event: THandlerOutEvent<Self>) {
        let event = match event {
            handler::Out::Received(message) => Event::Received { peer, message },
            handler::Out::Sent { id, result } => {
                if let Some(ids) = self.unsent.get_mut(&conn) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.unsent.remove(&conn);
                    }
                }
                Event::Sent { id, peer, result }
            }
            handler::Out::Invalid(reason) => Event::Invalid { peer, reason },
        };
        self.pending.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::message::WantType;
    use super::*;
    use crate::net::{self, Event as NetEvent};
    use libp2p::identity::Keypair;
    use libp2p::multiaddr::Protocol;
    use shoal_storage::block::RAW;
    use shoal_storage::{Block, CidVersion};
    use std::time::Duration;
    use tokio::sync::mpsc;

    async fn node() -> (net::Client, mpsc::Receiver<NetEvent>, Multiaddr) {
        let cfg = net::Config::default();
        let swarm = net::memory_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
        let (client, event_loop, events) = net::new(swarm, &cfg);
        tokio::spawn(event_loop.run(std::future::pending()));
        let addr = client.listen("/memory/0".parse().unwrap()).await.unwrap();
        let addr = addr.with(Protocol::P2p(client.local_peer_id()));
        (client, events, addr)
    }

    async fn next_bitswap(events: &mut mpsc::Receiver<NetEvent>) -> (PeerId, Message) {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
            if let NetEvent::Bitswap { peer, message } = ev {
                return (peer, message);
            }
        }
    }

    #[tokio::test]
    async fn messages_cross_both_ways_and_an_unconnected_peer_fails_at_once() {
        let (a, mut a_events, a_addr) = node().await;
        let (b, mut b_events, _) = node().await;
        b.dial(a_addr).await.unwrap();
        let block = Block::new(CidVersion::V1, RAW, b"over bitswap".to_vec());
        // b wants, a answers: several messages in a row on b's stream.
        for i in 0..3 {
            let mut want = Message::default();
            want.push_want(block.cid(), WantType::Block, true, i);
            b.bitswap_send(a.local_peer_id(), want.clone()).await.unwrap();
            let (from, got) = next_bitswap(&mut a_events).await;
            assert_eq!((from, got), (b.local_peer_id(), want));
        }
        let mut answer = Message::default();
        answer.push_block(&block);
        a.bitswap_send(b.local_peer_id(), answer).await.unwrap();
        let (_, got) = next_bitswap(&mut b_events).await;
        let blocks: Vec<Block> = got.received_blocks().map(Result::unwrap).collect();
        assert_eq!(blocks, vec![block]);
        // Both list each other as possible Bitswap peers.
        assert_eq!(b.bitswap_peers().await.unwrap(), vec![a.local_peer_id()]);
        // An unconnected peer is an error at once, not a hang.
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(b.bitswap_send(stranger, Message::default()).await.is_err());
    }

    #[test]
    fn sends_on_a_connection_that_closes_are_answered_as_failed() {
        use libp2p::core::ConnectedPoint;
        use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
        let mut b = Behaviour::new();
        let peer = PeerId::random();
        let conn = ConnectionId::new_unchecked(1);
        let endpoint = ConnectedPoint::Dialer {
            address: "/memory/1".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: conn,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
        let written = b.send(peer, Message::default()).unwrap();
        let queued = b.send(peer, Message::default()).unwrap();
        b.on_connection_handler_event(peer, conn, handler::Out::Sent { id: written, result: Ok(()) });
        b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: conn,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sent = Vec::new();
        while let Poll::Ready(e) = b.poll(&mut cx) {
            if let ToSwarm::GenerateEvent(Event::Sent { id, result, .. }) = e {
                sent.push((id, result.is_ok()));
            }
        }
        assert_eq!(sent, vec![(written, true), (queued, false)], "every send is answered once");
        assert!(b.unsent.is_empty());
        assert!(b.send(peer, Message::default()).is_none(), "no connection left");
    }
}
