//! Group commit in front of a [`Store`].
//!
//! Every write of the hub goes through one [`StoreWriter`] (cloneable). A
//! single task takes everything that is waiting at that moment (bounded by
//! [`WriterOptions`]), makes it durable with ONE [`Store::commit`], answers
//! each request, and hands the newly stored events — in `seq` order — to the
//! [`CommittedEvents`] receiver for live fan-out. While a commit runs, new
//! requests queue and form the next batch, so an idle hub adds no latency and
//! a busy one amortises each sync over many events.
//!
//! Back-pressure instead of loss: the request queue and the committed-events
//! channel are bounded; a slow consumer of committed events slows the writer,
//! which slows publishers. Nothing is dropped or reordered.

use std::collections::HashMap;
use std::sync::Arc;

use promhub_core::frames::Event;
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, CommitBatch, DeadLetter, DeadLetterRef, GroupKey, GroupProgress, NewEvent, Store,
    StoreError,
};

/// Bounds of one group commit and of the queues around it.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most events in one commit.
    pub max_batch_events: usize,
    /// Approximate most bytes of events in one commit.
    pub max_batch_bytes: usize,
    /// Requests waiting for the writer before senders wait.
    pub queue_capacity: usize,
    /// Committed batches waiting for the fan-out consumer before the writer
    /// waits.
    pub committed_capacity: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_events: 4096,
            max_batch_bytes: 4 * 1024 * 1024,
            queue_capacity: 16 * 1024,
            committed_capacity: 256,
        }
    }
}

/// Batches of newly stored events in `seq` order, one per commit that stored
/// any. Ends (`recv` returns `None`) when every [`StoreWriter`] is dropped and
/// the last commit is done.
pub type CommittedEvents = mpsc::Receiver<Vec<Event>>;

/// Changes to consumer-group state made durable together (never split across
/// commits).
#[derive(Debug, Clone, Default)]
pub struct GroupUpdate {
    pub progress: Option<GroupProgress>,
    pub dead_letters: Vec<DeadLetter>,
    pub removed_dead_letters: Vec<DeadLetterRef>,
}

/// Cloneable handle that group-commits writes; see the module docs.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    requests: mpsc::Sender<Request>,
}

#[derive(Debug)]
enum Request {
    Append(NewEvent, oneshot::Sender<Result<Appended, StoreError>>),
    Group(GroupUpdate, oneshot::Sender<Result<(), StoreError>>),
}

impl StoreWriter {
    /// Starts the writer task (needs a tokio runtime) with default bounds.
    pub fn new(store: Arc<dyn Store>) -> (StoreWriter, CommittedEvents) {
        Self::with_options(store, WriterOptions::default())
    }

    pub fn with_options(
        store: Arc<dyn Store>,
        options: WriterOptions,
    ) -> (StoreWriter, CommittedEvents) {
        let (requests, request_rx) = mpsc::channel(options.queue_capacity.max(1));
        let (committed_tx, committed_rx) = mpsc::channel(options.committed_capacity.max(1));
        tokio::spawn(run(store, request_rx, committed_tx, options));
        (StoreWriter { requests }, committed_rx)
    }

    /// Stores one event; resolves once it is durable (or found to be a
    /// duplicate).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Append(event, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }

    /// Makes a group's progress durable. Within one commit, later progress
    /// for the same group supersedes earlier (latest cursor, union of marks).
    pub async fn record_progress(&self, progress: GroupProgress) -> Result<(), StoreError> {
        self.update_group(GroupUpdate {
            progress: Some(progress),
            ..GroupUpdate::default()
        })
        .await
    }

    /// Makes a dead letter durable.
    pub async fn record_dead_letter(&self, dead_letter: DeadLetter) -> Result<(), StoreError> {
        self.update_group(GroupUpdate {
            dead_letters: vec![dead_letter],
            ..GroupUpdate::default()
        })
        .await
    }

    /// Deletes a dead letter (replayed into its group, or purged).
    pub async fn remove_dead_letter(&self, dead_letter: DeadLetterRef) -> Result<(), StoreError> {
        self.update_group(GroupUpdate {
            removed_dead_letters: vec![dead_letter],
            ..GroupUpdate::default()
        })
        .await
    }

    /// Makes several group changes durable atomically, e.g. a dead letter
    /// together with the progress that counts its event as done.
    pub async fn update_group(&self, update: GroupUpdate) -> Result<(), StoreError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Group(update, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }
}

/// Rough size of an event in a batch, for the byte bound.
fn event_size(event: &NewEvent) -> usize {
    128 + event.id.len()
        + event.topic.as_str().len()
        + event.key.as_ref().map_or(0, String::len)
        + event.payload.get().len()
        + event.headers.as_ref().map_or(0, |h| {
            h.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
        })
}

/// One batch being assembled, with the replies it owes.
#[derive(Default)]
struct PendingBatch {
    batch: CommitBatch,
    bytes: usize,
    event_replies: Vec<oneshot::Sender<Result<Appended, StoreError>>>,
    group_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Index into `batch.progress` of each group's entry.
    progress_index: HashMap<GroupKey, usize>,
}

impl PendingBatch {
    fn is_empty(&self) -> bool {
        self.event_replies.is_empty() && self.group_replies.is_empty()
    }

    /// Would adding `request` cross a bound? A lone request always fits.
    fn would_overflow(&self, request: &Request, options: &WriterOptions) -> bool {
        if self.is_empty() {
            return false;
        }
        match request {
            Request::Append(event, _) => {
                self.batch.events.len() >= options.max_batch_events
                    || self.bytes + event_size(event) > options.max_batch_bytes
            }
            Request::Group(..) => {
                self.group_replies.len() >= options.max_batch_events
                    || self.bytes >= options.max_batch_bytes
            }
        }
    }

    fn push(&mut self, request: Request) {
        match request {
            Request::Append(event, reply) => {
                self.bytes += event_size(&event);
                self.batch.events.push(event);
                self.event_replies.push(reply);
            }
            Request::Group(update, reply) => {
                if let Some(progress) = update.progress {
                    self.merge_progress(progress);
                }
                self.batch.dead_letters.extend(update.dead_letters);
                self.batch
                    .removed_dead_letters
                    .extend(update.removed_dead_letters);
                self.group_replies.push(reply);
            }
        }
    }

    fn merge_progress(&mut self, progress: GroupProgress) {
        match self.progress_index.get(&progress.key) {
            Some(&i) => {
                let earlier = &mut self.batch.progress[i];
                earlier.cursor = progress.cursor;
                earlier.done_above.extend(progress.done_above);
                let cursor = earlier.cursor;
                earlier.done_above.retain(|&seq| seq > cursor);
                earlier.done_above.sort_unstable();
                earlier.done_above.dedup();
            }
            None => {
                self.progress_index
                    .insert(progress.key.clone(), self.batch.progress.len());
                self.batch.progress.push(progress);
            }
        }
    }

    /// Commits, answers every request, and returns the stored events.
    async fn commit(self, store: &dyn Store) -> Vec<Event> {
        let PendingBatch {
            batch,
            event_replies,
            group_replies,
            ..
        } = self;
        let expected = batch.events.len();
        let result = store.commit(batch).await.and_then(|outcome| {
            if outcome.events.len() == expected {
                Ok(outcome)
            } else {
                Err(StoreError::Corrupt(format!(
                    "the store answered {} results for {expected} events",
                    outcome.events.len()
                )))
            }
        });
        match result {
            Ok(outcome) => {
                let mut stored = Vec::with_capacity(outcome.events.len());
                for (appended, reply) in outcome.events.into_iter().zip(event_replies) {
                    if let Appended::Stored(event) = &appended {
                        stored.push(event.clone());
                    }
                    // A requester that went away still had its event stored.
                    let _ = reply.send(Ok(appended));
                }
                for reply in group_replies {
                    let _ = reply.send(Ok(()));
                }
                stored
            }
            Err(e) => {
                tracing::error!(error = %e, events = expected, "group commit failed");
                for reply in event_replies {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in group_replies {
                    let _ = reply.send(Err(e.clone()));
                }
                Vec::new()
            }
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<Request>,
    committed: mpsc::Sender<Vec<Event>>,
    options: WriterOptions,
) {
    let mut carried: Option<Request> = None;
    let mut fan_out_gone = false;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let mut pending = PendingBatch::default();
        pending.push(first);
        // Take whatever else is already waiting, up to the bounds.
        while let Ok(request) = requests.try_recv() {
            if pending.would_overflow(&request, &options) {
                carried = Some(request);
                break;
            }
            pending.push(request);
        }
        let stored = pending.commit(store.as_ref()).await;
        if !stored.is_empty() && !fan_out_gone && committed.send(stored).await.is_err() {
            fan_out_gone = true;
            tracing::warn!("nobody receives committed events any more; live fan-out stopped");
        }
    }
}
