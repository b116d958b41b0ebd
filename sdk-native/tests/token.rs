//! Token lifecycle against a hub that verifies real tokens: HS256 JWTs
//! minted with `promhub_hub::auth::mint_dev_token` and checked by the hub's
//! JWT `Verifier` (signature, `exp` with no leeway, scopes). The client
//! refreshes in band before `exp` (the subscription keeps receiving, no
//! reconnect), and after the hub refused a token (4001) it does not
//! reconnect until it has a token the hub accepts.
//!
//! The real verifier is plugged in through `promhub_hub::run_with` and the
//! gateway's `Authenticator` interface, wrapped only to record what it
//! decided for each token; the hub's expiry handling (`EXPIRING`, close 4001
//! at `exp` + leeway, 4001 for a refused re-AUTH) is the real one.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use promhub::{
    Client, ClientConfig, ConnectionEvent, ConnectionState, PublishOptions, SubscribeOptions,
};
use promhub_core::frames::Millis;
use promhub_hub::auth::{AuthConfig, MintOptions, Secret, Verifier, mint_dev_token};
use promhub_hub::{AuthFailure, Authenticated, Authenticator, HubConfig, HubParts};
use support::{guard, next, wait_event};
use tokio::sync::oneshot;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const WRONG_SECRET: &str = "fedcba9876543210fedcba9876543210-not-the-hub";

/// What the hub made of one token: the subject it names, or the refusal.
type Verdict = Result<Option<String>, promhub_core::ErrorCode>;

/// The hub's JWT verifier behind the gateway's authenticator interface,
/// recording its verdicts.
#[derive(Debug)]
struct JwtAuthenticator {
    verifier: Verifier,
    verdicts: Mutex<Vec<(String, Verdict)>>,
}

#[async_trait::async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure> {
        let verified = self.verifier.verify(token, now_ms).await;
        let verdict = match &verified {
            Ok(granted) => Ok(granted.subject.clone()),
            Err(failure) => Err(failure.code),
        };
        self.verdicts
            .lock()
            .unwrap()
            .push((token.unwrap_or_default().to_owned(), verdict));
        verified
    }

    /// The hub closes at `exp` + this; the verifier itself allows no leeway
    /// (`jwt_leeway_secs: 0`), so a test token expires exactly at `exp`.
    fn leeway_ms(&self) -> u64 {
        LEEWAY.as_millis() as u64
    }
}

/// An HS256 JWT for `sub`, allowed everything, expiring in `ttl` (whole
/// seconds), signed with `secret`.
fn jwt(secret: &str, sub: &str, ttl: Duration) -> String {
    mint_dev_token(MintOptions {
        secret: secret.to_owned(),
        scopes: "publish:** subscribe:**".to_owned(),
        ttl,
        sub: Some(sub.to_owned()),
        aud: None,
        iss: None,
    })
    .expect("mint")
}

fn valid(ttl: Duration, call: u32) -> String {
    jwt(SECRET, &format!("call-{call}"), ttl)
}

const LONG: Duration = Duration::from_secs(3600);
/// The hub warns this long before `exp` and closes this long after it.
const NOTICE: Duration = Duration::from_millis(1500);
const LEEWAY: Duration = Duration::from_millis(200);

struct Hub {
    url: String,
    authenticator: Arc<JwtAuthenticator>,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let config = HubConfig {
            data: dir.path().to_path_buf(),
            expiring_notice_ms: NOTICE.as_millis() as u64,
            ..HubConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}{}", listener.local_addr().unwrap(), config.ws_path);
        let auth = AuthConfig {
            jwt_secret: Some(Secret::new(SECRET)),
            jwt_leeway_secs: 0,
            ..AuthConfig::default()
        };
        let authenticator = Arc::new(JwtAuthenticator {
            verifier: Verifier::from_config(&auth).expect("verifier"),
            verdicts: Mutex::new(Vec::new()),
        });
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

    fn verdicts(&self) -> Vec<(String, Verdict)> {
        self.authenticator.verdicts.lock().unwrap().clone()
    }

    /// The subjects of the accepted tokens, in order, the publisher's left
    /// out.
    fn accepted(&self) -> Vec<String> {
        self.verdicts()
            .into_iter()
            .filter_map(|(_, verdict)| verdict.ok().flatten())
            .filter(|sub| sub != "publisher")
            .collect()
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
    let config = ClientConfig::new().token(jwt(SECRET, "publisher", LONG));
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
    // The hub saw the first token, then the refreshed one, nothing else.
    assert_eq!(hub.accepted(), vec!["call-1", "call-2"]);
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
            2..=4 => jwt(WRONG_SECRET, &format!("call-{call}"), LONG),
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

    // The refresh is refused: the hub closes (4001, a refused re-AUTH), and
    // so does every connection made with the next refused tokens.
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
        vec![Some(4001), Some(4001), Some(4001)],
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
    // Three different refused tokens (never the same one twice), then the
    // accepted one.
    let refused: Vec<String> = hub
        .verdicts()
        .into_iter()
        .filter(|(_, verdict)| verdict.is_err())
        .map(|(token, verdict)| {
            assert_eq!(verdict, Err(promhub_core::ErrorCode::JwtInvalid));
            token
        })
        .collect();
    assert_eq!(refused.len(), 3);
    assert!(refused[0] != refused[1] && refused[1] != refused[2] && refused[0] != refused[2]);
    assert_eq!(hub.accepted(), vec!["call-1", "call-5"]);

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
    let attempts_before = hub.verdicts().len();

    client.set_token(valid(LONG, 2)).expect("set_token");
    wait_event("reconnect", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    assert_eq!(hub.verdicts().len(), attempts_before + 1);
    assert_eq!(hub.accepted(), vec!["call-1", "call-2"]);
    guard(
        "publish",
        client.publish("fixed.x", &1, PublishOptions::new()),
    )
    .await
    .expect("publish with the new token");
    client.close().await;
}
