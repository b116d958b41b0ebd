//! Retention (semantics.md §3): how long the log keeps events, by age and
//! by count per topic. The default keeps everything. A background task
//! applies the policy at start and then every `interval_ms`, in bounded
//! and paced passes (`Store::apply_retention`), so a large first clean-up
//! never holds the store's writer for long.
//!
//! ```toml
//! [retention]
//! max_age_secs = 604800          # 7 days, every topic
//! max_events_per_topic = 1000000
//!
//! [[retention.topics]]           # first matching pattern wins
//! pattern = "process.state"
//! max_events = 10000             # inherits max_age_secs
//!
//! [[retention.topics]]
//! pattern = "audit.**"
//! max_age_secs = 0               # 0: no limit on this axis
//! max_events = 0
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promhub_core::Pattern;
use promhub_core::frames::Millis;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::store::{RetentionLimits, RetentionPolicy, Store};

/// Events removed per store call: bounds one write transaction, and so
/// how long a publish can wait behind it (about 2 ms on SQLite).
const PASS_LIMIT: usize = 1_000;

/// The `[retention]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Remove events whose `ts` is older than this many seconds.
    pub max_age_secs: Option<u64>,
    /// Keep at most this many of each topic's newest events.
    pub max_events_per_topic: Option<u64>,
    /// Per-pattern overrides, first match wins.
    pub topics: Vec<TopicRetention>,
    /// How often the policy is applied.
    pub interval_ms: u64,
}

/// `[[retention.topics]]`: limits for the topics a pattern matches. A limit
/// left out inherits the top-level one; 0 means no limit on that axis.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRetention {
    pub pattern: String,
    pub max_age_secs: Option<u64>,
    pub max_events: Option<u64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_secs: None,
            max_events_per_topic: None,
            topics: Vec::new(),
            interval_ms: 60_000,
        }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.policy().map(drop)?;
        if self.interval_ms == 0 {
            return Err("retention.interval_ms must be positive".to_owned());
        }
        if self.max_age_secs == Some(0) || self.max_events_per_topic == Some(0) {
            return Err(
                "retention.max_age_secs and retention.max_events_per_topic must be positive \
                 (leave them out to keep everything)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The store-level policy (limits in milliseconds, rules parsed).
    pub fn policy(&self) -> Result<RetentionPolicy, String> {
        let secs_to_ms = |secs: u64| secs.saturating_mul(1000);
        let default = RetentionLimits {
            max_age_ms: self.max_age_secs.map(secs_to_ms),
            max_events: self.max_events_per_topic,
        };
        let rules = self
            .topics
            .iter()
            .map(|rule| {
                let pattern = Pattern::parse(&rule.pattern)
                    .map_err(|e| format!("retention.topics pattern {:?}: {e}", rule.pattern))?;
                // Left out: inherit; 0: no limit.
                let pick = |own: Option<u64>, inherited: Option<u64>| match own {
                    Some(0) => None,
                    Some(v) => Some(v),
                    None => inherited,
                };
                let limits = RetentionLimits {
                    max_age_ms: pick(rule.max_age_secs.map(secs_to_ms), default.max_age_ms),
                    max_events: pick(rule.max_events, default.max_events),
                };
                Ok((pattern, limits))
            })
            .collect::<Result<_, String>>()?;
        Ok(RetentionPolicy { default, rules })
    }
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Applies the policy once over every topic: store calls of at most
/// [`PASS_LIMIT`] events (and a bounded number of topics) until the last
/// topic is done (or shutdown), each followed by a pause as long as the call
/// took, so retention takes at most about half of the store's writer and
/// publishes never queue behind more than one call. Returns the number of
/// events removed.
pub async fn apply_once(
    store: &dyn Store,
    policy: &RetentionPolicy,
    shutdown: &watch::Receiver<bool>,
) -> Result<u64, crate::store::StoreError> {
    let now = now_millis();
    let mut total = 0;
    let mut from: Option<String> = None;
    loop {
        let started = Instant::now();
        let pass = store
            .apply_retention(policy, now, from.as_deref(), PASS_LIMIT)
            .await?;
        total += pass.removed;
        match pass.next {
            Some(next) if !*shutdown.borrow() => from = Some(next),
            _ => return Ok(total),
        }
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))).await;
    }
}

/// Starts the retention task, or nothing when the policy keeps everything.
pub fn spawn(
    store: Arc<dyn Store>,
    config: &RetentionConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, String> {
    let policy = config.policy()?;
    if policy.keeps_everything() {
        return Ok(None);
    }
    tracing::info!(
        max_age_secs = ?config.max_age_secs,
        max_events_per_topic = ?config.max_events_per_topic,
        topic_rules = config.topics.len(),
        interval_ms = config.interval_ms,
        "retention enabled"
    );
    let interval = Duration::from_millis(config.interval_ms);
    Ok(Some(tokio::spawn(async move {
        loop {
            match apply_once(store.as_ref(), &policy, &shutdown).await {
                Ok(0) => tracing::debug!("retention: nothing to remove"),
                Ok(removed) => {
                    metrics.retention_removed.inc_by(removed);
                    tracing::info!(removed, "retention removed events");
                }
                Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_inherit_and_zero_lifts_a_limit() {
        let config: RetentionConfig = toml::from_str(
            r#"
            max_age_secs = 60
            max_events_per_topic = 100
            [[topics]]
            pattern = "process.state"
            max_events = 5
            [[topics]]
            pattern = "audit.**"
            max_age_secs = 0
            max_events = 0
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let policy = config.policy().unwrap();
        let topic = |t: &str| promhub_core::Topic::parse(t).unwrap();
        let limits = |max_age_ms, max_events| RetentionLimits {
            max_age_ms,
            max_events,
        };
        assert_eq!(
            policy.limits_for(&topic("process.state")),
            limits(Some(60_000), Some(5))
        );
        assert_eq!(
            policy.limits_for(&topic("audit.login.ok")),
            limits(None, None)
        );
        assert_eq!(
            policy.limits_for(&topic("orders.new")),
            limits(Some(60_000), Some(100))
        );
        assert!(!policy.keeps_everything());
        assert!(
            RetentionConfig::default()
                .policy()
                .unwrap()
                .keeps_everything()
        );
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let bad = |text: &str| {
            toml::from_str::<RetentionConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate())
                .unwrap_err()
        };
        assert!(bad("max_age_secs = 0").contains("retention.max_age_secs"));
        assert!(bad("interval_ms = 0").contains("retention.interval_ms"));
        assert!(bad("[[topics]]\npattern = \"a..b\"").contains("\"a..b\""));
        assert!(bad("max_events = 3").contains("max_events"));
    }

    /// Runs a walk over `ts` (seq = index + 1), reading pages as a store
    /// would; returns the removal and the pages read.
    fn walk(
        limits: RetentionLimits,
        ts: &[u64],
        room: u64,
        now: u64,
    ) -> (Option<(u64, u64)>, usize) {
        use crate::store::PrefixWalk;
        let rows: Vec<(u64, u64)> = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| (i as u64 + 1, t))
            .collect();
        let mut walk = PrefixWalk::new(limits, ts.len() as u64, ts.first().copied(), room, now);
        let mut pages = 0;
        while let Some((after, want)) = walk.next_page() {
            let page: Vec<_> = rows
                .iter()
                .copied()
                .filter(|&(seq, _)| seq > after)
                .take(want as usize)
                .collect();
            walk.feed(&page);
            pages += 1;
        }
        (walk.removal(), pages)
    }

    #[test]
    fn a_prefix_walk_crosses_pages_and_stops_where_either_limit_ends() {
        let count = |n| RetentionLimits {
            max_age_ms: None,
            max_events: Some(n),
        };
        let age = |ms| RetentionLimits {
            max_age_ms: Some(ms),
            max_events: None,
        };
        // 2,500 events, keep 300: 2,200 go over three pages.
        let ts = vec![1; 2500];
        assert_eq!(walk(count(300), &ts, 10_000, 10), (Some((2200, 2200)), 3));
        // Bounded by room.
        assert_eq!(walk(count(300), &ts, 1500, 10).0, Some((1500, 1500)));
        // Age: the run of old events ends inside the second page.
        let mut ts = vec![1; 1700];
        ts.extend(vec![1_000; 800]);
        assert_eq!(walk(age(100), &ts, 10_000, 1_000), (Some((1700, 1700)), 2));
        // Nothing due: no page read at all.
        assert_eq!(walk(age(100), &[1_000; 5], 10_000, 1_000), (None, 0));
        // Both: the larger prefix wins.
        let both = RetentionLimits {
            max_age_ms: Some(100),
            max_events: Some(2_400),
        };
        assert_eq!(walk(both, &ts, 10_000, 1_000).0, Some((1700, 1700)));
    }

    #[test]
    fn prefix_to_remove_takes_the_larger_of_count_and_age() {
        let limits = RetentionLimits {
            max_age_ms: Some(100),
            max_events: Some(3),
        };
        // 5 retained: 2 over the count; ts 10, 20, 500: 2 older than 400.
        let oldest = [10, 20, 500, 600, 700];
        assert_eq!(RetentionPolicy::prefix_to_remove(limits, 5, oldest, 500), 2);
        // The age run stops at the first young event, even if later ones
        // are old (a prefix is removed, never a hole).
        let mixed = [10, 450, 20, 30];
        let age_only = RetentionLimits {
            max_events: None,
            ..limits
        };
        assert_eq!(
            RetentionPolicy::prefix_to_remove(age_only, 4, mixed, 500),
            1
        );
        assert_eq!(RetentionPolicy::prefix_to_remove(limits, 10, [], 500), 7);
        assert_eq!(
            RetentionPolicy::prefix_to_remove(RetentionLimits::default(), 10, oldest, 500),
            0
        );
    }
}
