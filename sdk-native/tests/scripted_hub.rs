//! Protocol situations the real hub does not produce on demand, played by a
//! scripted WebSocket server on a real socket: rate-limited publishes, an
//! unanswered heartbeat, a 4029 close with `retry_after_ms`, garbage
//! frames, and a TLS handshake against a server that does not speak TLS.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use promhub::{Client, ClientConfig, ConnectionEvent, Error, PublishOptions};
use serde_json::{Value, json};
use support::{guard, wait_event};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = WebSocketStream<TcpStream>;

/// A server on 127.0.0.1 that runs `script(connection number, socket)` for
/// every connection (numbered from 1).
async fn scripted<F, Fut>(script: F) -> String
where
    F: Fn(usize, Ws) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let script = Arc::new(script);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    script(n, ws).await;
                }
            });
        }
    });
    url
}

/// The next text frame from the client, as JSON (`None`: closed).
async fn recv(ws: &mut Ws) -> Option<Value> {
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

async fn send(ws: &mut Ws, frame: Value) {
    let _ = ws.send(Message::Text(frame.to_string().into())).await;
}

/// Reads `AUTH` and answers `OK`.
async fn handshake(ws: &mut Ws, heartbeat_ms: u64) -> Value {
    let auth = recv(ws).await.expect("AUTH");
    assert_eq!(auth["op"], "AUTH");
    send(
        ws,
        json!({"op": "OK", "v": 1, "session": "s", "server": "scripted", "heartbeat_ms": heartbeat_ms}),
    )
    .await;
    auth
}

/// Answers every `PUBLISH` with `answer(publish number, frame)`, and every
/// `PING` with `PONG`, until the client goes.
async fn serve(ws: &mut Ws, mut answer: impl FnMut(usize, &Value) -> Value) {
    let mut publishes = 0;
    while let Some(frame) = recv(ws).await {
        match frame["op"].as_str() {
            Some("PUBLISH") => {
                publishes += 1;
                let reply = answer(publishes, &frame);
                send(ws, reply).await;
            }
            Some("PING") => send(ws, json!({"op": "PONG", "rid": frame["rid"]})).await,
            _ => {}
        }
    }
}

fn puback(frame: &Value, seq: u64) -> Value {
    json!({"op": "PUBACK", "rid": frame["rid"], "id": format!("e{seq}"), "seq": seq})
}

fn rate_limited(frame: &Value, retry_after_ms: u64) -> Value {
    json!({
        "op": "ERR", "code": "rate_limited", "msg": "slow down",
        "rid": frame["rid"], "retry_after_ms": retry_after_ms,
    })
}

#[tokio::test]
async fn a_rate_limited_publish_waits_and_is_tried_again() {
    let url = scripted(|_, mut ws| async move {
        handshake(&mut ws, 15_000).await;
        // The first attempt is refused with a wait; the retry is stored.
        serve(&mut ws, |n, frame| {
            if n == 1 {
                rate_limited(frame, 50)
            } else {
                puback(frame, 7)
            }
        })
        .await;
    })
    .await;
    let client = guard(
        "connect",
        Client::connect(url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    let ack = guard("publish", client.publish("a.b", &1, PublishOptions::new()))
        .await
        .expect("stored after the retry");
    assert_eq!(ack.seq, 7);
    client.close().await;
}

#[tokio::test]
async fn a_wait_longer_than_the_timeout_is_returned_as_rate_limited() {
    let url = scripted(|_, mut ws| async move {
        handshake(&mut ws, 15_000).await;
        serve(&mut ws, |_, frame| rate_limited(frame, 60_000)).await;
    })
    .await;
    let config = ClientConfig::new().request_timeout(Duration::from_secs(5));
    let client = guard("connect", Client::connect(url.as_str(), config))
        .await
        .expect("connect");
    let err = guard("publish", client.publish("a.b", &1, PublishOptions::new()))
        .await
        .expect_err("rate limited");
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(60)),
        "{err:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn an_unanswered_heartbeat_closes_and_reconnects() {
    let url = scripted(|n, mut ws| async move {
        handshake(&mut ws, 100).await;
        if n == 1 {
            // Reads everything, answers nothing: a hub that hangs.
            while recv(&mut ws).await.is_some() {}
        } else {
            serve(&mut ws, |_, frame| puback(frame, 1)).await;
        }
    })
    .await;
    let mut config =
        ClientConfig::new().reconnect_delay(Duration::from_millis(20), Duration::from_millis(40));
    config.core.heartbeat.pong_timeout_ms = 200;
    let client = Client::connect_lazy(url.as_str(), config).expect("client");
    let mut events = client.events();
    let (reason, _) = wait_event("heartbeat timeout", &mut events, |event| match event {
        ConnectionEvent::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "heartbeat timeout");
    wait_event("reconnect", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    guard("publish", client.publish("a.b", &1, PublishOptions::new()))
        .await
        .expect("publish on the new connection");
    client.close().await;
}

#[tokio::test]
async fn a_4029_close_waits_the_retry_after_it_carries() {
    let url = scripted(|n, mut ws| async move {
        handshake(&mut ws, 15_000).await;
        if n == 1 {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(4029),
                    reason: r#"{"retry_after_ms":321}"#.into(),
                }))
                .await;
        } else {
            serve(&mut ws, |_, frame| puback(frame, 1)).await;
        }
    })
    .await;
    let client = Client::connect_lazy(url.as_str(), ClientConfig::new()).expect("client");
    let mut events = client.events();
    let (code, _) = wait_event("rate-limited close", &mut events, |event| match event {
        ConnectionEvent::Disconnected { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(4029));
    let (delay, _) = wait_event("reconnecting", &mut events, |event| match event {
        ConnectionEvent::Reconnecting { delay, .. } => Some(*delay),
        _ => None,
    })
    .await;
    assert_eq!(delay, Duration::from_millis(321));
    wait_event("reconnect", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    client.close().await;
}

#[tokio::test]
async fn garbage_from_the_hub_is_ignored_and_the_connection_lives_on() {
    let url = scripted(|_, mut ws| async move {
        handshake(&mut ws, 15_000).await;
        let _ = ws.send(Message::Text("not json".into())).await;
        let _ = ws.send(Message::Text(r#"{"op":"WHAT"}"#.into())).await;
        let _ = ws.send(Message::Binary(vec![0, 159, 146, 150].into())).await;
        send(&mut ws, json!({"op": "PUBACK", "rid": "999", "id": "x", "seq": 1})).await;
        send(
            &mut ws,
            json!({"op": "EVENT", "topic": "nobody.*", "event": {"id": "e", "seq": 1, "topic": "nobody.x", "ts": 1, "payload": 1}, "ctx": {"attempt": 1}}),
        )
        .await;
        serve(&mut ws, |_, frame| puback(frame, 3)).await;
    })
    .await;
    let client = guard(
        "connect",
        Client::connect(url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    let ack = guard("publish", client.publish("a.b", &1, PublishOptions::new()))
        .await
        .expect("publish after garbage");
    assert_eq!(ack.seq, 3);
    client.close().await;
}

#[tokio::test]
async fn wss_to_a_server_without_tls_fails_cleanly() {
    // Accepts TCP and sends something that is not a TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let err = guard(
        "connect",
        Client::connect(format!("wss://{addr}/ws"), ClientConfig::new()),
    )
    .await
    .expect_err("no TLS there");
    // A TLS error, not a refused connection: the handshake was attempted.
    assert!(
        // rustls: "received corrupt message of type InvalidContentType".
        matches!(&err, Error::Connect(msg) if msg.contains("InvalidContentType")),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection_with_1000() {
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let url = scripted(move |_, mut ws| {
        let seen = seen.clone();
        async move {
            let auth = handshake(&mut ws, 15_000).await;
            let _ = seen.send(auth);
            while let Some(message) = ws.next().await {
                if let Ok(Message::Close(frame)) = message {
                    let code = frame.map(|frame| u16::from(frame.code));
                    let _ = seen.send(json!({"close": code}));
                    return;
                }
            }
            let _ = seen.send(json!({"close": "none"}));
        }
    })
    .await;
    let client = guard(
        "connect",
        Client::connect(url.as_str(), ClientConfig::new().token("t-1")),
    )
    .await
    .expect("connect");
    let auth = guard("AUTH", seen_rx.recv()).await.expect("AUTH seen");
    assert_eq!(auth["token"], "t-1");
    assert_eq!(auth["v"], 1);
    assert!(
        auth["client"]
            .as_str()
            .is_some_and(|name| name.starts_with("promhub-native/")),
        "{auth}"
    );
    let clone = client.clone();
    drop(client);
    drop(clone);
    let close = guard("close", seen_rx.recv()).await.expect("close seen");
    assert_eq!(close, json!({"close": 1000}));
}
