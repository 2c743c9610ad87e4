//! Announcements as they travel on gossip: signed inside the message, so
//! that a node checks each announcement's signature once, however many
//! copies of it the gossip mesh delivers.
//!
//! gossipsub's own signing (`ValidationMode::Strict`) checks the signature
//! of every copy before it drops duplicates; with a mesh of degree 4 a
//! node receives each message three or four times, and those checks were
//! the largest single cost of an idle node (15% of a 200-node network's
//! CPU here). Gossip now runs anonymous, a message is named by the SHA-256
//! of its bytes (so a forged copy can never take a genuine one's name and
//! have it dropped as a duplicate), duplicates are dropped by name, and
//! the event loop opens each new message once: a bad signature rejects it
//! (it is not forwarded, and gossipsub's scoring counts it against the
//! peer that sent it).
//!
//! Layout of a message, every length big-endian:
//!
//! ```text
//! version (1 byte, 1) | key length (2) | the signer's public key, protobuf |
//! sequence (8) | signature length (2) | signature | announcement JSON
//! ```
//!
//! The signature covers [`DOMAIN`], the sequence and the JSON. The sequence
//! is random at each start and counts up, so two announcements with the
//! same content still have different names.

use libp2p::gossipsub::MessageId;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// What a signature covers first: a signature made for anything else in
/// Shoal cannot pass as an announcement's.
pub const DOMAIN: &[u8] = b"shoal/announcement/1";

const VERSION: u8 = 1;

/// Why a gossiped announcement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("the message ends early ({0} bytes)")]
    Truncated(usize),
    #[error("unknown announcement version {0}")]
    Version(u8),
    #[error("the signer's key does not decode")]
    Key,
    #[error("the signature does not match the signer's key")]
    Signature,
}

/// Why an announcement could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("cannot sign the announcement: {0}")]
    Sign(String),
    #[error("the node's public key or signature is too long ({0} bytes)")]
    TooLong(usize),
}

fn signed_bytes(seq: u64, json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 8 + json.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(json);
    m
}

/// Signs `json` (an announcement) with `key` as message number `seq`.
pub fn seal(key: &Keypair, seq: u64, json: &[u8]) -> Result<Vec<u8>, SealError> {
    let public = key.public().encode_protobuf();
    let signature = key.sign(&signed_bytes(seq, json)).map_err(|e| SealError::Sign(e.to_string()))?;
    let key_len = u16::try_from(public.len()).map_err(|_| SealError::TooLong(public.len()))?;
    let sig_len = u16::try_from(signature.len()).map_err(|_| SealError::TooLong(signature.len()))?;
    let mut out = Vec::with_capacity(1 + 2 + public.len() + 8 + 2 + signature.len() + json.len());
    out.push(VERSION);
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&public);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sig_len.to_be_bytes());
    out.extend_from_slice(&signature);
    out.extend_from_slice(json);
    Ok(out)
}

/// A checked message: who signed it, its sequence number and the
/// announcement's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub signer: PeerId,
    pub seq: u64,
    pub json: &'a [u8],
}

/// Checks a message made by [`seal`].
pub fn open(data: &[u8]) -> Result<Opened<'_>, Invalid> {
    let mut rest = data;
    let mut take = |n: usize| -> Result<&[u8], Invalid> {
        if rest.len() < n {
            return Err(Invalid::Truncated(data.len()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let version = take(1)?[0];
    if version != VERSION {
        return Err(Invalid::Version(version));
    }
    let key_len = u16::from_be_bytes([take(1)?[0], take(1)?[0]]) as usize;
    let key = PublicKey::try_decode_protobuf(take(key_len)?).map_err(|_| Invalid::Key)?;
    let seq = u64::from_be_bytes(take(8)?.try_into().map_err(|_| Invalid::Truncated(data.len()))?);
    let sig_len = u16::from_be_bytes([take(1)?[0], take(1)?[0]]) as usize;
    let signature = take(sig_len)?;
    let json = rest;
    if !key.verify(&signed_bytes(seq, json), signature) {
        return Err(Invalid::Signature);
    }
    Ok(Opened { signer: key.to_peer_id(), seq, json })
}

/// Holds the node's key for signing its announcements. It is a
/// behaviour that does nothing on the network, so that it lives in the
/// swarm built with the same key, and signer and swarm cannot disagree.
pub struct Announcer {
    key: Keypair,
    next_seq: u64,
}

impl Announcer {
    /// Starts the sequence at a random number: a restarted node's first
    /// announcements cannot repeat its last ones.
    pub fn new(key: Keypair) -> Announcer {
        Announcer { key, next_seq: rand::random() }
    }

    /// Signs the next announcement.
    pub fn seal(&mut self, json: &[u8]) -> Result<Vec<u8>, SealError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seal(&self.key, seq, json)
    }
}

impl libp2p::swarm::NetworkBehaviour for Announcer {
    type ConnectionHandler = libp2p::swarm::dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: libp2p::swarm::ConnectionId,
        _: PeerId,
        _: &libp2p::Multiaddr,
        _: &libp2p::Multiaddr,
    ) -> Result<Self::ConnectionHandler, libp2p::swarm::ConnectionDenied> {
        Ok(libp2p::swarm::dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: libp2p::swarm::ConnectionId,
        _: PeerId,
        _: &libp2p::Multiaddr,
        _: libp2p::core::Endpoint,
        _: libp2p::core::transport::PortUse,
    ) -> Result<Self::ConnectionHandler, libp2p::swarm::ConnectionDenied> {
        Ok(libp2p::swarm::dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: libp2p::swarm::FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: libp2p::swarm::ConnectionId,
        event: libp2p::swarm::THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::swarm::ToSwarm<Self::ToSwarm, libp2p::swarm::THandlerInEvent<Self>>> {
        std::task::Poll::Pending
    }
}

/// A gossip message's name: the SHA-256 of all its bytes.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::new(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_sealed_announcement_opens_to_its_signer_sequence_and_content() {
        let key = Keypair::generate_ed25519();
        let sealed = seal(&key, 7, br#"{"boot":1}"#).unwrap();
        let opened = open(&sealed).unwrap();
        assert_eq!(opened, Opened { signer: key.public().to_peer_id(), seq: 7, json: br#"{"boot":1}"# });
    }

    #[test]
    fn an_rsa_signer_is_accepted_too() {
        // Shoal identities may be RSA (a key imported from elsewhere):
        // their keys and signatures are longer than 255 bytes.
        let der = include_bytes!("testdata/rsa-2048.pk8");
        let mut der = der.to_vec();
        let key = Keypair::rsa_from_pkcs8(&mut der).unwrap();
        let sealed = seal(&key, 1, b"{}").unwrap();
        assert_eq!(open(&sealed).unwrap().signer, key.public().to_peer_id());
    }

    #[test]
    fn changing_any_byte_is_refused() {
        let key = Keypair::generate_ed25519();
        let sealed = seal(&key, 42, br#"{"boot":1,"slots":4}"#).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let r = open(&bad);
            // A flipped bit in the key may still decode to another valid
            // key: its signature then does not match. Nothing opens as
            // the original signer with other content.
            assert!(r.is_err(), "byte {i}: {r:?}");
        }
    }

    #[test]
    fn another_nodes_key_cannot_claim_a_signature() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let sealed = seal(&a, 1, b"{}").unwrap();
        // b's key in front of a's signature.
        let b_pub = b.public().encode_protobuf();
        let a_pub = a.public().encode_protobuf();
        assert_eq!(a_pub.len(), b_pub.len());
        let mut forged = sealed.clone();
        forged[3..3 + b_pub.len()].copy_from_slice(&b_pub);
        assert_eq!(open(&forged), Err(Invalid::Signature));
    }

    #[test]
    fn an_unknown_version_and_truncation_are_named() {
        let key = Keypair::generate_ed25519();
        let mut sealed = seal(&key, 1, b"{}").unwrap();
        assert_eq!(open(&sealed[..10]), Err(Invalid::Truncated(10)));
        assert_eq!(open(&[]), Err(Invalid::Truncated(0)));
        sealed[0] = 2;
        assert_eq!(open(&sealed), Err(Invalid::Version(2)));
    }

    #[test]
    fn names_differ_with_any_byte_and_the_sequence_makes_repeats_distinct() {
        let key = Keypair::generate_ed25519();
        let a = seal(&key, 1, b"{}").unwrap();
        let b = seal(&key, 2, b"{}").unwrap();
        assert_ne!(message_id(&a), message_id(&b));
        assert_eq!(message_id(&a), message_id(&a.clone()));
    }

    proptest! {
        /// Whatever a peer sends, opening it returns an error or a checked
        /// message, never a panic.
        #[test]
        fn opening_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open(&data);
        }

        #[test]
        fn every_sealed_content_round_trips(seq in any::<u64>(), json in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let key = Keypair::generate_ed25519();
            let sealed = seal(&key, seq, &json).unwrap();
            let opened = open(&sealed).unwrap();
            prop_assert_eq!(opened.seq, seq);
            prop_assert_eq!(opened.json, &json[..]);
            prop_assert_eq!(opened.signer, key.public().to_peer_id());
        }
    }
}
