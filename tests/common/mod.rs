//! Helpers shared by the integration tests (each test file is its own
//! crate and includes this module).

pub mod kubo;
pub mod procs;

/// `n` pseudo-random bytes (xorshift64 from `seed`): data that neither
/// deduplicates nor compresses.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
