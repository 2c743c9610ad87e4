//! CARv1 files: export a DAG to one file, import one back.
//!
//! Format (ipld.io/specs/transport/car/carv1): a varint-prefixed dag-cbor
//! header `{roots: [CID], version: 1}`, then for each block a varint of
//! `len(cid) + len(data)`, the CID's bytes and the data. Export writes
//! blocks depth first from the root, each once, as `ipfs dag export` does.
//! Import checks every block's hash before storing it, bounds the header and
//! block sizes, and reports truncation with the byte offset.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::exporter::walk;
use crate::store::{BlockStore, PinMode};
use crate::{Block, Error, Result};

/// Largest header accepted (the header only lists roots).
pub const MAX_HEADER: u64 = 1 << 20;
/// Largest block section accepted (CID + data). Kubo's own limit for a
/// block is 2 MiB over the network; 8 MiB leaves room without letting a
/// hostile file make us allocate gigabytes.
pub const MAX_SECTION: u64 = 8 << 20;
/// Blocks put per batch while importing.
const BATCH: usize = 32;

#[derive(Serialize, Deserialize)]
struct Header {
    roots: Vec<Cid>,
    version: u64,
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CarStats {
    /// Roots named in the header.
    #[serde(serialize_with = "crate::ser_cids")]
    pub roots: Vec<Cid>,
    /// Roots whose DAG was complete and are now pinned (import only).
    #[serde(serialize_with = "crate::ser_cids")]
    pub pinned: Vec<Cid>,
    /// Blocks written or read.
    pub blocks: u64,
    /// Bytes of block data.
    pub bytes: u64,
}

fn write_varint(w: &mut dyn Write, v: u64) -> io::Result<()> {
    let mut buf = unsigned_varint::encode::u64_buffer();
    w.write_all(unsigned_varint::encode::u64(v, &mut buf))
}

/// Writes the DAG under `root` as a CARv1 to `w`.
pub fn export(store: &dyn BlockStore, root: &Cid, w: &mut dyn Write) -> Result<CarStats> {
    let header = serde_ipld_dagcbor::to_vec(&Header { roots: vec![*root], version: 1 })
        .map_err(|e| Error::Unsupported(format!("cannot encode car header: {e}")))?;
    let io_err = |e| Error::io("cannot write", "car output", e);
    write_varint(w, header.len() as u64).map_err(io_err)?;
    w.write_all(&header).map_err(io_err)?;
    let mut stats = CarStats { roots: vec![*root], ..Default::default() };
    walk(store, root, &mut |cid, block| {
        let c = cid.to_bytes();
        write_varint(w, (c.len() + block.len()) as u64).map_err(io_err)?;
        w.write_all(&c).map_err(io_err)?;
        w.write_all(block.data()).map_err(io_err)?;
        stats.blocks += 1;
        stats.bytes += block.len() as u64;
        Ok(())
    })?;
    Ok(stats)
}

struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a varint; `Ok(None)` at a clean end of input. Shared by every
/// CAR reader (the gateway client too).
pub fn read_varint(r: &mut impl Read) -> io::Result<Option<u64>> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated varint"));
        }
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "varint too long"))
}

/// Reads a CARv1 from `r` into `store`, then pins each root whose DAG is
/// complete (recursively). `name` is used in messages.
pub fn import(store: &dyn BlockStore, r: impl Read, name: &str) -> Result<CarStats> {
    let mut r = Counting { inner: io::BufReader::with_capacity(1 << 20, r), pos: 0 };
    let car_err = |reason: String| Error::Car { path: name.to_string(), reason };
    let hlen = read_varint(&mut r)
        .map_err(|e| car_err(format!("cannot read header length: {e}")))?
        .ok_or_else(|| car_err("file is empty".into()))?;
    if hlen == 0 || hlen > MAX_HEADER {
        return Err(car_err(format!(
            "header length {hlen} is out of range (1..={MAX_HEADER}); this is not a car file"
        )));
    }
    let mut hbytes = vec![0u8; hlen as usize];
    r.read_exact(&mut hbytes).map_err(|_| car_err("truncated inside the header".into()))?;
    let header: Header = serde_ipld_dagcbor::from_slice(&hbytes)
        .map_err(|e| car_err(format!("header is not a valid car v1 header: {e}")))?;
    if header.version != 1 {
        return Err(car_err(format!("car version {} is not supported (only version 1)", header.version)));
    }
    let mut stats = CarStats { roots: header.roots.clone(), ..Default::default() };
    let mut pending = Vec::with_capacity(BATCH);
    loop {
        let at = r.pos;
        let Some(len) = read_varint(&mut r).map_err(|e| car_err(format!("at byte {at}: {e}")))? else {
            break;
        };
        if len == 0 || len > MAX_SECTION {
            return Err(car_err(format!(
                "at byte {at}: block section of {len} bytes is out of range (1..={MAX_SECTION})"
            )));
        }
        let mut section = vec![0u8; len as usize];
        r.read_exact(&mut section).map_err(|_| {
            car_err(format!("truncated: block at byte {at} declares {len} bytes but the file ends first"))
        })?;
        let mut cursor = io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| car_err(format!("at byte {at}: bad cid: {e}")))?;
        let data = section[cursor.position() as usize..].to_vec();
        let block = Block::verified(cid, data).map_err(|e| car_err(format!("at byte {at}: {e}")))?;
        stats.blocks += 1;
        stats.bytes += block.len() as u64;
        pending.push(block);
        if pending.len() == BATCH {
            store.put_many(&pending)?;
            pending.clear();
        }
    }
    store.put_many(&pending)?;
    store.flush()?;
    let mut seen = HashSet::new();
    for root in &header.roots {
        if !seen.insert(*root) {
            continue;
        }
        match crate::pin::add(store, root, PinMode::Recursive) {
            Ok(()) => stats.pinned.push(*root),
            Err(Error::Incomplete { .. } | Error::NotFound { .. }) => {
                tracing::warn!(%root, "car root's dag is incomplete; not pinned");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}
