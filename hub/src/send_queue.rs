//! A connection's queue of outgoing frames.
//!
//! Many producers (the connection's own reader, the broker, the store
//! writer's acknowledgements) push pre-encoded frames; one writer task
//! drains everything queued at once and flushes the socket once per drain,
//! so a burst of frames costs one write syscall, not one per frame.
//!
//! A frame counts against the bounds from the moment it is queued until the
//! writer has written it to the socket, so frames the writer holds for a
//! peer that does not read are counted too.
//!
//! Live (ephemeral) deliveries are bounded in frames and bytes: the hub
//! never buffers without bound for a slow reader, it closes the connection
//! with 4009 instead (semantics.md §4). Other frames (answers, group
//! deliveries) are bounded elsewhere: answers by the reader waiting for the
//! queue to drain, group deliveries by `max_inflight`.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::Notify;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
        }
    }
}

/// Limits on live deliveries queued for one connection.
#[derive(Debug, Clone, Copy)]
pub struct SendQueueLimits {
    pub live_frames: usize,
    pub live_bytes: usize,
}

/// What a live push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivePush {
    Queued,
    /// The queue was full: the connection is now closing with 4009.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Message>,
    /// Bytes of the queued frames plus those the writer took and has not
    /// written yet: what the connection holds, which the bounds apply to.
    bytes: usize,
    close: Option<CloseReason>,
}

/// What the writer task should do next.
#[derive(Debug)]
pub enum Drained {
    /// Send these frames (this many bytes), flush, then report them
    /// [`SendQueue::written`].
    Frames(usize),
    /// Send this close frame and stop (queued frames were sent before).
    Close(CloseReason),
}

#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    wake_writer: Notify,
    /// Wakes readers waiting for room (see [`SendQueue::wait_below`]).
    drained: Notify,
    limits: SendQueueLimits,
}

/// The close code used when live deliveries overflow.
pub const SLOW_CONSUMER: u16 = promhub_core::frames::close::SLOW_CONSUMER;

impl SendQueue {
    pub fn new(limits: SendQueueLimits) -> Self {
        SendQueue {
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue in a state
        // worse than "some frames", so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame that is not subject to the live limits. Returns false
    /// when the connection is closing (the frame is dropped).
    pub fn push(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.push_message(Message::Text(text.into()))
    }

    pub fn push_message(&self, message: Message) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        state.bytes += message_len(&message);
        state.frames.push_back(message);
        drop(state);
        self.wake_writer.notify_one();
        true
    }

    /// Queues a live delivery; on overflow the queue is dropped and the
    /// connection closes with 4009.
    #[cfg(test)]
    pub fn push_live(&self, text: Utf8Bytes) -> LivePush {
        self.push_live_batch(std::iter::once(text))
    }

    /// Queues several live deliveries under one lock and one wake-up; on
    /// overflow the queue is dropped and the connection closes with 4009.
    pub fn push_live_batch(&self, frames: impl IntoIterator<Item = Utf8Bytes>) -> LivePush {
        let mut state = self.lock();
        if state.close.is_some() {
            return LivePush::Closed;
        }
        for text in frames {
            let len = text.len();
            if state.frames.len() >= self.limits.live_frames
                || state.bytes + len > self.limits.live_bytes
            {
                state.frames.clear();
                state.bytes = 0;
                state.close = Some(CloseReason::new(
                    SLOW_CONSUMER,
                    "slow consumer: live buffer overflowed",
                ));
                drop(state);
                self.wake_writer.notify_one();
                self.drained.notify_waiters();
                return LivePush::Overflowed;
            }
            state.bytes += len;
            state.frames.push_back(Message::Text(text));
        }
        drop(state);
        self.wake_writer.notify_one();
        LivePush::Queued
    }

    /// Asks the writer to send a close frame after what is queued. The first
    /// close wins.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Bytes queued or being written.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// True when no frame waits to be taken by the writer.
    #[cfg(test)]
    pub fn has_frames(&self) -> bool {
        !self.lock().frames.is_empty()
    }

    /// The writer wrote and flushed `bytes` of what it took: room for more.
    pub fn written(&self, bytes: usize) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
        drop(state);
        self.drained.notify_waiters();
    }

    /// Waits until fewer than `bytes` are queued, or the connection closes.
    /// Readers call this before producing answers, so a client that sends
    /// requests without reading answers is slowed down instead of growing
    /// the queue.
    pub async fn wait_below(&self, bytes: usize) {
        loop {
            let notified = self.drained.notified();
            {
                let state = self.lock();
                if state.bytes < bytes || state.close.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits for work and moves every queued frame into `batch`. Their
    /// bytes still count against the bounds until the writer reports them
    /// [`written`](Self::written): a peer that does not read holds at most
    /// the bound, whether the frames wait here or in the writer.
    pub async fn drain(&self, batch: &mut Vec<Message>) -> Drained {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() {
                    let start = batch.len();
                    batch.extend(state.frames.drain(..));
                    // Do not keep a burst's worth of capacity for a
                    // connection that goes idle.
                    if state.frames.capacity() > 1024 {
                        state.frames.shrink_to(64);
                    }
                    drop(state);
                    return Drained::Frames(batch[start..].iter().map(message_len).sum());
                }
                if let Some(reason) = &state.close {
                    return Drained::Close(reason.clone());
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between the check above and this await is not lost.
            self.wake_writer.notified().await;
        }
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
        Message::Close(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: usize, bytes: usize) -> SendQueueLimits {
        SendQueueLimits {
            live_frames: frames,
            live_bytes: bytes,
        }
    }

    #[tokio::test]
    async fn drains_everything_queued_in_one_batch() {
        let send_queue = SendQueue::new(limits(10, 1000));
        assert!(send_queue.push("a"));
        assert_eq!(send_queue.push_live("b".into()), LivePush::Queued);
        let mut batch = Vec::new();
        let Drained::Frames(bytes) = send_queue.drain(&mut batch).await else {
            panic!("expected frames");
        };
        assert_eq!((batch.len(), bytes), (2, 2));
        // Taken by the writer, not written yet: still held.
        assert_eq!(send_queue.queued_bytes(), 2);
        send_queue.written(bytes);
        assert_eq!(send_queue.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn live_overflow_closes_with_4009_and_drops_the_queue() {
        let send_queue = SendQueue::new(limits(2, 1000));
        assert_eq!(send_queue.push_live("1".into()), LivePush::Queued);
        assert_eq!(send_queue.push_live("2".into()), LivePush::Queued);
        assert_eq!(send_queue.push_live("3".into()), LivePush::Overflowed);
        assert_eq!(send_queue.push_live("4".into()), LivePush::Closed);
        assert!(!send_queue.push("answer"));
        let mut batch = Vec::new();
        match send_queue.drain(&mut batch).await {
            Drained::Close(reason) => assert_eq!(reason.code, SLOW_CONSUMER),
            Drained::Frames(_) => panic!("expected close, got {batch:?}"),
        }
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn frames_taken_by_the_writer_count_until_written() {
        let send_queue = SendQueue::new(limits(100, 5));
        assert_eq!(send_queue.push_live("abc".into()), LivePush::Queued);
        let mut batch = Vec::new();
        let Drained::Frames(bytes) = send_queue.drain(&mut batch).await else {
            panic!("expected frames");
        };
        // The writer is stuck on a peer that does not read: the queue is
        // empty but the connection still holds 3 bytes.
        assert_eq!(send_queue.push_live("abc".into()), LivePush::Overflowed);
        send_queue.written(bytes);
        assert_eq!(send_queue.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn byte_limit_applies_to_live_frames() {
        let send_queue = SendQueue::new(limits(100, 5));
        assert_eq!(send_queue.push_live("abc".into()), LivePush::Queued);
        assert_eq!(send_queue.push_live("abc".into()), LivePush::Overflowed);
    }

    #[tokio::test]
    async fn queued_frames_go_out_before_a_close() {
        let send_queue = SendQueue::new(limits(10, 1000));
        send_queue.push("last words");
        send_queue.close(CloseReason::new(1001, "bye"));
        let mut batch = Vec::new();
        assert!(matches!(
            send_queue.drain(&mut batch).await,
            Drained::Frames(_)
        ));
        assert_eq!(batch.len(), 1);
        batch.clear();
        match send_queue.drain(&mut batch).await {
            Drained::Close(reason) => assert_eq!(reason.code, 1001),
            Drained::Frames(_) => panic!("expected close"),
        }
    }
}
