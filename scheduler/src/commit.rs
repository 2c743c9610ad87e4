//! Commit-reveal, so that a node cannot copy another's answer.
//!
//! A node that finishes a job first sends only a commitment, a hash of its
//! result CID and a secret 32-byte nonce of its own choosing. Reveals are
//! requested only once every live execution of the job has committed (see
//! [`placement`](crate::placement)), so by the time any result is seen,
//! every node is already bound to its own. The reveal (result and nonce)
//! is accepted only if it hashes to the commitment.
//!
//! ```text
//! commitment = SHA-256("shoal-commit-v1\0" || cid bytes || nonce)
//! ```
//!
//! The domain-separation tag keeps these hashes from colliding with any
//! other SHA-256 use in the protocol; the CID's binary form is
//! self-delimiting (version, codec and multihash are length-prefixed), so
//! no two (cid, nonce) pairs hash the same input.

use sha2::{Digest, Sha256};
use shoal_storage::Cid;

/// Prefix of every commitment's hash input; bump the version to change
/// the scheme.
pub const DOMAIN: &[u8] = b"shoal-commit-v1\0";

/// The commitment to `result` under `nonce`.
pub fn commitment(result: &Cid, nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(result.to_bytes());
    h.update(nonce);
    h.finalize().into()
}

/// Whether `result` and `nonce` open `commitment`. Compares in constant
/// time: the commitment is public, but there is no reason to leak how
/// much of a forged reveal matched.
pub fn verify(commitment: &[u8; 32], result: &Cid, nonce: &[u8; 32]) -> bool {
    let expected = self::commitment(result, nonce);
    expected.iter().zip(commitment).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn cid(n: u8) -> Cid {
        *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![n]).cid()
    }

    #[test]
    fn commitment_is_fixed_by_the_scheme() {
        // Pins the scheme: a change here breaks nodes of other versions.
        let c = commitment(&cid(1), &[7u8; 32]);
        let mut h = Sha256::new();
        h.update(b"shoal-commit-v1\0");
        h.update(cid(1).to_bytes());
        h.update([7u8; 32]);
        assert_eq!(c, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn verify_accepts_only_the_committed_pair() {
        let n = [3u8; 32];
        let c = commitment(&cid(1), &n);
        assert!(verify(&c, &cid(1), &n));
        assert!(!verify(&c, &cid(2), &n));
        assert!(!verify(&c, &cid(1), &[4u8; 32]));
    }

    proptest! {
        #[test]
        fn any_change_breaks_verification(a in any::<u8>(), b in any::<u8>(), n in any::<[u8; 32]>(), flip in 0usize..32) {
            let c = commitment(&cid(a), &n);
            prop_assert!(verify(&c, &cid(a), &n));
            prop_assert_eq!(verify(&c, &cid(b), &n), a == b);
            let mut m = n;
            m[flip] ^= 1;
            prop_assert!(!verify(&c, &cid(a), &m));
        }
    }
}
