//! The SDK against a real hub with a publish quota: a refused publish
//! waits out `retry_after_ms` and is sent again (by the core, shared with
//! the browser SDK), so the caller just sees its PUBACK.

mod support;

use std::time::Duration;

use promhub::{Client, ClientConfig, Error, PublishOptions};
use promhub_hub::limits::COUNTERS;
use support::{TestHub, guard};

#[tokio::test]
async fn publishes_over_the_quota_wait_and_succeed() {
    let hub = TestHub::start_with(|config| {
        config.limits.publish_rate = Some(20.0);
        config.limits.publish_burst = Some(1);
    })
    .await;
    let client = guard(
        "connect",
        Client::connect(hub.url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    let refused_before = COUNTERS.snapshot().rate_limited;
    // Six at once against one token per 50 ms: five are refused at first.
    let payloads: Vec<u32> = (0..6).collect();
    let publishes = payloads
        .iter()
        .map(|n| client.publish("quota.x", n, PublishOptions::new()));
    let acks = guard("publishes", futures_util::future::join_all(publishes)).await;
    let mut seqs: Vec<u64> = acks
        .into_iter()
        .map(|ack| ack.expect("stored after waiting").seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 6, "six distinct events stored");
    assert!(
        COUNTERS.snapshot().rate_limited > refused_before,
        "the hub refused some of them first"
    );
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_wait_beyond_the_request_timeout_is_reported() {
    let hub = TestHub::start_with(|config| {
        // One token per 100 s.
        config.limits.publish_rate = Some(0.01);
        config.limits.publish_burst = Some(1);
    })
    .await;
    let config = ClientConfig::new().request_timeout(Duration::from_secs(5));
    let client = guard("connect", Client::connect(hub.url.as_str(), config))
        .await
        .expect("connect");
    client
        .publish("quota.y", &1, PublishOptions::new())
        .await
        .expect("the burst token");
    let err = guard(
        "publish",
        client.publish("quota.y", &2, PublishOptions::new()),
    )
    .await
    .expect_err("refused");
    match err {
        Error::RateLimited {
            retry_after: Some(wait),
            ..
        } => assert!(wait > Duration::from_secs(5), "{wait:?}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    client.close().await;
    hub.stop().await;
}
