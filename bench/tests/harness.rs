//! The harness against a real hub (in this process, on 127.0.0.1 port 0):
//! short bounded runs whose reports must be sane — counts add up,
//! percentiles are ordered, the hub's CPU and RSS are read. No assertion
//! on how fast anything is.

use std::time::Duration;

use promhub_bench::groups::{self, GroupsOptions};
use promhub_bench::idle::{self, IdleOptions};
use promhub_bench::load::{self, LoadOptions};
use promhub_bench::report::Percentiles;
use promhub_bench::target::Hub;
use promhub_hub::HubConfig;
use serde_json::Value;
use tokio::sync::oneshot;

struct TestHub {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), promhub_hub::HubError>>,
    _dir: tempfile::TempDir,
}

impl TestHub {
    async fn start(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HubConfig {
            data: dir.path().to_path_buf(),
            ..HubConfig::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(promhub_hub::run(listener, config, async move {
            let _ = stopped.await;
        }));
        TestHub {
            url,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// The hub runs in this process, so its pid is ours.
    fn target(&self) -> Hub {
        Hub::external(&self.url, Some(std::process::id())).unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("hub stops")
            .unwrap()
            .unwrap();
    }
}

fn assert_ordered(p: &Percentiles) {
    assert!(p.count > 0, "{p:?}");
    assert!(p.min >= 1 && p.min <= p.p50, "{p:?}");
    assert!(
        p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max,
        "{p:?}"
    );
}

fn assert_percentiles_json(value: &Value) {
    let get = |k: &str| {
        value[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {value}"))
    };
    assert!(get("count") > 0);
    let order = ["min", "p50", "p90", "p99", "p999", "max"].map(get);
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_fan_out_report_adds_up() {
    let hub = TestHub::start(|_| {}).await;
    let options = LoadOptions {
        publishers: 2,
        subscribers: 3,
        payload_bytes: 100,
        in_flight: 16,
        count: Some(301),
        ..LoadOptions::default()
    };
    let report = load::run(&hub.target(), &options).await.unwrap();
    assert_eq!(report.published, 301);
    assert_eq!(report.rate_limited, 0);
    assert_eq!(report.expected_deliveries, 903);
    assert_eq!(report.delivered, 903);
    assert!(report.publish_rate > 0.0 && report.delivery_rate > 0.0);
    assert_ordered(report.publish_latency_us.as_ref().unwrap());
    let deliver = report.deliver_latency_us.as_ref().unwrap();
    assert_ordered(deliver);
    assert_eq!(deliver.count, 903, "all three subscribers record latency");
    let usage = report.hub.as_ref().unwrap();
    assert!(usage.rss_kib_end > 0 && usage.rss_kib_max >= usage.rss_kib_end);
    assert!(usage.cpu_seconds >= 0.0);

    // The JSON scripts read.
    let json = serde_json::to_value(&report).unwrap();
    for field in ["published", "delivered", "publish_rate", "delivery_rate"] {
        assert!(json[field].as_f64().unwrap() > 0.0, "{field} in {json}");
    }
    assert_percentiles_json(&json["publish_latency_us"]);
    assert_percentiles_json(&json["deliver_latency_us"]);
    assert!(json["hub"]["rss_kib_max"].as_u64().unwrap() > 0);
    assert_eq!(json["options"]["publishers"], 2);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_groups_live_and_backlog_deliver_each_event_once_per_group() {
    let hub = TestHub::start(|_| {}).await;
    let live = LoadOptions {
        subscribers: 4,
        groups: 2,
        count: Some(200),
        in_flight: 32,
        topic: "bench.live".into(),
        ..LoadOptions::default()
    };
    let report = load::run(&hub.target(), &live).await.unwrap();
    assert_eq!(report.published, 200);
    assert_eq!(report.expected_deliveries, 400);
    assert_eq!(report.delivered, 400);
    assert_ordered(report.deliver_latency_us.as_ref().unwrap());

    let backlog = LoadOptions {
        subscribers: 1,
        groups: 1,
        backlog: true,
        count: Some(300),
        topic: "bench.backlog".into(),
        ..LoadOptions::default()
    };
    let report = load::run(&hub.target(), &backlog).await.unwrap();
    assert_eq!(report.delivered, 300);
    assert!(report.delivery_rate > 0.0);
    assert!(
        report.deliver_latency_us.is_none(),
        "no latency for a backlog"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_run_and_a_rate_limited_hub_are_reported() {
    let hub = TestHub::start(|config| {
        config.limits.publish_rate = Some(200.0);
        config.limits.publish_burst = Some(10);
    })
    .await;
    let options = LoadOptions {
        count: None,
        duration: Some(Duration::from_millis(500)),
        in_flight: 64,
        subscribers: 1,
        ..LoadOptions::default()
    };
    let report = load::run(&hub.target(), &options).await.unwrap();
    assert!(report.published > 0);
    assert!(report.rate_limited > 0, "the quota refused some");
    assert_eq!(report.delivered, report.published);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_counted_against_the_hub_rss() {
    let hub = TestHub::start(|_| {}).await;
    let report = idle::run(
        &hub.target(),
        &IdleOptions {
            connections: 50,
            warmup: 5,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.connections, 50);
    assert!(report.rss_kib_before > 0 && report.rss_kib_after > 0);
    assert!(report.bytes_per_connection >= 0.0);
    hub.stop().await;
}

#[test]
fn bad_options_and_remote_hubs_are_refused() {
    assert!(Hub::external("ws://192.0.2.1:8090/ws", None).is_err());
    for bad in [
        LoadOptions {
            count: None,
            duration: None,
            ..LoadOptions::default()
        },
        LoadOptions {
            publishers: 0,
            ..LoadOptions::default()
        },
        LoadOptions {
            subscribers: 1,
            groups: 2,
            ..LoadOptions::default()
        },
        LoadOptions {
            backlog: true,
            ..LoadOptions::default()
        },
        LoadOptions {
            rate: Some(0.0),
            ..LoadOptions::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_json() {
    let hub = TestHub::start(|_| {}).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_promhub-bench"))
        .args([
            "--url",
            &hub.url,
            "--json",
            "load",
            "--count",
            "50",
            "--subscribers",
            "2",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["published"], 50);
    assert_eq!(json["delivered"], 100);
    assert_percentiles_json(&json["deliver_latency_us"]);

    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_promhub-bench"))
        .args(["--url", "ws://10.1.2.3:8090/ws", "load", "--count", "1"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only drives hubs on this machine"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_open_with_their_members_and_are_listed_by_the_hub() {
    let hub = TestHub::start(|c| {
        c.admin_token = Some(promhub_hub::auth::Secret::new(
            "harness-admin-token-0123456789",
        ));
    })
    .await;
    let options = GroupsOptions {
        prefix: "harness".to_owned(),
        exact: 23,
        wildcard: 2,
        groups_per_connection: 10,
        live: false,
    };
    let (open, report) = groups::open(&hub.target(), &options).await.unwrap();
    assert_eq!((report.groups, report.connections), (25, 3));
    assert!(report.rss_kib_after.unwrap() > 0 && report.bytes_per_group.is_some());
    // Every group exists and has its member while the handle lives.
    let authority = hub.url.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!(
                "GET /groups?limit=1000 HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
                 Authorization: Bearer harness-admin-token-0123456789\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["total"], 25, "{body}");
    let groups = body["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .all(|g| g["members"].as_array().unwrap().len() == 1)
    );
    drop(open);
    hub.stop().await;
}
