//! A real hub for the client tests: in-process on a port-0 listener with
//! its store in a tempdir, or as a separate process that can be killed with
//! SIGKILL and restarted on the same port and data dir.
//!
//! Timeouts here are hang guards only (generous); no test asserts on time.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use promhub::{ConnectionEvent, EventStream};
use promhub_hub::HubConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something before calling it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test (instead of hanging) after the guard.
pub async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("hang guard: {what} did not happen within {HANG_GUARD:?}"),
    }
}

/// The next item of a stream, with the hang guard.
pub async fn next<S: Stream + Unpin>(what: &str, stream: &mut S) -> S::Item {
    guard(what, stream.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

/// Reads connection events until `pick` selects one; returns it and every
/// event read on the way (it included).
pub async fn wait_event<T>(
    what: &str,
    events: &mut EventStream,
    mut pick: impl FnMut(&ConnectionEvent) -> Option<T>,
) -> (T, Vec<ConnectionEvent>) {
    let mut seen = Vec::new();
    loop {
        let event = next(what, events).await;
        let picked = pick(&event);
        seen.push(event);
        if let Some(picked) = picked {
            return (picked, seen);
        }
    }
}

/// A hub running in this process.
pub struct TestHub {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), promhub_hub::HubError>>>,
    /// The store's dir, when the hub owns it.
    _dir: Option<tempfile::TempDir>,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    /// Starts a hub with a fresh data dir; `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let any_port = "127.0.0.1:0".parse().expect("address");
        let mut hub = Self::start_on(any_port, dir.path(), tweak).await;
        hub._dir = Some(dir);
        hub
    }

    /// Starts a hub on `listen` (port 0: any) with its store in `data`,
    /// which outlives it: stop it and start another on the same port and
    /// data to restart the hub.
    pub async fn start_on(
        listen: SocketAddr,
        data: &Path,
        tweak: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        let mut config = HubConfig {
            data: data.to_path_buf(),
            ..HubConfig::default()
        };
        tweak(&mut config);
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let url = format!("ws://{addr}{}", config.ws_path);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(promhub_hub::run(listener, config, async move {
            let _ = stop.await;
        }));
        TestHub {
            url,
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: None,
        }
    }

    /// Graceful shutdown (connections get 1001); returns the hub's result.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            guard("hub shutdown", task)
                .await
                .expect("hub task")
                .expect("hub stopped cleanly");
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// A hub in its own process

/// Environment variables that turn a test binary into a hub process: where
/// it listens and where it keeps its store (the rest is the default config).
const HUB_LISTEN_ENV: &str = "PROMHUB_TEST_HUB_LISTEN";
const HUB_DATA_ENV: &str = "PROMHUB_TEST_HUB_DATA";

/// The body of the (ignored) test each file that uses [`HubProcess`]
/// defines as `hub_process_entry`: with the environment variable set it
/// runs a hub until it is killed; without, it returns.
pub fn hub_process_main() {
    let (Ok(listen), Ok(data)) = (std::env::var(HUB_LISTEN_ENV), std::env::var(HUB_DATA_ENV))
    else {
        return;
    };
    let config = HubConfig {
        listen: listen.parse().expect("hub listen address"),
        data: PathBuf::from(data),
        ..HubConfig::default()
    };
    // The parent holds our stdin: when it goes away (even by a crash), so do
    // we, instead of lingering as an orphan on the port.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(config.listen).expect("bind the hub's port");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        println!("listening on ws://{addr}{}", config.ws_path);
        promhub_hub::run(listener, config, std::future::pending())
            .await
            .expect("hub");
    });
}

/// A hub in a child process (this test binary, running its
/// `hub_process_entry` test), so that it can be killed with SIGKILL.
pub struct HubProcess {
    pub url: String,
    pub addr: SocketAddr,
    child: Child,
}

impl HubProcess {
    /// Starts a hub on `listen` (port 0: any) with its store in `data`.
    pub fn start(listen: SocketAddr, data: &Path) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "hub_process_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HUB_LISTEN_ENV, listen.to_string())
            .env(HUB_DATA_ENV, data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hub process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    // libtest may have printed `test hub_process_entry ... `
                    // on the same line.
                    if let Some((_, url)) = line.split_once("listening on ") {
                        break url.trim().to_owned();
                    }
                }
                other => {
                    let _ = child.kill();
                    panic!("the hub process did not start: {other:?}");
                }
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|addr| addr.parse().ok())
            .expect("address in the listening line");
        HubProcess { url, addr, child }
    }

    /// SIGKILL: no close frames, no final flush.
    pub fn kill(mut self) {
        self.child.kill().expect("kill the hub");
        self.child.wait().expect("reap the hub");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
