//! Bitswap's wire format: one protobuf `Message` per frame, each frame an
//! unsigned-varint length followed by the bytes (go-msgio's varint
//! framing, as boxo and Kubo write it). The schema is boxo's
//! `message/pb/message.proto`, the same for 1.0.0, 1.1.0 and 1.2.0: 1.0.0
//! sends blocks as bare bytes of CIDv0 blocks (`blocks`), 1.1.0 adds
//! blocks with their CID prefix (`payload`), 1.2.0 adds want-have,
//! DONT_HAVE and presences.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shoal_storage::block::{DAG_PB, SHA2_256};
use shoal_storage::{Block, Cid, CidVersion};

/// Largest frame read or written: Kubo's `network.MessageSizeMax`.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest sum of block bytes put in one message we send: leaves room
/// under [`MAX_MESSAGE`] for the framing and the presences.
pub const MAX_BLOCK_BYTES_PER_MESSAGE: usize = 2 << 20;

/// A Bitswap message (protobuf, prost-derived).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<Wantlist>,
    /// Blocks of a 1.0.0 message: raw bytes, CIDv0 (sha2-256, dag-pb).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub blocks: Vec<Vec<u8>>,
    /// Blocks with their CID prefix (1.1.0 and later).
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<PayloadBlock>,
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    #[prost(int32, tag = "5")]
    pub pending_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Wantlist {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// Whether this replaces the whole wantlist the receiver holds for us.
    #[prost(bool, tag = "2")]
    pub full: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// The wanted CID, as bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub block: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub priority: i32,
    #[prost(bool, tag = "3")]
    pub cancel: bool,
    #[prost(enumeration = "WantType", tag = "4")]
    pub want_type: i32,
    #[prost(bool, tag = "5")]
    pub send_dont_have: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WantType {
    Block = 0,
    Have = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PayloadBlock {
    /// CID version, codec, multihash code and digest length, as varints.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockPresence {
    #[prost(bytes = "vec", tag = "1")]
    pub cid: Vec<u8>,
    #[prost(enumeration = "PresenceType", tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceType {
    Have = 0,
    DontHave = 1,
}

/// What can be wrong with a frame or a block in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bitswap frame of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(u64),
    #[error("bitswap frame is not a valid message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("bitswap frame length: {0}")]
    Length(#[from] unsigned_varint::io::ReadError),
    #[error("bitswap stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("block prefix {0} is malformed")]
    Prefix(String),
    #[error("block hash {0:#x} is not supported (only sha2-256)")]
    Hash(u64),
}

impl Message {
    /// Whether the message carries nothing.
    pub fn is_empty(&self) -> bool {
        self.wantlist.as_ref().is_none_or(|w| w.entries.is_empty() && !w.full)
            && self.blocks.is_empty()
            && self.payload.is_empty()
            && self.block_presences.is_empty()
    }

    /// Adds `block` with its CID prefix.
    pub fn push_block(&mut self, block: &Block) {
        self.payload.push(PayloadBlock { prefix: prefix(block.cid()), data: block.data().to_vec() });
    }

    /// Adds a want entry for `cid`.
    pub fn push_want(&mut self, cid: &Cid, want: WantType, send_dont_have: bool, priority: i32) {
        self.wantlist.get_or_insert_with(Wantlist::default).entries.push(Entry {
            block: cid.to_bytes(),
            priority,
            cancel: false,
            want_type: want as i32,
            send_dont_have,
        });
    }

    /// Adds a cancel entry for `cid`.
    pub fn push_cancel(&mut self, cid: &Cid) {
        self.wantlist.get_or_insert_with(Wantlist::default).entries.push(Entry {
            block: cid.to_bytes(),
            cancel: true,
            ..Entry::default()
        });
    }

    /// Adds a HAVE or DONT_HAVE for `cid`.
    pub fn push_presence(&mut self, cid: &Cid, have: bool) {
        let r#type = if have { PresenceType::Have } else { PresenceType::DontHave } as i32;
        self.block_presences.push(BlockPresence { cid: cid.to_bytes(), r#type });
    }

    /// Block bytes carried.
    pub fn block_bytes(&self) -> usize {
        self.payload.iter().map(|b| b.data.len()).sum::<usize>() + self.blocks.iter().map(Vec::len).sum::<usize>()
    }

    /// Every block carried, each hashed and named by the CID its prefix
    /// gives: a block is the bytes it hashes to, so a block a peer sends
    /// can only ever be stored under its own CID. A block whose prefix is
    /// malformed or names an unsupported hash is an `Err`.
    pub fn received_blocks(&self) -> impl Iterator<Item = Result<Block, Error>> + '_ {
        let v0 = self.blocks.iter().map(|data| block_from_prefix(&V0_PREFIX, data.clone()));
        let v1 = self.payload.iter().map(|b| block_from_prefix(&b.prefix, b.data.clone()));
        v0.chain(v1)
    }

    /// Rewrites the message for a peer that speaks `protocol`: 1.0.0 has
    /// no prefixes (only CIDv0 blocks go, as bare bytes), and neither 1.0.0
    /// nor 1.1.0 knows want-have or presences, which are dropped (a want-have
    /// becomes a want-block, what those versions always meant).
    pub fn for_protocol(mut self, protocol: &str) -> Message {
        if protocol == super::PROTOCOL_1_2 {
            return self;
        }
        self.block_presences.clear();
        if let Some(w) = self.wantlist.as_mut() {
            for e in &mut w.entries {
                e.want_type = WantType::Block as i32;
                e.send_dont_have = false;
            }
        }
        if protocol == super::PROTOCOL_1_0 {
            let payload = std::mem::take(&mut self.payload);
            self.blocks = payload.into_iter().filter(|b| b.prefix == V0_PREFIX).map(|b| b.data).collect();
        }
        self
    }
}

/// The CID prefix of every CIDv0 (version 0, dag-pb, sha2-256, 32 bytes).
const V0_PREFIX: [u8; 4] = [0x00, 0x70, 0x12, 0x20];

/// `cid`'s prefix: version, codec, hash code and digest length as varints.
pub fn prefix(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    let mut buf = unsigned_varint::encode::u64_buffer();
    for v in [u64::from(cid.version()), cid.codec(), cid.hash().code(), u64::from(cid.hash().size())] {
        out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
    }
    out
}

/// Hashes `data` as `prefix` says and names it.
pub fn block_from_prefix(prefix: &[u8], data: Vec<u8>) -> Result<Block, Error> {
    let bad = || Error::Prefix(hex::encode(prefix));
    let (version, rest) = unsigned_varint::decode::u64(prefix).map_err(|_| bad())?;
    let (codec, rest) = unsigned_varint::decode::u64(rest).map_err(|_| bad())?;
    let (code, rest) = unsigned_varint::decode::u64(rest).map_err(|_| bad())?;
    let (size, rest) = unsigned_varint::decode::u64(rest).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    if code != SHA2_256 || size != 32 {
        return Err(Error::Hash(code));
    }
    match version {
        0 if codec == DAG_PB => Ok(Block::new(CidVersion::V0, DAG_PB, data)),
        1 => Ok(Block::new(CidVersion::V1, codec, data)),
        _ => Err(bad()),
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Message>, Error> {
    let len = match unsigned_varint::aio::read_u64(&mut *stream).await {
        Ok(n) => n,
        Err(unsigned_varint::io::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(Error::TooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    Ok(Some(prost::Message::decode(buf.as_slice())?))
}

/// Writes one frame.
pub async fn write<S: AsyncWrite + Unpin>(stream: &mut S, message: &Message) -> Result<(), Error> {
    let bytes = prost::Message::encode_to_vec(message);
    if bytes.len() > MAX_MESSAGE {
        return Err(Error::TooLarge(bytes.len() as u64));
    }
    let mut buf = unsigned_varint::encode::usize_buffer();
    stream.write_all(unsigned_varint::encode::usize(bytes.len(), &mut buf)).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_storage::block::RAW;

    #[test]
    fn prefixes_name_the_blocks_they_came_with() {
        for (version, codec) in [(CidVersion::V0, DAG_PB), (CidVersion::V1, RAW), (CidVersion::V1, DAG_PB)] {
            let b = Block::new(version, codec, b"some bytes".to_vec());
            let back = block_from_prefix(&prefix(b.cid()), b.data().to_vec()).unwrap();
            assert_eq!(back.cid(), b.cid());
        }
        let v0 = Block::new(CidVersion::V0, DAG_PB, b"x".to_vec());
        assert_eq!(prefix(v0.cid()), V0_PREFIX);
    }

    #[test]
    fn unsupported_hashes_and_bad_prefixes_are_errors() {
        // blake3 (0x1e), 32 bytes.
        let err = block_from_prefix(&[0x01, 0x55, 0x1e, 0x20], b"x".to_vec()).unwrap_err();
        assert!(err.to_string().contains("0x1e"), "{err}");
        assert!(block_from_prefix(&[0x01, 0x55], b"x".to_vec()).is_err());
        assert!(block_from_prefix(&[0x01, 0x55, 0x12, 0x20, 0x00], b"x".to_vec()).is_err());
        // CIDv0 with a codec other than dag-pb does not exist.
        assert!(block_from_prefix(&[0x00, 0x55, 0x12, 0x20], b"x".to_vec()).is_err());
    }

    #[test]
    fn older_protocols_get_what_they_understand() {
        let v0 = Block::new(CidVersion::V0, DAG_PB, b"old".to_vec());
        let v1 = Block::new(CidVersion::V1, RAW, b"new".to_vec());
        let mut m = Message::default();
        m.push_block(&v0);
        m.push_block(&v1);
        m.push_presence(v1.cid(), true);
        m.push_want(v1.cid(), WantType::Have, true, 1);
        let m10 = m.clone().for_protocol(super::super::PROTOCOL_1_0);
        assert_eq!(m10.blocks, vec![b"old".to_vec()]);
        assert!(m10.payload.is_empty() && m10.block_presences.is_empty());
        assert_eq!(m10.wantlist.as_ref().unwrap().entries[0].want_type, WantType::Block as i32);
        let m11 = m.clone().for_protocol(super::super::PROTOCOL_1_1);
        assert_eq!(m11.payload.len(), 2);
        assert!(m11.block_presences.is_empty());
        assert_eq!(m.clone().for_protocol(super::super::PROTOCOL_1_2), m);
        let got: Vec<Cid> = m10.received_blocks().map(|b| *b.unwrap().cid()).collect();
        assert_eq!(got, vec![*v0.cid()]);
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_before_reading_them() {
        let mut frame = Vec::new();
        let mut buf = unsigned_varint::encode::u64_buffer();
        frame.extend_from_slice(unsigned_varint::encode::u64(MAX_MESSAGE as u64 + 1, &mut buf));
        let err = read(&mut futures::io::Cursor::new(frame)).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        assert!(read(&mut futures::io::Cursor::new(Vec::<u8>::new())).await.unwrap().is_none());
        // Garbage that is a valid length but not a message.
        let err = read(&mut futures::io::Cursor::new(vec![3u8, 0xff, 0xff, 0xff])).await.unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err}");
    }

    proptest! {
        #[test]
        fn messages_survive_framing(
            wants in proptest::collection::vec((any::<[u8; 8]>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<i32>()), 0..20),
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            presences in proptest::collection::vec((any::<[u8; 8]>(), any::<bool>()), 0..10),
            full in any::<bool>(),
        ) {
            let mut m = Message::default();
            for (seed, have, cancel, dont, prio) in &wants {
                let cid = *Block::new(CidVersion::V1, RAW, seed.to_vec()).cid();
                if *cancel { m.push_cancel(&cid) } else {
                    m.push_want(&cid, if *have { WantType::Have } else { WantType::Block }, *dont, *prio)
                }
            }
            if full { m.wantlist.get_or_insert_with(Wantlist::default).full = true; }
            for data in &blocks { m.push_block(&Block::new(CidVersion::V1, RAW, data.clone())); }
            for (seed, have) in &presences {
                m.push_presence(Block::new(CidVersion::V0, DAG_PB, seed.to_vec()).cid(), *have);
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (back, next) = rt.block_on(async {
                let mut wire = Vec::new();
                write(&mut wire, &m).await.unwrap();
                write(&mut wire, &Message::default()).await.unwrap();
                let mut r = futures::io::Cursor::new(wire);
                let back = read(&mut r).await.unwrap().unwrap();
                let next = read(&mut r).await.unwrap().unwrap();
                (back, next)
            });
            prop_assert_eq!(&back, &m);
            prop_assert!(next.is_empty());
            for (b, data) in back.received_blocks().zip(&blocks) {
                let b = b.unwrap();
                prop_assert_eq!(b.data(), data.as_slice());
            }
        }
    }
}
