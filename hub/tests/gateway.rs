//! The accept layer against a real `promhub` subprocess over real sockets
//! (issue 13, finding 3 and the frames of finding 8): upgrade and AUTH
//! deadlines, the connection caps and their 503, the fd-derived default
//! cap, `allowed_origins`, idle keep-alive connections, and the close
//! codes 1009 / 1007. Each test reads its `promhub_refusals_total`
//! counters from `/metrics`.
//!
//! Deadlines here are short (300–1000 ms) so the tests run fast; time
//! bounds are "within the deadline plus generous slack", never speed.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::Client;
use common::spawned::{Launch, Spawned, connect_from};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Added to every deadline before a socket counts as "not closed": the
/// machine is shared and noisy.
const SLACK: Duration = Duration::from_secs(5);

/// How a flood socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The hub closed it (FIN or reset) after this long, without a byte.
    Closed(Duration),
    /// The hub answered with these bytes, then closed.
    Answered(String),
    /// Still open when the test stopped waiting.
    Open,
}

/// Waits up to `wait` for the hub to close `stream`, reading whatever it
/// sends; `opened` is when the test began connecting it.
async fn await_close(stream: &mut TcpStream, opened: Instant, wait: Duration) -> Ended {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let until = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return Ended::Open,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return if answer.is_empty() {
                    Ended::Closed(opened.elapsed())
                } else {
                    Ended::Answered(String::from_utf8_lossy(&answer).into_owned())
                };
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_closed_at_deadline(ended: &Ended, deadline: Duration, what: &str) {
    match ended {
        Ended::Closed(after) => {
            // Never before the deadline (it starts at the hub's accept,
            // after the test began connecting), and not long after it.
            assert!(
                *after >= deadline && *after <= deadline + SLACK,
                "{what} closed after {after:?}, deadline {deadline:?}"
            );
        }
        other => panic!("{what}: {other:?}"),
    }
}

/// A client that AUTHs and gets a PUBACK for one PUBLISH.
async fn round_trip(url: &str) {
    let mut client = Client::connect(url).await;
    client.auth().await;
    let ack = client
        .publish("gateway.check", json!({"ok": true}), json!(null))
        .await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");
    client.close().await;
}

/// Connects a WebSocket, retrying while the hub answers 503 (a cap that
/// frees as the hub notices closed sockets); then round-trips on that same
/// connection (a second connect could meet the cap again before the hub
/// has noticed the first one close).
async fn round_trip_once_served(url: &str) {
    let until = Instant::now() + common::HANG_GUARD;
    let ws = loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 503 && Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("not served: {error}"),
        }
    };
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(r#"{"op":"AUTH"}"#)).await.unwrap();
    sink.send(Message::text(
        r#"{"op":"PUBLISH","topic":"gateway.check","payload":{"ok":true},"rid":"p"}"#,
    ))
    .await
    .unwrap();
    let mut ops = Vec::new();
    while ops.len() < 2 {
        match tokio::time::timeout(common::HANG_GUARD, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                ops.push(frame["op"].as_str().unwrap().to_owned());
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ops, ["OK", "PUBACK"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_slowloris_and_silent_websockets_are_closed_at_their_deadlines() {
    const HALF_OPEN: usize = 200;
    const SLOWLORIS: usize = 100;
    const SILENT: usize = 100;
    let deadline = Duration::from_millis(1000);
    let hub = Spawned::start(&[
        "--upgrade-timeout-ms",
        "1000",
        "--auth-timeout-ms",
        "1000",
        // The hub pings the silent WebSockets, and they answer: only the
        // AUTH deadline can close them.
        "--heartbeat-ms",
        "300",
    ])
    .await;
    let addr = hub.addr;
    let mut floods = JoinSet::new();
    for _ in 0..HALF_OPEN {
        floods.spawn(async move {
            let opened = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            (
                "half-open",
                await_close(&mut stream, opened, deadline + SLACK).await,
            )
        });
    }
    for _ in 0..SLOWLORIS {
        floods.spawn(async move {
            let opened = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 X-Padding: {}\r\n\r\n",
                "p".repeat(200)
            );
            // One byte every 200 ms: the head would take a minute.
            for byte in head.as_bytes() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return ("slowloris", Ended::Closed(opened.elapsed()));
                }
                let ended = await_close(&mut stream, opened, Duration::from_millis(200)).await;
                if ended != Ended::Open {
                    return ("slowloris", ended);
                }
                if opened.elapsed() > deadline + SLACK {
                    break;
                }
            }
            ("slowloris", Ended::Open)
        });
    }
    let url = hub.url.clone();
    for _ in 0..SILENT {
        let url = url.clone();
        floods.spawn(async move {
            let opened = Instant::now();
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("upgrade");
            // Reading answers the hub's pings; no AUTH is ever sent.
            let until = opened + deadline + SLACK;
            loop {
                match tokio::time::timeout_at(until, ws.next()).await {
                    Err(_) => return ("silent websocket", Ended::Open),
                    Ok(Some(Ok(Message::Close(Some(frame))))) => {
                        assert_eq!(u16::from(frame.code), 4001, "{frame:?}");
                        assert!(frame.reason.contains("no AUTH"), "{frame:?}");
                        return ("silent websocket", Ended::Closed(opened.elapsed()));
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(other) => {
                        return (
                            "silent websocket",
                            Ended::Answered(format!("no close frame: {other:?}")),
                        );
                    }
                }
            }
        });
    }
    // Meanwhile a normal client is served.
    round_trip(&hub.url).await;
    let mut counts = std::collections::HashMap::new();
    while let Some(result) = floods.join_next().await {
        let (what, ended) = result.expect("flood task");
        assert_closed_at_deadline(&ended, deadline, what);
        *counts.entry(what).or_insert(0) += 1;
    }
    assert_eq!(counts["half-open"], HALF_OPEN);
    assert_eq!(counts["slowloris"], SLOWLORIS);
    assert_eq!(counts["silent websocket"], SILENT);
    // After the floods: served as before.
    round_trip(&hub.url).await;
    let metrics = hub.metrics().await;
    assert_eq!(
        common::spawned::refusals_in(&metrics, "upgrade_deadline"),
        (HALF_OPEN + SLOWLORIS) as u64
    );
    assert_eq!(
        common::spawned::refusals_in(&metrics, "auth_deadline"),
        SILENT as u64
    );
}

/// Opens `count` sockets one after the other (the hub accepts them in that
/// order) and keeps them.
async fn open_sockets(addr: SocketAddr, count: usize) -> Vec<(TcpStream, Instant)> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let opened = Instant::now();
        sockets.push((TcpStream::connect(addr).await.expect("connect"), opened));
    }
    sockets
}

/// What the hub did with each socket within `wait`: (held open, answered
/// 503, closed without an answer). The sockets stay open until dropped.
async fn classify(
    sockets: &mut Vec<(TcpStream, Instant)>,
    wait: Duration,
) -> (usize, usize, usize) {
    let mut waits = JoinSet::new();
    for (mut stream, opened) in sockets.drain(..) {
        waits.spawn(async move {
            let ended = await_close(&mut stream, opened, wait).await;
            (stream, opened, ended)
        });
    }
    let (mut held, mut refused, mut dropped) = (0, 0, 0);
    while let Some(result) = waits.join_next().await {
        let (stream, opened, ended) = result.expect("wait task");
        sockets.push((stream, opened));
        match ended {
            Ended::Open => held += 1,
            Ended::Answered(answer) => {
                assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
                assert!(answer.contains("\r\nRetry-After: "), "{answer}");
                assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
                refused += 1;
            }
            Ended::Closed(_) => dropped += 1,
        }
    }
    (held, refused, dropped)
}

fn assert_no_descriptor_exhaustion(hub: &Spawned) {
    let log = hub.stderr();
    for symptom in [
        "Too many open files",
        "EMFILE",
        "accept failed",
        "accept error",
    ] {
        assert!(!log.contains(symptom), "the hub logged {symptom:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_connection_cap_gets_503_and_the_hub_serves_again_after() {
    const CAP: usize = 40;
    const OVER: usize = 60;
    // Sockets that send nothing stay until the (long) upgrade deadline.
    let hub = Spawned::start(&["--max-connections", "40", "--upgrade-timeout-ms", "60000"]).await;
    let mut flood = open_sockets(hub.addr, CAP + OVER).await;
    let (held, refused, dropped) = classify(&mut flood, Duration::from_secs(2)).await;
    assert_eq!(
        (held, refused, dropped),
        (CAP, OVER, 0),
        "held / 503 / closed"
    );
    // A normal client is refused too while the cap is full, with 503.
    match tokio_tungstenite::connect_async(&hub.url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // The flood goes away: the client is served.
    drop(flood);
    round_trip_once_served(&hub.url).await;
    assert!(hub.refusals("connection_cap").await >= (OVER + 1) as u64);
    assert_no_descriptor_exhaustion(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_cap_comes_from_the_descriptor_limit_and_a_flood_never_exhausts_it() {
    // 256 descriptors: the derived cap is 256 - 128 (half, below twice
    // the reserve). 300 sockets would take the hub past its limit.
    const FLOOD: usize = 300;
    const DERIVED_CAP: usize = 128;
    let hub = Spawned::launch(Launch {
        args: &["--upgrade-timeout-ms", "60000"],
        nofile: Some(256),
        rust_log: None,
    })
    .await;
    hub.wait_for_log("max_connections=128").await;
    let mut flood = open_sockets(hub.addr, FLOOD).await;
    let (held, refused, dropped) = classify(&mut flood, Duration::from_secs(3)).await;
    assert_eq!(
        held, DERIVED_CAP,
        "held; refused {refused}, dropped {dropped}"
    );
    assert_eq!(held + refused + dropped, FLOOD);
    // Most get their 503; past 64 refusals at once the rest are closed
    // without one.
    assert!(refused > 0, "no 503 at all");
    drop(flood);
    round_trip_once_served(&hub.url).await;
    assert!(hub.refusals("connection_cap").await >= (FLOOD - DERIVED_CAP) as u64);
    assert_no_descriptor_exhaustion(&hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_one_address_and_serves_others() {
    let hub = Spawned::start(&[
        "--max-connections-per-ip",
        "5",
        "--upgrade-timeout-ms",
        "60000",
    ])
    .await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = open_sockets(hub.addr, 5).await;
    let mut sixth = vec![(connect_from(local, hub.addr).await, Instant::now())];
    assert_eq!(
        classify(&mut sixth, Duration::from_secs(2)).await,
        (0, 1, 0),
        "the 6th socket from 127.0.0.1"
    );
    // 127.0.0.2 is another client: served (WebSocket, AUTH, PUBACK).
    let stream = connect_from(other, hub.addr).await;
    let (ws, _) = tokio_tungstenite::client_async(hub.url.as_str(), stream)
        .await
        .expect("upgrade from 127.0.0.2");
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(r#"{"op":"AUTH"}"#)).await.unwrap();
    sink.send(Message::text(
        r#"{"op":"PUBLISH","topic":"ip.t","payload":1,"rid":"p"}"#,
    ))
    .await
    .unwrap();
    let mut ops = Vec::new();
    while ops.len() < 2 {
        match tokio::time::timeout(common::HANG_GUARD, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                ops.push(frame["op"].as_str().unwrap().to_owned());
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ops, ["OK", "PUBACK"]);
    let metrics = hub.metrics_from("127.0.0.3".parse().unwrap()).await;
    assert_eq!(
        common::spawned::refusals_in(&metrics, "connections_per_ip"),
        1
    );
    assert_eq!(common::spawned::refusals_in(&metrics, "connection_cap"), 0);
    // One of 127.0.0.1's sockets closes: 127.0.0.1 is served again.
    held.pop();
    round_trip_once_served(&hub.url).await;
}

#[tokio::test]
async fn allowed_origins_admit_listed_origins_and_native_clients_only() {
    let hub = Spawned::start(&[
        "--allowed-origins",
        "https://app.example,http://localhost:8080",
    ])
    .await;
    let upgrade = |origin: Option<&'static str>| {
        let mut request = hub.url.as_str().into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    for origin in [
        Some("https://app.example"),
        Some("http://localhost:8080"),
        // Native clients send no Origin.
        None,
    ] {
        let (ws, response) = upgrade(origin).await.expect("upgrade");
        assert_eq!(response.status(), 101, "{origin:?}");
        drop(ws);
    }
    for origin in ["https://evil.example", "http://app.example", "null"] {
        match upgrade(Some(origin)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}");
            }
            other => panic!("{origin}: expected 403, got {other:?}"),
        }
    }
    assert_eq!(hub.refusals("origin").await, 3);
    // Without the setting any origin is admitted.
    let open = Spawned::start(&[]).await;
    let mut request = open.url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009_and_invalid_utf8_with_1007() {
    let hub = Spawned::start(&[]).await;
    // 3 MiB: over the hard limit (2 × 1 MiB + 64 KiB), not even read.
    let mut client = Client::connect(&hub.url).await;
    client.auth().await;
    let (mut sink, mut stream) = client.into_inner().split();
    let sending = tokio::spawn(async move {
        let _ = sink.send(Message::text("x".repeat(3 << 20))).await;
        sink
    });
    let close = read_close(&mut stream).await;
    assert_eq!(close, Some((1009, "frame too big".to_owned())));
    let _ = sending.await;

    // A text frame that is not UTF-8, sent as a raw frame (the client
    // library would refuse to build such a text message).
    let mut client = Client::connect(&hub.url).await;
    client.auth().await;
    let mut ws = client.into_inner();
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.expect("send");
    let close = read_close(&mut ws).await;
    assert_eq!(
        close,
        Some((1007, "text frame is not valid UTF-8".to_owned()))
    );

    round_trip(&hub.url).await;
    let metrics = hub.metrics().await;
    assert_eq!(common::spawned::refusals_in(&metrics, "frame_too_big"), 1);
    assert_eq!(common::spawned::refusals_in(&metrics, "invalid_utf8"), 1);
}

/// The close frame the hub sent: (code, reason); `None` when the socket
/// ended without one.
async fn read_close<S>(stream: &mut S) -> Option<(u16, String)>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(common::HANG_GUARD, stream.next())
            .await
            .expect("no close within the hang guard")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return Some((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) => return Some((1005, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                eprintln!("read failed before a close frame: {error}");
                return None;
            }
            None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_responses_are_not_cut_but_idle_keep_alive_connections_are_closed() {
    const EVENTS: usize = 3000;
    let deadline = Duration::from_millis(300);
    let hub = Spawned::start(&["--upgrade-timeout-ms", "300"]).await;
    // ~12 MB of events: more than the socket buffers hold, so the hub is
    // still writing the export long after the deadline.
    let mut publisher = Client::connect(&hub.url).await;
    publisher.auth().await;
    let payload = "e".repeat(4000);
    let mut ws = publisher.into_inner();
    for i in 0..EVENTS {
        let frame = json!({"op": "PUBLISH", "topic": "export.t", "payload": payload, "rid": format!("p{i}")});
        ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut acks = 0;
    while acks < EVENTS {
        match tokio::time::timeout(common::HANG_GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                assert!(text.contains("\"PUBACK\""), "{text}");
                acks += 1;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }

    // A keep-alive connection that reads the export slowly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut http = socket.connect(hub.addr).await.unwrap();
    let request = format!(
        "GET /events.ndjson?topic=export.t HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer any\r\n\r\n",
        hub.addr
    );
    http.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    while !raw.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(common::HANG_GUARD, http.read(&mut buf))
            .await
            .expect("export stalled")
            .expect("export read");
        assert!(n > 0, "the hub closed the export after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = dechunk(body);
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("an NDJSON line"))
        .collect();
    assert_eq!(events.len(), EVENTS);
    assert_eq!(events[EVENTS - 1]["seq"], EVENTS as u64);
    // The export took several deadlines and was not cut.
    assert!(took > deadline * 3, "the export took only {took:?}");

    // The hub closes the connection once it has been idle for the
    // deadline (it may have finished writing before we finished reading).
    match await_close(&mut http, Instant::now(), deadline + SLACK).await {
        Ended::Closed(_) => {}
        other => panic!("idle keep-alive connection after the export: {other:?}"),
    }

    // A short request on a keep-alive connection, then nothing: closed
    // about one deadline later (the hub's timer starts when it has
    // written the response, a moment before the client reads it).
    let mut http = TcpStream::connect(hub.addr).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        hub.addr,
        common::spawned::ADMIN_TOKEN
    );
    http.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = http.read(&mut head).await.unwrap();
    let answered = Instant::now();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    match await_close(&mut http, answered, deadline + SLACK).await {
        Ended::Closed(after) => assert!(after >= deadline / 2, "closed after {after:?}"),
        other => panic!("idle keep-alive connection: {other:?}"),
    }
    // Idle keep-alive closes are housekeeping, not refusals.
    assert_eq!(hub.refusals("upgrade_deadline").await, 0);
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_past_the_descriptor_limit_are_logged_and_waited_out() {
    // A cap set above what 256 descriptors allow: the hub warns at start,
    // then runs out of descriptors under the flood. The accept loop must
    // log that (rate-limited), pause, and serve again once sockets close.
    let hub = Spawned::launch(Launch {
        args: &["--max-connections", "1000", "--upgrade-timeout-ms", "60000"],
        nofile: Some(256),
        rust_log: None,
    })
    .await;
    hub.wait_for_log("more than the file-descriptor limit leaves room for")
        .await;
    let flood = open_sockets(hub.addr, 300).await;
    hub.wait_for_log("accept failed").await;
    let log = hub.stderr();
    assert!(log.contains("Too many open files"), "{log}");
    // Logged at most once per 5 s, not once per failed accept.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hub.stderr().matches("accept failed").count(), 1);
    drop(flood);
    round_trip_once_served(&hub.url).await;
}
