//! `--www DIR`: the hub serves a folder of static files at `/` next to the
//! WebSocket endpoint (the process.state page in the demo).

mod common;

use common::TestHub;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; returns the status line and the body.
async fn get(url: &str, path: &str) -> (String, String) {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(common::HANG_GUARD, stream.read_to_string(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_the_folder_at_root_and_keeps_the_websocket_endpoint() {
    let www = tempfile::tempdir().expect("tempdir");
    std::fs::write(www.path().join("index.html"), "<h1>process.state</h1>").expect("write");
    std::fs::create_dir(www.path().join("assets")).expect("mkdir");
    std::fs::write(www.path().join("assets/app.js"), "console.log(1)").expect("write");
    let dir = www.path().to_path_buf();
    let hub = TestHub::start_with(|config| config.www = Some(dir)).await;

    let (status, body) = get(&hub.url, "/").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "<h1>process.state</h1>");
    let (status, body) = get(&hub.url, "/assets/app.js").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "console.log(1)");
    let (status, _) = get(&hub.url, "/missing.js").await;
    assert!(status.contains(" 404 "), "{status}");
    let (status, _) = get(&hub.url, "/../Cargo.toml").await;
    assert!(
        !status.contains(" 200 "),
        "path traversal answered: {status}"
    );

    // The WebSocket endpoint still works next to the files.
    let mut ws = hub.connect().await;
    ws.send_json(json!({"op": "AUTH"})).await;
    assert_eq!(ws.recv_json().await["op"], "OK");
}

#[tokio::test]
async fn without_www_there_are_no_files() {
    let hub = TestHub::start().await;
    let (status, _) = get(&hub.url, "/").await;
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn a_www_that_is_not_a_folder_is_refused() {
    let config = promhub_hub::HubConfig {
        www: Some("/nonexistent/promhub-www".into()),
        ..promhub_hub::HubConfig::default()
    };
    let error = config.validate().expect_err("refused");
    assert!(error.contains("www"), "{error}");
}
