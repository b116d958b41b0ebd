//! Group commit in front of a [`Store`].
//!
//! Every write of the hub goes through one [`StoreWriter`] (cloneable). One
//! commit loop takes everything that is waiting at that moment (bounded by
//! [`WriterOptions`]) into ONE batch and commits it ([`Store::commit`]:
//! durable when it returns), then answers each request and hands the newly
//! stored events — in `seq` order — to the [`CommittedEvents`] receiver for
//! live fan-out. Requests that arrive while a commit (and its fsync) is in
//! progress wait for it and form the next batch: a request waits for at
//! most one commit besides its own, and batches grow with the arrival rate
//! without any timer. An idle hub commits a publish at once; a busy one
//! amortises each sync over many events.
//!
//! The loop is a tokio task. For a store that commits on the calling thread
//! ([`Store::blocking`], the embedded store) each batch goes to the
//! writer's commit thread (`promhub-commit`), which applies and syncs it
//! and answers: one hand-off to the durable stage and one answer back per
//! batch, however many requests it holds. Otherwise (MongoDB) the task
//! awaits [`Store::commit`] itself.
//!
//! (Running the loop itself on the commit thread was measured and
//! rejected: a thread woken by the first request of a burst commits it
//! alone, while the task is scheduled after the publishing connection has
//! queued the rest of its burst, so its batches are larger.)
//!
//! Back-pressure instead of loss: the request queue and the committed-events
//! channel are bounded; a slow consumer of committed events slows the writer,
//! which slows publishers. Nothing is dropped or reordered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Metrics;
use promhub_core::frames::Event;
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, BlockingCommit, CommitBatch, CommitOutcome, DeadLetter, DeadLetterRef, GroupKey,
    GroupProgress, NewEvent, Store, StoreError,
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
    /// Where commit latency and stored / duplicate events are counted.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_events: 4096,
            max_batch_bytes: 4 * 1024 * 1024,
            queue_capacity: 16 * 1024,
            committed_capacity: 256,
            metrics: None,
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

type CommitReply = oneshot::Sender<Result<CommitOutcome, StoreError>>;

/// How the commit loop commits a batch.
#[derive(Debug)]
enum Committer {
    /// Handed to the commit thread. At most one batch is there at a time
    /// (the loop waits for its answer), so the channel needs no bound.
    Thread(std::sync::mpsc::Sender<(CommitBatch, CommitReply)>),
    /// Awaiting the store.
    Async(Arc<dyn Store>),
}

impl Committer {
    /// The commit thread for a store that commits on the calling thread;
    /// it ends when the loop drops its sender.
    fn thread(store: Arc<dyn BlockingCommit>) -> std::io::Result<Committer> {
        let (batches, receiver) = std::sync::mpsc::channel::<(CommitBatch, CommitReply)>();
        std::thread::Builder::new()
            .name("promhub-commit".into())
            .spawn(move || {
                while let Ok((batch, reply)) = receiver.recv() {
                    let _ = reply.send(store.commit_blocking(batch));
                }
            })?;
        Ok(Committer::Thread(batches))
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        match self {
            Committer::Thread(batches) => {
                let (reply, answer) = oneshot::channel();
                let stopped = || StoreError::Backend("the commit thread stopped".into());
                batches.send((batch, reply)).map_err(|_| stopped())?;
                answer.await.map_err(|_| stopped())?
            }
            Committer::Async(store) => store.commit(batch).await,
        }
    }
}

impl StoreWriter {
    /// Starts the commit loop (needs a tokio runtime) with default bounds.
    pub fn new(store: Arc<dyn Store>) -> (StoreWriter, CommittedEvents) {
        Self::with_options(store, WriterOptions::default())
    }

    /// Starts the commit loop (a tokio task; needs a runtime) and, for a
    /// store that commits on the calling thread, the commit thread. Panics
    /// if that thread cannot be started (the process is out of threads).
    pub fn with_options(
        store: Arc<dyn Store>,
        options: WriterOptions,
    ) -> (StoreWriter, CommittedEvents) {
        let (requests, request_rx) = mpsc::channel(options.queue_capacity.max(1));
        let (committed_tx, committed_rx) = mpsc::channel(options.committed_capacity.max(1));
        let committer = match store.blocking() {
            Some(blocking) => Committer::thread(blocking)
                .unwrap_or_else(|e| panic!("cannot start the commit thread: {e}")),
            None => Committer::Async(store),
        };
        tokio::spawn(run(committer, request_rx, committed_tx, options));
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

/// Rough size of a group update in a batch, for the byte bound.
fn update_size(update: &GroupUpdate) -> usize {
    64 + update.progress.as_ref().map_or(0, |p| {
        p.key.pattern.len()
            + p.key.group.len()
            + 8 * p.done_above.len()
            + 12 * p.attempt_changes.len()
    }) + update
        .dead_letters
        .iter()
        .map(|d| 64 + d.key.pattern.len() + d.key.group.len() + d.event_id.len() + d.reason.len())
        .sum::<usize>()
        + 64 * update.removed_dead_letters.len()
}

/// One batch being assembled, with the replies it owes.
#[derive(Default)]
struct PendingBatch {
    batch: CommitBatch,
    bytes: usize,
    replies: Replies,
    /// Index into `batch.progress` of each group's entry.
    progress_index: HashMap<GroupKey, usize>,
}

impl PendingBatch {
    fn is_empty(&self) -> bool {
        self.replies.events.is_empty() && self.replies.groups.is_empty()
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
            Request::Group(update, _) => {
                self.replies.groups.len() >= options.max_batch_events
                    || self.bytes + update_size(update) > options.max_batch_bytes
            }
        }
    }

    fn push(&mut self, request: Request) {
        match request {
            Request::Append(event, reply) => {
                self.bytes += event_size(&event);
                self.batch.events.push(event);
                self.replies.events.push(reply);
            }
            Request::Group(update, reply) => {
                self.bytes += update_size(&update);
                if let Some(progress) = update.progress {
                    self.merge_progress(progress);
                }
                self.batch.dead_letters.extend(update.dead_letters);
                self.batch
                    .removed_dead_letters
                    .extend(update.removed_dead_letters);
                self.replies.groups.push(reply);
            }
        }
    }

    fn merge_progress(&mut self, progress: GroupProgress) {
        match self.progress_index.get(&progress.key) {
            Some(&i) => {
                // Marks are tidied once in `finish`, not on every merge.
                let earlier = &mut self.batch.progress[i];
                earlier.cursor = progress.cursor;
                earlier.done_above.extend(progress.done_above);
                // Applied in order: a later change of a seq wins.
                earlier.attempt_changes.extend(progress.attempt_changes);
            }
            None => {
                self.progress_index
                    .insert(progress.key.clone(), self.batch.progress.len());
                self.batch.progress.push(progress);
            }
        }
    }

    /// The batch to commit (group marks tidied) and the replies it owes.
    fn finish(self) -> (CommitBatch, Replies) {
        let PendingBatch {
            mut batch, replies, ..
        } = self;
        for progress in &mut batch.progress {
            let cursor = progress.cursor;
            progress.done_above.retain(|&seq| seq > cursor);
            progress.done_above.sort_unstable();
            progress.done_above.dedup();
            if !progress.attempt_changes.is_empty() {
                // The last change of each seq; forgetting applies at any
                // seq, recording only above the cursor.
                let last: BTreeMap<u64, u32> = progress.attempt_changes.drain(..).collect();
                progress.attempt_changes = last
                    .into_iter()
                    .filter(|&(seq, attempts)| attempts == 0 || seq > cursor)
                    .collect();
            }
        }
        (batch, replies)
    }
}

/// The requests of one batch, to answer.
#[derive(Default)]
struct Replies {
    events: Vec<oneshot::Sender<Result<Appended, StoreError>>>,
    groups: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Replies {
    fn fail(self, e: &StoreError) {
        tracing::error!(error = %e, events = self.events.len(), "group commit failed");
        for reply in self.events {
            let _ = reply.send(Err(e.clone()));
        }
        for reply in self.groups {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

/// The commit loop: forms a batch from what is waiting, commits it (durable
/// on return), answers it and hands its stored events to the fan-out, then
/// the next; batches are committed one after another, so seqs follow batch
/// order.
async fn run(
    committer: Committer,
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
        let (batch, replies) = pending.finish();
        let expected = batch.events.len();
        let started = Instant::now();
        let result = committer.commit(batch).await.and_then(|outcome| {
            if outcome.events.len() == expected {
                Ok(outcome)
            } else {
                Err(StoreError::Corrupt(format!(
                    "the store answered {} results for {expected} events",
                    outcome.events.len()
                )))
            }
        });
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                replies.fail(&e);
                continue;
            }
        };
        if let Some(metrics) = &options.metrics {
            metrics
                .store_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            let stored = outcome.stored.len() as u64;
            metrics.publishes.inc_by(stored);
            metrics
                .duplicate_publishes
                .inc_by(outcome.events.len() as u64 - stored);
        }
        let CommitOutcome { events, stored } = outcome;
        for (appended, reply) in events.into_iter().zip(replies.events) {
            // A requester that went away still had its event stored.
            let _ = reply.send(Ok(appended));
        }
        for reply in replies.groups {
            let _ = reply.send(Ok(()));
        }
        if !stored.is_empty() && !fan_out_gone && committed.send(stored).await.is_err() {
            fan_out_gone = true;
            tracing::warn!("nobody receives committed events any more; live fan-out stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::{Context, Result, ensure};
    use async_trait::async_trait;
    use promhub_core::frames::to_payload;
    use promhub_core::{Pattern, Topic};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{CommitOutcome, GroupRecord, RetentionPass, RetentionPolicy};
    use promhub_core::frames::Millis;

    /// A real SQLite store that records every batch, can hold commits at a
    /// gate (so requests queue up deterministically) and can fail a chosen
    /// commit.
    #[derive(Debug)]
    struct Instrumented {
        inner: SqliteStore,
        gate: Semaphore,
        commits: AtomicUsize,
        fail_commit: AtomicUsize,
        batches: Mutex<Vec<CommitBatch>>,
    }

    impl Instrumented {
        fn new(dir: &std::path::Path) -> Result<Arc<Self>> {
            Ok(Arc::new(Instrumented {
                inner: SqliteStore::open(dir, SqliteOptions::default())?,
                gate: Semaphore::new(0),
                commits: AtomicUsize::new(0),
                fail_commit: AtomicUsize::new(usize::MAX),
                batches: Mutex::new(Vec::new()),
            }))
        }

        fn open_gate(&self) {
            self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }

        fn batches(&self) -> Vec<CommitBatch> {
            self.batches.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Store for Instrumented {
        async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
            let n = self.commits.fetch_add(1, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .map_err(|_| StoreError::Closed)?
                .forget();
            self.batches.lock().unwrap().push(batch.clone());
            if n == self.fail_commit.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("injected failure".into()));
            }
            self.inner.commit(batch).await
        }
        async fn read_after_bounded(
            &self,
            after: u64,
            pattern: Option<&Pattern>,
            limit: usize,
            max_bytes: usize,
            scan_limit: usize,
        ) -> Result<(Vec<Event>, u64), StoreError> {
            self.inner
                .read_after_bounded(after, pattern, limit, max_bytes, scan_limit)
                .await
        }
        async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
            self.inner.events_by_seq(seqs).await
        }
        async fn groups_page(
            &self,
            after: Option<&GroupKey>,
            limit: usize,
        ) -> Result<Vec<GroupRecord>, StoreError> {
            self.inner.groups_page(after, limit).await
        }
        async fn group_count(&self) -> Result<u64, StoreError> {
            self.inner.group_count().await
        }
        async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
            self.inner.get(seq).await
        }
        async fn last_seq(&self) -> Result<u64, StoreError> {
            self.inner.last_seq().await
        }
        async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
            self.inner.first_seq().await
        }
        async fn latest_by_key_page(
            &self,
            pattern: &Pattern,
            after: Option<&crate::store::LatestCursor>,
            limits: crate::store::PageLimits,
        ) -> Result<crate::store::LatestPage, StoreError> {
            self.inner.latest_by_key_page(pattern, after, limits).await
        }
        async fn latest_for_key(
            &self,
            topic: &Topic,
            key: &str,
        ) -> Result<Option<Event>, StoreError> {
            self.inner.latest_for_key(topic, key).await
        }
        async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError> {
            self.inner.load_group(key).await
        }
        async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
            self.inner.groups().await
        }
        async fn dead_letters(
            &self,
            key: &GroupKey,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<DeadLetter>, StoreError> {
            self.inner.dead_letters(key, after_seq, limit).await
        }
        async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError> {
            self.inner.dead_letter_count(key).await
        }
        async fn count_after(&self, after: u64) -> Result<u64, StoreError> {
            self.inner.count_after(after).await
        }
        async fn count_matching_after(
            &self,
            pattern: &Pattern,
            after: u64,
        ) -> Result<u64, StoreError> {
            self.inner.count_matching_after(pattern, after).await
        }
        async fn first_matching_after(
            &self,
            pattern: &Pattern,
            after: u64,
        ) -> Result<Option<Event>, StoreError> {
            self.inner.first_matching_after(pattern, after).await
        }
        async fn apply_retention(
            &self,
            policy: &RetentionPolicy,
            now: Millis,
            from: Option<&str>,
            limit: usize,
        ) -> Result<RetentionPass, StoreError> {
            self.inner.apply_retention(policy, now, from, limit).await
        }
        async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError> {
            self.inner.count_present(seqs).await
        }
        async fn removed_since(
            &self,
            pattern: &Pattern,
            from: u64,
        ) -> Result<Option<u64>, StoreError> {
            self.inner.removed_since(pattern, from).await
        }
        async fn close(&self) -> Result<(), StoreError> {
            self.inner.close().await
        }
    }

    fn event(n: usize) -> NewEvent {
        NewEvent {
            id: format!("hub-{n}"),
            client_id: false,
            topic: Topic::parse("w.t").unwrap(),
            ts: 1,
            key: None,
            payload: to_payload(&n).unwrap(),
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        }
    }

    /// Yields until `condition` holds (bounded; no timing involved).
    async fn wait_until(what: &str, condition: impl Fn() -> bool) -> Result<()> {
        for _ in 0..1_000_000 {
            if condition() {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        anyhow::bail!("gave up waiting until {what}")
    }

    /// Waits until `n` requests sit in the writer's queue.
    async fn wait_queued(writer: &StoreWriter, capacity: usize, n: usize) -> Result<()> {
        wait_until("requests queued", || {
            capacity - writer.requests.capacity() >= n
        })
        .await
    }

    async fn wait_first_commit(store: &Instrumented) -> Result<()> {
        wait_until("the first commit started", || {
            store.commits.load(Ordering::SeqCst) > 0
        })
        .await
    }

    fn options(max_batch_events: usize) -> WriterOptions {
        WriterOptions {
            max_batch_events,
            queue_capacity: 1024,
            ..WriterOptions::default()
        }
    }

    #[tokio::test]
    async fn failed_commit_fails_its_whole_batch_and_writer_continues() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Instrumented::new(dir.path())?;
        store.fail_commit.store(1, Ordering::SeqCst);
        let (writer, mut committed) = StoreWriter::with_options(store.clone(), options(4096));
        // Commit 0 holds at the gate with one event; the rest queue behind it
        // and form commit 1, which fails.
        let first = tokio::spawn({
            let w = writer.clone();
            async move { w.append(event(0)).await }
        });
        wait_first_commit(&store).await?;
        let mut queued = Vec::new();
        for n in 1..=3 {
            let w = writer.clone();
            queued.push(tokio::spawn(
                async move { w.append(event(n)).await.map(drop) },
            ));
        }
        let w = writer.clone();
        queued.push(tokio::spawn(async move {
            w.record_progress(GroupProgress {
                key: GroupKey {
                    pattern: "w.*".into(),
                    group: "g".into(),
                },
                cursor: 1,
                done_above: vec![],
                attempt_changes: Vec::new(),
            })
            .await
        }));
        wait_queued(&writer, 1024, 4).await?;
        store.open_gate();
        ensure!(matches!(first.await?, Ok(Appended::Stored { .. })));
        for q in queued {
            match q.await? {
                Err(StoreError::Backend(msg)) => ensure!(msg == "injected failure"),
                other => anyhow::bail!("expected the injected failure, got {other:?}"),
            }
        }
        let batches = store.batches();
        ensure!(batches[1].events.len() == 3 && batches[1].progress.len() == 1);
        // The writer keeps going, and seqs continue without a gap.
        let next = writer.append(event(9)).await?;
        let Appended::Stored { seq, .. } = next else {
            anyhow::bail!("stored expected")
        };
        ensure!(seq == 2, "failed batch used no seq: {seq}");
        let fanned: Vec<u64> = [committed.recv().await, committed.recv().await]
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.seq)
            .collect();
        ensure!(
            fanned == vec![1, 2],
            "only committed events fan out: {fanned:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn batches_respect_bounds_and_merge_progress() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Instrumented::new(dir.path())?;
        let (writer, _committed) = StoreWriter::with_options(store.clone(), options(3));
        let hold = tokio::spawn({
            let w = writer.clone();
            async move { w.append(event(0)).await }
        });
        wait_first_commit(&store).await?;
        let key = GroupKey {
            pattern: "w.*".into(),
            group: "g".into(),
        };
        let mut tasks = Vec::new();
        for n in 1..=7 {
            let w = writer.clone();
            tasks.push(tokio::spawn(
                async move { w.append(event(n)).await.map(drop) },
            ));
            // Wait for each so the queue order is known.
            wait_queued(&writer, 1024, n).await?;
        }
        for (cursor, done) in [(2u64, vec![5u64, 7]), (5, vec![9])] {
            let w = writer.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                w.record_progress(GroupProgress {
                    key,
                    cursor,
                    done_above: done,
                    attempt_changes: Vec::new(),
                })
                .await
            }));
        }
        wait_queued(&writer, 1024, 9).await?;
        store.open_gate();
        hold.await??;
        for t in tasks {
            t.await??;
        }
        let batches = store.batches();
        let sizes: Vec<usize> = batches.iter().map(|b| b.events.len()).collect();
        ensure!(sizes == vec![1, 3, 3, 1], "event bound of 3: {sizes:?}");
        let progress: Vec<&GroupProgress> = batches.iter().flat_map(|b| &b.progress).collect();
        ensure!(
            progress.len() == 1,
            "two updates of one group merged: {progress:?}"
        );
        ensure!(progress[0].cursor == 5 && progress[0].done_above == vec![7, 9]);
        let rec = store.load_group(&key).await?.context("group")?;
        ensure!(rec.cursor == 5 && rec.done_above == vec![7, 9]);
        Ok(())
    }

    #[tokio::test]
    async fn slow_fan_out_slows_but_never_drops_or_reorders() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default())?);
        let (writer, mut committed) = StoreWriter::with_options(
            Arc::clone(&store),
            WriterOptions {
                committed_capacity: 1,
                ..WriterOptions::default()
            },
        );
        let mut tasks = Vec::new();
        for n in 0..200 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move { w.append(event(n)).await }));
        }
        drop(writer);
        let mut seen = Vec::new();
        while let Some(batch) = committed.recv().await {
            // A consumer that yields between batches lets the writer fill
            // the channel and wait.
            tokio::task::yield_now().await;
            seen.extend(batch.into_iter().map(|e| e.seq));
        }
        for t in tasks {
            ensure!(matches!(t.await??, Appended::Stored { .. }));
        }
        ensure!(seen == (1..=200).collect::<Vec<u64>>(), "all, in order");
        Ok(())
    }

    #[tokio::test]
    async fn dropped_fan_out_receiver_does_not_stop_writes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default())?);
        let (writer, committed) = StoreWriter::new(Arc::clone(&store));
        drop(committed);
        for n in 0..3 {
            ensure!(matches!(
                writer.append(event(n)).await?,
                Appended::Stored { .. }
            ));
        }
        ensure!(store.last_seq().await? == 3);
        Ok(())
    }
}
