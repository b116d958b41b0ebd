//! Reading a live subscription's snapshot (`opts.snapshot`) from the store,
//! page by page, with flow control.
//!
//! A snapshot can be large (every key of a busy topic) and its reader may
//! not read at all, so it is never read whole: each page (at most 256
//! events and 256 KiB of payloads, and a quarter of the connection's live
//! bound) is read only once the connection's send queue has drained below
//! a quarter of its live bound, and the broker queues it under that bound
//! (4009 past it, as for live events). At most [`CONCURRENT_PAGE_READS`] pages are read at once in the
//! whole hub. So a snapshot costs a connection at most its live bound plus
//! one page, however many keys there are or how many snapshots it asks for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use promhub_core::Pattern;
use tokio::sync::{Semaphore, mpsc};

use super::Command;
use super::group::ConnId;
use super::live::{SnapshotFrame, SnapshotTicket};
use crate::send_queue::SendQueue;
use crate::store::{LatestCursor, PageLimits, Store, StoreError};

/// Snapshot pages being read at once, hub-wide (each holds up to one page
/// of events in memory until the broker queues it).
pub(crate) const CONCURRENT_PAGE_READS: usize = 4;

/// One snapshot being read: who it is for and how to tell it was dropped.
#[derive(Debug)]
pub(crate) struct SnapshotReader {
    pub conn: ConnId,
    pub pattern: Pattern,
    pub id: u64,
    cancelled: Arc<AtomicBool>,
    send_queue: Arc<SendQueue>,
}

impl SnapshotReader {
    pub fn new(
        conn: ConnId,
        pattern: Pattern,
        ticket: SnapshotTicket,
        send_queue: Arc<SendQueue>,
    ) -> Self {
        SnapshotReader {
            conn,
            pattern,
            id: ticket.id,
            cancelled: ticket.cancelled,
            send_queue,
        }
    }

    fn wanted(&self) -> bool {
        !self.cancelled.load(Ordering::Acquire) && !self.send_queue.is_closing()
    }
}

/// A page read for a snapshot, already encoded as EVENT frames.
#[derive(Debug)]
pub(crate) struct SnapshotPage {
    pub frames: Vec<SnapshotFrame>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<LatestCursor>,
}

/// What the page readers share.
#[derive(Debug, Clone)]
pub(crate) struct PageReads {
    pub store: Arc<dyn Store>,
    pub commands: mpsc::Sender<Command>,
    pub permits: Arc<Semaphore>,
    /// The next page is read once the send queue holds less than this.
    pub room: usize,
    /// Bounds of one page.
    pub page: PageLimits,
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
}

impl PageReads {
    /// Reads the page after `after` in a task, once the reader has room,
    /// and hands it to the broker as [`Command::SnapshotPage`]. Nothing is
    /// read for a snapshot that was dropped or a connection that is closing.
    pub fn spawn(&self, reader: SnapshotReader, after: Option<LatestCursor>) {
        let reads = self.clone();
        tokio::spawn(async move {
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
            let result: Result<SnapshotPage, StoreError> = reads
                .store
                .latest_by_key_page(&reader.pattern, after.as_ref(), reads.page)
                .await
                .map(|page| SnapshotPage {
                    frames: page
                        .events
                        .iter()
                        .filter_map(|event| SnapshotFrame::encode(&reader.pattern, event))
                        .collect(),
                    next: page.next,
                });
            let _ = reads
                .commands
                .send(Command::SnapshotPage { reader, result })
                .await;
        });
    }
}
