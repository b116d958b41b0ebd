//! One WebSocket to the hub: opening it, a writer task that batches frames,
//! and reading.
//!
//! The writer runs in its own task so that a slow or dead peer that stops
//! reading can never stall the driver: its timers (heartbeat, request
//! timeouts) keep running and detect the dead connection.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Read buffer per connection: small, because idle clients are common and
/// tungstenite allocates it up front (its default is 128 KiB).
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Frames are written to the socket once this much is buffered, and at the
/// end of every batch.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Frames fed to the socket before one flush.
const MAX_WRITE_BATCH: usize = 512;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How sockets are opened (from [`ClientConfig`](crate::ClientConfig)).
#[derive(Clone)]
pub(crate) struct SocketOptions {
    pub max_frame_bytes: usize,
    /// The TLS setup for `wss://`; `None`: the webpki roots.
    #[cfg(feature = "rustls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Opens the WebSocket, with TCP_NODELAY: frames are small and batching
/// happens in the writer, not in Nagle's algorithm.
pub(crate) async fn open(url: String, options: SocketOptions) -> Result<Socket, String> {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER_BYTES;
    config.write_buffer_size = WRITE_BUFFER_BYTES;
    config.max_message_size = Some(options.max_frame_bytes);
    config.max_frame_size = Some(options.max_frame_bytes);
    #[cfg(feature = "rustls")]
    let connected = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(config),
        true,
        options.tls.map(tokio_tungstenite::Connector::Rustls),
    )
    .await;
    #[cfg(not(feature = "rustls"))]
    let connected =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await;
    let (ws, _response) = connected.map_err(|e| e.to_string())?;
    Ok(Socket::new(ws))
}

enum Outgoing {
    Text(String),
    Close { code: u16, reason: String },
}

/// What reading the socket gave.
#[derive(Debug)]
pub(crate) enum Incoming {
    Text(Utf8Bytes),
    Closed {
        code: Option<u16>,
        reason: String,
    },
    Error(String),
    /// Control or binary frames: nothing for the state machine.
    Ignored,
}

/// An open WebSocket: the read half, and the channel to its writer task.
#[derive(Debug)]
pub(crate) struct Socket {
    reader: SplitStream<WsStream>,
    writer: mpsc::UnboundedSender<Outgoing>,
    write_failed: oneshot::Receiver<String>,
    writer_task: JoinHandle<()>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outgoing::Text(text) => write!(f, "Text({} bytes)", text.len()),
            Outgoing::Close { code, .. } => write!(f, "Close({code})"),
        }
    }
}

impl Socket {
    fn new(ws: WsStream) -> Self {
        let (sink, reader) = ws.split();
        let (writer, outgoing) = mpsc::unbounded_channel();
        let (failed, write_failed) = oneshot::channel();
        let writer_task = tokio::spawn(write_loop(sink, outgoing, failed));
        Socket {
            reader,
            writer,
            write_failed,
            writer_task,
        }
    }

    /// Queues a text frame; the writer sends it with whatever else is
    /// queued, then flushes.
    pub(crate) fn send(&self, text: String) {
        // A writer that is gone has reported why through `write_failed`.
        let _ = self.writer.send(Outgoing::Text(text));
    }

    /// Sends a close frame after what is queued and lets the socket go.
    pub(crate) fn close(self, code: u16, reason: String) {
        let Socket {
            reader,
            writer,
            writer_task,
            ..
        } = self;
        drop(reader);
        let _ = writer.send(Outgoing::Close { code, reason });
        drop(writer);
        // A peer that stopped reading could hold the writer forever.
        tokio::spawn(async move {
            let abort = writer_task.abort_handle();
            if tokio::time::timeout(CLOSE_GRACE, writer_task)
                .await
                .is_err()
            {
                abort.abort();
            }
        });
    }

    /// Drops a socket that is already closed or broken.
    pub(crate) fn discard(self) {
        self.writer_task.abort();
    }

    /// The next frame, close or error.
    pub(crate) async fn next(&mut self) -> Incoming {
        tokio::select! {
            message = self.reader.next() => Self::incoming(message),
            failed = &mut self.write_failed => Incoming::Error(
                failed.unwrap_or_else(|_| "socket writer stopped".to_owned()),
            ),
        }
    }

    /// A frame that is already there, without waiting.
    pub(crate) fn next_ready(&mut self) -> Option<Incoming> {
        use futures_util::FutureExt;
        self.reader.next().now_or_never().map(Self::incoming)
    }

    fn incoming(
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Incoming {
        match message {
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Close(frame))) => match frame {
                Some(frame) => Incoming::Closed {
                    code: Some(u16::from(frame.code)),
                    reason: frame.reason.to_string(),
                },
                None => Incoming::Closed {
                    code: None,
                    reason: String::new(),
                },
            },
            Some(Ok(Message::Binary(_))) => {
                tracing::debug!("binary frame from the hub ignored");
                Incoming::Ignored
            }
            Some(Ok(_)) => Incoming::Ignored,
            Some(Err(e)) => Incoming::Error(e.to_string()),
            None => Incoming::Closed {
                code: None,
                reason: "connection closed".to_owned(),
            },
        }
    }
}

/// Writes queued frames in batches: everything queued is fed, then one
/// flush.
async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    failed: oneshot::Sender<String>,
) {
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(frame) = next.take() {
            match frame {
                Outgoing::Text(text) => {
                    if let Err(e) = sink.feed(Message::Text(text.into())).await {
                        let _ = failed.send(format!("write failed: {e}"));
                        return;
                    }
                }
                Outgoing::Close { code, reason } => {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    // Best effort: the driver has moved on already.
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            }
            fed += 1;
            if fed < MAX_WRITE_BATCH {
                next = outgoing.try_recv().ok();
            }
        }
        if let Err(e) = sink.flush().await {
            let _ = failed.send(format!("write failed: {e}"));
            return;
        }
    }
}
