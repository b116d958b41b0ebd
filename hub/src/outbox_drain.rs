//! The hub drains configured MongoDB outbox collections into its own log
//! (`[[outbox]]` / `--drain-outbox`), so an application in any language
//! only inserts outbox documents in its transactions.
//!
//! Each collection gets one [`Drainer`] from `promhub::outbox` (claims,
//! fencing, backoff, dead records, per-key order) whose sink commits
//! through the hub's [`StoreWriter`], exactly as a `PUBLISH` with
//! `opts.id` = the record's `_id`: the same de-duplication, the same
//! durability before the record is marked sent. Configured by the
//! operator, so no topic ACL applies; a record with a bad topic ends
//! `dead` with the reason.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use promhub::outbox::mongo::MongoOutbox;
use promhub::outbox::{
    Drainer, DrainerOptions, OutboxError, OutboxRecord, OutboxSink, PublishOutcome, SinkError,
};
use promhub_core::Topic;
use promhub_core::frames::to_payload;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::OutboxDrainConfig;
use crate::error::HubError;
use crate::store::writer::StoreWriter;
use crate::store::{Appended, NewEvent};

/// Publishes outbox records into the hub's own log.
#[derive(Debug, Clone)]
pub struct LogSink {
    writer: StoreWriter,
}

impl LogSink {
    pub fn new(writer: StoreWriter) -> Self {
        LogSink { writer }
    }
}

#[async_trait]
impl OutboxSink for LogSink {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        let topic = Topic::parse(&record.topic)
            .map_err(|e| SinkError(format!("bad topic {:?}: {e}", record.topic)))?;
        let payload = to_payload(&record.payload)
            .map_err(|e| SinkError(format!("payload is not JSON: {e}")))?;
        let event = NewEvent {
            id: record.id.clone(),
            client_id: true,
            topic,
            ts: record.created_at,
            key: record.key.clone(),
            payload,
            headers: record.headers.clone(),
            tags: None,
            caused_by: None,
            sid: None,
        };
        match self.writer.append(event).await {
            Ok(Appended::Stored(event)) => Ok(PublishOutcome {
                seq: event.seq,
                duplicate: false,
            }),
            Ok(Appended::Duplicate { seq, .. }) => Ok(PublishOutcome {
                seq,
                duplicate: true,
            }),
            Err(e) => Err(SinkError(format!("the hub's store failed: {e}"))),
        }
    }
}

/// Opens every configured outbox (failing the start with the URI when one
/// cannot be reached) and starts its drainer; they stop when `shutdown`
/// turns true.
pub async fn spawn_drainers(
    outboxes: &[OutboxDrainConfig],
    writer: &StoreWriter,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, HubError> {
    let mut drainers = Vec::with_capacity(outboxes.len());
    for config in outboxes {
        let location = config.location().map_err(HubError::Config)?;
        let failed = |source: OutboxError| HubError::Outbox {
            uri: config.uri.clone(),
            source,
        };
        let client = mongodb::Client::with_uri_str(&location.client_uri)
            .await
            .map_err(|e| failed(e.into()))?;
        let retention = Duration::from_secs(config.retention_secs);
        let store = MongoOutbox::open_for_draining(
            &client.database(&location.database),
            &location.collection,
            retention,
        )
        .await
        .map_err(failed)?;
        let options = DrainerOptions {
            batch_size: config.batch_size,
            max_attempts: config.max_attempts,
            retention,
            ..DrainerOptions::default()
        };
        let drainer = Drainer::new(
            Arc::new(store),
            Arc::new(LogSink::new(writer.clone())),
            options,
        );
        tracing::info!(
            database = %location.database,
            collection = %location.collection,
            "draining the outbox collection into the log"
        );
        let mut shutdown = shutdown.clone();
        drainers.push(tokio::spawn(async move {
            drainer
                .run(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await;
        }));
    }
    Ok(drainers)
}
