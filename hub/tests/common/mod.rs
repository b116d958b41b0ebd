//! Shared helpers: a real hub on 127.0.0.1 port 0 with its store in a
//! tempdir, and a raw WebSocket client speaking JSON frames.
//!
//! Timeouts here are hang guards only (generous); no test asserts on time.

#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod jwt;
pub mod process;
pub mod spawned;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use promhub_hub::HubConfig;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame before calling it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

pub struct TestHub {
    pub url: String,
    pub data: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), promhub_hub::HubError>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    /// Starts a hub with a fresh data dir; `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hub = Self::start_in(dir.path(), tweak).await;
        hub._dir = Some(dir);
        hub
    }

    /// Starts a hub with a fresh data dir and the given parts.
    pub async fn start_with_parts(
        tweak: impl FnOnce(&mut HubConfig),
        parts: promhub_hub::HubParts,
    ) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hub = Self::launch(dir.path(), tweak, parts).await;
        hub._dir = Some(dir);
        hub
    }

    /// Starts a hub on an existing data dir (kept by the caller).
    pub async fn start_in(data: &Path, tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        Self::launch(data, tweak, promhub_hub::HubParts::default()).await
    }

    async fn launch(
        data: &Path,
        tweak: impl FnOnce(&mut HubConfig),
        parts: promhub_hub::HubParts,
    ) -> TestHub {
        let mut config = HubConfig {
            data: data.to_path_buf(),
            ..HubConfig::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = format!("ws://{addr}{}", config.ws_path);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(promhub_hub::run_with(listener, config, parts, async move {
            let _ = stop.await;
        }));
        TestHub {
            url,
            data: data.to_path_buf(),
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: None,
        }
    }

    /// Graceful shutdown; returns the hub's result.
    pub async fn stop(&mut self) -> Result<(), promhub_hub::HubError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("hub did not stop")
                .expect("hub task panicked"),
            None => Ok(()),
        }
    }

    /// A connected client that has not sent AUTH.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.url).await
    }

    /// A connected client after AUTH / OK.
    pub async fn client(&self) -> Client {
        let mut client = self.connect().await;
        client.auth().await;
        client
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_rid: u64,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        // The client side accepts big frames so tests can see what the hub
        // sends; limits under test are the hub's.
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        let (ws, _) = tokio::time::timeout(
            HANG_GUARD,
            tokio_tungstenite::connect_async_with_config(url, Some(config), true),
        )
        .await
        .expect("connect timed out")
        .expect("connect failed");
        Client { ws, next_rid: 0 }
    }

    pub fn rid(&mut self) -> String {
        self.next_rid += 1;
        format!("r{}", self.next_rid)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send failed");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send failed");
    }

    /// The next JSON frame; panics on close or after the hang guard.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Ok(value) => value,
            Err(closed) => panic!("connection closed while waiting for a frame: {closed:?}"),
        }
    }

    /// The next JSON frame, or how the connection closed.
    pub async fn recv(&mut self) -> Result<Value, Closed> {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no frame within the hang guard");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("hub sent invalid JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(frame) => Closed {
                            code: frame.code.into(),
                            reason: frame.reason.to_string(),
                        },
                        None => Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Closed {
                        code: 1006,
                        reason: e.to_string(),
                    });
                }
                None => {
                    return Err(Closed {
                        code: 1006,
                        reason: "stream ended".into(),
                    });
                }
            }
        }
    }

    /// Waits for the hub to close the connection, skipping other frames
    /// (at most `max_frames` of them).
    pub async fn expect_close(&mut self, max_frames: usize) -> Closed {
        for _ in 0..=max_frames {
            if let Err(closed) = self.recv().await {
                return closed;
            }
        }
        panic!("no close after {max_frames} frames");
    }

    /// The next frame with this `op`, skipping at most `max_skip` others.
    pub async fn recv_op(&mut self, op: &str, max_skip: usize) -> Value {
        for _ in 0..=max_skip {
            let frame = self.recv_json().await;
            if frame["op"] == op {
                return frame;
            }
        }
        panic!("no {op} within {max_skip} frames");
    }

    pub async fn auth(&mut self) -> Value {
        self.send_json(json!({"op": "AUTH"})).await;
        let ok = self.recv_json().await;
        assert_eq!(ok["op"], "OK", "AUTH answered with {ok}");
        ok
    }

    /// PING with a rid; returns every frame received before the PONG.
    /// Also a barrier: the hub answers after earlier ACK/NACKs are durable.
    pub async fn ping(&mut self) -> Vec<Value> {
        let rid = self.rid();
        self.send_json(json!({"op": "PING", "rid": rid})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv_json().await;
            if frame["op"] == "PONG" && frame["rid"] == rid.as_str() {
                return before;
            }
            before.push(frame);
            assert!(before.len() < 10_000, "no PONG");
        }
    }

    /// Asserts the connection is alive and nothing was pending before.
    pub async fn assert_alive_and_quiet(&mut self) {
        let before = self.ping().await;
        assert!(before.is_empty(), "unexpected frames: {before:?}");
    }

    /// PUBLISH with a rid; returns the PUBACK (or ERR).
    pub async fn publish(&mut self, topic: &str, payload: Value, opts: Value) -> Value {
        let rid = self.rid();
        let mut frame = json!({"op": "PUBLISH", "topic": topic, "payload": payload, "rid": rid});
        if !opts.is_null() {
            frame["opts"] = opts;
        }
        self.send_json(frame).await;
        loop {
            let answer = self.recv_json().await;
            if answer["rid"] == rid.as_str() {
                return answer;
            }
            // EVENTs for this client's own subscriptions may arrive first.
            assert_eq!(answer["op"], "EVENT", "unexpected frame {answer}");
        }
    }

    /// SUBSCRIBE with a rid; returns the SUBACK (or ERR).
    pub async fn subscribe(&mut self, topic: &str, group: Option<&str>, opts: Value) -> Value {
        let rid = self.rid();
        let mut frame = json!({"op": "SUBSCRIBE", "topic": topic, "rid": rid});
        if let Some(group) = group {
            frame["group"] = json!(group);
        }
        if !opts.is_null() {
            frame["opts"] = opts;
        }
        self.send_json(frame).await;
        let answer = self.recv_json().await;
        assert_eq!(answer["rid"], rid.as_str(), "unexpected frame {answer}");
        answer
    }

    /// The next EVENT, skipping nothing.
    pub async fn recv_event(&mut self) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(frame["op"], "EVENT", "expected an EVENT, got {frame}");
        frame
    }

    pub async fn ack(&mut self, event: &Value) {
        self.send_json(json!({
            "op": "ACK", "topic": event["topic"], "group": event["group"], "id": event["event"]["id"]
        }))
        .await;
    }

    /// The raw WebSocket, e.g. to send and receive from separate futures.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A tempdir that outlives hub restarts.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
