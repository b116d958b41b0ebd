//! A group's status for the ops API: cursor, lag, members, dead letters.
//!
//! Lag comes from indexes, never from a scan of the log (known bug 8):
//! `lag_events` = events matching the group's pattern after its cursor
//! ([`Store::count_matching_after`]) minus those already done above the
//! cursor (acked out of order, dead-lettered); `lag_ms` = age of the oldest
//! event after the cursor that is not done — the broker's window holds it
//! for a loaded group, else [`Store::first_matching_after`], skipping done
//! marks (at most one lookup per mark).

use std::collections::HashSet;

use promhub_core::Pattern;
use promhub_core::frames::Millis;
use serde::Serialize;

use crate::broker::{GroupView, MemberView};
use crate::store::{GroupKey, GroupRecord, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CursorInfo {
    pub seq: u64,
    /// `ts` of the event at the cursor, when it is retained.
    pub ts: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemberInfo {
    pub conn: u64,
    pub inflight: u32,
    pub max_inflight: u32,
}

impl From<&MemberView> for MemberInfo {
    fn from(m: &MemberView) -> Self {
        MemberInfo {
            conn: m.conn,
            inflight: m.inflight,
            max_inflight: m.max_inflight,
        }
    }
}

/// Everything the ops API shows about one group.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupStatus {
    pub topic: String,
    pub group: String,
    pub cursor: CursorInfo,
    pub lag_events: u64,
    pub lag_ms: u64,
    /// The oldest event after the cursor that is not done.
    pub oldest_pending_seq: Option<u64>,
    /// Connected members (empty for a group not loaded in the broker).
    pub members: Vec<MemberInfo>,
    pub inflight: u64,
    pub dead_letters: u64,
    /// Dead letters being delivered again.
    pub replaying: usize,
    /// Events no connected member may read (semantics.md §2): they stay
    /// pending, counted in the lag and holding the cursor, until a member
    /// whose policy allows them connects. 0 for a group not loaded.
    pub blocked: usize,
    /// The oldest of them.
    pub oldest_blocked_seq: Option<u64>,
    /// Bytes the group holds in the group buffer (bodies read ahead,
    /// deliveries not yet settled).
    pub buffered_bytes: usize,
    /// ACKs and deliveries since the broker loaded the group.
    pub acked: u64,
    pub delivered: u64,
    /// Events after this hub's cursor of the group that another hub's
    /// members hold (several hubs on one MongoDB; 0 otherwise).
    pub held_elsewhere: usize,
    /// The group's members on the other live hubs (several hubs on one
    /// MongoDB), as of each hub's last registry renewal; `members` lists
    /// this hub's, `inflight` counts all.
    pub other_hubs: Vec<HubGroupPart>,
}

/// Another hub's part of a group (its registry snapshot).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HubGroupPart {
    pub hub: String,
    pub members: u64,
    pub inflight: u64,
    pub held_elsewhere: u64,
    pub acked: u64,
    pub delivered: u64,
}

/// The lag part alone (cheaper: no member or dead-letter lookups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lag {
    pub events: u64,
    pub ms: u64,
    pub oldest_pending_seq: Option<u64>,
    /// Of the events counted, those no connected member may read.
    pub blocked: usize,
    pub oldest_blocked_seq: Option<u64>,
}

/// Cursor and done marks: the broker's live ones for a loaded group, else
/// the stored ones; the stored ones too when they are ahead (another hub
/// sharing the group moved the cursor further than this hub has heard).
pub(crate) fn progress(view: Option<&GroupView>, record: Option<&GroupRecord>) -> (u64, Vec<u64>) {
    let cursor = view
        .map(|v| v.cursor)
        .max(record.map(|r| r.cursor))
        .unwrap_or(0);
    let mut done: Vec<u64> = view
        .map(|v| v.done_above.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(record.map(|r| r.done_above.as_slice()).unwrap_or_default())
        .copied()
        .filter(|&seq| seq > cursor)
        .collect();
    done.sort_unstable();
    done.dedup();
    (cursor, done)
}

pub(crate) async fn lag(
    store: &dyn Store,
    key: &GroupKey,
    view: Option<&GroupView>,
    record: Option<&GroupRecord>,
    now: Millis,
) -> Result<Lag, StoreError> {
    let pattern = Pattern::parse(&key.pattern)
        .map_err(|e| StoreError::Corrupt(format!("group pattern {:?}: {e}", key.pattern)))?;
    let (cursor, done_above) = progress(view, record);
    let done: HashSet<u64> = done_above.iter().copied().filter(|&s| s > cursor).collect();
    let after_cursor = store.count_matching_after(&pattern, cursor).await?;
    // Done marks of events retention removed are no longer in that count.
    let done_counted = match done.len() {
        0 => 0,
        _ => {
            let marks: Vec<u64> = done.iter().copied().collect();
            store.count_present(&marks).await?
        }
    };
    let events = after_cursor.saturating_sub(done_counted);
    // The window's oldest pending event, unless another hub's progress
    // passed it.
    let mut oldest = view
        .and_then(|v| v.oldest_pending)
        .filter(|(seq, _)| *seq > cursor && !done.contains(seq));
    if oldest.is_none() && events > 0 {
        let mut after = cursor;
        // Each done mark costs one lookup at most.
        for _ in 0..=done.len() {
            match store.first_matching_after(&pattern, after).await? {
                Some(event) if done.contains(&event.seq) => after = event.seq,
                Some(event) => {
                    oldest = Some((event.seq, event.ts));
                    break;
                }
                None => break,
            }
        }
    }
    Ok(Lag {
        events,
        ms: oldest.map_or(0, |(_, ts)| now.saturating_sub(ts)),
        oldest_pending_seq: oldest.map(|(seq, _)| seq),
        blocked: view.map_or(0, |v| v.blocked),
        oldest_blocked_seq: view.and_then(|v| v.oldest_blocked),
    })
}

pub(crate) async fn status(
    store: &dyn Store,
    key: &GroupKey,
    view: Option<&GroupView>,
    record: Option<&GroupRecord>,
    others: Vec<HubGroupPart>,
    now: Millis,
) -> Result<GroupStatus, StoreError> {
    let lag = lag(store, key, view, record, now).await?;
    let (cursor, _) = progress(view, record);
    let cursor_ts = if cursor == 0 {
        None
    } else {
        store.get(cursor).await?.map(|e| e.ts)
    };
    let members: Vec<MemberInfo> = view
        .map(|v| v.members.iter().map(MemberInfo::from).collect())
        .unwrap_or_default();
    Ok(GroupStatus {
        topic: key.pattern.clone(),
        group: key.group.clone(),
        cursor: CursorInfo {
            seq: cursor,
            ts: cursor_ts,
        },
        lag_events: lag.events,
        lag_ms: lag.ms,
        oldest_pending_seq: lag.oldest_pending_seq,
        inflight: members.iter().map(|m| u64::from(m.inflight)).sum::<u64>()
            + others.iter().map(|o| o.inflight).sum::<u64>(),
        members,
        dead_letters: store.dead_letter_count(key).await?,
        replaying: view.map_or(0, |v| v.replaying),
        blocked: lag.blocked,
        oldest_blocked_seq: lag.oldest_blocked_seq,
        buffered_bytes: view.map_or(0, |v| v.buffered_bytes),
        acked: view.map_or(0, |v| v.acked),
        delivered: view.map_or(0, |v| v.delivered),
        held_elsewhere: view.map_or(0, |v| v.held_elsewhere),
        other_hubs: others,
    })
}
