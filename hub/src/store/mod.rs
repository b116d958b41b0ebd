//! Durable storage behind one trait, so the embedded SQLite backend and a
//! MongoDB backend are interchangeable. No backend type leaks through it.
//!
//! Writes are batch-shaped: [`Store::commit`] takes many events and group
//! updates at once and makes them durable with one commit + sync (group
//! commit). The [`writer`] module coalesces concurrent requests into those
//! batches; readers never wait for it. A backend that can commit on the
//! calling thread ([`Store::blocking`], the embedded store) has the
//! writer's commit loop run on a thread of its own, so a commit is one
//! hand-off there and one answer back.

use std::collections::BTreeMap;

use std::sync::Arc;

use async_trait::async_trait;
use promhub_core::frames::{Event, Millis, Payload, PublishOpts};
use promhub_core::{Group, Pattern, Topic};
use serde::Deserialize;

pub mod mongo;
pub mod sqlite;
mod topic_filter;
pub mod writer;

#[cfg(test)]
mod conformance;

/// An event accepted from a publisher, before the store gives it a `seq`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// UUIDv7 from the hub, or the publisher's `opts.id`.
    pub id: String,
    /// True when `id` came from the publisher (`opts.id`): only those are
    /// de-duplicated.
    pub client_id: bool,
    pub topic: Topic,
    pub ts: Millis,
    pub key: Option<String>,
    pub payload: Payload,
    pub headers: Option<BTreeMap<String, String>>,
    pub tags: Option<Vec<String>>,
    pub caused_by: Option<Vec<String>>,
    pub sid: Option<String>,
}

/// Longest `opts.id` a publisher may choose (it is stored and indexed).
pub const MAX_EVENT_ID_BYTES: usize = 256;

/// A publisher-chosen event id the hub does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("opts.id must be 1 to {MAX_EVENT_ID_BYTES} bytes without control characters")]
pub struct InvalidEventId;

impl NewEvent {
    /// The event a `PUBLISH` (or an imported event) describes: the
    /// publisher's `opts.id` when given (then de-duplicated), else a fresh
    /// UUIDv7; `opts.ts`, else `now`.
    pub fn from_publish(
        topic: Topic,
        payload: Payload,
        opts: PublishOpts,
        now: Millis,
    ) -> Result<NewEvent, InvalidEventId> {
        let (id, client_id) = match opts.id {
            Some(id) => {
                if id.is_empty()
                    || id.len() > MAX_EVENT_ID_BYTES
                    || id.chars().any(char::is_control)
                {
                    return Err(InvalidEventId);
                }
                (id, true)
            }
            None => (uuid::Uuid::now_v7().to_string(), false),
        };
        Ok(NewEvent {
            id,
            client_id,
            topic,
            ts: opts.ts.unwrap_or(now),
            key: opts.key,
            payload,
            headers: opts.headers,
            tags: opts.tags,
            caused_by: opts.caused_by,
            sid: opts.sid,
        })
    }

    /// The event as stored and delivered, once the store gave it `seq`.
    pub fn into_stored(self, seq: u64) -> Event {
        Event {
            id: self.id,
            seq,
            topic: self.topic,
            ts: self.ts,
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            tags: self.tags,
            caused_by: self.caused_by,
            sid: self.sid,
        }
    }
}

/// What happened to one [`NewEvent`] of a batch: what its publisher is
/// told (a `PUBACK` needs the id and the seq, never the whole event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored with this `seq` (the event itself is in
    /// [`CommitOutcome::stored`]).
    Stored { id: String, seq: u64 },
    /// `opts.id` was stored within the dedup window; nothing new was written.
    Duplicate { id: String, seq: u64 },
}

/// A durable consumer group is identified by its pattern and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub pattern: String,
    pub group: String,
}

impl GroupKey {
    pub fn new(pattern: &Pattern, group: &Group) -> Self {
        GroupKey {
            pattern: pattern.as_str().to_owned(),
            group: group.as_str().to_owned(),
        }
    }
}

/// Progress of one group to make durable. Every event with `seq <= cursor`
/// is done (acknowledged or dead-lettered); `done_above` lists events after
/// the cursor that are already done (acknowledged out of order).
///
/// Applying it sets the stored cursor to `cursor` (creating the group if
/// new), adds `done_above` to the stored marks, and drops marks at or below
/// the cursor: callers send only new marks, not the whole set each time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProgress {
    pub key: GroupKey,
    pub cursor: u64,
    pub done_above: Vec<u64>,
    /// Changes to the group's recorded delivery attempts, as `(seq,
    /// attempts)`: a delivery that failed (NACK, ack deadline, disconnect)
    /// records the attempts used so far, and `0` forgets an event that is
    /// done. A group loaded again (hub restart, or evicted while nobody was
    /// subscribed) counts a redelivery on from there. Usually empty: only
    /// failures and their later completion change it. Entries at or below
    /// the cursor are ignored when a group is loaded.
    pub attempt_changes: Vec<(u64, u32)>,
}

/// An event a group gave up on.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: GroupKey,
    pub seq: u64,
    pub event_id: String,
    pub reason: String,
    pub attempts: u32,
    pub dead_at: Millis,
}

/// A group's stored state, loaded when the group is first used after start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub key: GroupKey,
    pub cursor: u64,
    /// Events after the cursor that are done (acked or dead-lettered).
    pub done_above: Vec<u64>,
    /// Attempts used by failed, not yet done events after the cursor, as
    /// `(seq, attempts)` in `seq` order (see [`GroupProgress::attempt_changes`]).
    pub attempts_above: Vec<(u64, u32)>,
}

/// One group-commit batch: everything in it becomes durable together.
#[derive(Debug, Clone, Default)]
pub struct CommitBatch {
    pub events: Vec<NewEvent>,
    /// New groups (created with their starting cursor) and cursor moves.
    pub progress: Vec<GroupProgress>,
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters to delete (replayed into their group, or purged).
    pub removed_dead_letters: Vec<DeadLetterRef>,
}

/// Identifies one dead letter: a group gives up on an event at most once at
/// a time, so (group, seq) is unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterRef {
    pub key: GroupKey,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommitOutcome {
    /// One entry per `CommitBatch::events`, in order.
    pub events: Vec<Appended>,
    /// The newly stored events (the `Stored` entries of `events`), in
    /// `seq` order, as they are delivered: moved to the fan-out, not
    /// copied.
    pub stored: Vec<Event>,
}

impl CommitOutcome {
    /// The seq of each entry of [`CommitOutcome::events`] (stored or the
    /// original of a duplicate), in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|a| match a {
                Appended::Stored { seq, .. } | Appended::Duplicate { seq, .. } => *seq,
            })
            .collect()
    }
}

/// A store that commits on the calling thread (see [`Store::blocking`]).
pub trait BlockingCommit: Send + Sync + std::fmt::Debug {
    /// [`Store::commit`], blocking the calling thread until the batch is
    /// durable. Called from one thread at a time (the writer's).
    fn commit_blocking(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError>;
}

/// Cloneable so that one failed group commit can fail every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// No space left: nothing of the failed write was kept, and writing
    /// works again once space is freed.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("the store is closed")]
    Closed,
}

/// How much of one topic the log keeps (semantics.md §3). `None` keeps
/// everything on that axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionLimits {
    /// Events whose `ts` is older than this are removed, oldest first.
    pub max_age_ms: Option<u64>,
    /// At most this many of the topic's newest events are kept.
    pub max_events: Option<u64>,
}

impl RetentionLimits {
    pub fn keeps_everything(&self) -> bool {
        self.max_age_ms.is_none() && self.max_events.is_none()
    }
}

/// Topics one [`Store::apply_retention`] call looks at, at most.
pub const RETENTION_TOPICS_PER_CALL: usize = 256;

/// What one [`Store::apply_retention`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPass {
    pub removed: u64,
    /// The topic the next call starts from (inclusive); `None` when every
    /// topic has been visited.
    pub next: Option<String>,
}

/// Retention for every topic: the first rule whose pattern matches a topic
/// gives its limits, else `default`. The default policy keeps everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionPolicy {
    pub default: RetentionLimits,
    pub rules: Vec<(Pattern, RetentionLimits)>,
}

impl RetentionPolicy {
    pub fn limits_for(&self, topic: &Topic) -> RetentionLimits {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map_or(self.default, |&(_, limits)| limits)
    }

    pub fn keeps_everything(&self) -> bool {
        self.default.keeps_everything() && self.rules.iter().all(|(_, l)| l.keeps_everything())
    }

    /// How many of a topic's oldest events go: `excess` beyond
    /// `max_events`, and the leading run with `ts < now - max_age_ms`
    /// (given the topic's oldest events in `seq` order). Retention removes
    /// a prefix of each topic, so an event is removed only together with
    /// every older event of its topic: one with a `ts` in the future holds
    /// the age limit back for the events after it until the count limit
    /// or its own age removes it.
    pub fn prefix_to_remove(
        limits: RetentionLimits,
        retained: u64,
        oldest_ts: impl IntoIterator<Item = Millis>,
        now: Millis,
    ) -> u64 {
        let by_count = limits
            .max_events
            .map_or(0, |keep| retained.saturating_sub(keep));
        let by_age = limits.max_age_ms.map_or(0, |age| {
            let cutoff = now.saturating_sub(age);
            oldest_ts.into_iter().take_while(|&ts| ts < cutoff).count() as u64
        });
        by_count.max(by_age)
    }
}

/// Finds the prefix of one topic that retention removes, page by page, so
/// both stores decide it the same way: the store reads the topic's oldest
/// durable events (seq order) after [`PrefixWalk::next_page`]'s seq, hands
/// them to [`PrefixWalk::feed`], and removes up to
/// [`PrefixWalk::removal`]'s seq.
#[derive(Debug)]
pub struct PrefixWalk {
    limits: RetentionLimits,
    now: Millis,
    /// Events over the count limit.
    by_count: u64,
    /// The leading run of events older than the age limit goes on.
    age_run_open: bool,
    room: u64,
    count: u64,
    boundary: u64,
    last_want: u64,
    done: bool,
}

impl PrefixWalk {
    /// Oldest events read at a time.
    const PAGE: u64 = 1000;

    /// `retained`: the topic's durable events (0 if not counted because
    /// there is no count limit); `oldest_ts`: its oldest event's `ts`;
    /// `room`: remove at most this many.
    pub fn new(
        limits: RetentionLimits,
        retained: u64,
        oldest_ts: Option<Millis>,
        room: u64,
        now: Millis,
    ) -> Self {
        let age_only = RetentionLimits {
            max_events: None,
            ..limits
        };
        PrefixWalk {
            limits,
            now,
            by_count: RetentionPolicy::prefix_to_remove(limits, retained, [], now),
            age_run_open: RetentionPolicy::prefix_to_remove(age_only, 0, oldest_ts, now) > 0,
            room,
            count: 0,
            boundary: 0,
            last_want: 0,
            done: false,
        }
    }

    /// `(after, limit)` for the next page (`after` 0: from the start), or
    /// `None` once the prefix is known.
    pub fn next_page(&mut self) -> Option<(u64, u64)> {
        if self.done
            || self.count >= self.room
            || !(self.age_run_open || self.count < self.by_count)
        {
            return None;
        }
        self.last_want = (self.room - self.count).min(Self::PAGE);
        Some((self.boundary, self.last_want))
    }

    /// The page read for the last [`PrefixWalk::next_page`]: `(seq, ts)`.
    pub fn feed(&mut self, rows: &[(u64, Millis)]) {
        let by_age = if self.age_run_open {
            let age_only = RetentionLimits {
                max_events: None,
                ..self.limits
            };
            RetentionPolicy::prefix_to_remove(age_only, 0, rows.iter().map(|&(_, ts)| ts), self.now)
        } else {
            0
        };
        let read = rows.len() as u64;
        let take = self
            .by_count
            .saturating_sub(self.count)
            .max(by_age)
            .min(read);
        if take == 0 {
            self.done = true;
            return;
        }
        self.count += take;
        self.boundary = rows[take as usize - 1].0;
        self.age_run_open &= by_age == read;
        self.done = take < read || read < self.last_want;
    }

    /// `(last seq to remove, how many)`, if anything goes.
    pub fn removal(&self) -> Option<(u64, u64)> {
        (self.count > 0).then_some((self.boundary, self.count))
    }
}

/// Where a page of latest-by-key entries continues: after this
/// (topic, key), in (topic, key) order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LatestCursor {
    pub topic: String,
    pub key: String,
}

/// One page of [`Store::latest_by_key_page`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatestPage {
    /// In (topic, key) order.
    pub events: Vec<Event>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<LatestCursor>,
}

/// Bounds on one page of latest-by-key entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Events in the page, at most.
    pub keys: usize,
    /// The page ends once its payloads reach this many bytes (it always
    /// holds at least one event, however large).
    pub bytes: usize,
    /// Entries examined, at most (matching or not).
    pub scan: usize,
}

impl Default for PageLimits {
    fn default() -> Self {
        PageLimits {
            keys: 256,
            bytes: 256 * 1024,
            scan: 10_000,
        }
    }
}

/// The size [`Store::read_after_bounded`] counts for an event: its
/// payload, id, topic, key and metadata, as they appear in a delivery.
pub fn event_bytes(event: &Event) -> usize {
    let strings = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map_or(0, |l| l.iter().map(|s| s.len() + 3).sum::<usize>())
    };
    let headers = event.headers.as_ref().map_or(0, |h| {
        h.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>()
    });
    event.payload.get().len()
        + event.id.len()
        + event.topic.as_str().len()
        + event.key.as_ref().map_or(0, String::len)
        + event.sid.as_ref().map_or(0, String::len)
        + strings(&event.tags)
        + strings(&event.caused_by)
        + headers
}

/// Durable storage for the hub.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Makes a batch durable in one commit + sync, assigning each new event
    /// a `seq` strictly greater than every earlier one. De-duplicates events
    /// with `client_id` against ids stored within the dedup window (and
    /// within the batch itself). Updates latest-by-key.
    /// Commits are applied one at a time, in call order; the outcome is
    /// returned only once the batch is durable, and reads never return
    /// events that are not.
    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError>;

    /// The same commit without a runtime hop, for a backend whose commit
    /// is blocking work anyway (the embedded store: SQLite on the calling
    /// thread). The [`writer::StoreWriter`] then runs its commit loop on a
    /// dedicated thread and commits there: one hand-off to the durable
    /// stage and one answer back. `None` (the default, MongoDB): the loop
    /// is a tokio task awaiting [`Store::commit`].
    fn blocking(&self) -> Option<Arc<dyn BlockingCommit>> {
        None
    }

    /// The MongoDB database of a store several hubs can share (the hub
    /// registry, `cluster.rs`, lives there); `None` (the default, the
    /// embedded store): a hub of its own.
    fn cluster_database(&self) -> Option<mongodb::Database> {
        None
    }

    /// On a store several hubs share: the delivery claims through which
    /// members of one group on different hubs share its work, for the hub
    /// `hub` (its registry id). `None` (the default): groups are this
    /// hub's alone.
    fn group_claims(&self, _hub: &str) -> Option<mongo::GroupClaims> {
        None
    }

    /// Reads how far every writer of the store has finished (other hubs'
    /// commits, given-up ranges) and lets reads go that far; returns the
    /// seq reads now stop at. The default (one writer): [`Store::last_seq`].
    async fn refresh_horizon(&self) -> Result<u64, StoreError> {
        self.last_seq().await
    }

    /// Events with `seq > after`, in `seq` order, at most `limit`; when
    /// `pattern` is given only matching ones (the scan continues past
    /// non-matching events up to `scan_limit` rows, so a sparse pattern cannot
    /// make one call unbounded). Returns the events and the last `seq`
    /// examined, so the caller can continue from there.
    async fn read_after(
        &self,
        after: u64,
        pattern: Option<&Pattern>,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        self.read_after_bounded(after, pattern, limit, usize::MAX, scan_limit)
            .await
    }

    /// [`Store::read_after`] that also stops after the event that brings
    /// the [`event_bytes`] of the events returned to `max_bytes` or more
    /// (so one event is returned however large it is): a consumer group
    /// reads ahead within its share of the group buffer, not a fixed count
    /// of events of any size.
    async fn read_after_bounded(
        &self,
        after: u64,
        pattern: Option<&Pattern>,
        limit: usize,
        max_bytes: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError>;

    /// The retained, durable events among `seqs`, in `seq` order (seqs
    /// that are unknown, removed by retention or not durable yet are left
    /// out). A group reads the bodies of redeliveries this way: it does not
    /// keep an event it has handed to a member.
    async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError>;

    /// The event with this `seq`, if retained.
    async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError>;

    /// The highest durable `seq` ever assigned (0 for an empty store).
    async fn last_seq(&self) -> Result<u64, StoreError>;

    /// The lowest retained `seq`, if any.
    async fn first_seq(&self) -> Result<Option<u64>, StoreError>;

    /// One page of the latest event of every (topic, key) whose topic
    /// matches `pattern`, in (topic, key) order, starting after `after`.
    /// A page holds at most `limits.keys` events and stops once it holds
    /// `limits.bytes` of payload (at least one event), and examines at most
    /// `limits.scan` entries (a sparse pattern returns an empty page with a
    /// cursor). [`LatestPage::next`] is `None` once nothing is left.
    async fn latest_by_key_page(
        &self,
        pattern: &Pattern,
        after: Option<&LatestCursor>,
        limits: PageLimits,
    ) -> Result<LatestPage, StoreError>;

    /// The latest event of every (topic, key) whose topic matches `pattern`,
    /// in `seq` order: every page of [`Store::latest_by_key_page`] at once.
    /// For small sets (tests, tools); snapshots for clients are paged.
    async fn latest_by_key(&self, pattern: &Pattern) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .latest_by_key_page(pattern, after.as_ref(), PageLimits::default())
                .await?;
            events.extend(page.events);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        events.sort_unstable_by_key(|e| e.seq);
        Ok(events)
    }

    /// The latest event for one (topic, key).
    async fn latest_for_key(&self, topic: &Topic, key: &str) -> Result<Option<Event>, StoreError>;

    /// A group's stored state, or `None` for a group never seen.
    async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError>;

    /// Every known group.
    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError>;

    /// At most `limit` groups whose key sorts after `after` (all when
    /// `None`), in key order (pattern, then group name): the ops API pages
    /// through many groups without loading them all.
    async fn groups_page(
        &self,
        after: Option<&GroupKey>,
        limit: usize,
    ) -> Result<Vec<GroupRecord>, StoreError>;

    /// Number of stored groups (the hub's `limits.max_groups`).
    async fn group_count(&self) -> Result<u64, StoreError>;

    /// Dead letters of one group with `seq > after_seq`, in `seq` order, at
    /// most `limit` (page with the last `seq` returned).
    async fn dead_letters(
        &self,
        key: &GroupKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Number of dead letters of one group.
    async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError>;

    /// Number of events with `seq > after` (for lag).
    async fn count_after(&self, after: u64) -> Result<u64, StoreError>;

    /// Number of events whose topic matches `pattern` with `seq > after`
    /// (the ops API's `lag_events`). Answered from indexes: the cost grows
    /// with the number of distinct matching topics, never with the length
    /// of the log or of the lag.
    async fn count_matching_after(&self, pattern: &Pattern, after: u64) -> Result<u64, StoreError>;

    /// The first event whose topic matches `pattern` with `seq > after`
    /// (the ops API's oldest unacknowledged event), from indexes like
    /// [`Store::count_matching_after`].
    async fn first_matching_after(
        &self,
        pattern: &Pattern,
        after: u64,
    ) -> Result<Option<Event>, StoreError>;

    /// Removes what `policy` no longer keeps: per topic, a prefix of its
    /// durable oldest events (see [`RetentionPolicy::prefix_to_remove`]),
    /// with the latest-by-key entries that point at them. Topics are visited
    /// in name order from `from` (inclusive; `None`: the first), at most
    /// [`RETENTION_TOPICS_PER_CALL`] of them and at most `limit` events per
    /// call, so no call holds the writer for long however many topics or
    /// events there are; call again with the returned `next` until it is
    /// `None`. Seqs are never reused, groups skip what is gone, and lag
    /// counts only what is left.
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: Millis,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RetentionPass, StoreError>;

    /// How many of these seqs are stored (durable and not removed by
    /// retention): lag subtracts only done marks of events that still count.
    async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError>;

    /// The highest seq at or after `from` that retention removed from a
    /// topic matching `pattern`, if any: a reader resuming at `from` missed
    /// the events up to it. Every backend records, per topic, the last seq
    /// its retention removed.
    async fn removed_since(&self, pattern: &Pattern, from: u64) -> Result<Option<u64>, StoreError>;

    /// Flushes and closes; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
