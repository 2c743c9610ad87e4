//! The two protobuf messages of UnixFS v1: dag-pb's `PBNode`/`PBLink` and
//! UnixFS's `Data`, encoded byte for byte as Kubo encodes them.
//!
//! They are small enough that a dedicated codec is clearer than a protobuf
//! code generator: the canonical dag-pb form (links before data, fields in
//! ascending order, non-packed `blocksizes`) is spelled out here and the
//! decoder accepts exactly what the spec allows.

use cid::Cid;

/// A link inside a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The child's CID.
    pub hash: Cid,
    /// The entry name (directories) or `Some("")` (file chunks, as Kubo
    /// writes them); `None` when the field is absent.
    pub name: Option<String>,
    /// Cumulative size of the child's DAG in bytes.
    pub tsize: Option<u64>,
}

/// A dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PbNode {
    /// Links, in the order they are encoded (sorted by name for directories).
    pub links: Vec<PbLink>,
    /// The opaque data field (a UnixFS `Data` message for UnixFS nodes).
    pub data: Option<Vec<u8>>,
}

/// Why a protobuf message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return err("truncated varint");
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint too long")
    }

    fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| DecodeError("field number too large".into()))?;
        Ok((field, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError("length too large".into()))?;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return err("truncated length-delimited field");
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed(8),
            2 => self.bytes().map(drop),
            5 => self.fixed(4),
            w => err(format!("unsupported wire type {w}")),
        }
    }

    fn fixed(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.pos + n > self.buf.len() {
            return err("truncated fixed-width field");
        }
        self.pos += n;
        Ok(())
    }
}

impl PbLink {
    fn encode_into(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.hash.to_bytes());
        if let Some(name) = &self.name {
            put_bytes(out, 2, name.as_bytes());
        }
        if let Some(t) = self.tsize {
            put_key(out, 3, 0);
            put_varint(out, t);
        }
    }

    fn decode(buf: &[u8]) -> Result<PbLink, DecodeError> {
        let mut r = Reader::new(buf);
        let (mut hash, mut name, mut tsize) = (None, None, None);
        let mut last = 0;
        while !r.done() {
            let (field, wire) = r.key()?;
            if field <= last {
                return err("dag-pb link fields out of order or repeated");
            }
            last = field;
            match (field, wire) {
                (1, 2) => {
                    let b = r.bytes()?;
                    hash = Some(Cid::try_from(b).map_err(|e| DecodeError(format!("bad link cid: {e}")))?);
                }
                (2, 2) => {
                    let b = r.bytes()?;
                    name =
                        Some(String::from_utf8(b.to_vec()).map_err(|_| DecodeError("link name is not utf-8".into()))?);
                }
                (3, 0) => tsize = Some(r.varint()?),
                _ => return err(format!("unexpected field {field} in dag-pb link")),
            }
        }
        let hash = hash.ok_or_else(|| DecodeError("dag-pb link has no hash".into()))?;
        Ok(PbLink { hash, name, tsize })
    }
}

impl PbNode {
    /// Canonical dag-pb bytes: links first, then data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.as_ref().map_or(0, Vec::len) + 48 * self.links.len() + 8);
        let mut link = Vec::with_capacity(64);
        for l in &self.links {
            link.clear();
            l.encode_into(&mut link);
            put_bytes(&mut out, 2, &link);
        }
        if let Some(d) = &self.data {
            put_bytes(&mut out, 1, d);
        }
        out
    }

    /// Decodes a dag-pb node as the spec allows it (links, then data).
    pub fn decode(buf: &[u8]) -> Result<PbNode, DecodeError> {
        let mut r = Reader::new(buf);
        let mut node = PbNode::default();
        while !r.done() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (2, 2) => {
                    if node.data.is_some() {
                        return err("dag-pb links after data");
                    }
                    node.links.push(PbLink::decode(r.bytes()?)?);
                }
                (1, 2) => {
                    if node.data.is_some() {
                        return err("dag-pb data field repeated");
                    }
                    node.data = Some(r.bytes()?.to_vec());
                }
                _ => return err(format!("unexpected field {field} in dag-pb node")),
            }
        }
        Ok(node)
    }
}

/// The length of [`encode_file_leaf`]'s bytes for a chunk of `len` bytes.
pub(crate) fn file_leaf_len(len: u64) -> u64 {
    let data_field = if len == 0 { 0 } else { 1 + varint_len(len) as u64 + len };
    let inner = 2 + data_field + 1 + varint_len(len) as u64;
    1 + varint_len(inner) as u64 + inner
}

/// The dag-pb bytes of a UnixFS file leaf holding `chunk` (what
/// `PbNode { data: UnixFs { File, data, filesize } }.encode()` gives), built
/// with a single copy of the chunk: the importer's hot path.
pub fn encode_file_leaf(chunk: &[u8]) -> Vec<u8> {
    let len = chunk.len() as u64;
    let data_field = if chunk.is_empty() { 0 } else { 1 + varint_len(len) + chunk.len() };
    let inner = 2 + data_field + 1 + varint_len(len);
    let mut out = Vec::with_capacity(1 + varint_len(inner as u64) + inner);
    put_key(&mut out, 1, 2);
    put_varint(&mut out, inner as u64);
    put_key(&mut out, 1, 0);
    put_varint(&mut out, DataType::File as u64);
    if !chunk.is_empty() {
        put_bytes(&mut out, 2, chunk);
    }
    put_key(&mut out, 3, 0);
    put_varint(&mut out, len);
    out
}

/// UnixFS node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// Leaf of an old-style importer.
    Raw = 0,
    /// A plain directory.
    Directory = 1,
    /// A file (root, internal node or dag-pb leaf).
    File = 2,
    /// Metadata (unused by Kubo).
    Metadata = 3,
    /// A symbolic link; `data` holds the target.
    Symlink = 4,
    /// A HAMT-sharded directory.
    HamtShard = 5,
}

impl DataType {
    fn from_u64(v: u64) -> Option<DataType> {
        Some(match v {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            _ => return None,
        })
    }
}

/// The UnixFS `Data` message carried in a dag-pb node's data field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixFs {
    /// Node type.
    pub kind: DataType,
    /// Inline file bytes, symlink target, or HAMT bitfield.
    pub data: Option<Vec<u8>>,
    /// Total file size below this node.
    pub filesize: Option<u64>,
    /// File bytes below each link, in link order.
    pub blocksizes: Vec<u64>,
    /// HAMT hash function.
    pub hash_type: Option<u64>,
    /// HAMT fanout.
    pub fanout: Option<u64>,
}

impl UnixFs {
    /// A message of `kind` with no optional fields.
    pub fn new(kind: DataType) -> UnixFs {
        UnixFs { kind, data: None, filesize: None, blocksizes: Vec::new(), hash_type: None, fanout: None }
    }

    /// Encoded length, without encoding (the importer sizes buffers with it).
    pub fn encoded_len(&self) -> usize {
        let mut n = 2;
        if let Some(d) = &self.data {
            n += 1 + varint_len(d.len() as u64) + d.len();
        }
        if let Some(f) = self.filesize {
            n += 1 + varint_len(f);
        }
        n += self.blocksizes.iter().map(|&b| 1 + varint_len(b)).sum::<usize>();
        n += self.hash_type.map_or(0, |h| 1 + varint_len(h));
        n += self.fanout.map_or(0, |f| 1 + varint_len(f));
        n
    }

    /// Protobuf bytes in field order, as Kubo writes them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + 16);
        put_key(&mut out, 1, 0);
        put_varint(&mut out, self.kind as u64);
        if let Some(d) = &self.data {
            put_bytes(&mut out, 2, d);
        }
        if let Some(f) = self.filesize {
            put_key(&mut out, 3, 0);
            put_varint(&mut out, f);
        }
        for &b in &self.blocksizes {
            put_key(&mut out, 4, 0);
            put_varint(&mut out, b);
        }
        if let Some(h) = self.hash_type {
            put_key(&mut out, 5, 0);
            put_varint(&mut out, h);
        }
        if let Some(f) = self.fanout {
            put_key(&mut out, 6, 0);
            put_varint(&mut out, f);
        }
        out
    }

    /// Decodes a UnixFS `Data` message; unknown fields (mode, mtime) are
    /// skipped, as other implementations do.
    pub fn decode(buf: &[u8]) -> Result<UnixFs, DecodeError> {
        let mut r = Reader::new(buf);
        let mut kind = None;
        let mut u = UnixFs::new(DataType::Raw);
        while !r.done() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (1, 0) => {
                    let v = r.varint()?;
                    kind = Some(DataType::from_u64(v).ok_or_else(|| DecodeError(format!("unknown unixfs type {v}")))?);
                }
                (2, 2) => u.data = Some(r.bytes()?.to_vec()),
                (3, 0) => u.filesize = Some(r.varint()?),
                (4, 0) => u.blocksizes.push(r.varint()?),
                (4, 2) => {
                    // Packed encoding: legal protobuf, written by some tools.
                    let mut p = Reader::new(r.bytes()?);
                    while !p.done() {
                        u.blocksizes.push(p.varint()?);
                    }
                }
                (5, 0) => u.hash_type = Some(r.varint()?),
                (6, 0) => u.fanout = Some(r.varint()?),
                (_, w) => r.skip(w)?,
            }
        }
        u.kind = kind.ok_or_else(|| DecodeError("unixfs data has no type".into()))?;
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_directory_matches_kubo() {
        let node = PbNode { links: vec![], data: Some(UnixFs::new(DataType::Directory).encode()) };
        assert_eq!(node.encode(), vec![0x0a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn file_leaf_len_is_the_encoded_length() {
        for len in [0usize, 1, 127, 128, 1000, 16_383, 16_384, 262_144, 1 << 20] {
            assert_eq!(file_leaf_len(len as u64), encode_file_leaf(&vec![7; len]).len() as u64, "{len}");
        }
    }

    #[test]
    fn file_leaf_fast_path_matches_the_general_encoder() {
        for n in [0usize, 1, 127, 128, 300, 262144] {
            let chunk: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut u = UnixFs::new(DataType::File);
            u.filesize = Some(n as u64);
            if n > 0 {
                u.data = Some(chunk.clone());
            }
            let general = PbNode { links: vec![], data: Some(u.encode()) }.encode();
            assert_eq!(encode_file_leaf(&chunk), general, "{n}");
        }
    }

    #[test]
    fn varint_len_agrees_with_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(PbNode::decode(&[0x0a, 0x05, 0x01]).is_err());
        assert!(PbNode::decode(&[0xff; 11]).is_err());
        assert!(UnixFs::decode(&[0x10, 0x00]).is_err(), "no type");
        assert!(UnixFs::decode(&[0x08, 0x09]).is_err(), "unknown type");
    }

    fn arb_cid() -> impl Strategy<Value = Cid> {
        (any::<[u8; 32]>(), any::<bool>()).prop_map(|(d, v1)| {
            let mh = multihash::Multihash::<64>::wrap(0x12, &d).unwrap();
            if v1 {
                Cid::new_v1(0x55, mh)
            } else {
                Cid::new_v0(mh).unwrap()
            }
        })
    }

    proptest! {
        #[test]
        fn pbnode_roundtrips(
            links in proptest::collection::vec((arb_cid(), proptest::option::of("[a-z.]{0,12}"), proptest::option::of(any::<u64>())), 0..8),
            data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        ) {
            let node = PbNode {
                links: links.into_iter().map(|(hash, name, tsize)| PbLink { hash, name, tsize }).collect(),
                data,
            };
            let bytes = node.encode();
            prop_assert_eq!(PbNode::decode(&bytes).unwrap(), node);
        }

        #[test]
        fn unixfs_roundtrips(
            kind in 0u64..6,
            data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            filesize in proptest::option::of(any::<u64>()),
            blocksizes in proptest::collection::vec(any::<u64>(), 0..8),
        ) {
            let u = UnixFs { kind: DataType::from_u64(kind).unwrap(), data, filesize, blocksizes, hash_type: None, fanout: None };
            let bytes = u.encode();
            prop_assert_eq!(bytes.len(), u.encoded_len());
            prop_assert_eq!(UnixFs::decode(&bytes).unwrap(), u);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PbNode::decode(&bytes);
            let _ = UnixFs::decode(&bytes);
        }
    }
}
