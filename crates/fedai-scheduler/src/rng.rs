//! A small seeded generator (SplitMix64): the scheduler's random pick and the simulator's
//! draws both come from it, so a seed reproduces a run exactly on every platform.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, and is fast enough
/// that the simulator's million-job runs do not notice it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the clock and the address of a stack value (for callers that
    /// want a different pick each run; the simulator always passes its own seed).
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        Self(t ^ (&local as *const u8 as u64).rotate_left(32))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias worth measuring (Lemire's method).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let x = a.next_u64();
            assert_eq!(x, b.next_u64());
            buckets[a.below(10)] += 1;
            b.below(10);
        }
        for c in buckets {
            assert!((9_000..11_000).contains(&c), "{buckets:?}");
        }
        let mean: f64 = (0..100_000).map(|_| a.exp(3.0)).sum::<f64>() / 100_000.0;
        assert!((mean - 3.0).abs() < 0.1, "{mean}");
    }
}
