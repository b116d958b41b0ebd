//! Token lifecycle against a hub that checks tokens and their expiry: the
//! client refreshes in band before `exp` (the subscription keeps receiving,
//! no reconnect), and after the hub refused a token (4001/4003) it does not
//! reconnect until it has a token the hub accepts.
//!
//! The hub here checks tokens with a small test authenticator (accepted
//! tokens carry their expiry, refused ones are marked) plugged into
//! `promhub_hub::run_with`; the hub's own expiry handling (`EXPIRING`, close
//! 4001 at `exp` + leeway, 4003 for a refused re-AUTH) is the real one.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use promhub::{
    Client, ClientConfig, ConnectionEvent, ConnectionState, PublishOptions, SubscribeOptions,
};
use promhub_core::frames::Millis;
use promhub_core::{ErrorCode, Policy};
use promhub_hub::{AuthFailure, Authenticated, Authenticator, HubConfig, HubParts};
use support::{guard, next, wait_event};
use tokio::sync::oneshot;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap()
}

/// Accepts `valid:<exp_ms>:<nonce>` until `exp_ms`; refuses everything
/// else with `jwt_invalid`. Records every token it is shown.
#[derive(Debug, Default)]
struct TestAuthenticator {
    seen: Mutex<Vec<String>>,
}

impl Authenticator for TestAuthenticator {
    fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure> {
        let token = token.unwrap_or_default();
        self.seen.lock().unwrap().push(token.to_owned());
        let exp = token
            .strip_prefix("valid:")
            .and_then(|rest| rest.split(':').next())
            .and_then(|exp| exp.parse::<u64>().ok())
            .ok_or_else(|| AuthFailure::new(ErrorCode::JwtInvalid, "invalid token"))?;
        if exp <= now_ms {
            return Err(AuthFailure::new(ErrorCode::TokenExpired, "token expired"));
        }
        Ok(Authenticated {
            policy: Arc::new(Policy::allow_all()),
            expires_at: Some(exp),
            subject: None,
        })
    }
}

fn valid(lifetime: Duration, nonce: u32) -> String {
    format!("valid:{}:{nonce}", unix_ms() + lifetime.as_millis() as u64)
}

const LONG: Duration = Duration::from_secs(3600);
/// The hub warns this long before `exp` and closes this long after it.
const NOTICE: Duration = Duration::from_millis(1500);
const LEEWAY: Duration = Duration::from_millis(200);

struct Hub {
    url: String,
    authenticator: Arc<TestAuthenticator>,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let config = HubConfig {
            data: dir.path().to_path_buf(),
            expiring_notice_ms: NOTICE.as_millis() as u64,
            auth_leeway_ms: LEEWAY.as_millis() as u64,
            ..HubConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}{}", listener.local_addr().unwrap(), config.ws_path);
        let authenticator = Arc::new(TestAuthenticator::default());
        let parts = HubParts {
            authenticator: Some(Arc::clone(&authenticator) as Arc<dyn Authenticator>),
            ..HubParts::default()
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(promhub_hub::run_with(listener, config, parts, async move {
            let _ = stop.await;
        }));
        Hub {
            url,
            authenticator,
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.authenticator.seen.lock().unwrap().clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A token provider that hands out `tokens(call)` and counts its calls.
fn provider(
    calls: Arc<AtomicU32>,
    tokens: impl Fn(u32) -> String + Send + Sync + 'static,
) -> impl Fn() -> futures_util::future::Ready<Result<String, std::io::Error>> + Send + Sync + 'static
{
    move || {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        futures_util::future::ready(Ok(tokens(call)))
    }
}

async fn publisher(hub: &Hub) -> Client {
    let config = ClientConfig::new().token(valid(LONG, 0));
    guard("publisher", Client::connect(hub.url.as_str(), config))
        .await
        .expect("publisher connects")
}

#[tokio::test]
async fn a_token_near_exp_is_refreshed_in_band_and_the_subscription_keeps_receiving() {
    let hub = Hub::start().await;
    let calls = Arc::new(AtomicU32::new(0));
    // The first token lives 3 s; the hub says EXPIRING 1.5 s before that.
    let first_exp_in = Duration::from_secs(3);
    let config = ClientConfig::new()
        .token_provider(provider(Arc::clone(&calls), move |call| {
            if call == 1 {
                valid(first_exp_in, call)
            } else {
                valid(LONG, call)
            }
        }))
        // Shorter than the hub's notice: the hub's EXPIRING comes first.
        .token_refresh_margin(Duration::from_millis(500));
    let started = tokio::time::Instant::now();
    let client = guard("connect", Client::connect(hub.url.as_str(), config))
        .await
        .expect("connect");
    let mut events = client.events();
    let mut sub = guard(
        "subscribe",
        client.subscribe::<u32>("ticks.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    let publisher = publisher(&hub).await;

    let mut received = Vec::new();
    let mut publish_and_receive = async |n: u32| {
        guard(
            "publish",
            publisher.publish("ticks.a", &n, PublishOptions::new()),
        )
        .await
        .expect("publish");
        let delivery = next("tick", &mut sub).await;
        received.push(*delivery.payload().unwrap());
    };
    for n in 0..10 {
        publish_and_receive(n).await;
    }
    let (_, before_refresh) = wait_event("token refresh", &mut events, |event| {
        matches!(event, ConnectionEvent::TokenRefreshed { .. }).then_some(())
    })
    .await;
    assert!(
        before_refresh.iter().any(|event| matches!(
            event,
            ConnectionEvent::TokenRefreshNeeded {
                expires_at: Some(_)
            }
        )),
        "{before_refresh:?}"
    );
    for n in 10..20 {
        publish_and_receive(n).await;
    }
    // Past the first token's exp + leeway: without the refresh the hub
    // would have closed the connection by now.
    tokio::time::sleep_until(started + first_exp_in + LEEWAY * 2).await;
    for n in 20..30 {
        publish_and_receive(n).await;
    }
    assert_eq!(received, (0..30).collect::<Vec<_>>(), "no gap, no repeat");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one token per connect, one refresh"
    );
    assert_eq!(client.state(), ConnectionState::Connected);
    // In band: the only connection events were the refresh.
    client.close().await;
    let rest: Vec<ConnectionEvent> = events.collect().await;
    let all: Vec<&ConnectionEvent> = before_refresh.iter().chain(&rest).collect();
    assert!(
        !all.iter().any(|event| matches!(
            event,
            ConnectionEvent::Disconnected { .. }
                | ConnectionEvent::Connecting { .. }
                | ConnectionEvent::Connected { .. }
        )),
        "the connection was not replaced: {all:?}"
    );
    // The hub saw the first token, then the refreshed one, nothing else
    // (nonce 0 is the publisher's).
    let seen: Vec<String> = hub
        .seen()
        .into_iter()
        .filter(|token| !token.ends_with(":0"))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].ends_with(":1") && seen[1].ends_with(":2"),
        "{seen:?}"
    );
    publisher.close().await;
}

#[tokio::test]
async fn after_a_refused_token_the_client_waits_for_one_the_hub_accepts() {
    let hub = Hub::start().await;
    let calls = Arc::new(AtomicU32::new(0));
    // 1: valid for 2 s; 2..=4: refused; 5 on: valid.
    let config = ClientConfig::new()
        .token_provider(provider(Arc::clone(&calls), |call| match call {
            1 => valid(Duration::from_secs(2), call),
            2..=4 => format!("revoked:{call}"),
            _ => valid(LONG, call),
        }))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200));
    // Lazy, so that the events stream sees everything from the start (the
    // refresh is due as soon as the first connection is up).
    let client = Client::connect_lazy(hub.url.as_str(), config).expect("client");
    let mut events = client.events();
    wait_event("first connection", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    let mut sub = guard(
        "subscribe",
        client.subscribe::<u32>("after.*", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");

    // The refresh is refused: the hub closes (4003), and so does every
    // connection made with the next refused tokens (4001).
    let (_, story) = wait_event("reconnect with an accepted token", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 5, "{story:?}");
    let closes: Vec<Option<u16>> = story
        .iter()
        .filter_map(|event| match event {
            ConnectionEvent::Disconnected { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        vec![Some(4003), Some(4001), Some(4001)],
        "{story:?}"
    );
    // After each refusal the client asked for a token instead of
    // reconnecting with the one that was refused.
    for (i, event) in story.iter().enumerate() {
        if matches!(event, ConnectionEvent::Disconnected { .. }) {
            assert!(
                matches!(
                    story.get(i + 1),
                    Some(ConnectionEvent::TokenRefreshNeeded { expires_at: None })
                ),
                "event after a refusal: {:?}",
                story.get(i + 1)
            );
        }
    }
    let refusals = story
        .iter()
        .filter(|event| matches!(event, ConnectionEvent::AuthRefused { .. }))
        .count();
    assert_eq!(refusals, 3, "{story:?}");
    // Never the same refused token twice.
    let seen = hub.seen();
    let revoked: Vec<&String> = seen.iter().filter(|t| t.starts_with("revoked")).collect();
    assert_eq!(
        revoked,
        vec!["revoked:2", "revoked:3", "revoked:4"],
        "{seen:?}"
    );

    // The group subscription is back.
    let publisher = publisher(&hub).await;
    let ack = guard(
        "publish",
        publisher.publish("after.x", &7u32, PublishOptions::new()),
    )
    .await
    .expect("publish");
    let delivery = next("delivery after the new token", &mut sub).await;
    assert_eq!(delivery.seq(), ack.seq);
    guard("ack", delivery.ack()).await.expect("ack");
    client.close().await;
    publisher.close().await;
}

#[tokio::test]
async fn with_a_fixed_token_a_refusal_stops_the_client_until_set_token() {
    let hub = Hub::start().await;
    let config = ClientConfig::new().token(valid(Duration::from_secs(2), 1));
    let client = guard("connect", Client::connect(hub.url.as_str(), config))
        .await
        .expect("connect");
    let mut events = client.events();
    // Nobody refreshes: at exp + leeway the hub closes with 4001.
    let (code, _) = wait_event("expiry close", &mut events, |event| match event {
        ConnectionEvent::Disconnected { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(4001));
    // Not a reconnect: the client asks for a token and stops.
    let event = next("after the close", &mut events).await;
    assert!(
        matches!(
            event,
            ConnectionEvent::TokenRefreshNeeded { expires_at: None }
        ),
        "{event:?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    let attempts_before = hub.seen().len();

    client.set_token(valid(LONG, 2)).expect("set_token");
    wait_event("reconnect", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(hub.seen().len(), attempts_before + 1);
    guard(
        "publish",
        client.publish("fixed.x", &1, PublishOptions::new()),
    )
    .await
    .expect("publish with the new token");
    client.close().await;
}
