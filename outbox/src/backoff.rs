//! Retry delays: exponential with jitter.

use std::time::Duration;

/// Exponential backoff: the n-th failed attempt waits between half and all
/// of `min(base * 2^(n-1), max)` ("equal jitter"), so delays grow while
/// drainers that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The cap of the delay after `attempts` failed attempts (1-based).
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let doubling = attempts.saturating_sub(1).min(32);
        self.base
            .saturating_mul(1u32 << doubling.min(31))
            .min(self.max)
    }

    /// The delay after `attempts` failed attempts, with jitter.
    pub fn delay(&self, attempts: u32) -> Duration {
        let ceiling = self.ceiling(attempts);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_jitter_bounds() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let ceilings: Vec<u128> = (1..=7).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        for attempts in 1..=40 {
            let delay = backoff.delay(attempts);
            let ceiling = backoff.ceiling(attempts);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempts}: {delay:?}"
            );
        }
    }
}
