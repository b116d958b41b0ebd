//! Which hub the next connection attempt goes to, when the driver knows
//! several (several hubs over one database, `semantics.md` §7).
//!
//! Each client starts on a random hub and steps through them with a random
//! stride coprime with their number, so it visits every hub once in each
//! round of attempts, never the same hub twice in a row, and the clients
//! of a hub that dies do not all land on the same next one. It moves on at
//! every new attempt — after a failed attempt or a lost connection. The
//! reconnect backoff between attempts is unchanged: it counts attempts,
//! whichever hub they go to. (No list is kept: this runs in the browser
//! SDK, whose every KiB counts.)

/// The rotation over `count` hub endpoints (indexes into the driver's list).
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    count: usize,
    current: usize,
    stride: usize,
    started: bool,
}

impl Endpoints {
    /// With one endpoint nothing is drawn from `rng`, so a single-hub
    /// client's jitter is the same as without this rotation.
    pub(crate) fn new(count: usize, rng: &mut fastrand::Rng) -> Self {
        let count = count.max(1);
        // Drawn as `u64(a..=b)`, the jitter's own call: no other
        // instance of fastrand's range code in the wasm.
        let last = count as u64 - 1;
        let (current, stride) = if count > 1 {
            let mut stride = rng.u64(1..=last);
            while gcd(stride, count as u64) != 1 {
                stride = rng.u64(1..=last);
            }
            (rng.u64(0..=last) as usize, stride as usize)
        } else {
            (0, 1)
        };
        Endpoints {
            count,
            current,
            stride,
            started: false,
        }
    }

    /// The endpoint of the attempt being made now.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// Moves to the endpoint for a new attempt (the first attempt keeps the
    /// starting one).
    pub(crate) fn advance(&mut self) {
        if self.started {
            self.current = (self.current + self.stride) % self.count;
        }
        self.started = true;
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    #[test]
    fn one_endpoint_is_always_chosen_and_draws_nothing() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut endpoints = Endpoints::new(1, &mut rng);
        for _ in 0..5 {
            assert_eq!(
                {
                    endpoints.advance();
                    endpoints.current()
                },
                0
            );
        }
        assert_eq!(rng.u64(..), fastrand::Rng::with_seed(1).u64(..));
    }

    #[test]
    fn every_round_visits_each_endpoint_once_and_never_repeats_the_last() {
        for (seed, count) in [(7, 3), (8, 4), (9, 6), (10, 2)] {
            visits_each_endpoint_once_per_round(seed, count);
        }
    }

    fn visits_each_endpoint_once_per_round(seed: u64, count: usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut endpoints = Endpoints::new(count, &mut rng);
        let visits: Vec<usize> = (0..count * 5)
            .map(|_| {
                endpoints.advance();
                endpoints.current()
            })
            .collect();
        let all: Vec<usize> = (0..count).collect();
        for round in visits.chunks(count) {
            let mut sorted = round.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, all, "{visits:?}");
        }
        for pair in visits.windows(2) {
            assert_ne!(pair[0], pair[1], "{visits:?}");
        }
    }

    #[test]
    fn clients_with_other_seeds_start_on_other_endpoints() {
        let firsts: std::collections::BTreeSet<usize> = (0..64)
            .map(|seed| {
                let mut rng = fastrand::Rng::with_seed(seed);
                Endpoints::new(4, &mut rng).current()
            })
            .collect();
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }
}
