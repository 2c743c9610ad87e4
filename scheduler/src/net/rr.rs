//! The node's request-response protocols (execution, blocks) through one
//! generic path of the event loop.

use libp2p::request_response::{self, cbor, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;
use std::collections::HashMap;
use tokio::sync::oneshot;

use super::proto::{BlockRequest, BlockResponse, Request, Response};
use super::{Behaviour, Error, Event, EventLoop};

/// Callers waiting for the answers to their requests, by request.
pub(super) type Pending<R> = HashMap<OutboundRequestId, oneshot::Sender<Result<R, Error>>>;

/// One of the node's request-response protocols: its messages, where its
/// behaviour and its waiting callers live, how an inbound request reaches
/// the node and what it is answered when the node is too busy to take it.
/// The event loop sends, answers and routes every such protocol through
/// one generic path.
pub(super) trait RequestResponse {
    type Request: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static;
    type Response: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static;
    fn rr(b: &mut Behaviour) -> &mut cbor::Behaviour<Self::Request, Self::Response>;
    fn pending(l: &mut EventLoop) -> &mut Pending<Self::Response>;
    fn inbound(peer: PeerId, request: Self::Request, channel: ResponseChannel<Self::Response>) -> Event;
    fn busy() -> Self::Response;
}

/// The execution protocol ([`proto::EXEC_PROTOCOL`]).
pub(super) struct Exec;

impl RequestResponse for Exec {
    type Request = Request;
    type Response = Response;
    fn rr(b: &mut Behaviour) -> &mut cbor::Behaviour<Request, Response> {
        &mut b.exec
    }
    fn pending(l: &mut EventLoop) -> &mut Pending<Response> {
        &mut l.pending_exec
    }
    fn inbound(peer: PeerId, request: Request, channel: ResponseChannel<Response>) -> Event {
        Event::Request { peer, request, channel }
    }
    fn busy() -> Response {
        Response::Error { message: "node busy; try again later".into() }
    }
}

/// The block protocol ([`proto::BLOCKS_PROTOCOL`]).
pub(super) struct Blocks;

impl RequestResponse for Blocks {
    type Request = BlockRequest;
    type Response = BlockResponse;
    fn rr(b: &mut Behaviour) -> &mut cbor::Behaviour<BlockRequest, BlockResponse> {
        &mut b.blocks
    }
    fn pending(l: &mut EventLoop) -> &mut Pending<BlockResponse> {
        &mut l.pending_blocks
    }
    fn inbound(peer: PeerId, request: BlockRequest, channel: ResponseChannel<BlockResponse>) -> Event {
        Event::Blocks { peer, request, channel }
    }
    // Nothing now: the asker tries its other providers, and this one later.
    fn busy() -> BlockResponse {
        BlockResponse::default()
    }
}

impl EventLoop {
    /// Sends `request` on protocol `P`; the answer (or the failure) goes
    /// to `reply` when it comes.
    pub(super) fn send_request<P: RequestResponse>(
        &mut self,
        peer: PeerId,
        request: P::Request,
        reply: oneshot::Sender<Result<P::Response, Error>>,
    ) {
        // A peer heard of only through gossip is dialed at the addresses
        // it announced (besides those the behaviours know).
        let addresses = self.addresses.get(&peer).cloned().unwrap_or_default();
        let id = P::rr(self.swarm.behaviour_mut()).send_request_with_addresses(&peer, request, addresses);
        P::pending(self).insert(id, reply);
    }

    /// One event of protocol `P`: a request goes to the node, an answer or
    /// a failure to the caller waiting for it.
    pub(super) fn on_request_response<P: RequestResponse>(
        &mut self,
        event: request_response::Event<P::Request, P::Response>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                self.active(peer);
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        self.emit(P::inbound(peer, request, channel))
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some(reply) = P::pending(self).remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(reply) = P::pending(self).remove(&request_id) {
                    let reason = error.to_string();
                    let _ = reply.send(Err(match error {
                        request_response::OutboundFailure::DialFailure => Error::Unreachable { peer, reason },
                        _ => Error::Request { peer, reason },
                    }));
                }
            }
            _ => {}
        }
    }
}
