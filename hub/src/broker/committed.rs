//! A stored event as the broker keeps it: serialized once, shared by every
//! delivery (each EVENT frame splices this text, see
//! `promhub_core::frames::encode_event_delivery`).

use std::sync::Arc;

use promhub_core::Topic;
use promhub_core::frames::{Event, Millis};
use serde_json::value::RawValue;

#[derive(Debug)]
pub(crate) struct Committed {
    pub seq: u64,
    pub id: Arc<str>,
    pub topic: Topic,
    /// The event's time (the ops API's lag in ms).
    pub ts: Millis,
    /// The `event` object of an EVENT frame, as JSON text.
    pub json: Box<RawValue>,
}

impl Committed {
    pub fn from_event(event: &Event) -> Arc<Committed> {
        let json = serde_json::value::to_raw_value(event).unwrap_or_else(|e| {
            // An Event holds only strings, numbers and JSON that was valid
            // when it was stored, so this cannot fail; keep the id and seq
            // deliverable rather than panic if it ever does.
            tracing::error!(seq = event.seq, error = %e, "cannot serialize a stored event");
            serde_json::value::to_raw_value(&serde_json::json!({
                "id": event.id, "seq": event.seq, "topic": event.topic.as_str(),
                "ts": event.ts, "payload": null
            }))
            .unwrap_or_default()
        });
        Arc::new(Committed {
            seq: event.seq,
            id: Arc::from(event.id.as_str()),
            topic: event.topic.clone(),
            ts: event.ts,
            json,
        })
    }
}

/// A stored event with a small JSON payload (its seq), for the broker's
/// unit tests.
#[cfg(test)]
pub(crate) fn test_committed(seq: u64, topic: &str) -> Arc<Committed> {
    Committed::from_event(&Event {
        id: format!("e{seq}"),
        seq,
        topic: Topic::parse(topic).unwrap(),
        ts: 1,
        key: None,
        payload: promhub_core::frames::to_payload(&seq).unwrap(),
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    })
}
