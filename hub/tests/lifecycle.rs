//! Connection lifecycle: graceful stop (1001) and dropping silent peers.

mod common;

use common::{HANG_GUARD, TestHub};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn stopping_the_hub_closes_connections_with_1001() {
    let mut hub = TestHub::start().await;
    let mut subscriber = hub.client().await;
    subscriber.subscribe("x", Some("g"), json!(null)).await;
    let mut idle = hub.connect().await;
    let (result, closed, idle_closed) =
        tokio::join!(hub.stop(), subscriber.expect_close(0), idle.expect_close(0));
    result.unwrap();
    assert_eq!(closed.code, 1001, "{closed:?}");
    assert_eq!(idle_closed.code, 1001, "{idle_closed:?}");
}

#[tokio::test]
async fn ok_announces_the_configured_heartbeat() {
    let mut hub = TestHub::start_with(|c| c.heartbeat_ms = 100).await;
    let mut client = hub.connect().await;
    client
        .send_json(json!({"op": "AUTH", "v": 1, "client": "test"}))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["heartbeat_ms"], 100);
    assert_eq!(ok["server"], promhub_hub::SERVER_NAME);
    hub.stop().await.unwrap();
}

/// A peer that never answers the hub's WebSocket pings is dropped after three
/// silent heartbeat intervals. WebSocket libraries answer pings whenever they
/// read, so this peer speaks raw TCP: it upgrades, sends AUTH, and then only
/// collects bytes until the hub hangs up.
#[tokio::test]
async fn silent_peers_are_dropped() {
    let mut hub = TestHub::start_with(|c| c.heartbeat_ms = 100).await;
    let address = hub
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut tcp = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(&masked_text_frame(br#"{"op":"AUTH"}"#))
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut received))
        .await
        .expect("the hub never hung up")
        .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let frames_start = text.find("\r\n\r\n").unwrap() + 4;
    let frames = server_frames(&received[frames_start..]);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    assert_eq!(opcodes.first(), Some(&1), "OK first: {opcodes:?}");
    assert!(opcodes.contains(&9), "the hub pinged: {opcodes:?}");
    let (op, payload) = frames.last().unwrap();
    assert_eq!(*op, 8, "ends with a close frame: {opcodes:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    hub.stop().await.unwrap();
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// (opcode, payload) of each unmasked server frame.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}
