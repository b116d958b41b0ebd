//! A raw WebSocket connection speaking the protocol's JSON frames, with
//! the frame parsing the harness needs (borrowed, no allocation per field).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::target::Hub;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// A hub that sends nothing for this long is considered stuck.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects and authenticates (`AUTH` → `OK`).
pub async fn connect(hub: &Hub) -> Result<(Sink, Stream)> {
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let (ws, _) = tokio::time::timeout(
        STALL_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(&hub.url, Some(config), true),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connecting to {}", hub.url))?;
    let (mut sink, mut stream) = ws.split();
    let auth = match &hub.token {
        Some(token) => serde_json::json!({"op": "AUTH", "token": token}).to_string(),
        None => r#"{"op":"AUTH"}"#.to_owned(),
    };
    sink.send(Message::text(auth)).await?;
    let ok = next_text(&mut stream).await?;
    if !ok.starts_with(r#"{"op":"OK""#) {
        bail!("AUTH answered {ok}");
    }
    Ok((sink, stream))
}

/// The next text frame; an error on close or after [`STALL_TIMEOUT`].
pub async fn next_text(stream: &mut Stream) -> Result<String> {
    loop {
        match tokio::time::timeout(STALL_TIMEOUT, stream.next()).await {
            Err(_) => bail!("no frame for {} s", STALL_TIMEOUT.as_secs()),
            Ok(None) => bail!("connection closed"),
            Ok(Some(message)) => match message? {
                Message::Text(text) => return Ok(text.to_string()),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            },
        }
    }
}

/// Sends SUBSCRIBE and waits for its SUBACK.
pub async fn subscribe(
    sink: &mut Sink,
    stream: &mut Stream,
    pattern: &str,
    group: Option<&str>,
    opts: &str,
) -> Result<()> {
    let frame = match group {
        Some(group) => format!(
            r#"{{"op":"SUBSCRIBE","topic":"{pattern}","group":"{group}","opts":{opts},"rid":"s"}}"#
        ),
        None => format!(r#"{{"op":"SUBSCRIBE","topic":"{pattern}","opts":{opts},"rid":"s"}}"#),
    };
    sink.send(Message::text(frame)).await?;
    let answer = next_text(stream).await?;
    if !answer.starts_with(r#"{"op":"SUBACK""#) {
        bail!("SUBSCRIBE answered {answer}");
    }
    Ok(())
}

/// The fields of a hub frame the harness reads.
#[derive(Debug, Deserialize)]
pub struct HubFrame<'a> {
    #[serde(borrow)]
    pub op: &'a str,
    #[serde(borrow, default)]
    pub rid: Option<&'a str>,
    #[serde(borrow, default)]
    pub code: Option<&'a str>,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    #[serde(borrow, default)]
    pub event: Option<EventFields<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct EventFields<'a> {
    #[serde(borrow)]
    pub id: &'a str,
    #[serde(default)]
    pub seq: u64,
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
}

pub fn parse(text: &str) -> Result<HubFrame<'_>> {
    serde_json::from_str(text).with_context(|| format!("hub sent invalid JSON: {text:.200}"))
}

/// A JSON payload of exactly `bytes` bytes (at least the stamp's size)
/// carrying `stamp_us`: `{"t":STAMP,"p":"ppp…"}`.
pub fn stamped_payload(stamp_us: u64, bytes: usize) -> String {
    let head = format!(r#"{{"t":{stamp_us},"p":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut payload = String::with_capacity(head.len() + pad + 2);
    payload.push_str(&head);
    payload.extend(std::iter::repeat_n('p', pad));
    payload.push_str("\"}");
    payload
}

/// The stamp of a [`stamped_payload`].
pub fn stamp_of(payload: &RawValue) -> Option<u64> {
    stamp_of_bytes(payload.get().as_bytes())
}

/// The stamp of a [`stamped_payload`] as raw bytes (a NATS message body).
pub fn stamp_of_bytes(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Stamped {
        t: u64,
    }
    serde_json::from_slice::<Stamped>(payload).ok().map(|s| s.t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_payloads_have_the_asked_size_and_read_back() {
        for bytes in [0, 16, 128, 1000] {
            let payload = stamped_payload(123_456, bytes);
            assert!(payload.len() == bytes.max(payload.len().min(bytes + 32)));
            if bytes >= 32 {
                assert_eq!(payload.len(), bytes);
            }
            let raw = RawValue::from_string(payload).unwrap();
            assert_eq!(stamp_of(&raw), Some(123_456));
        }
    }

    #[test]
    fn frames_parse_borrowed() {
        let text = r#"{"op":"EVENT","topic":"a","event":{"id":"e1","seq":4,"topic":"a","ts":1,"payload":{"t":9,"p":""}},"ctx":{"attempt":1}}"#;
        let frame = parse(text).unwrap();
        assert_eq!(frame.op, "EVENT");
        let event = frame.event.unwrap();
        assert_eq!((event.id, event.seq), ("e1", 4));
        assert_eq!(stamp_of(event.payload.unwrap()), Some(9));
        let err =
            parse(r#"{"op":"ERR","code":"rate_limited","msg":"x","rid":"7","retry_after_ms":20}"#)
                .unwrap();
        assert_eq!(
            (err.code, err.rid, err.retry_after_ms),
            (Some("rate_limited"), Some("7"), Some(20))
        );
    }
}
