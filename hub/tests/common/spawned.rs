//! The real `promhub` binary as a subprocess with any flags (TLS
//! included), its stderr kept for assertions, and its refusal counters
//! read from `/metrics`: for the accept-layer tests (gateway.rs, tls.rs),
//! whose counters must not mix with other hubs in the same test process.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

use super::HANG_GUARD;

/// The static admin token every spawned hub gets (for `/metrics`).
pub const ADMIN_TOKEN: &str = "gateway-test-admin-token-0123456789";

/// A `promhub serve` child process, killed when dropped.
pub struct Spawned {
    pub child: Child,
    /// `ws://127.0.0.1:PORT/ws`, or `wss://…` with TLS.
    pub url: String,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
}

/// How to start it.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    pub args: &'a [&'a str],
    /// Runs the hub under `prlimit --nofile=N:N`.
    pub nofile: Option<u64>,
    /// `RUST_LOG` [default: info].
    pub rust_log: Option<&'a str>,
}

impl Spawned {
    pub async fn start(args: &[&str]) -> Spawned {
        Spawned::launch(Launch {
            args,
            ..Launch::default()
        })
        .await
    }

    pub async fn launch(launch: Launch<'_>) -> Spawned {
        let data = tempfile::tempdir().expect("tempdir");
        let child = spawn(data.path(), &launch);
        Spawned::wait_for_listening(child, data).await
    }

    async fn wait_for_listening(mut child: Child, data: tempfile::TempDir) -> Spawned {
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let kept = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("no output from promhub")
            .expect("reading stdout");
        let Some(first) = first else {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            panic!(
                "promhub exited before printing; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        // Nothing else comes on stdout; keep the pipe open.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is {first:?}"))
            .to_owned();
        let authority = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("authority");
        let addr = authority.parse().expect("listening address");
        Spawned {
            child,
            url,
            addr,
            stderr,
            _data: data,
        }
    }

    /// Everything the hub logged so far, without colour codes.
    pub fn stderr(&self) -> String {
        strip_ansi(&self.stderr.lock().unwrap())
    }

    /// Waits (within the hang guard) until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let until = tokio::time::Instant::now() + HANG_GUARD;
        while !self.stderr().contains(needle) {
            assert!(
                tokio::time::Instant::now() < until,
                "the hub never logged {needle:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `/metrics` over plain HTTP, from 127.0.0.1.
    pub async fn metrics(&self) -> String {
        self.metrics_from("127.0.0.1".parse().unwrap()).await
    }

    /// `/metrics` from a chosen loopback address (127.0.0.0/8 is all
    /// loopback on Linux), e.g. when 127.0.0.1 is at its per-IP cap.
    pub async fn metrics_from(&self, source: IpAddr) -> String {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Connection: close\r\n\r\n",
            self.addr
        );
        let exchange = async {
            let mut stream = connect_from(source, self.addr).await;
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("read");
            raw
        };
        let raw = tokio::time::timeout(HANG_GUARD, exchange)
            .await
            .expect("/metrics hung");
        let text = String::from_utf8(raw).expect("metrics are text");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    /// `promhub_refusals_total{what}` now.
    pub async fn refusals(&self, what: &str) -> u64 {
        refusals_in(&self.metrics().await, what)
    }
}

fn spawn(data: &Path, launch: &Launch<'_>) -> Child {
    let bin = env!("CARGO_BIN_EXE_promhub");
    let mut command = match launch.nofile {
        Some(limit) => {
            let mut command = Command::new("prlimit");
            command
                .arg(format!("--nofile={limit}:{limit}"))
                .arg("--")
                .arg(bin);
            command
        }
        None => Command::new(bin),
    };
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
        .args(launch.args)
        .env("PROMHUB_DATA", data)
        .env("RUST_LOG", launch.rust_log.unwrap_or("info"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().expect("spawn promhub")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `promhub_refusals_total{what="…"}` in a metrics text (0
/// when absent).
pub fn refusals_in(metrics: &str, what: &str) -> u64 {
    let prefix = format!("promhub_refusals_total{{what=\"{what}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("counter value"))
        .unwrap_or(0)
}

/// A TCP connection to `addr` from the loopback address `source`.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    tokio::time::timeout(HANG_GUARD, socket.connect(addr))
        .await
        .expect("connect hung")
        .expect("connect")
}
