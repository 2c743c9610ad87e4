//! Which data a node holds, told in a few KiB: a Bloom filter of the
//! multihashes of the roots it has pinned whole, announced with the node
//! ([`Announcement::holds`](crate::net::proto::Announcement::holds), hex)
//! so that placement can prefer nodes that already hold a job's inputs.
//!
//! A false positive only moves a job to a node that then fetches its
//! inputs as any other would; a node that lies about what it holds gains
//! nothing but work. The filter comes from strangers: it is bounded and
//! checked before use.

use bloomfilter::Bloom;
use shoal_storage::Cid;

/// Largest filter announced or accepted, in bytes of bitmap.
pub const MAX_BYTES: usize = 3 << 10;
/// Roots a filter is sized for; a node holding more fills it past its
/// 1% false-positive rate (the ranking hint gets coarser, nothing breaks).
pub const SIZED_FOR: usize = 2_500;
/// The fewest roots a filter is sized for (77 bytes of bitmap).
pub const SIZED_FOR_LEAST: usize = 64;
/// Most hash functions accepted in a peer's filter (each costs a hash per
/// lookup).
pub const MAX_HASHES: u32 = 16;
/// The seed of every filter: fixed, so that a filter means the same to
/// every reader (it carries its seed anyway).
const SEED: [u8; 32] = *b"shoal holds filter, version one.";

/// Why a peer's filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not hex, too large, or not a filter this node can use.
    #[error("invalid holds filter: {0}")]
    Invalid(String),
}

/// A set of roots, approximately.
pub struct Holds(Bloom<[u8]>);

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Holds({} bits)", self.0.len())
    }
}

impl Holds {
    /// A filter of `roots` (by multihash: a CIDv0 and a CIDv1 of the same
    /// data are the same root).
    ///
    /// Sized to what it holds: for the next power of two of roots from
    /// [`SIZED_FOR_LEAST`] up to [`SIZED_FOR`], so that a node holding a
    /// few roots announces a few hundred bytes, not the 3 KiB of a full
    /// filter, in every announcement (at 1,000 nodes that was most of the
    /// gossip).
    pub fn of<'a>(roots: impl IntoIterator<Item = &'a Cid>) -> Holds {
        let keys: Vec<Vec<u8>> = roots.into_iter().map(|r| r.hash().to_bytes()).collect();
        let items = keys.len().max(SIZED_FOR_LEAST).next_power_of_two().min(SIZED_FOR);
        let bytes = Bloom::<[u8]>::compute_bitmap_size(items, 0.01).clamp(1, MAX_BYTES);
        // Both sizes are non-zero: the constructor cannot fail.
        let mut bloom = match Bloom::new_with_seed(bytes, items, &SEED) {
            Ok(b) => b,
            Err(_) => unreachable!("non-zero sizes"),
        };
        for k in &keys {
            bloom.set(k.as_slice());
        }
        Holds(bloom)
    }

    /// Whether `cid`'s root may be held (no false negatives).
    pub fn contains(&self, cid: &Cid) -> bool {
        self.0.check(cid.hash().to_bytes().as_slice())
    }

    /// The filter as hex, for an announcement.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// A peer's filter, checked: bounded in size and in hash functions,
    /// with a bitmap to look into.
    pub fn from_hex(text: &str) -> Result<Holds, Error> {
        // The serialized form carries a small header before the bitmap.
        if text.len() > 2 * (MAX_BYTES + 64) {
            return Err(Error::Invalid(format!("{} hex digits, more than allowed", text.len())));
        }
        let bytes = hex::decode(text).map_err(|e| Error::Invalid(e.to_string()))?;
        let bloom = Bloom::<[u8]>::from_bytes(bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        // `is_empty` means "no item set" here; a bitmap of no bits would
        // divide by zero on the first lookup.
        #[allow(clippy::len_zero)]
        if bloom.len() == 0 {
            return Err(Error::Invalid("an empty bitmap".into()));
        }
        let k = bloom.number_of_hash_functions();
        if k == 0 || k > MAX_HASHES {
            return Err(Error::Invalid(format!("{k} hash functions; at most {MAX_HASHES}")));
        }
        Ok(Holds(bloom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::block::RAW;
    use shoal_storage::{Block, CidVersion};

    fn cid(n: u32, v: CidVersion) -> Cid {
        *Block::new(v, RAW, n.to_le_bytes().to_vec()).cid()
    }

    #[test]
    fn held_roots_are_found_through_hex_and_others_mostly_not() {
        let held: Vec<Cid> = (0..1000).map(|n| cid(n, CidVersion::V1)).collect();
        let text = Holds::of(&held).to_hex();
        assert!(text.len() <= 2 * (MAX_BYTES + 64), "{}", text.len());
        let h = Holds::from_hex(&text).unwrap();
        assert!(held.iter().all(|c| h.contains(c)), "no false negatives");
        let others = (5000..6000).filter(|n| h.contains(&cid(*n, CidVersion::V1))).count();
        assert!(others < 50, "{others} false positives in 1000 at a 1% design rate");
    }

    /// A filter grows with what it holds: a few roots cost a few hundred
    /// hex digits, and every size keeps its design rate.
    #[test]
    fn a_filter_is_sized_to_what_it_holds() {
        let mut last = 0;
        for n in [0u32, 10, 64, 65, 500, 2_500, 5_000] {
            let held: Vec<Cid> = (0..n).map(|i| cid(i, CidVersion::V1)).collect();
            let text = Holds::of(&held).to_hex();
            assert!(text.len() >= last && text.len() <= 2 * (MAX_BYTES + 64), "{n} roots: {} digits", text.len());
            last = text.len();
            let h = Holds::from_hex(&text).unwrap();
            assert!(held.iter().all(|c| h.contains(c)), "{n} roots: no false negatives");
            if n <= SIZED_FOR as u32 {
                let others = (10_000..12_000).filter(|i| h.contains(&cid(*i, CidVersion::V1))).count();
                assert!(others < 60, "{n} roots: {others} false positives in 2000 at a 1% design rate");
            }
        }
        assert!(Holds::of(&[cid(1, CidVersion::V1)]).to_hex().len() < 300);
    }

    #[test]
    fn hostile_filters_are_refused() {
        assert!(Holds::from_hex("zz").is_err());
        assert!(Holds::from_hex(&"00".repeat(MAX_BYTES + 100)).is_err());
        assert!(Holds::from_hex("").is_err());
        // A filter that would ask for every bit: refused, not slow.
        let mut bytes = hex::decode(Holds::of([]).to_hex()).unwrap();
        for b in bytes.iter_mut().take(16) {
            *b = 0xff;
        }
        if let Ok(h) = Holds::from_hex(&hex::encode(&bytes)) {
            // Whatever the header now says, using it must be bounded and safe.
            let _ = h.contains(&cid(1, CidVersion::V1));
        }
    }
}
