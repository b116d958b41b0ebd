//! Real `promhub serve --store mongodb://…` processes sharing one
//! database, for the cluster tests.

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::Client;
use super::http::{self, authority};
use super::process::listening_url;

pub const ADMIN_TOKEN: &str = "cluster-test-admin-token-0123456789";
/// Short leases so that a dead hub is noticed within a second.
pub const LEASE_MS: &str = "600";

/// A `promhub serve` child on the MongoDB store, its stderr (info logs)
/// collected.
pub struct HubProcess {
    pub child: Child,
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl HubProcess {
    pub async fn spawn(store: &str) -> HubProcess {
        HubProcess::spawn_with_lease(store, LEASE_MS).await
    }

    /// With another registry lease (ms): tests that are not about a dead
    /// hub use a long one, so that a loaded machine never makes a live
    /// hub look dead.
    pub async fn spawn_with_lease(store: &str, lease_ms: &str) -> HubProcess {
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_promhub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .env("PROMHUB_DATA", data.path())
            .env("PROMHUB_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PROMHUB_CLUSTER_LEASE_MS", lease_ms)
            .env("PROMHUB_CLUSTER_POLL_MS", "20")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn promhub");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            }
        });
        let url = listening_url(&mut child).await;
        HubProcess {
            child,
            url,
            log,
            _data: data,
        }
    }

    pub async fn cluster(&self) -> Value {
        let response = http::get(&authority(&self.url), "/cluster", Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status, 200, "{response:?}");
        response.json()
    }

    pub fn logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    pub async fn sigterm(mut self) {
        let pid = self.child.id().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the hub did not stop after SIGTERM")
            .expect("wait");
        assert!(exit.success(), "{exit:?}");
    }

    pub async fn client(&self) -> Client {
        let mut client = Client::connect(&self.url).await;
        client.auth().await;
        client
    }

    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// The hubs `/cluster` lists as alive, as (id, address).
pub fn alive(cluster: &Value) -> Vec<(String, String)> {
    cluster["hubs"]
        .as_array()
        .expect("hubs")
        .iter()
        .filter(|hub| hub["alive"] == true)
        .map(|hub| {
            (
                hub["id"].as_str().expect("id").to_owned(),
                hub["address"].as_str().expect("address").to_owned(),
            )
        })
        .collect()
}

/// Waits (at most 10 s) until `check` holds.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), check).await;
}

/// Waits (at most `limit`: a bound on a hang, not a timing claim) until
/// `check` holds.
pub async fn eventually_within(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `future`, or a panic naming `what` after 30 s.
pub async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 30 s"))
}

/// Native SDK settings of the failover tests: seeded hub order, fast
/// reconnects.
pub fn sdk_config(seed: u64) -> promhub::ClientConfig {
    promhub::ClientConfig::new()
        .seed(seed)
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .request_timeout(Duration::from_secs(5))
}

/// The hub URL the next `Connected` event of `events` names.
pub async fn next_connection(events: &mut promhub::EventStream, what: &str) -> String {
    use futures_util::StreamExt;
    loop {
        if let Some(promhub::ConnectionEvent::Connected { url, .. }) =
            guard(what, events.next()).await
        {
            return url;
        }
    }
}

/// A native client given every URL of `urls` that went to `wanted` first
/// (seeds are tried until the random first hub is that one), with its
/// connection events.
pub async fn sdk_client_on(
    urls: &[String],
    wanted: &str,
) -> (promhub::Client, promhub::EventStream) {
    for seed in 0..100 {
        let client =
            promhub::Client::connect_lazy(urls.to_vec(), sdk_config(seed)).expect("client");
        let mut events = client.events();
        if next_connection(&mut events, "connected").await == wanted {
            return (client, events);
        }
        client.close().await;
    }
    panic!("no seed starts on {wanted}");
}
