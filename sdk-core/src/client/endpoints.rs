//! Which hub the next connection attempt goes to, when the driver knows
//! several (several hubs over one database, `semantics.md` §7).
//!
//! Each client visits the hubs in its own random order (so a fleet of
//! clients spreads over them, and a dead hub's clients do not all land on
//! the same next one), moves to the next hub on every new attempt — after a
//! failed attempt or a lost connection — and draws a new order after each
//! round, never starting it with the hub it just left. The reconnect
//! backoff between attempts is unchanged: it counts attempts, whichever hub
//! they go to.

/// The rotation over `count` hub endpoints (indexes into the driver's list).
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    order: Vec<usize>,
    at: usize,
    started: bool,
}

impl Endpoints {
    /// With one endpoint nothing is drawn from `rng`, so a single-hub
    /// client's jitter is the same as without this rotation.
    pub(crate) fn new(count: usize, rng: &mut fastrand::Rng) -> Self {
        let mut order: Vec<usize> = (0..count.max(1)).collect();
        if order.len() > 1 {
            rng.shuffle(&mut order);
        }
        Endpoints {
            order,
            at: 0,
            started: false,
        }
    }

    /// The endpoint of the attempt being made now.
    pub(crate) fn current(&self) -> usize {
        self.order[self.at]
    }

    /// Moves to the endpoint for a new attempt (the first attempt keeps the
    /// first of the order) and returns it.
    pub(crate) fn advance(&mut self, rng: &mut fastrand::Rng) -> usize {
        if !self.started {
            self.started = true;
            return self.current();
        }
        if self.order.len() == 1 {
            return self.current();
        }
        self.at += 1;
        if self.at == self.order.len() {
            let left = self.order[self.order.len() - 1];
            rng.shuffle(&mut self.order);
            if self.order[0] == left {
                self.order.swap(0, 1);
            }
            self.at = 0;
        }
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    #[test]
    fn one_endpoint_is_always_chosen_and_draws_nothing() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut endpoints = Endpoints::new(1, &mut rng);
        for _ in 0..5 {
            assert_eq!(endpoints.advance(&mut rng), 0);
        }
        assert_eq!(rng.u64(..), fastrand::Rng::with_seed(1).u64(..));
    }

    #[test]
    fn every_round_visits_each_endpoint_once_and_never_repeats_the_last() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut endpoints = Endpoints::new(3, &mut rng);
        let visits: Vec<usize> = (0..30).map(|_| endpoints.advance(&mut rng)).collect();
        for round in visits.chunks(3) {
            let mut sorted = round.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "{visits:?}");
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
                Endpoints::new(4, &mut rng).advance(&mut rng)
            })
            .collect();
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }
}
