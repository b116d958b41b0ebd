//! The transcript test, native side: plays `tests/transcripts/*.json` — one
//! scripted hub conversation — against the native SDK. The hub's part runs
//! on a real WebSocket server; the client's part goes through the public
//! API; every frame the client sends must equal the script's `expect`
//! steps. The browser SDK plays the same files
//! (`sdk-wasm/tests/browser/transcript.test.mjs`), so both drivers send the
//! same frames for the same conversation. The script format is described
//! in the file itself.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use promhub::core::frames::SubscribeOpts;
use promhub::{Client, ClientConfig, Delivery, Error, PubAck, PublishOptions};
use serde_json::Value;
use support::guard;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = WebSocketStream<TcpStream>;

const TRANSCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/transcripts");

#[tokio::test]
async fn reconnect_stale_nack_token_retry_and_live_resume() {
    play("reconnect.json").await;
}

/// What the client sent on one connection, as the script numbers them.
type Recorded = Vec<(u64, Value)>;

async fn play(name: &str) {
    let path = format!("{TRANSCRIPTS}/{name}");
    let script: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut hub = ScriptedHub::start().await;
    let mut client = Player::new(&script["client"], hub.url.clone());
    let mut recorded: Recorded = Vec::new();
    let steps = script["steps"].as_array().expect("steps");
    for (index, step) in steps.iter().enumerate() {
        let at = format!("{name} step {index}: {step}");
        if let Some(number) = step.get("connection") {
            hub.next_connection(&at).await;
            assert_eq!(Some(hub.number), number.as_u64(), "{at}");
        } else if let Some(expected) = step.get("expect") {
            let frame = hub.recv(&at).await;
            recorded.push((hub.number, frame.clone()));
            assert_eq!(&frame, expected, "{at}\nrecorded so far: {recorded:#?}");
        } else if let Some(frame) = step.get("send") {
            hub.send(frame).await;
        } else if let Some(close) = step.get("close") {
            hub.close(close, &at).await;
        } else if step.get("end").is_some() {
            hub.end(&at).await;
        } else if let Some(action) = step.get("do").and_then(Value::as_str) {
            client.act(action, step, &at).await;
        } else {
            panic!("{at}: unknown step");
        }
    }
    client.finish().await;
}

// ---------------------------------------------------------------------------
// The hub's part

/// A connection counts once it sends a frame: one that never does (an
/// attempt the client gave up) is ignored.
struct ScriptedHub {
    url: String,
    /// Connections that spoke, with their first frame.
    speaking: mpsc::UnboundedReceiver<(Ws, Value)>,
    current: Option<Ws>,
    /// The first frame of the current connection, until read.
    first: Option<Value>,
    number: u64,
}

impl ScriptedHub {
    async fn start() -> ScriptedHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let (spoke, speaking) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let spoke = spoke.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    // No hang guard: a silent connection may stay open.
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Text(text) = message {
                            let first = serde_json::from_str(text.as_str())
                                .unwrap_or_else(|e| panic!("client sent {text}: {e}"));
                            let _ = spoke.send((ws, first));
                            return;
                        }
                    }
                });
            }
        });
        ScriptedHub {
            url,
            speaking,
            current: None,
            first: None,
            number: 0,
        }
    }

    /// The next connection that sends a frame.
    async fn next_connection(&mut self, at: &str) {
        assert!(self.current.is_none(), "{at}: the last connection is open");
        let (ws, first) = guard(at, self.speaking.recv()).await.expect("listener");
        self.current = Some(ws);
        self.first = Some(first);
        self.number += 1;
    }

    fn ws(&mut self, at: &str) -> &mut Ws {
        self.current
            .as_mut()
            .unwrap_or_else(|| panic!("{at}: no connection"))
    }

    async fn recv(&mut self, at: &str) -> Value {
        if let Some(frame) = self.first.take() {
            return frame;
        }
        next_text(self.ws(at), at)
            .await
            .unwrap_or_else(|| panic!("{at}: the client closed the connection"))
    }

    async fn send(&mut self, frame: &Value) {
        let ws = self.current.as_mut().expect("a connection to send on");
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    /// Closes the connection; the client must send nothing more on it.
    async fn close(&mut self, close: &Value, at: &str) {
        let code = close["code"].as_u64().expect("close code") as u16;
        let reason = close["reason"].as_str().unwrap_or("").to_owned();
        self.ws(at)
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .expect("close");
        self.end(at).await;
    }

    /// The client closes: nothing more than the close.
    async fn end(&mut self, at: &str) {
        assert!(self.first.is_none(), "{at}: unexpected {:?}", self.first);
        let mut ws = self.current.take().expect("a connection");
        if let Some(frame) = next_text(&mut ws, at).await {
            panic!("{at}: the client sent {frame} instead of closing");
        }
    }
}

/// The next text frame as JSON; `None` once the connection closed.
async fn next_text(ws: &mut Ws, at: &str) -> Option<Value> {
    loop {
        match guard(at, ws.next()).await {
            Some(Ok(Message::Text(text))) => {
                return Some(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("{at}: client sent {text}: {e}")),
                );
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The client's part, through the native SDK

struct Player {
    url: String,
    settings: Value,
    client: Option<Client>,
    events: Option<promhub::EventStream>,
    /// Gaps on deliveries, per subscription pattern: the events stream
    /// must report the same ones.
    gaps: Vec<(String, promhub::Gap)>,
    /// Subscription pattern per name.
    topics: HashMap<String, String>,
    /// Subscribing, per name: the SUBACK to wait for, and the deliveries.
    subscribing: HashMap<String, oneshot::Receiver<Result<(), Error>>>,
    deliveries: HashMap<String, mpsc::UnboundedReceiver<Delivery<Value>>>,
    readers: Vec<JoinHandle<()>>,
    /// Deliveries kept by name to be answered later.
    held: HashMap<String, Delivery<Value>>,
    publishes: HashMap<String, JoinHandle<Result<PubAck, Error>>>,
}

impl Player {
    fn new(settings: &Value, url: String) -> Player {
        Player {
            url,
            settings: settings.clone(),
            client: None,
            events: None,
            gaps: Vec::new(),
            topics: HashMap::new(),
            subscribing: HashMap::new(),
            deliveries: HashMap::new(),
            readers: Vec::new(),
            held: HashMap::new(),
            publishes: HashMap::new(),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("connect first")
    }

    /// The SDK configured as the script says: client name, reconnect
    /// delays, and a token provider that hands out the script's tokens in
    /// order (`fail:MESSAGE` fails with MESSAGE).
    fn config(&self) -> ClientConfig {
        let settings = &self.settings;
        let tokens: VecDeque<String> = settings["tokens"]
            .as_array()
            .map(|tokens| {
                tokens
                    .iter()
                    .map(|t| t.as_str().expect("token").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let tokens = Arc::new(Mutex::new(tokens));
        let ms = |key: &str| Duration::from_millis(settings["reconnect"][key].as_u64().expect(key));
        let mut config = ClientConfig::new();
        // The events stream is read at the end: room for all of them.
        config.event_capacity = 1024;
        config
            .client_name(settings["clientName"].as_str().expect("clientName"))
            .reconnect_delay(ms("minDelayMs"), ms("maxDelayMs"))
            .token_provider(move || {
                let next = tokens.lock().expect("tokens").pop_front();
                std::future::ready(match next {
                    Some(token) => match token.strip_prefix("fail:") {
                        Some(message) => Err(message.to_owned()),
                        None => Ok(token),
                    },
                    None => Err("no more tokens in the script".to_owned()),
                })
            })
    }

    async fn act(&mut self, action: &str, step: &Value, at: &str) {
        let text = |key: &str| -> String {
            step[key]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no {key}"))
                .to_owned()
        };
        match action {
            "connect" => {
                let client =
                    Client::connect_lazy(self.url.as_str(), self.config()).expect("client");
                self.events = Some(client.events());
                self.client = Some(client);
            }
            "connected" => guard(
                at,
                self.client().wait_for(promhub::ConnectionState::Connected),
            )
            .await
            .expect("connected"),
            "subscribe" => self.subscribe(text("sub"), step),
            "subscribed" => {
                let waiting = self.subscribing.remove(&text("sub")).expect("subscribing");
                guard(at, waiting)
                    .await
                    .expect("reader")
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
            }
            "receive" => self.receive(step, at).await,
            "publish" => {
                let client = self.client().clone();
                let topic = text("topic");
                let payload = step["payload"].clone();
                let publish = tokio::spawn(async move {
                    client
                        .publish(&topic, &payload, PublishOptions::new())
                        .await
                });
                self.publishes.insert(text("as"), publish);
            }
            "published" => {
                let publish = self.publishes.remove(&text("as")).expect("publish");
                let ack = guard(at, publish)
                    .await
                    .expect("publish task")
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(Some(ack.seq), step["seq"].as_u64(), "{at}");
            }
            "ack" | "nack" | "working" => {
                let name = text("delivery");
                let result = match action {
                    "working" => {
                        let delivery = self.held.get(&name).expect("held delivery");
                        guard(at, delivery.working()).await
                    }
                    "ack" => {
                        let delivery = self.held.remove(&name).expect("held delivery");
                        guard(at, delivery.ack()).await
                    }
                    _ => {
                        let delivery = self.held.remove(&name).expect("held delivery");
                        guard(at, delivery.nack(text("reason"), None)).await
                    }
                };
                let sent = step["sent"].as_bool().expect("sent");
                match result {
                    Ok(()) => assert!(sent, "{at}: the answer went out"),
                    // What a refused answer means in this SDK.
                    Err(Error::Disconnected) => assert!(!sent, "{at}: refused"),
                    Err(e) => panic!("{at}: {e:?}"),
                }
            }
            "close" => guard(at, self.client().close()).await,
            other => panic!("{at}: unknown action {other}"),
        }
    }

    fn subscribe(&mut self, name: String, step: &Value) {
        let client = self.client().clone();
        let topic = step["topic"].as_str().expect("topic").to_owned();
        let group = step["group"].as_str().map(str::to_owned);
        let opts: SubscribeOpts = serde_json::from_value(step["opts"].clone()).unwrap_or_default();
        self.topics.insert(name.clone(), topic.clone());
        let (subscribed, waiting) = oneshot::channel();
        let (deliveries, received) = mpsc::unbounded_channel();
        self.subscribing.insert(name.clone(), waiting);
        self.deliveries.insert(name, received);
        self.readers.push(tokio::spawn(async move {
            let result = client
                .subscribe::<Value>(&topic, group.as_deref(), opts.into())
                .await;
            let mut subscription = match result {
                Ok(subscription) => {
                    let _ = subscribed.send(Ok(()));
                    subscription
                }
                Err(e) => {
                    let _ = subscribed.send(Err(e));
                    return;
                }
            };
            while let Some(delivery) = subscription.next().await {
                if deliveries.send(delivery).is_err() {
                    return;
                }
            }
        }));
    }

    /// The subscription's next delivery must be this one.
    async fn receive(&mut self, step: &Value, at: &str) {
        let name = step["sub"].as_str().expect("sub");
        let received = self.deliveries.get_mut(name).expect("subscribed");
        let delivery = guard(at, received.recv()).await.expect("a delivery");
        assert_eq!(Some(delivery.seq()), step["seq"].as_u64(), "{at}");
        if let Some(attempt) = step["attempt"].as_u64() {
            assert_eq!(u64::from(delivery.attempt()), attempt, "{at}");
        }
        assert_eq!(
            delivery.is_snapshot(),
            step["snapshot"].as_bool().unwrap_or(false),
            "{at}"
        );
        if let Some(gap) = delivery.gap() {
            self.gaps.push((self.topics[name].clone(), gap));
        }
        let gap = delivery
            .gap()
            .map(|gap| serde_json::json!({"from": gap.from, "to": gap.to}));
        assert_eq!(gap.as_ref(), step.get("gap"), "{at}");
        if let Some(label) = step["as"].as_str() {
            self.held.insert(label.to_owned(), delivery);
        }
    }

    /// Nothing was delivered beyond what the script received, and the
    /// events stream reported every gap the deliveries carried.
    async fn finish(mut self) {
        let events: Vec<promhub::ConnectionEvent> = match self.events.take() {
            // Ends after `Closed`.
            Some(events) => guard("events", events.collect()).await,
            None => Vec::new(),
        };
        let reported: Vec<(String, promhub::Gap)> = events
            .into_iter()
            .filter_map(|event| match event {
                promhub::ConnectionEvent::Gap { topic, gap } => Some((topic, gap)),
                _ => None,
            })
            .collect();
        assert_eq!(reported, self.gaps, "gaps on the events stream");
        for reader in self.readers.drain(..) {
            guard("reader", reader).await.expect("reader");
        }
        for (name, received) in &mut self.deliveries {
            if let Ok(extra) = received.try_recv() {
                panic!("{name}: delivered beyond the script: seq {}", extra.seq());
            }
        }
    }
}
