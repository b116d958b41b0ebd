//! The hub's side of the WebSocket wire under `connection/`: queued
//! frames as tungstenite messages, the close code for a frame tungstenite
//! refuses, and draining the socket after such a frame.

use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::stream::{SplitSink, SplitStream};
use promhub_core::frames::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::{self as ws, Message as WireMessage};

use super::upgrade::WsStream;

/// RFC 6455's close code for a protocol error (a frame that is not
/// WebSocket: unmasked, reserved bits, unknown opcode, ...).
const WS_PROTOCOL_ERROR: u16 = 1002;

/// The write half of a hub WebSocket.
pub(crate) type WsSink = SplitSink<WsStream, WireMessage>;

/// A queued frame as tungstenite's message. Text goes out as a ready-made
/// frame over the same bytes: the queue's text is valid UTF-8 already, and
/// a broadcast frame is shared by every subscriber, so it is neither copied
/// nor checked again per connection.
pub(crate) fn to_wire(message: Message) -> WireMessage {
    match message {
        Message::Text(text) => WireMessage::Frame(Frame::message(
            bytes::Bytes::from(text),
            OpCode::Data(OpData::Text),
            true,
        )),
        Message::Binary(data) => WireMessage::Binary(data),
        Message::Ping(data) => WireMessage::Ping(data),
        Message::Pong(data) => WireMessage::Pong(data),
        Message::Close(frame) => WireMessage::Close(frame.map(|frame| CloseFrame {
            code: CloseCode::from(frame.code),
            reason: Utf8Bytes::from(frame.reason.as_str()),
        })),
    }
}

/// The close code for a read error the client caused, with what it is
/// counted as; `None` when the socket itself ended or failed.
pub(crate) fn close_for(
    error: &ws::Error,
) -> Option<(u16, &'static str, Option<crate::refusals::Refusal>)> {
    use ws::error::{CapacityError, ProtocolError};
    match error {
        ws::Error::Capacity(CapacityError::MessageTooLong { .. }) => Some((
            close::MESSAGE_TOO_BIG,
            "frame too big",
            Some(crate::refusals::Refusal::FrameTooBig),
        )),
        ws::Error::Utf8(_) => Some((
            close::INVALID_PAYLOAD,
            "text frame is not valid UTF-8",
            Some(crate::refusals::Refusal::InvalidUtf8),
        )),
        ws::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        ws::Error::Protocol(_) => Some((WS_PROTOCOL_ERROR, "WebSocket protocol error", None)),
        _ => None,
    }
}

/// After a close frame that followed an unreadable frame: sends FIN and
/// reads (and drops) whatever the client still sends until it closes, for
/// at most `linger`. The WebSocket layer cannot be read any more
/// (it stopped inside a frame), so this reads the socket under it; closing
/// with unread input instead would answer with a reset, and a reset can
/// destroy the close frame before the client reads it.
pub(crate) async fn drain(stream: SplitStream<WsStream>, sink: WsSink, linger: Duration) {
    let Ok(mut socket) = stream.reunite(sink) else {
        return;
    };
    let io = socket.get_mut();
    let _ = tokio::time::timeout(linger, async {
        let _ = io.shutdown().await;
        let mut discard = vec![0u8; 16 * 1024];
        while let Ok(read) = io.read(&mut discard).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}
