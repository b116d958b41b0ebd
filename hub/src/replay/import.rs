//! `POST /events/import`: an NDJSON body, one exported event per line,
//! published again through the store writer (group commit, dedup by
//! (topic, id), delivery to subscribers) under the same rules as a
//! WebSocket `PUBLISH` (semantics.md §3):
//!
//! - `publish` permission per line (the topic), `id` as `opts.id`;
//! - a line over `max_frame_bytes` is refused (`errors`), the lines around
//!   it are imported; reading never holds more than one line (plus the
//!   chunk being split) and the lines of one commit batch;
//! - publish quotas: each stored line takes a token from the caller's
//!   bucket (the token's `rate` claim, else `limits.publish_rate`) and from
//!   its topic's (`limits.topic_publish_rate`), both or neither. The
//!   caller's bucket lives in [`CallerBuckets`] across requests (keyed by
//!   [`Caller`]), so a new request does not start full. The first line
//!   refused stops the import: everything before it is committed, the
//!   answer is `429` with `Retry-After` (seconds) and a report whose
//!   `resume_from_line` is that line (1-based, counting every line of the
//!   body): it and the lines after it were not imported, every line
//!   before it was (stored, a duplicate, or listed in `errors`). The rest
//!   of the body is read and dropped so the client gets the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use promhub_core::frames::{Millis, Payload, PublishOpts};
use promhub_core::{Policy, Topic};
use serde::{Deserialize, Serialize};

use super::{ApiError, ReplayState, authenticate};
use crate::config::LimitsConfig;
use crate::limits::{
    Caller, CallerBuckets, MAX_IMPORT_CALLERS, RateLimit, TopicBuckets, retry_after_ms,
};
use crate::refusals::{self, Refusal};
use crate::store::writer::StoreWriter;
use crate::store::{Appended, NewEvent};

/// Events committed per batch at most, and their approximate bytes: a
/// batch is held in memory until it is durable.
const IMPORT_BATCH: usize = 500;
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Import errors reported in full (the count is always complete).
const MAX_REPORTED_ERRORS: usize = 100;

/// The import's publish quotas and line limit, shared by its requests.
#[derive(Debug)]
pub struct ImportLimits {
    callers: CallerBuckets,
    /// The per-topic quota, shared with the WebSocket connections.
    topics: Option<Arc<TopicBuckets>>,
    /// A caller's quota when its token has no `rate` claim.
    default_limit: Option<RateLimit>,
    /// Longest line accepted (`max_frame_bytes`).
    max_line_bytes: usize,
}

impl ImportLimits {
    pub fn new(
        limits: &LimitsConfig,
        topics: Option<Arc<TopicBuckets>>,
        max_line_bytes: usize,
    ) -> Self {
        ImportLimits {
            callers: CallerBuckets::new(MAX_IMPORT_CALLERS),
            topics,
            default_limit: limits.publish_limit(),
            max_line_bytes,
        }
    }
}

/// One line of an import: an exported event (its `seq` is ignored: the
/// event gets a new one).
#[derive(Debug, Deserialize)]
struct ImportedEvent {
    id: String,
    topic: String,
    payload: Payload,
    #[serde(default)]
    ts: Option<Millis>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    caused_by: Option<Vec<String>>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default, rename = "seq")]
    _seq: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
struct ImportReport {
    /// `rate_limited` when a quota stopped the import (HTTP 429).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// Lines handled (not counting blank ones, nor the lines from
    /// `resume_from_line` on).
    lines: u64,
    /// Events stored anew.
    imported: u64,
    /// Events already stored within the dedup window (not stored again).
    duplicates: u64,
    /// Lines refused; the first ones are listed in `errors`.
    failed: u64,
    errors: Vec<ImportError>,
    /// The first line not imported because of a quota: send it and every
    /// line after it again, after `retry_after_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_from_line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ImportError {
    line: u64,
    error: String,
}

impl ImportReport {
    fn fail(&mut self, line: u64, error: impl Into<String>) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(ImportError {
                line,
                error: error.into(),
            });
        }
    }
}

/// One line of the body.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Its bytes without the newline.
    Text(Bytes),
    /// Over the limit: only its length was kept.
    TooLarge(u64),
}

/// Splits a body into lines as its chunks arrive, holding at most one line
/// of `max` bytes: the bytes of a longer line are counted and dropped.
#[derive(Debug)]
struct LineReader {
    max: usize,
    /// The start of the current line, when it came in earlier chunks.
    pending: Vec<u8>,
    /// Bytes of the current line so far, once it is over `max`.
    over: Option<u64>,
}

impl LineReader {
    fn new(max: usize) -> Self {
        LineReader {
            max,
            pending: Vec::new(),
            over: None,
        }
    }

    /// The next complete line in `chunk`, which it consumes up to there;
    /// `None` once `chunk` is used up (its tail is kept for the next one).
    fn next(&mut self, chunk: &mut Bytes) -> Option<Line> {
        if chunk.is_empty() {
            return None;
        }
        let Some(end) = chunk.iter().position(|&byte| byte == b'\n') else {
            let tail = std::mem::take(chunk);
            self.add(&tail);
            return None;
        };
        let line = chunk.split_to(end + 1).slice(..end);
        if self.over.is_none() && self.pending.is_empty() && line.len() <= self.max {
            // The whole line is in this chunk: no copy.
            return Some(Line::Text(line));
        }
        self.add(&line);
        Some(self.take())
    }

    /// The last line when the body does not end with a newline.
    fn finish(&mut self) -> Option<Line> {
        (self.over.is_some() || !self.pending.is_empty()).then(|| self.take())
    }

    fn add(&mut self, bytes: &[u8]) {
        if let Some(seen) = &mut self.over {
            *seen += bytes.len() as u64;
        } else if self.pending.len() + bytes.len() > self.max {
            self.over = Some((self.pending.len() + bytes.len()) as u64);
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn take(&mut self) -> Line {
        match self.over.take() {
            Some(length) => Line::TooLarge(length),
            None => Line::Text(Bytes::from(std::mem::take(&mut self.pending))),
        }
    }
}

/// The lines parsed and admitted, waiting to be committed together.
#[derive(Debug, Default)]
struct Batch {
    events: Vec<(u64, NewEvent)>,
    bytes: usize,
}

/// One import request in progress.
struct Import<'a> {
    policy: &'a Policy,
    caller: Caller<'a>,
    limit: Option<RateLimit>,
    limits: &'a ImportLimits,
    writer: &'a StoreWriter,
    report: ImportReport,
    batch: Batch,
    line_no: u64,
}

impl Import<'_> {
    /// Handles the next line; `Err` with the wait when a quota refused it
    /// (nothing was done with it).
    async fn line(&mut self, line: Line) -> Result<(), Duration> {
        self.line_no += 1;
        let text = match line {
            Line::TooLarge(length) => {
                refusals::count(Refusal::ImportLineTooLarge);
                self.report.lines += 1;
                self.report.fail(
                    self.line_no,
                    format!(
                        "line too large: {length} bytes, more than max_frame_bytes ({})",
                        self.limits.max_line_bytes
                    ),
                );
                return Ok(());
            }
            Line::Text(text) => text,
        };
        let text = text.trim_ascii();
        if text.is_empty() {
            return Ok(());
        }
        let event = match parse_import_line(text, self.policy) {
            Ok(event) => event,
            Err(error) => {
                self.report.lines += 1;
                self.report.fail(self.line_no, error);
                return Ok(());
            }
        };
        self.limits.callers.try_take(
            self.caller,
            self.limit,
            self.limits.topics.as_deref(),
            event.topic.as_str(),
            Instant::now(),
        )?;
        self.report.lines += 1;
        self.batch.bytes += text.len();
        self.batch.events.push((self.line_no, event));
        if self.batch.events.len() >= IMPORT_BATCH || self.batch.bytes >= IMPORT_BATCH_BYTES {
            self.commit().await;
        }
        Ok(())
    }

    /// Publishes the batch and waits until every event is durable.
    async fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let writer = self.writer;
        let appends = batch
            .events
            .into_iter()
            .map(|(line, event)| async move { (line, writer.append(event).await) });
        for (line, result) in futures_util::future::join_all(appends).await {
            match result {
                Ok(Appended::Stored { .. }) => self.report.imported += 1,
                Ok(Appended::Duplicate { .. }) => self.report.duplicates += 1,
                Err(error) => self.report.fail(line, format!("store: {error}")),
            }
        }
    }
}

pub(super) async fn import(State(state): State<ReplayState>, request: Request) -> Response {
    let (granted, token) = match authenticate(&*state.authenticator, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let caller = if state.authenticator.is_development() {
        Caller::Development
    } else {
        match (&granted.subject, &token) {
            (Some(subject), _) => Caller::Subject(subject),
            (None, Some(token)) => Caller::Token(token),
            (None, None) => Caller::Development,
        }
    };
    let limits = &*state.import;
    let mut import = Import {
        policy: &granted.policy,
        caller,
        limit: granted.publish_limit.or(limits.default_limit),
        limits,
        writer: &state.writer,
        report: ImportReport::default(),
        batch: Batch::default(),
        line_no: 0,
    };
    let mut body = request.into_body().into_data_stream();
    let mut reader = LineReader::new(limits.max_line_bytes);
    let mut refused: Option<Duration> = None;
    let mut read_error = None;
    loop {
        let mut chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) => {
                read_error = Some(error);
                break;
            }
            None => break,
        };
        if refused.is_some() {
            // Read and dropped, so the client can finish sending and read
            // the answer.
            continue;
        }
        while let Some(line) = reader.next(&mut chunk) {
            if let Err(wait) = import.line(line).await {
                refused = Some(wait);
                break;
            }
        }
    }
    if refused.is_none()
        && read_error.is_none()
        && let Some(line) = reader.finish()
        && let Err(wait) = import.line(line).await
    {
        refused = Some(wait);
    }
    import.commit().await;
    let mut report = import.report;
    if let Some(error) = read_error {
        tracing::debug!(%error, "import body cut short");
        return ApiError::bad_request(format!(
            "reading the body: {error} (the lines before were handled: {} imported)",
            report.imported
        ))
        .into_response();
    }
    let Some(wait) = refused else {
        return axum::Json(report).into_response();
    };
    refusals::count(Refusal::ImportRateLimited);
    let retry_after = retry_after_ms(wait);
    report.error = Some("rate_limited");
    report.message = Some(format!(
        "publish quota exceeded at line {}; send it and the lines after it again in {retry_after} ms",
        import.line_no
    ));
    report.resume_from_line = Some(import.line_no);
    report.retry_after_ms = Some(retry_after);
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(report)).into_response();
    // Retry-After is in whole seconds: rounded up.
    let seconds = retry_after.div_ceil(1000).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn parse_import_line(text: &[u8], policy: &Policy) -> Result<NewEvent, String> {
    let imported: ImportedEvent =
        serde_json::from_slice(text).map_err(|e| format!("not an event: {e}"))?;
    let topic = Topic::parse(&imported.topic).map_err(|e| format!("topic: {e}"))?;
    if !policy.may_publish(&topic) {
        return Err(format!("publishing to {topic} is not allowed"));
    }
    let opts = PublishOpts {
        id: Some(imported.id),
        ts: imported.ts,
        key: imported.key,
        headers: imported.headers,
        tags: imported.tags,
        caused_by: imported.caused_by,
        sid: imported.sid,
    };
    NewEvent::from_publish(topic, imported.payload, opts, crate::clock::now_ms())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line `reader` gives for `chunks`, then its last one.
    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Line>, usize) {
        let mut reader = LineReader::new(max);
        let mut lines = Vec::new();
        let mut held = 0;
        for chunk in chunks {
            let mut chunk = Bytes::copy_from_slice(chunk);
            while let Some(line) = reader.next(&mut chunk) {
                lines.push(line);
            }
            held = held.max(reader.pending.capacity());
        }
        lines.extend(reader.finish());
        (lines, held)
    }

    fn text(s: &str) -> Line {
        Line::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let (lines, _) = split(10, &[b"ab\ncd", b"e\n\nfg", b"h"]);
        assert_eq!(lines, [text("ab"), text("cde"), text(""), text("fgh")]);
        let (lines, _) = split(10, &[b"ab\n"]);
        assert_eq!(lines, [text("ab")]);
        let (lines, _) = split(10, &[]);
        assert!(lines.is_empty());
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_as_it_arrives_and_the_next_one_is_read() {
        let long = [b'x'; 25];
        let (lines, held) = split(10, &[b"ok\n", &long[..8], &long[8..], b"xx\nnext\n"]);
        assert_eq!(lines, [text("ok"), Line::TooLarge(27), text("next")]);
        assert!(held <= 10, "held {held} bytes of a line over the limit");
        // Exactly at the limit is fine; in one chunk or in several.
        let (lines, _) = split(4, &[b"abcd\nabcde\nab", b"cd\n"]);
        assert_eq!(lines, [text("abcd"), Line::TooLarge(5), text("abcd")]);
        // The last line, without a newline, too.
        let (lines, _) = split(4, &[b"a\nabcdefgh"]);
        assert_eq!(lines, [text("a"), Line::TooLarge(8)]);
    }
}
