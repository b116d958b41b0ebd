//! The log follower (semantics.md §7): on a MongoDB store the broker's
//! feed of committed events comes from the log itself, read in seq order up
//! to the visibility horizon, so the events every hub on the database
//! commits reach this hub's live subscribers and groups, in one seq order,
//! with no gap and no duplicate.
//!
//! The follower sits between the [`StoreWriter`]'s committed-events
//! channel and the broker. An own batch that directly follows what was
//! handed over and lies below the horizon goes to the broker as it is (no
//! IO: a hub alone behaves as without the follower); otherwise it only
//! wakes the follower and its events are read back from the log with the
//! others (an own event is never delivered before another hub's lower seq
//! that is still being written). Other hubs' commits wake it by tailing: every `poll`
//! (`cluster_poll_ms`) it refreshes the horizon (`Store::refresh_horizon`,
//! three indexed queries) and reads what lies below it
//! (`Store::read_after`, pages of 512). On a replica set (`hello` names a
//! `setName`) a change stream on `seq_ranges` wakes it as soon as a range
//! is reserved or finished, and tailing drops to once a second as a safety
//! net; FerretDB has no change streams. A hub alone on its database (no
//! other hub's lease running at the hub registry's last listing,
//! [`OtherHubs`]) does not tail at all: it passes its own batches on and
//! reads the log only when a seq before its next batch is missing.
//!
//! [`StoreWriter`]: crate::store::writer::StoreWriter

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::Database;
use mongodb::bson::{Document, doc};
use promhub_core::frames::Event;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::cluster::OtherHubs;
use crate::store::writer::CommittedEvents;
use crate::store::{Store, StoreError};

/// Events read from the log at once.
const PAGE: usize = 512;
/// Tailing period when a change stream wakes the follower.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// What the follower needs.
pub(crate) struct FollowerSetup {
    pub store: Arc<dyn Store>,
    /// This hub's commits (the writer's committed-events channel).
    pub own: CommittedEvents,
    /// The seq the broker starts after.
    pub head: u64,
    /// Tailing period without change streams.
    pub poll: Duration,
    /// The store's database, to detect a replica set and watch it.
    pub db: Database,
    /// Whether other hubs are alive (the hub registry's last listing).
    pub other_hubs: OtherHubs,
}

/// Starts the follower; returns the broker's feed and the task (aborted
/// at shutdown after the broker stopped).
pub(crate) fn spawn(setup: FollowerSetup) -> (CommittedEvents, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(run(setup, tx));
    (rx, task)
}

async fn run(setup: FollowerSetup, tx: mpsc::Sender<Vec<Event>>) {
    let FollowerSetup {
        store,
        mut own,
        head,
        poll,
        db,
        other_hubs,
    } = setup;
    let wake = Arc::new(Notify::new());
    let poll = if replica_set(&db).await {
        tokio::spawn(watch(db, Arc::clone(&wake)));
        tracing::info!("log follower: a replica set; woken by a change stream on seq_ranges");
        SAFETY_POLL
    } else {
        tracing::info!(
            poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX),
            "log follower: no change streams; tailing the log"
        );
        poll
    };
    let mut delivered = head;
    let mut mine = Vec::new();
    // Other hubs' commits are looked for at least every `poll`, however
    // busy this hub's own commits keep the follower.
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        tokio::select! {
            batch = own.recv() => match batch {
                Some(batch) => mine.push(batch),
                // The writer is gone: the hub is stopping.
                None => break,
            },
            () = wake.notified() => {}
            () = tokio::time::sleep_until(last_refresh + poll) => {}
        }
        while let Ok(batch) = own.try_recv() {
            mine.push(batch);
        }
        let result = match forward_own(store.as_ref(), &mut delivered, &mut mine, &tx).await {
            Ok(true) if last_refresh.elapsed() < poll => Ok(()),
            // Alone on the database (no other hub's lease running) with
            // every own commit handed over: nothing else to look for. A
            // hub that joins is seen at the registry's next listing, or
            // sooner, as a gap before this hub's next own batch. The next
            // look is a `poll` away (the timer must not fire again at once).
            Ok(true) if other_hubs.none() => {
                last_refresh = tokio::time::Instant::now();
                Ok(())
            }
            Ok(_) => {
                last_refresh = tokio::time::Instant::now();
                catch_up(store.as_ref(), &mut delivered, &tx).await
            }
            Err(stop) => Err(stop),
        };
        match result {
            Ok(()) => {}
            Err(Stop::Closed) => break,
            Err(Stop::Store(error)) => {
                tracing::warn!(%error, delivered, "log follower: cannot read the log; retrying");
            }
        }
    }
}

/// This hub's own batches, without reading them back, while they follow
/// `delivered` with no seq in between and lie below the horizon (always
/// so on a hub alone: no IO, and the broker sees a commit as soon as
/// without the follower). `false`: something else must be read from the
/// log first (another hub's events, or an own batch above the horizon);
/// own events up to `delivered` are dropped either way (already handed
/// over from the log).
async fn forward_own(
    store: &dyn Store,
    delivered: &mut u64,
    mine: &mut Vec<Vec<Event>>,
    tx: &mpsc::Sender<Vec<Event>>,
) -> Result<bool, Stop> {
    let horizon = store.last_seq().await.map_err(Stop::Store)?;
    let mut all_forwarded = true;
    for mut batch in mine.drain(..) {
        batch.retain(|event| event.seq > *delivered);
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            continue;
        };
        if all_forwarded && first.seq == *delivered + 1 && last.seq <= horizon {
            *delivered = last.seq;
            tx.send(batch).await.map_err(|_| Stop::Closed)?;
        } else {
            // Read from the log with everything else.
            tracing::debug!(
                first = first.seq,
                last = last.seq,
                delivered = *delivered,
                horizon,
                "log follower: an own batch is read back from the log"
            );
            all_forwarded = false;
        }
    }
    Ok(all_forwarded && *delivered >= horizon)
}

enum Stop {
    /// The broker is gone.
    Closed,
    Store(StoreError),
}

/// Hands the broker every event after `delivered` up to the horizon.
async fn catch_up(
    store: &dyn Store,
    delivered: &mut u64,
    tx: &mpsc::Sender<Vec<Event>>,
) -> Result<(), Stop> {
    let horizon = store.refresh_horizon().await.map_err(Stop::Store)?;
    while *delivered < horizon {
        let (events, last) = store
            .read_after(*delivered, None, PAGE, PAGE)
            .await
            .map_err(Stop::Store)?;
        let Some(newest) = events.last().map(|event| event.seq) else {
            // Nothing up to the horizon: its seqs were given up.
            *delivered = (*delivered).max(last);
            break;
        };
        *delivered = newest;
        tx.send(events).await.map_err(|_| Stop::Closed)?;
    }
    Ok(())
}

/// Whether the server is a replica set member (only those have change
/// streams).
async fn replica_set(db: &Database) -> bool {
    match db.run_command(doc! { "hello": 1 }).await {
        Ok(reply) => reply.get_str("setName").is_ok(),
        Err(_) => false,
    }
}

/// Wakes the follower at every change of `seq_ranges` (a range reserved or
/// finished); re-opens the stream after an error.
async fn watch(db: Database, wake: Arc<Notify>) {
    let ranges = db.collection::<Document>("seq_ranges");
    // Ends once the follower (the other holder of `wake`) is gone.
    while Arc::strong_count(&wake) > 1 {
        match ranges.watch().await {
            Ok(mut stream) => {
                while let Some(change) = stream.next().await {
                    if let Err(error) = change {
                        tracing::warn!(%error, "log follower: the change stream failed");
                        break;
                    }
                    wake.notify_one();
                    if Arc::strong_count(&wake) == 1 {
                        return;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "log follower: cannot open a change stream"),
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
