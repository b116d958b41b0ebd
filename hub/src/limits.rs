//! Publish quotas and back-pressure bookkeeping.
//!
//! - [`TokenBucket`]: `rate` tokens per second up to `burst`; one PUBLISH
//!   takes one token. Refusals say when the next token is due
//!   (`retry_after_ms`).
//! - [`TopicBuckets`]: one bucket per concrete topic, shared by every
//!   connection (a quota on the topic, whoever publishes).
//! - [`CallerBuckets`]: one bucket per HTTP caller of the import, kept
//!   across requests (a request must not start with a full bucket).
//! - [`Strikes`]: refusals of one connection in a sliding window; a
//!   connection that keeps publishing while refused is closed with 4029.
//! - [`COUNTERS`]: process-wide counts of refusals and slow-consumer
//!   events, for the metrics endpoint ([`BackpressureCounters::snapshot`]).
//!
//! Time is passed in (`Instant`), never read here, so the arithmetic is
//! tested deterministically.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A quota: `per_sec` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

impl RateLimit {
    /// A quota with a burst of one second's worth (at least 1).
    pub fn per_second(per_sec: f64) -> Self {
        RateLimit {
            per_sec,
            burst: default_burst(per_sec),
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        if !(self.per_sec.is_finite() && self.per_sec > 0.0) {
            return Err(format!("{what}: rate must be a positive number per second"));
        }
        if self.burst == 0 {
            return Err(format!("{what}: burst must be at least 1"));
        }
        Ok(())
    }
}

/// One second's worth of tokens, at least 1.
pub fn default_burst(per_sec: f64) -> u32 {
    // `as` saturates; NaN becomes 0 and then 1.
    (per_sec.ceil() as u32).max(1)
}

/// A token bucket. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// This bucket under a new quota: it keeps its current level (at most
    /// the new burst), so a new quota — a re-AUTH with another token, a
    /// caller whose `rate` claim changed — never refills it.
    pub fn with_limit(mut self, limit: RateLimit, now: Instant) -> TokenBucket {
        self.refill(now);
        TokenBucket {
            limit,
            tokens: self.tokens.min(f64::from(limit.burst)),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that goes backwards (it cannot, for `Instant`) adds nothing.
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.per_sec).min(f64::from(self.limit.burst));
        self.updated = now;
    }

    /// How long until a token is available: zero when one is there now.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.limit.per_sec)
    }

    /// Takes a token that [`wait`](Self::wait) just said is there.
    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Takes a token, or says how long until one is due.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        match self.wait(now) {
            Duration::ZERO => {
                self.take();
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// How long until the bucket is full again.
    pub fn until_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let missing = f64::from(self.limit.burst) - self.tokens;
        Duration::from_secs_f64(missing.max(0.0) / self.limit.per_sec)
    }

    /// True when the bucket would be full at `now`: it then behaves like a
    /// fresh one and can be forgotten.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.limit.burst)
    }
}

/// Per-topic buckets shared by all connections.
///
/// Memory: a bucket that has refilled is indistinguishable from a new one,
/// so when the map reaches its sweep mark the full ones are dropped. What
/// remains are topics published to within the last `burst / rate` seconds,
/// which per-connection quotas bound.
#[derive(Debug)]
pub struct TopicBuckets {
    limit: RateLimit,
    state: Mutex<TopicState>,
}

#[derive(Debug)]
struct TopicState {
    buckets: HashMap<String, TokenBucket>,
    /// Size at which the next sweep runs: after a sweep, twice what was
    /// left, so sweeps cost amortised O(1) per new topic.
    sweep_at: usize,
}

/// Entries at which [`TopicBuckets`] first drops refilled buckets.
const TOPIC_SWEEP_AT: usize = 4096;

impl TopicBuckets {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_sweep_at(limit, TOPIC_SWEEP_AT)
    }

    fn with_sweep_at(limit: RateLimit, sweep_at: usize) -> Self {
        TopicBuckets {
            limit,
            state: Mutex::new(TopicState {
                buckets: HashMap::new(),
                sweep_at,
            }),
        }
    }

    /// Takes a token from `topic`'s bucket and, when given, from the
    /// connection's: both or neither (a refusal costs no token).
    pub fn try_take(
        &self,
        topic: &str,
        connection: Option<&mut TokenBucket>,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        if state.buckets.len() >= state.sweep_at && !state.buckets.contains_key(topic) {
            state.buckets.retain(|_, bucket| !bucket.is_full(now));
            state.sweep_at = (state.buckets.len() * 2).max(state.sweep_at.min(TOPIC_SWEEP_AT));
        }
        take_both(&mut state.buckets, self.limit, topic, connection, now)
    }

    /// Topics currently tracked.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who calls the import, as far as quotas go: the token's `sub` when it
/// has one (every token of one subject shares a bucket), else the token
/// itself. In development mode every token is accepted unverified, so the
/// hub cannot tell callers apart: they share one bucket (a fresh made-up
/// token must not buy a fresh bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller<'a> {
    Development,
    Subject(&'a str),
    Token(&'a str),
}

/// Publish buckets of the import's callers, kept across requests: a
/// caller's next request continues from the level its last one left.
///
/// Keyed by a hash of the [`Caller`] (keyed with a per-process random
/// seed, so nobody can aim at a collision), so an entry costs the same
/// whatever the subject or token. Like [`TopicBuckets`], refilled buckets
/// are forgotten when the map reaches its sweep mark (a full bucket is a
/// fresh one); what remains are callers that imported within the last
/// `burst / rate` seconds. At most `max_callers` are tracked: past that a
/// new caller is refused for a second rather than given an untracked
/// bucket.
#[derive(Debug)]
pub struct CallerBuckets {
    seed: RandomState,
    max_callers: usize,
    state: Mutex<CallerState>,
}

#[derive(Debug)]
struct CallerState {
    buckets: HashMap<u64, TokenBucket>,
    sweep_at: usize,
}

/// Callers [`CallerBuckets::new`] tracks at most (about 100 bytes each).
pub const MAX_IMPORT_CALLERS: usize = 100_000;
/// How long a caller over [`MAX_IMPORT_CALLERS`] is told to wait.
const CALLERS_FULL_WAIT: Duration = Duration::from_secs(1);

impl CallerBuckets {
    pub fn new(max_callers: usize) -> Self {
        CallerBuckets {
            seed: RandomState::new(),
            max_callers: max_callers.max(1),
            state: Mutex::new(CallerState {
                buckets: HashMap::new(),
                sweep_at: TOPIC_SWEEP_AT.min(max_callers.max(1)),
            }),
        }
    }

    /// Takes one publish token for `topic` from the caller's bucket (quota
    /// `limit`; `None`: the caller is unlimited) and from the topic's
    /// (when `topics` is given): both or neither. `Err` says how long until
    /// both have one.
    pub fn try_take(
        &self,
        caller: Caller<'_>,
        limit: Option<RateLimit>,
        topics: Option<&TopicBuckets>,
        topic: &str,
        now: Instant,
    ) -> Result<(), Duration> {
        let Some(limit) = limit else {
            return topics.map_or(Ok(()), |topics| topics.try_take(topic, None, now));
        };
        let key = self.seed.hash_one(caller);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        if !state.buckets.contains_key(&key) && state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, bucket| !bucket.is_full(now));
            state.sweep_at = (state.buckets.len() * 2)
                .max(TOPIC_SWEEP_AT)
                .min(self.max_callers);
            if state.buckets.len() >= self.max_callers {
                return Err(CALLERS_FULL_WAIT);
            }
        }
        let bucket = state
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(limit, now));
        if bucket.limit() != limit {
            *bucket = bucket.clone().with_limit(limit, now);
        }
        match topics {
            Some(topics) => topics.try_take(topic, Some(bucket), now),
            None => bucket.try_take(now),
        }
    }

    /// Callers currently tracked.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn take_both(
    buckets: &mut HashMap<String, TokenBucket>,
    limit: RateLimit,
    topic: &str,
    connection: Option<&mut TokenBucket>,
    now: Instant,
) -> Result<(), Duration> {
    let bucket = match buckets.get_mut(topic) {
        Some(bucket) => bucket,
        None => buckets
            .entry(topic.to_owned())
            .or_insert_with(|| TokenBucket::new(limit, now)),
    };
    let topic_wait = bucket.wait(now);
    let connection_wait = connection.as_deref().map_or(Duration::ZERO, |c| {
        // `wait` only refills; nothing is taken yet.
        let mut probe = c.clone();
        probe.wait(now)
    });
    let wait = topic_wait.max(connection_wait);
    if wait > Duration::ZERO {
        return Err(wait);
    }
    bucket.take();
    if let Some(connection) = connection {
        connection.refill(now);
        connection.take();
    }
    Ok(())
}

/// Rate-limit refusals of one connection within a sliding window.
#[derive(Debug)]
pub struct Strikes {
    times: VecDeque<Instant>,
    max: u32,
    window: Duration,
}

impl Strikes {
    pub fn new(max: u32, window: Duration) -> Self {
        Strikes {
            times: VecDeque::new(),
            max,
            window,
        }
    }

    /// Records a refusal; true when there were more than `max` within the
    /// window (the connection is abusive).
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .times
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) > self.window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        if self.times.len() > self.max as usize + 1 {
            // Only the count matters past the limit; keep the queue bounded.
            self.times.pop_front();
        }
        self.times.len() > self.max as usize
    }
}

/// `retry_after_ms` for a wait: whole ms, rounded up, at least 1 (a zero
/// would invite an immediate retry that is refused again).
pub fn retry_after_ms(wait: Duration) -> u64 {
    let micros = wait.as_micros();
    u64::try_from(micros.div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Counts of back-pressure events since the process started.
#[derive(Debug, Default)]
pub struct BackpressureCounters {
    rate_limited: AtomicU64,
    rate_limit_closes: AtomicU64,
    slow_consumer_closes: AtomicU64,
    group_lagging: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BackpressureSnapshot {
    /// PUBLISHes refused with `rate_limited`.
    pub rate_limited: u64,
    /// Connections closed with 4029 for publishing on while refused.
    pub rate_limit_closes: u64,
    /// Connections closed with 4009 because live deliveries overflowed.
    pub slow_consumer_closes: u64,
    /// Times a group delivery waited because the member's unacknowledged
    /// bytes reached the limit (the group lags; nothing is dropped).
    pub group_lagging: u64,
}

impl BackpressureCounters {
    pub const fn new() -> Self {
        BackpressureCounters {
            rate_limited: AtomicU64::new(0),
            rate_limit_closes: AtomicU64::new(0),
            slow_consumer_closes: AtomicU64::new(0),
            group_lagging: AtomicU64::new(0),
        }
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limit_close(&self) {
        self.rate_limit_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_consumer_close(&self) {
        self.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn group_lagging(&self) {
        self.group_lagging.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BackpressureSnapshot {
        BackpressureSnapshot {
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            rate_limit_closes: self.rate_limit_closes.load(Ordering::Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Ordering::Relaxed),
            group_lagging: self.group_lagging.load(Ordering::Relaxed),
        }
    }
}

/// The hub process's counters (one hub per process in production; tests
/// that run several compare differences).
pub static COUNTERS: BackpressureCounters = BackpressureCounters::new();

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_allows_the_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_sec: 10.0,
                burst: 3,
            },
            t0,
        );
        for _ in 0..3 {
            bucket.try_take(t0).unwrap();
        }
        // Empty: the next token comes after 1/10 s.
        assert_eq!(bucket.try_take(t0), Err(ms(100)));
        assert_eq!(bucket.try_take(t0 + ms(40)), Err(ms(60)));
        bucket.try_take(t0 + ms(100)).unwrap();
        assert!(bucket.try_take(t0 + ms(100)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            bucket.try_take(later).unwrap();
        }
        assert!(bucket.try_take(later).is_err());
        assert_eq!(bucket.until_full(later), ms(300));
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1001)), 2);
        assert_eq!(retry_after_ms(ms(250)), 250);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }

    #[test]
    fn topic_and_connection_tokens_are_taken_together_or_not_at_all() {
        let t0 = Instant::now();
        let topics = TopicBuckets::new(RateLimit {
            per_sec: 1.0,
            burst: 2,
        });
        let mut connection = TokenBucket::new(
            RateLimit {
                per_sec: 1000.0,
                burst: 1,
            },
            t0,
        );
        topics.try_take("a.b", Some(&mut connection), t0).unwrap();
        // The connection is empty for 1 ms: refused, and the topic keeps
        // its second token.
        assert_eq!(
            topics.try_take("a.b", Some(&mut connection), t0),
            Err(ms(1))
        );
        topics
            .try_take("a.b", Some(&mut connection), t0 + ms(1))
            .unwrap();
        // Now the topic is empty (1 token/s) while the connection refilled.
        assert_eq!(
            topics.try_take("a.b", Some(&mut connection), t0 + ms(2)),
            Err(ms(998))
        );
        // Other topics have their own bucket.
        topics.try_take("a.c", None, t0 + ms(2)).unwrap();
        assert_eq!(topics.len(), 2);
    }

    #[test]
    fn refilled_topic_buckets_are_swept_when_the_map_is_large() {
        let t0 = Instant::now();
        let topics = TopicBuckets::with_sweep_at(
            RateLimit {
                per_sec: 10.0,
                burst: 1,
            },
            4,
        );
        for i in 0..4 {
            topics.try_take(&format!("t.{i}"), None, t0).unwrap();
        }
        assert_eq!(topics.len(), 4);
        // At t0 every bucket is still empty: the sweep keeps them all and
        // waits for twice as many before the next one.
        for i in 4..8 {
            topics.try_take(&format!("t.{i}"), None, t0).unwrap();
        }
        assert_eq!(topics.len(), 8);
        // A second later every bucket is full again: the sweep forgets them.
        topics
            .try_take("t.8", None, t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(topics.len(), 1);
    }

    #[test]
    fn a_new_limit_keeps_the_level_instead_of_refilling() {
        let t0 = Instant::now();
        let slow = RateLimit {
            per_sec: 1.0,
            burst: 3,
        };
        let mut bucket = TokenBucket::new(slow, t0);
        for _ in 0..3 {
            bucket.try_take(t0).unwrap();
        }
        // A bigger burst starts where the old bucket was: empty.
        let big = RateLimit {
            per_sec: 1.0,
            burst: 100,
        };
        let mut bucket = bucket.with_limit(big, t0);
        assert_eq!(bucket.try_take(t0), Err(ms(1000)));
        // It refills at the new rate up to the new burst.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..5 {
            bucket.try_take(later).unwrap();
        }
        assert!(bucket.try_take(later).is_err());
        // A smaller burst caps the level.
        let mut full = TokenBucket::new(big, t0).with_limit(slow, t0);
        for _ in 0..3 {
            full.try_take(t0).unwrap();
        }
        assert!(full.try_take(t0).is_err());
    }

    #[test]
    fn a_callers_bucket_lasts_across_calls_and_changes_of_its_limit() {
        let t0 = Instant::now();
        let callers = CallerBuckets::new(MAX_IMPORT_CALLERS);
        let limit = RateLimit {
            per_sec: 10.0,
            burst: 2,
        };
        let alice = Caller::Subject("alice");
        for _ in 0..2 {
            callers.try_take(alice, Some(limit), None, "t", t0).unwrap();
        }
        assert_eq!(
            callers.try_take(alice, Some(limit), None, "t", t0),
            Err(ms(100))
        );
        // Another limit (another token of alice) does not refill.
        let other = RateLimit {
            per_sec: 10.0,
            burst: 50,
        };
        assert!(callers.try_take(alice, Some(other), None, "t", t0).is_err());
        // Other callers have their own bucket; a token is not a subject.
        callers
            .try_take(Caller::Token("alice"), Some(limit), None, "t", t0)
            .unwrap();
        callers
            .try_take(Caller::Development, Some(limit), None, "t", t0)
            .unwrap();
        assert_eq!(callers.len(), 3);
        // Unlimited callers take nothing and are not tracked.
        callers
            .try_take(Caller::Subject("root"), None, None, "t", t0)
            .unwrap();
        assert_eq!(callers.len(), 3);
    }

    #[test]
    fn caller_and_topic_tokens_are_taken_together_or_not_at_all() {
        let t0 = Instant::now();
        let topics = TopicBuckets::new(RateLimit {
            per_sec: 1.0,
            burst: 1,
        });
        let callers = CallerBuckets::new(MAX_IMPORT_CALLERS);
        let limit = RateLimit {
            per_sec: 1.0,
            burst: 2,
        };
        let bob = Caller::Subject("bob");
        callers
            .try_take(bob, Some(limit), Some(&topics), "a", t0)
            .unwrap();
        // The topic is empty: refused, and bob keeps his second token.
        assert!(
            callers
                .try_take(bob, Some(limit), Some(&topics), "a", t0)
                .is_err()
        );
        callers
            .try_take(bob, Some(limit), Some(&topics), "b", t0)
            .unwrap();
        assert!(
            callers
                .try_take(bob, Some(limit), Some(&topics), "c", t0)
                .is_err()
        );
        // Unlimited callers still meet the topic quota.
        assert!(callers.try_take(bob, None, Some(&topics), "a", t0).is_err());
    }

    #[test]
    fn callers_are_swept_and_capped() {
        let t0 = Instant::now();
        let callers = CallerBuckets::new(4);
        let limit = RateLimit {
            per_sec: 10.0,
            burst: 1,
        };
        let names = ["a", "b", "c", "d", "e"];
        for name in &names[..4] {
            callers
                .try_take(Caller::Subject(name), Some(limit), None, "t", t0)
                .unwrap();
        }
        // Four empty buckets: a fifth caller is refused, not tracked.
        assert_eq!(
            callers.try_take(Caller::Subject("e"), Some(limit), None, "t", t0),
            Err(CALLERS_FULL_WAIT)
        );
        assert_eq!(callers.len(), 4);
        // Once they have refilled they are forgotten and room is made.
        let later = t0 + Duration::from_secs(1);
        callers
            .try_take(Caller::Subject("e"), Some(limit), None, "t", later)
            .unwrap();
        assert_eq!(callers.len(), 1);
    }

    #[test]
    fn strikes_count_within_the_window_only() {
        let t0 = Instant::now();
        let mut strikes = Strikes::new(2, ms(1000));
        assert!(!strikes.record(t0));
        assert!(!strikes.record(t0 + ms(10)));
        assert!(strikes.record(t0 + ms(20)));
        // The first two fall out of the window.
        let mut strikes = Strikes::new(2, ms(1000));
        strikes.record(t0);
        strikes.record(t0 + ms(10));
        assert!(!strikes.record(t0 + ms(1500)));
        assert!(!strikes.record(t0 + ms(1600)));
        assert!(strikes.record(t0 + ms(1700)));
    }

    #[test]
    fn bad_quotas_are_refused() {
        assert!(RateLimit::per_second(0.0).validate("x").is_err());
        assert!(RateLimit::per_second(f64::NAN).validate("x").is_err());
        assert!(
            RateLimit {
                per_sec: 1.0,
                burst: 0
            }
            .validate("x")
            .is_err()
        );
        assert_eq!(RateLimit::per_second(2.5).burst, 3);
        assert_eq!(RateLimit::per_second(0.1).burst, 1);
        RateLimit::per_second(0.5).validate("x").unwrap();
    }

    #[test]
    fn counters_snapshot() {
        let counters = BackpressureCounters::new();
        counters.rate_limited();
        counters.rate_limited();
        counters.slow_consumer_close();
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.rate_limited, 2);
        assert_eq!(snapshot.slow_consumer_closes, 1);
        assert_eq!(snapshot.rate_limit_closes, 0);
    }
}
