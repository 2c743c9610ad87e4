//! One connection's Bitswap streams. Bitswap is not request-response:
//! each side writes messages on a long-lived outbound stream of its own
//! and reads whatever the other side's streams bring (Kubo opens one and
//! keeps it; older peers may open one per message). So this handler keeps
//! at most one outbound stream, reopened when it breaks, with a bounded
//! queue in front of it, and reads up to [`MAX_INBOUND_STREAMS`] inbound
//! streams at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound, StreamUpgradeError,
};
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, Stream, SubstreamProtocol};
use libp2p::StreamProtocol;

use super::message::{self, Message};
use super::{SendId, PROTOCOLS};

/// Inbound streams read at once per connection; more are closed at once.
pub const MAX_INBOUND_STREAMS: usize = 8;
/// Messages queued for one connection's outbound stream. The event loop
/// holds a sender back (its send fails "busy") rather than queue more.
pub const MAX_QUEUED: usize = 64;
/// Longest time one message may take to write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Offers the three Bitswap versions, newest first, and hands the stream
/// over with the version the peer chose.
#[derive(Debug, Clone, Default)]
pub struct Upgrade;

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        PROTOCOLS.iter().map(|p| StreamProtocol::new(p)).collect()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, info)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, info)))
    }
}

/// What the behaviour asks of a connection.
#[derive(Debug)]
pub enum In {
    Send { id: SendId, message: Message },
}

/// What a connection tells the behaviour.
#[derive(Debug)]
pub enum Out {
    /// A message arrived.
    Received(Message),
    /// A message was written (or, `Err`, could not be).
    Sent { id: SendId, result: Result<(), String> },
    /// A frame was malformed or too large; the stream it came on is closed.
    Invalid(String),
}

type Sending = BoxFuture<'static, (Result<(), message::Error>, Stream, StreamProtocol)>;

enum Outbound {
    /// No stream, none asked for.
    None,
    /// Negotiating one.
    Opening,
    /// Open and waiting for the next message.
    Idle(Stream, StreamProtocol),
    /// Writing the message `SendId`.
    Writing(SendId, Sending),
    /// The peer does not speak Bitswap: every send fails at once.
    Unsupported,
}

/// The per-connection state.
pub struct Handler {
    inbound: SelectAll<BoxStream<'static, Result<Message, message::Error>>>,
    outbound: Outbound,
    queue: VecDeque<(SendId, Message)>,
    out: VecDeque<Out>,
}

impl Handler {
    pub(super) fn new() -> Handler {
        Handler { inbound: SelectAll::new(), outbound: Outbound::None, queue: VecDeque::new(), out: VecDeque::new() }
    }

    fn fail_queue(&mut self, reason: &str) {
        for (id, _) in self.queue.drain(..) {
            self.out.push_back(Out::Sent { id, result: Err(reason.to_string()) });
        }
    }
}

/// Reads frames from `stream` until it ends or one is bad.
fn frames(stream: Stream) -> BoxStream<'static, Result<Message, message::Error>> {
    futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match message::read(&mut stream).await {
            Ok(Some(m)) => Some((Ok(m), Some(stream))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

fn write(id: SendId, mut stream: Stream, protocol: StreamProtocol, message: Message) -> (SendId, Sending) {
    let fut = async move {
        let message = message.for_protocol(protocol.as_ref());
        let result = match tokio::time::timeout(WRITE_TIMEOUT, message::write(&mut stream, &message)).await {
            Ok(r) => r,
            Err(_) => Err(message::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))),
        };
        (result, stream, protocol)
    };
    (id, fut.boxed())
}

impl ConnectionHandler for Handler {
    type FromBehaviour = In;
    type ToBehaviour = Out;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade> {
        SubstreamProtocol::new(Upgrade, ())
    }

    fn on_behaviour_event(&mut self, event: In) {
        match event {
            In::Send { id, message } => {
                if matches!(self.outbound, Outbound::Unsupported) {
                    self.out.push_back(Out::Sent { id, result: Err("the peer does not speak bitswap".into()) });
                } else if self.queue.len() >= MAX_QUEUED {
                    self.out.push_back(Out::Sent { id, result: Err("the peer's send queue is full".into()) });
                } else {
                    self.queue.push_back((id, message));
                }
            }
        }
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queue.is_empty() || matches!(self.outbound, Outbound::Opening | Outbound::Writing(..))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Upgrade, (), Out>> {
        loop {
            if let Some(out) = self.out.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(out));
            }
            match std::mem::replace(&mut self.outbound, Outbound::None) {
                Outbound::Writing(id, mut fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => self.outbound = Outbound::Writing(id, fut),
                    Poll::Ready((Ok(()), stream, protocol)) => {
                        self.outbound = Outbound::Idle(stream, protocol);
                        self.out.push_back(Out::Sent { id, result: Ok(()) });
                        continue;
                    }
                    // A broken stream is dropped; the next message opens
                    // a new one.
                    Poll::Ready((Err(e), _, _)) => {
                        self.out.push_back(Out::Sent { id, result: Err(e.to_string()) });
                        continue;
                    }
                },
                Outbound::Idle(stream, protocol) => match self.queue.pop_front() {
                    Some((id, message)) => {
                        let (id, fut) = write(id, stream, protocol, message);
                        self.outbound = Outbound::Writing(id, fut);
                        continue;
                    }
                    None => self.outbound = Outbound::Idle(stream, protocol),
                },
                Outbound::None if !self.queue.is_empty() => {
                    self.outbound = Outbound::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(Upgrade, ()),
                    });
                }
                other => self.outbound = other,
            }
            match self.inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Out::Received(m)))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Out::Invalid(e.to_string())))
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Upgrade, Upgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol: (stream, _), .. }) => {
                if self.inbound.len() < MAX_INBOUND_STREAMS {
                    self.inbound.push(frames(stream));
                } else {
                    tracing::debug!("bitswap: too many inbound streams; closing one");
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, protocol), ..
            }) => {
                self.outbound = Outbound::Idle(stream, protocol);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                let reason = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        self.outbound = Outbound::Unsupported;
                        "the peer does not speak bitswap".to_string()
                    }
                    StreamUpgradeError::Timeout => {
                        self.outbound = Outbound::None;
                        "opening a bitswap stream timed out".to_string()
                    }
                    StreamUpgradeError::Io(e) => {
                        self.outbound = Outbound::None;
                        format!("opening a bitswap stream failed: {e}")
                    }
                    StreamUpgradeError::Apply(e) => match e {},
                };
                self.fail_queue(&reason);
            }
            _ => {}
        }
    }
}
