//! Reading what a live subscription asked for from the store before its
//! live events: a snapshot (`opts.snapshot`, the latest event of every key)
//! or the log from a seq (`opts.from`), page by page, with flow control.
//!
//! Either can be large and its reader may not read at all, so it is never
//! read whole: each page (at most 256 events and 256 KiB, and a quarter of
//! the connection's live bounds) is read only once the connection's send
//! queue has drained below a quarter of its live bound, and the broker
//! queues it under that bound (4009 past it, as for live events). At most
//! [`CONCURRENT_PAGE_READS`] pages are read at once in the whole hub. So a
//! catch-up costs a connection at most its live bound plus one page,
//! however much there is to read or how many it asks for.
//!
//! A catch-up from the log answers the SUBSCRIBE itself, once it knows
//! where complete delivery starts: `SUBACK.from_seq` is the requested seq,
//! or the seq after the last one retention removed from a matching topic
//! when that is later (the client then knows it missed events; matching
//! events retention kept before it are delivered all the same).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use promhub_core::Pattern;
use promhub_core::frames::{Event, Rid};
use tokio::sync::{Semaphore, mpsc};

use super::Command;
use super::group::ConnId;
use super::live::{CatchUpFrame, CatchUpTicket};
use crate::send_queue::SendQueue;
use crate::store::{LatestCursor, PageLimits, Store, StoreError};

/// Pages being read at once, hub-wide (each holds up to one page of events
/// in memory until the broker queues it).
pub(crate) const CONCURRENT_PAGE_READS: usize = 4;
/// Log rows a page may look at, matching or not (a sparse pattern moves on
/// page by page instead of scanning the whole log in one read).
const LOG_SCAN_ROWS: usize = 20_000;
/// How long a failed page read waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a catch-up reads next.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The latest event of every key, after this (topic, key).
    Snapshot(Option<LatestCursor>),
    /// Matching events with `after < seq <= upto`.
    Log { after: u64, upto: u64 },
}

/// A SUBSCRIBE `from` a seq, answered once the first page is read.
#[derive(Debug)]
pub(crate) struct PendingSuback {
    pub rid: Option<Rid>,
    /// The seq the client asked to start from.
    pub from: u64,
}

/// One catch-up being read: who it is for, how to tell it was dropped, and
/// where it is.
#[derive(Debug)]
pub(crate) struct CatchUpReader {
    pub conn: ConnId,
    pub pattern: Pattern,
    pub id: u64,
    cancelled: Arc<AtomicBool>,
    pub send_queue: Arc<SendQueue>,
    pub source: Source,
    pub suback: Option<PendingSuback>,
}

impl CatchUpReader {
    pub fn new(
        conn: ConnId,
        pattern: Pattern,
        ticket: CatchUpTicket,
        send_queue: Arc<SendQueue>,
        source: Source,
        suback: Option<PendingSuback>,
    ) -> Self {
        CatchUpReader {
            conn,
            pattern,
            id: ticket.id,
            cancelled: ticket.cancelled,
            send_queue,
            source,
            suback,
        }
    }

    fn wanted(&self) -> bool {
        !self.cancelled.load(Ordering::Acquire) && !self.send_queue.is_closing()
    }
}

/// A page read for a catch-up, already encoded as EVENT frames.
#[derive(Debug)]
pub(crate) struct CatchUpPage {
    pub frames: Vec<CatchUpFrame>,
    /// What to read next; `None` after the last page.
    pub next: Option<Source>,
    /// For a pending SUBACK: the `from_seq` to answer with.
    pub from_seq: Option<u64>,
}

/// What the page readers share.
#[derive(Debug, Clone)]
pub(crate) struct PageReads {
    store: Arc<dyn Store>,
    commands: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    /// The next page is read once the send queue holds less than this.
    room: usize,
    /// Bounds of one page.
    page: PageLimits,
}

impl PageReads {
    /// Page reads for connections whose live deliveries are bounded by
    /// `frames` and `bytes`: the next page is read once the queue is below
    /// a quarter of the byte bound, and a page is at most a quarter of each
    /// bound (and of the default page), so a reader that keeps up is never
    /// cut and one that stops reading holds about half its bound.
    pub fn new(
        store: Arc<dyn Store>,
        commands: mpsc::Sender<Command>,
        frames: usize,
        bytes: usize,
    ) -> Self {
        let default = PageLimits::default();
        PageReads {
            store,
            commands,
            permits: Arc::new(Semaphore::new(CONCURRENT_PAGE_READS)),
            room: bytes / 4,
            page: PageLimits {
                keys: (frames / 4).clamp(1, default.keys),
                bytes: (bytes / 4).clamp(1, default.bytes),
                scan: default.scan,
            },
        }
    }

    /// Reads the reader's next page in a task, once it has room, and hands
    /// it to the broker as [`Command::CatchUpPage`]; `delay` first (a retry
    /// after a failed read). Nothing is read for a catch-up that was
    /// dropped or a connection that is closing.
    pub fn spawn(&self, reader: CatchUpReader, delay: Option<Duration>) {
        let reads = self.clone();
        tokio::spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            reader.send_queue.wait_below(reads.room).await;
            if !reader.wanted() {
                return;
            }
            let Ok(_permit) = reads.permits.acquire().await else {
                return;
            };
            if !reader.wanted() {
                return;
            }
            let result = reads.read(&reader).await;
            let _ = reads
                .commands
                .send(Command::CatchUpPage { reader, result })
                .await;
        });
    }

    /// After a failed read: the same page again, a little later.
    pub fn retry(&self, reader: CatchUpReader) {
        self.spawn(reader, Some(RETRY_AFTER));
    }

    async fn read(&self, reader: &CatchUpReader) -> Result<CatchUpPage, StoreError> {
        let pattern = &reader.pattern;
        match &reader.source {
            Source::Snapshot(after) => {
                let page = self
                    .store
                    .latest_by_key_page(pattern, after.as_ref(), self.page)
                    .await?;
                Ok(CatchUpPage {
                    frames: encode(pattern, &page.events, true),
                    next: page.next.map(|next| Source::Snapshot(Some(next))),
                    from_seq: None,
                })
            }
            &Source::Log { after, upto } => {
                // Where complete delivery starts, before the first page: a
                // matching topic that lost events at or after the requested
                // seq to retention moves it past them. What retention kept
                // before it (other topics) is still delivered.
                let from_seq = match &reader.suback {
                    Some(pending) => Some(
                        match self.store.removed_since(pattern, pending.from).await? {
                            Some(removed) => pending.from.max(removed.saturating_add(1)),
                            None => pending.from,
                        },
                    ),
                    None => None,
                };
                let (events, examined) = self
                    .store
                    .read_after_bounded(
                        after,
                        Some(pattern),
                        self.page.keys,
                        self.page.bytes,
                        LOG_SCAN_ROWS,
                    )
                    .await?;
                // Events past `upto` come from the held live events.
                let examined = examined.max(after);
                let next = (examined < upto && !(events.is_empty() && examined == after))
                    .then_some(Source::Log {
                        after: examined,
                        upto,
                    });
                Ok(CatchUpPage {
                    frames: encode(pattern, &events, false),
                    next,
                    from_seq,
                })
            }
        }
    }
}

fn encode(pattern: &Pattern, events: &[Event], snapshot: bool) -> Vec<CatchUpFrame> {
    events
        .iter()
        .filter_map(|event| CatchUpFrame::encode(pattern, event, snapshot))
        .collect()
}
