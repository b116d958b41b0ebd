//! Native TLS against a real `promhub` subprocess (issue 13): a private CA
//! made at test time (rcgen), `wss://` with the native SDK trusting that
//! CA, the ops and replay APIs over HTTPS, the handshake under the upgrade
//! deadline, a SIGHUP reload that new connections see while an open one
//! keeps working, and certificates that do not load failing the start.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::HANG_GUARD;
use common::spawned::{ADMIN_TOKEN, Spawned, refusals_in};
use futures_util::{SinkExt, StreamExt};
use promhub::{ClientConfig, PublishOptions, SubscribeOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A private CA, as an operator would run one for internal hubs.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate issued by the test CA.
struct ServerCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "promhub test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `localhost` and 127.0.0.1 named `name`.
    fn server_cert(&self, name: &str) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client trusting only this CA.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// Writes the certificate and key where the hub reads them.
fn install(dir: &Path, cert: &ServerCert) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("hub.crt"), dir.join("hub.key"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    (cert_path, key_path)
}

async fn tls_hub(cert: &Path, key: &Path, extra: &[&str]) -> Spawned {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut args = vec!["--tls-cert", cert, "--tls-key", key];
    args.extend_from_slice(extra);
    let hub = Spawned::start(&args).await;
    assert!(hub.url.starts_with("wss://127.0.0.1:"), "{}", hub.url);
    hub
}

/// A TLS connection to the hub, verified against `tls` for `localhost`.
async fn tls_connect(
    hub: &Spawned,
    tls: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(hub.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        HANG_GUARD,
        TlsConnector::from(Arc::clone(tls)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake hung")
    .expect("TLS handshake")
}

/// The leaf certificate a new connection gets.
async fn served_cert(hub: &Spawned, tls: &Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let stream = tls_connect(hub, tls).await;
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .clone()
}

/// One HTTPS request (`Connection: close`): (status line, body).
async fn https_get(
    hub: &Spawned,
    tls: &Arc<rustls::ClientConfig>,
    path: &str,
    bearer: &str,
) -> (String, String) {
    let mut stream = tls_connect(hub, tls).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The hub ends with close_notify; a bare EOF is fine too.
    let _ = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("HTTPS request hung");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_sdk_publishes_and_subscribes_over_wss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = install(dir.path(), &ca.server_cert("hub"));
    let hub = tls_hub(&cert, &key, &["--upgrade-timeout-ms", "1000"]).await;

    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let config = ClientConfig::new().tls_roots(roots).reconnect(false);
    let client = tokio::time::timeout(HANG_GUARD, promhub::Client::connect(&hub.url, config))
        .await
        .expect("connect hung")
        .expect("connect over wss://");
    let mut events = client
        .subscribe::<serde_json::Value>("tls.t", None, SubscribeOptions::new())
        .await
        .unwrap();
    let ack = client
        .publish("tls.t", &json!({"over": "tls"}), PublishOptions::new())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(HANG_GUARD, events.next())
        .await
        .expect("no event")
        .expect("subscription ended");
    assert_eq!(delivery.event().seq, ack.seq);
    assert_eq!(delivery.payload().unwrap(), &json!({"over": "tls"}));

    // The public roots do not know the private CA: refused.
    let untrusted = promhub::Client::connect(&hub.url, ClientConfig::new().reconnect(false)).await;
    let error = untrusted.expect_err("a certificate from an unknown CA was accepted");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );

    // The ops and replay APIs are on the same TLS port.
    let tls = ca.client_tls();
    let (status, metrics) = https_get(&hub, &tls, "/metrics", ADMIN_TOKEN).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(metrics.contains("promhub_refusals_total"), "{metrics}");
    let (status, export) = https_get(&hub, &tls, "/events.ndjson?topic=tls.t", "any").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(export.contains(r#""over":"tls""#), "{export}");

    // The TLS handshake is under the upgrade deadline: a socket that never
    // sends its ClientHello is closed.
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(hub.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buf))
        .await
        .expect("a silent TLS socket was held past the deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(opened.elapsed() >= Duration::from_millis(1000));
    let (_, metrics) = https_get(&hub, &tls, "/metrics", ADMIN_TOKEN).await;
    assert_eq!(refusals_in(&metrics, "upgrade_deadline"), 1);
    client.close().await;
}

/// A raw WebSocket over TLS (no reconnects: it is one connection).
async fn raw_wss(
    hub: &Spawned,
    tls: &Arc<rustls::ClientConfig>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, _) = tokio::time::timeout(
        HANG_GUARD,
        tokio_tungstenite::connect_async_tls_with_config(
            hub.url.as_str(),
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(Arc::clone(tls))),
        ),
    )
    .await
    .expect("wss connect hung")
    .expect("wss connect");
    ws
}

/// Sends `frame` and returns the next text frame's `op`.
async fn exchange<S>(ws: &mut S, frame: serde_json::Value) -> String
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    ws.send(Message::text(frame.to_string())).await.unwrap();
    loop {
        match tokio::time::timeout(HANG_GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                return value["op"].as_str().unwrap().to_owned();
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn hang_up(hub: &Spawned) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &hub.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let tls = ca.client_tls();
    let first = ca.server_cert("first");
    let (cert, key) = install(dir.path(), &first);
    let hub = tls_hub(&cert, &key, &[]).await;
    assert_eq!(served_cert(&hub, &tls).await, first.der);

    let mut open = raw_wss(&hub, &tls).await;
    assert_eq!(exchange(&mut open, json!({"op": "AUTH"})).await, "OK");

    // New files, then SIGHUP: new connections get the new certificate.
    let second = ca.server_cert("second");
    install(dir.path(), &second);
    hang_up(&hub);
    hub.wait_for_log("TLS certificate reloaded").await;
    assert_eq!(served_cert(&hub, &tls).await, second.der);
    // The connection opened before still works (same socket, no reconnect).
    let publish = json!({"op": "PUBLISH", "topic": "tls.reload", "payload": 1, "rid": "a"});
    assert_eq!(exchange(&mut open, publish).await, "PUBACK");
    let mut fresh = raw_wss(&hub, &tls).await;
    assert_eq!(exchange(&mut fresh, json!({"op": "AUTH"})).await, "OK");

    // A reload that fails keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    hang_up(&hub);
    hub.wait_for_log("TLS certificate NOT reloaded").await;
    assert_eq!(served_cert(&hub, &tls).await, second.der);
    let publish = json!({"op": "PUBLISH", "topic": "tls.reload", "payload": 2, "rid": "b"});
    assert_eq!(exchange(&mut open, publish).await, "PUBACK");
    assert!(
        hub.stderr().contains(&cert.display().to_string()),
        "the error names the file:\n{}",
        hub.stderr()
    );
}

/// Runs `promhub serve` with these TLS files; it must exit without
/// printing anything on stdout. Returns its stderr.
async fn failed_start(cert: &Path, key: &Path) -> String {
    let data = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_promhub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("PROMHUB_DATA", data.path())
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("promhub did not exit")
    .expect("run promhub");
    assert!(!output.status.success(), "the hub started");
    assert!(
        output.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_certificate_that_does_not_load_fails_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = install(dir.path(), &ca.server_cert("hub"));

    let missing = dir.path().join("missing.crt");
    let stderr = failed_start(&missing, &key).await;
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("cannot read"),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "hello").unwrap();
    let stderr = failed_start(&garbage, &key).await;
    assert!(
        stderr.contains("garbage.crt") && stderr.contains("no CERTIFICATE"),
        "{stderr}"
    );

    // The key of another certificate.
    let other = ca.server_cert("other");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let stderr = failed_start(&cert, &other_key).await;
    assert!(
        stderr.contains("other.key") && stderr.contains("does not belong"),
        "{stderr}"
    );
}
