//! Blocks: bytes together with the CID that names them.
//!
//! A [`Block`] can only be built by hashing its bytes ([`Block::new`]) or by
//! checking them against a CID ([`Block::verified`]), so every block that a
//! store holds or serves has been hash-checked once on the way in.

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Multicodec code of dag-pb (UnixFS directories, file roots, CIDv0 leaves).
pub const DAG_PB: u64 = 0x70;
/// Multicodec code of raw bytes (CIDv1 file leaves).
pub const RAW: u64 = 0x55;
/// Multicodec code of dag-cbor (only ever read: CAR headers).
pub const DAG_CBOR: u64 = 0x71;
/// Multihash code of SHA2-256, the only hash Shoal writes.
pub const SHA2_256: u64 = 0x12;

/// The CID version used for new data: Kubo's `--cid-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum CidVersion {
    /// CIDv0: base58 `Qm…`, dag-pb only (Kubo's default).
    #[default]
    V0,
    /// CIDv1: base32 `bafy…` / `bafk…`.
    V1,
}

/// An immutable block of bytes and its CID.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Vec<u8>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("cid", &self.cid.to_string()).field("len", &self.data.len()).finish()
    }
}

/// SHA2-256 multihash of `data`.
pub fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    // A 32-byte digest always fits a 64-byte multihash: proven invariant.
    Multihash::wrap(SHA2_256, &digest).expect("32-byte digest fits in 64 bytes")
}

impl Block {
    /// Hashes `data` and names it with a CID of `version` and `codec`.
    ///
    /// CIDv0 can only name dag-pb; asking for a v0 raw block yields v1, as
    /// Kubo does.
    pub fn new(version: CidVersion, codec: u64, data: Vec<u8>) -> Block {
        let mh = sha256_multihash(&data);
        let cid = match (version, codec) {
            (CidVersion::V0, DAG_PB) => Cid::new_v0(mh).expect("sha2-256 multihash is valid for v0"),
            _ => Cid::new_v1(codec, mh),
        };
        Block { cid, data }
    }

    /// Checks that `data` hashes to `cid` and wraps both.
    pub fn verified(cid: Cid, data: Vec<u8>) -> Result<Block> {
        verify(&cid, &data)?;
        Ok(Block { cid, data })
    }

    /// Wraps `data` as `cid`'s block without hashing it, for bytes a store
    /// read back under that CID and a peer will verify.
    pub(crate) fn unverified(cid: Cid, data: Vec<u8>) -> Block {
        Block { cid, data }
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the bytes out.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Checks `data` against the multihash inside `cid`.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<()> {
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return Err(Error::UnsupportedHash { cid: *cid, code: mh.code() });
    }
    if sha256_multihash(data).digest() != mh.digest() {
        return Err(Error::HashMismatch { cid: *cid });
    }
    Ok(())
}

/// Parses a CID string, with or without a leading `/ipfs/`, and an optional
/// `/sub/path` after it. Returns the CID and the path segments.
pub fn parse_cid_path(s: &str) -> Result<(Cid, Vec<String>)> {
    let trimmed = s.strip_prefix("/ipfs/").unwrap_or(s);
    let mut parts = trimmed.split('/').filter(|p| !p.is_empty());
    let first = parts.next().ok_or_else(|| Error::BadCid { input: s.to_string(), reason: "it is empty".into() })?;
    let cid = Cid::try_from(first)
        .map_err(|e| Error::BadCid { input: first.to_string(), reason: e.to_string().to_lowercase() })?;
    let rest = parts.map(str::to_string).collect();
    Ok((cid, rest))
}

/// Normalises a CID to the form a store keys it by (CIDv1 raw over the same
/// multihash), so that `Qm…` and `bafy…` of the same bytes share one entry.
pub fn multihash_key(cid: &Cid) -> Vec<u8> {
    cid.hash().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v0_and_v1_name_the_same_bytes() {
        let a = Block::new(CidVersion::V0, DAG_PB, b"x".to_vec());
        let b = Block::new(CidVersion::V1, DAG_PB, b"x".to_vec());
        assert_eq!(a.cid().hash(), b.cid().hash());
        assert!(a.cid().to_string().starts_with("Qm"));
        assert!(b.cid().to_string().starts_with("bafy"));
    }

    #[test]
    fn raw_v0_is_promoted_to_v1() {
        let b = Block::new(CidVersion::V0, RAW, b"hello world".to_vec());
        assert_eq!(b.cid().to_string(), "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e");
    }

    #[test]
    fn verified_rejects_wrong_bytes() {
        let b = Block::new(CidVersion::V1, RAW, b"a".to_vec());
        let err = Block::verified(*b.cid(), b"b".to_vec()).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }));
        assert!(Block::verified(*b.cid(), b"a".to_vec()).is_ok());
    }

    #[test]
    fn parses_paths() {
        let (c, p) = parse_cid_path("/ipfs/QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o/a//b").unwrap();
        assert_eq!(c.to_string(), "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o");
        assert_eq!(p, vec!["a", "b"]);
        let err = parse_cid_path("notacid").unwrap_err().to_string();
        assert!(err.contains("notacid"), "{err}");
    }
}
