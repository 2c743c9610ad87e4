//! The reproducible world of deterministic jobs: clocks and randomness.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::TryRng;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Wall-clock time every deterministic job sees: 2000-01-01T00:00:00Z.
/// A fixed, obviously-not-now date, so that nobody mistakes it for real time.
pub(crate) const FIXED_WALL_CLOCK_SECS: u64 = 946_684_800;

/// How far the deterministic monotonic clock advances per reading: 1 ms.
/// Advancing (rather than standing still) keeps "wait until time passes"
/// loops finite and makes elapsed-time measurements non-zero but meaningless
/// in a reproducible way.
pub(crate) const MONOTONIC_STEP_NANOS: u64 = 1_000_000;

/// A wall clock stuck at [`FIXED_WALL_CLOCK_SECS`].
pub(crate) struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(MONOTONIC_STEP_NANOS)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_WALL_CLOCK_SECS)
    }
}

/// A monotonic clock that starts at 0 and advances by
/// [`MONOTONIC_STEP_NANOS`] each time it is read, so its readings depend
/// only on how many times the guest asked.
#[derive(Default)]
pub(crate) struct SteppingClock {
    next: AtomicU64,
}

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NANOS
    }

    fn now(&self) -> u64 {
        self.next.fetch_add(MONOTONIC_STEP_NANOS, Ordering::Relaxed)
    }
}

/// xoshiro256** seeded from a 32-byte seed. Not cryptographic, which is
/// fine: deterministic jobs must not rely on secret randomness anyway (the
/// seed is the public job hash), and that is documented.
pub(crate) struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    pub(crate) fn new(seed: &[u8; 32], stream: u64) -> Self {
        // SplitMix64 over the seed words spreads the seed's entropy and
        // guarantees a non-zero state, which xoshiro needs.
        let mut x = stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut s = [0u64; 4];
        for (i, word) in s.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            x ^= u64::from_le_bytes(w);
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *word = z ^ (z >> 31);
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        SeededRng { s }
    }

    fn next(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SeededRng::new(&[7; 32], 0);
        let mut b = SeededRng::new(&[7; 32], 0);
        let (mut x, mut y) = ([0u8; 37], [0u8; 37]);
        a.try_fill_bytes(&mut x).unwrap();
        b.try_fill_bytes(&mut y).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, [0; 37]);
    }

    #[test]
    fn seed_and_stream_change_output() {
        let mut a = SeededRng::new(&[0; 32], 0);
        let mut b = SeededRng::new(&[0; 32], 1);
        let mut c = SeededRng::new(&[1; 32], 0);
        let va = a.try_next_u64().unwrap();
        assert_ne!(va, b.try_next_u64().unwrap());
        assert_ne!(va, c.try_next_u64().unwrap());
    }

    #[test]
    fn monotonic_clock_steps() {
        let c = SteppingClock::default();
        assert_eq!(c.now(), 0);
        assert_eq!(c.now(), MONOTONIC_STEP_NANOS);
        assert_eq!(FixedWallClock.now(), Duration::from_secs(FIXED_WALL_CLOCK_SECS));
    }
}
