//! Behaviour every [`Store`] backend must show, written against
//! `Arc<dyn Store>` only. A backend runs the suite by implementing
//! [`StoreFactory`] and instantiating [`conformance_tests!`] (see the SQLite
//! instance at the bottom).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use promhub_core::frames::{Event, to_payload};
use promhub_core::{Pattern, Topic};
use serde_json::value::RawValue;

use super::writer::{GroupUpdate, StoreWriter};
use super::{
    Appended, CommitBatch, DeadLetter, DeadLetterRef, GroupKey, GroupProgress, LatestCursor,
    NewEvent, PageLimits, RETENTION_TOPICS_PER_CALL, RetentionLimits, RetentionPass,
    RetentionPolicy, Store, StoreError,
};

/// Opens a backend at a location. Opening the same location again must see
/// everything committed before (a real reopen).
mod dedup;
mod events;
mod groups;
mod latest;
mod retention;
mod writer;

pub(crate) use self::dedup::*;
pub(crate) use self::events::*;
pub(crate) use self::groups::*;
pub(crate) use self::latest::*;
pub(crate) use self::retention::*;
pub(crate) use self::writer::*;

#[async_trait]
pub(crate) trait StoreFactory: Send + Sync {
    async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>>;
}

const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("valid test topic")
}

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).expect("valid test pattern")
}

fn event(topic_name: &str, key: Option<&str>, body: &str) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        client_id: false,
        topic: topic(topic_name),
        ts: 1_700_000_000_000,
        key: key.map(str::to_owned),
        payload: to_payload(body).expect("string payload"),
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    }
}

fn with_client_id(mut e: NewEvent, id: &str) -> NewEvent {
    e.id = id.to_owned();
    e.client_id = true;
    e
}

/// An entry of a commit's outcome with its stored event put back.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Stored(Event),
    Duplicate { id: String, seq: u64 },
}

/// Commits `events` and pairs each `Stored` answer (id and seq) with its
/// event from `CommitOutcome::stored`, checking that contract: the stored
/// events are the `Stored` answers' ids and seqs, in the same (seq) order.
async fn commit_events(store: &dyn Store, events: Vec<NewEvent>) -> Result<Vec<Answer>> {
    let outcome = store
        .commit(CommitBatch {
            events,
            ..CommitBatch::default()
        })
        .await?;
    let mut stored = outcome.stored.into_iter();
    let mut answers = Vec::with_capacity(outcome.events.len());
    for appended in outcome.events {
        answers.push(match appended {
            Appended::Stored { id, seq } => {
                let event = stored.next().context("a Stored answer without its event")?;
                ensure!(
                    event.id == id && event.seq == seq,
                    "stored event {}/{} answered as {id}/{seq}",
                    event.id,
                    event.seq
                );
                Answer::Stored(event)
            }
            Appended::Duplicate { id, seq } => Answer::Duplicate { id, seq },
        });
    }
    ensure!(stored.next().is_none(), "more stored events than answers");
    Ok(answers)
}

/// The seq of a `Stored` answer of the writer.
fn stored_seq(appended: &Appended) -> Result<u64> {
    match appended {
        Appended::Stored { seq, .. } => Ok(*seq),
        Appended::Duplicate { id, seq } => bail!("expected stored, got duplicate {id} of {seq}"),
    }
}

fn stored(appended: &Answer) -> Result<&Event> {
    match appended {
        Answer::Stored(e) => Ok(e),
        Answer::Duplicate { id, seq } => bail!("expected stored, got duplicate {id} of {seq}"),
    }
}

/// Stores events one batch per item and returns their seqs.
async fn append_each(store: &dyn Store, events: Vec<NewEvent>) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in events {
        let out = commit_events(store, vec![e]).await?;
        seqs.push(stored(&out[0])?.seq);
    }
    Ok(seqs)
}

fn group_key(p: &str, g: &str) -> GroupKey {
    GroupKey {
        pattern: p.to_owned(),
        group: g.to_owned(),
    }
}

/// Instantiates every conformance test for a backend: `$factory` is an
/// expression giving a [`StoreFactory`]. With `optional`, it is a function
/// taking the test's name and giving `Option<impl StoreFactory>`, where
/// `None` means the backend's server is unavailable and the test is skipped
/// (it has already said so).
macro_rules! conformance_tests {
    (optional $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                match $factory(stringify!($name)) {
                    Some(factory) => $crate::store::conformance::$name(&factory).await,
                    None => Ok(()),
                }
            }
        )*
    };
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                $crate::store::conformance::$name(&$factory).await
            }
        )*
    };
}

macro_rules! all_conformance_tests {
    ($($factory:tt)+) => {
        conformance_tests!($($factory)+;
            seq_strictly_increasing,
            events_round_trip,
            dedup_within_window,
            dedup_after_window,
            dedup_inside_batch,
            dedup_is_per_topic,
            latest_by_key,
            latest_by_key_pages,
            read_after,
            read_after_bounded,
            events_by_seq,
            group_progress,
            groups_paged,
            group_attempts,
            retention,
            retention_visits_topics_in_bounded_calls,
            dead_letters,
            matching_counts,
            survives_reopen,
            closed_store_errors,
            writer_concurrent_appends,
            writer_group_updates,
        );
    };
}

mod sqlite {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    /// `checkpoint_thread` picks who checkpoints the WAL; both must behave
    /// the same.
    struct SqliteFactory {
        checkpoint_thread: bool,
    }

    #[async_trait]
    impl StoreFactory for SqliteFactory {
        async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>> {
            let store = SqliteStore::open(
                location,
                SqliteOptions {
                    dedup_window,
                    checkpoint_thread: self.checkpoint_thread,
                    ..SqliteOptions::default()
                },
            )?;
            Ok(Arc::new(store))
        }
    }

    mod checkpoint_thread {
        use super::*;
        all_conformance_tests!(SqliteFactory {
            checkpoint_thread: true
        });
    }

    mod checkpoints_in_commits {
        use super::*;
        all_conformance_tests!(SqliteFactory {
            checkpoint_thread: false
        });
    }
}

mod mongo {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::*;
    use crate::store::mongo::test_server::FerretDb;
    use crate::store::mongo::{MongoOptions, MongoStore};

    /// Every test gets its own database on the FerretDB shared by this test
    /// binary.
    struct MongoFactory {
        server: &'static FerretDb,
    }

    impl MongoFactory {
        fn shared(test: &str) -> Option<MongoFactory> {
            FerretDb::shared_or_skip(test).map(|server| MongoFactory { server })
        }
    }

    #[async_trait]
    impl StoreFactory for MongoFactory {
        async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>> {
            // The location (a fresh temp dir per test) names the database,
            // so opening it again is a real reopen of the same data.
            let mut hasher = DefaultHasher::new();
            location.hash(&mut hasher);
            let database = format!("conformance_{:016x}", hasher.finish());
            let store = MongoStore::connect_with(
                &self.server.uri(&database),
                MongoOptions {
                    dedup_window,
                    ..MongoOptions::default()
                },
            )
            .await?;
            Ok(Arc::new(store))
        }
    }

    all_conformance_tests!(optional MongoFactory::shared);
}
