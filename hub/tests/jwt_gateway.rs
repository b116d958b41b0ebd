//! The JWT verifier wired into a real hub (127.0.0.1:0, store in a tempdir):
//! real signed tokens (RSA, EC, Ed25519 keys and an HS secret from
//! `common/jwt.rs`), a real JWKS HTTP server, the real clock. Every refusal
//! is checked as the client sees it: the exact `ERR` code, then a 4001
//! close. Then permissions per connection under load, deny rules at
//! delivery time, re-AUTH and expiry (the `promhub token` / `promhub serve`
//! binaries together: `token_cli.rs`).
//!
//! Waits are hang guards (the common client's), never timing assertions.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::jwt::{
    JwksServer, KEYS, SECRET, claims_at, ed, es, handcrafted, hs, jwks, now_ms, rs, sign,
};
use common::{Client, HANG_GUARD, TestHub};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use promhub_hub::auth::{AuthConfig, MAX_TOKEN_BYTES, Secret};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::LineEnding;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const ISSUER: &str = "https://idp.test";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn secret_auth() -> AuthConfig {
    AuthConfig {
        jwt_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    }
}

/// An HS256 token with these scopes, valid for `ttl_secs` from now.
fn hs_token(scopes: &[&str], ttl_secs: u64) -> String {
    let now = now_secs();
    hs(
        Algorithm::HS256,
        &claims_at(now, json!({ "scopes": scopes, "exp": now + ttl_secs })),
    )
}

async fn jwt_hub(auth: AuthConfig) -> TestHub {
    TestHub::start_with(move |c| c.auth = auth).await
}

/// A connection after a successful AUTH with `token`; returns the OK too.
async fn authed(hub: &TestHub, token: &str) -> (Client, Value) {
    let mut client = hub.connect().await;
    client
        .send_json(json!({"op": "AUTH", "token": token}))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK", "AUTH refused: {ok}");
    (client, ok)
}

/// AUTH with `token` is refused with `code`, then the hub closes with 4001.
/// Returns the error message (checked not to echo the token or the secret).
async fn refused(hub: &TestHub, token: &str, code: &str) -> String {
    let mut client = hub.connect().await;
    client
        .send_json(json!({"op": "AUTH", "token": token}))
        .await;
    let answer = client.recv_json().await;
    assert_eq!(answer["op"], "ERR", "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    let msg = answer["msg"].as_str().expect("msg").to_owned();
    assert!(!msg.contains(token), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    assert_eq!(client.expect_close(0).await.code, 4001);
    msg
}

// ----------------------------------------------------------- refusals

#[tokio::test]
async fn every_refusal_reaches_the_client_with_its_code_and_a_4001_close() {
    // A key marked for encryption is in the set: tokens naming it are refused.
    let mut enc = KEYS.rsa_next.jwk();
    enc["use"] = json!("enc");
    let server =
        JwksServer::start(jwks(&[KEYS.rsa.jwk(), KEYS.ec.jwk(), KEYS.ed.jwk(), enc])).await;
    let hub = jwt_hub(AuthConfig {
        jwt_secret: Some(Secret::new(SECRET)),
        jwks_url: Some(server.url.clone()),
        jwt_aud: vec!["hub".into()],
        jwt_iss: Some(ISSUER.into()),
        // The fetch at start must not hold back the unknown-kid refetch.
        jwks_refetch_interval_secs: 0,
        ..AuthConfig::default()
    })
    .await;
    let now = now_secs();
    let valid = |extra: Value| {
        let mut c = claims_at(
            now,
            json!({ "aud": "hub", "iss": ISSUER, "scopes": ["publish:a.**"] }),
        );
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let c = valid(json!({}));

    // Controls: each key family verifies through the gateway.
    for token in [
        hs(Algorithm::HS256, &c),
        rs(Algorithm::RS256, &KEYS.rsa, &c),
        es(&c),
        ed(&c),
    ] {
        let (_client, ok) = authed(&hub, &token).await;
        assert_eq!(ok["expires_at"], (now + 600) * 1000);
    }
    let fetches_after_start = server.fetches();
    assert_eq!(fetches_after_start, 1, "one fetch at start serves them all");

    // alg: none, with and without a signature.
    for signature in [&b""[..], b"sig"] {
        let unsigned = handcrafted(&json!({"alg": "none", "typ": "JWT"}), &c, signature);
        let msg = refused(&hub, &unsigned, "jwt_invalid").await;
        assert!(msg.contains("alg: none"), "{msg}");
    }

    // HS256 "signed" with the JWKS public key (the key-confusion attack).
    let public = KEYS.rsa.private.to_public_key();
    for key_bytes in [
        public.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
    ] {
        let forged = sign(
            Algorithm::HS256,
            Some(KEYS.rsa.kid),
            &c,
            &EncodingKey::from_secret(&key_bytes),
        );
        let msg = refused(&hub, &forged, "jwt_invalid").await;
        assert!(msg.contains("signature"), "{msg}");
    }

    // Unknown kid: refused after exactly one refetch.
    let ghost = sign(
        Algorithm::RS256,
        Some("ghost"),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    let msg = refused(&hub, &ghost, "jwt_invalid").await;
    assert!(msg.contains("unknown"), "{msg}");
    assert_eq!(server.fetches(), fetches_after_start + 1);

    // A JWK with `use: enc` is never used to verify.
    let enc_signed = rs(Algorithm::RS256, &KEYS.rsa_next, &c);
    let msg = refused(&hub, &enc_signed, "jwt_invalid").await;
    assert!(msg.contains("not usable for signatures"), "{msg}");

    // Time: expired beyond the leeway (5 s), not valid yet.
    let expired = hs(Algorithm::HS256, &valid(json!({ "exp": now - 60 })));
    refused(&hub, &expired, "token_expired").await;
    let not_yet = hs(Algorithm::HS256, &valid(json!({ "nbf": now + 60 })));
    let msg = refused(&hub, &not_yet, "jwt_invalid").await;
    assert!(msg.contains("nbf"), "{msg}");

    // Audience (string and array) and issuer.
    for aud in [json!("other"), json!(["other", "hub-eu"])] {
        let token = hs(Algorithm::HS256, &valid(json!({ "aud": aud })));
        let msg = refused(&hub, &token, "jwt_invalid").await;
        assert!(msg.contains("aud"), "{msg}");
    }
    let wrong_iss = es(&valid(json!({ "iss": "https://evil.test" })));
    let msg = refused(&hub, &wrong_iss, "jwt_invalid").await;
    assert!(msg.contains("iss"), "{msg}");

    // Claim types, size, permissions.
    let exp_string = hs(
        Algorithm::HS256,
        &valid(json!({ "exp": (now + 600).to_string() })),
    );
    refused(&hub, &exp_string, "jwt_invalid").await;
    let oversized = hs(
        Algorithm::HS256,
        &valid(json!({ "pad": "x".repeat(MAX_TOKEN_BYTES) })),
    );
    let msg = refused(&hub, &oversized, "jwt_invalid").await;
    assert!(msg.contains("too large"), "{msg}");
    for bad in [
        json!({ "scopes": ["publish:a..b"] }),
        json!({ "scope": "subscribe:a.** bogus" }),
        json!({ "policy": { "rules": [{ "effect": "maybe", "action": "publish", "topics": ["a"] }] } }),
    ] {
        // Only the malformed claim carries permissions.
        let mut claims = valid(bad.clone());
        if bad.get("scopes").is_none() {
            claims.as_object_mut().unwrap().remove("scopes");
        }
        let token = ed(&claims);
        let msg = refused(&hub, &token, "jwt_invalid").await;
        assert!(msg.contains("permissions"), "{msg}");
    }

    // No token at all.
    let mut client = hub.connect().await;
    client.send_json(json!({"op": "AUTH"})).await;
    assert_eq!(client.recv_json().await["code"], "no_token");
    assert_eq!(client.expect_close(0).await.code, 4001);

    assert_eq!(
        server.fetches(),
        fetches_after_start + 1,
        "only the unknown kid caused a refetch"
    );
}

#[tokio::test]
async fn the_key_decides_the_algorithm_family() {
    // Only a secret: RS/ES/EdDSA tokens are refused.
    let mut secret_only = jwt_hub(secret_auth()).await;
    let c = claims_at(now_secs(), json!({ "scopes": ["publish:a"] }));
    for token in [rs(Algorithm::RS256, &KEYS.rsa, &c), es(&c), ed(&c)] {
        let msg = refused(&secret_only, &token, "jwt_invalid").await;
        assert!(msg.contains("HS256/384/512 only"), "{msg}");
    }
    authed(&secret_only, &hs(Algorithm::HS256, &c)).await;
    secret_only.stop().await.unwrap();

    // Only a JWKS: HS256 with the public key as the secret is refused.
    let server = JwksServer::start(jwks(&[KEYS.rsa.jwk()])).await;
    let mut jwks_only = jwt_hub(AuthConfig {
        jwks_url: Some(server.url.clone()),
        ..AuthConfig::default()
    })
    .await;
    let pem = KEYS
        .rsa
        .private
        .to_public_key()
        .to_pkcs1_pem(LineEnding::LF)
        .unwrap();
    let forged = sign(
        Algorithm::HS256,
        Some(KEYS.rsa.kid),
        &c,
        &EncodingKey::from_secret(pem.as_bytes()),
    );
    let msg = refused(&jwks_only, &forged, "jwt_invalid").await;
    assert!(
        msg.contains("HS256/384/512 tokens are not accepted"),
        "{msg}"
    );
    authed(&jwks_only, &rs(Algorithm::RS256, &KEYS.rsa, &c)).await;
    jwks_only.stop().await.unwrap();
}

// ---------------------------------------------------------- acceptance

#[tokio::test]
async fn default_scopes_apply_to_tokens_without_permission_claims() {
    let hub = jwt_hub(AuthConfig {
        default_scopes: Some("subscribe:public.**".into()),
        ..secret_auth()
    })
    .await;
    let bare = hs(Algorithm::HS256, &claims_at(now_secs(), json!({})));
    let (mut client, _) = authed(&hub, &bare).await;
    assert_eq!(
        client.subscribe("public.**", None, json!(null)).await["op"],
        "SUBACK"
    );
    assert_eq!(
        client.subscribe("private.**", None, json!(null)).await["code"],
        "forbidden"
    );
    assert_eq!(
        client.publish("public.x", json!(1), json!(null)).await["code"],
        "forbidden"
    );
    // A token with its own claim gets exactly that, not the defaults.
    let scoped = hs_token(&["publish:public.x"], 600);
    let (mut client, _) = authed(&hub, &scoped).await;
    assert_eq!(
        client.publish("public.x", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    assert_eq!(
        client.subscribe("public.**", None, json!(null)).await["code"],
        "forbidden"
    );
}

#[tokio::test]
async fn a_token_within_the_leeway_is_accepted_then_warned_and_closed() {
    // Default leeway: 5 s. The token expired 2 s ago.
    let hub = jwt_hub(secret_auth()).await;
    let exp = now_secs() - 2;
    let token = hs(
        Algorithm::HS256,
        &claims_at(exp - 60, json!({ "exp": exp, "scopes": ["publish:a"] })),
    );
    let (mut client, ok) = authed(&hub, &token).await;
    assert_eq!(ok["expires_at"], exp * 1000);
    // Less than the notice is left: EXPIRING at once, the close at exp + 5 s.
    let warning = client.recv_json().await;
    assert_eq!(warning["op"], "EXPIRING", "{warning}");
    assert_eq!(warning["expires_at"], exp * 1000);
    // Until then the token's permissions apply.
    assert_eq!(
        client.publish("a", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    assert_eq!(client.recv_json().await["code"], "token_expired");
    assert_eq!(client.expect_close(0).await.code, 4001);
}

#[tokio::test]
async fn key_rotation_through_the_hub() {
    let server = JwksServer::start(jwks(&[KEYS.rsa.jwk()])).await;
    let auth = AuthConfig {
        jwks_url: Some(server.url.clone()),
        jwks_refetch_interval_secs: 0,
        jwks_cache_ttl_secs: 1,
        ..AuthConfig::default()
    };
    let hub = jwt_hub(auth.clone()).await;
    let c = claims_at(now_secs(), json!({ "scopes": ["subscribe:**"] }));
    let old = rs(Algorithm::RS256, &KEYS.rsa, &c);
    let new = rs(Algorithm::RS256, &KEYS.rsa_next, &c);
    let (mut old_connection, _) = authed(&hub, &old).await;
    assert_eq!(server.fetches(), 1);

    // The issuer rotates: only the new key is published. The new kid is
    // unknown to the hub, so it refetches and accepts it.
    server.set_jwks(jwks(&[KEYS.rsa_next.jwk()]));
    authed(&hub, &new).await;
    assert_eq!(server.fetches(), 2);
    // The old kid is no longer in the set: refused (after its own refetch).
    let msg = refused(&hub, &old, "jwt_invalid").await;
    assert!(msg.contains("unknown"), "{msg}");
    // A connection authenticated before the rotation keeps its session.
    old_connection.assert_alive_and_quiet().await;

    // The old key disappears without a new kid asking for a refetch: the
    // cached set is used until it expires (1 s), then the fresh set no
    // longer verifies the old token.
    let server2 = JwksServer::start(jwks(&[KEYS.rsa.jwk(), KEYS.ec.jwk()])).await;
    let hub2 = jwt_hub(AuthConfig {
        jwks_url: Some(server2.url.clone()),
        ..auth
    })
    .await;
    authed(&hub2, &old).await;
    server2.set_jwks(jwks(&[KEYS.ec.jwk()]));
    let loaded_before = server2.fetches();
    // Past the cache lifetime (a wait for a condition, not a measurement).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    refused(&hub2, &old, "jwt_invalid").await;
    assert_eq!(
        server2.fetches(),
        loaded_before + 1,
        "the expired cache was refreshed"
    );
    authed(&hub2, &es(&c)).await;
}

// ----------------------------------------------------------- isolation

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One connection of the load test, split so that it sends and reads at once.
struct Peer {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    /// Every EVENT received so far.
    events: Vec<Value>,
}

impl Peer {
    fn new(client: Client) -> Self {
        let (sink, stream) = client.into_inner().split();
        Peer {
            sink,
            stream,
            events: Vec::new(),
        }
    }

    async fn next_frame(stream: &mut SplitStream<Ws>) -> Value {
        loop {
            let message = tokio::time::timeout(HANG_GUARD, stream.next())
                .await
                .expect("no frame within the hang guard")
                .expect("connection ended")
                .expect("read failed");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Message::Close(frame) => panic!("closed by the hub: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Sends `frames` while reading; returns the answers by `rid` once every
    /// frame with a rid has one. EVENTs are collected on the way.
    async fn exchange(&mut self, frames: Vec<Value>) -> HashMap<String, Value> {
        let expected = frames.iter().filter(|f| f.get("rid").is_some()).count();
        let sink = &mut self.sink;
        let send = async move {
            for frame in frames {
                sink.feed(Message::text(frame.to_string())).await.unwrap();
            }
            sink.flush().await.unwrap();
        };
        let stream = &mut self.stream;
        let events = &mut self.events;
        let receive = async move {
            let mut answers = HashMap::new();
            while answers.len() < expected {
                let frame = Self::next_frame(stream).await;
                match frame["op"].as_str() {
                    Some("EVENT") => events.push(frame),
                    _ => {
                        let rid = frame["rid"].as_str().expect("answer with a rid").to_owned();
                        answers.insert(rid, frame);
                    }
                }
            }
            answers
        };
        let ((), answers) = tokio::join!(send, receive);
        answers
    }

    /// PING; collects the events that arrive before the PONG. The hub sends
    /// the PONG after every event committed before the PING was fanned out.
    async fn drain(&mut self) {
        self.sink
            .send(Message::text(
                json!({"op": "PING", "rid": "drain"}).to_string(),
            ))
            .await
            .unwrap();
        loop {
            let frame = Self::next_frame(&mut self.stream).await;
            match frame["op"].as_str() {
                Some("EVENT") => self.events.push(frame),
                Some("PONG") => return,
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }
}

/// Publishes `per_side` events to its own prefix and as many to the other
/// side's, plus a forbidden SUBSCRIBE every 50 frames. Returns the ids of
/// the accepted publishes.
async fn load(peer: &mut Peer, own: &str, other: &str, per_side: usize) -> HashSet<String> {
    let mut frames = Vec::new();
    for i in 0..per_side {
        frames.push(json!({"op": "PUBLISH", "topic": format!("{own}.{}", i % 7), "payload": i, "rid": format!("ok{i}")}));
        frames.push(json!({"op": "PUBLISH", "topic": format!("{other}.x"), "payload": i, "rid": format!("no{i}")}));
        if i % 50 == 0 {
            frames.push(json!({"op": "SUBSCRIBE", "topic": format!("{other}.**"), "rid": format!("sub{i}")}));
        }
    }
    let answers = peer.exchange(frames).await;
    let mut accepted = HashSet::new();
    for (rid, answer) in answers {
        if rid.starts_with("ok") {
            assert_eq!(answer["op"], "PUBACK", "{own}: {answer}");
            accepted.insert(answer["id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(answer["op"], "ERR", "{own} {rid}: {answer}");
            assert_eq!(answer["code"], "forbidden", "{own} {rid}: {answer}");
        }
    }
    assert_eq!(accepted.len(), per_side);
    accepted
}

#[tokio::test]
async fn connections_with_different_scopes_keep_their_own_permissions_under_load() {
    const PER_SIDE: usize = 1000;
    let hub = TestHub::start_with(|c| {
        c.auth = secret_auth();
        // The test reads while it sends; this only rules out a 4009 on a
        // slow test machine, which is not what is tested here.
        c.ephemeral_buffer_frames = 100_000;
        c.ephemeral_buffer_bytes = 64 << 20;
    })
    .await;
    let (mut a, _) = authed(&hub, &hs_token(&["publish:a.**", "subscribe:a.**"], 600)).await;
    let (mut b, _) = authed(&hub, &hs_token(&["publish:b.**", "subscribe:b.**"], 600)).await;
    let (mut both, _) = authed(&hub, &hs_token(&["publish:**"], 600)).await;
    // `**` intersects each one's allow rule, so it is accepted; delivery
    // then filters per event. The other side's prefix is refused outright.
    for (client, other) in [(&mut a, "b"), (&mut b, "a")] {
        assert_eq!(
            client.subscribe("**", None, json!(null)).await["op"],
            "SUBACK"
        );
        let refused = client
            .subscribe(&format!("{other}.**"), None, json!(null))
            .await;
        assert_eq!(refused["code"], "forbidden");
    }
    assert_eq!(
        both.subscribe("**", None, json!(null)).await["code"],
        "forbidden"
    );

    let (mut a, mut b, mut both) = (Peer::new(a), Peer::new(b), Peer::new(both));
    let third_party = async {
        let mut frames = Vec::new();
        for i in 0..PER_SIDE {
            for side in ["a", "b"] {
                frames.push(json!({"op": "PUBLISH", "topic": format!("{side}.c"), "payload": i, "rid": format!("{side}{i}")}));
            }
        }
        let answers = both.exchange(frames).await;
        let mut ids: HashMap<&str, HashSet<String>> = HashMap::new();
        for (rid, answer) in answers {
            assert_eq!(answer["op"], "PUBACK", "{answer}");
            let side = if rid.starts_with('a') { "a" } else { "b" };
            ids.entry(side)
                .or_default()
                .insert(answer["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    let (from_a, from_b, mut from_both) = tokio::join!(
        load(&mut a, "a", "b", PER_SIDE),
        load(&mut b, "b", "a", PER_SIDE),
        third_party,
    );
    assert!(both.events.is_empty());

    for (peer, own, mut expected) in [(&mut a, "a", from_a), (&mut b, "b", from_b)] {
        peer.drain().await;
        expected.extend(from_both.remove(own).unwrap());
        let mut received = HashSet::new();
        for event in &peer.events {
            let topic = event["event"]["topic"].as_str().unwrap();
            assert!(
                topic.starts_with(&format!("{own}.")),
                "{own} received {topic}"
            );
            let id = event["event"]["id"].as_str().unwrap().to_owned();
            assert!(received.insert(id), "{own}: duplicate delivery");
        }
        assert_eq!(received, expected, "{own}: every allowed event, once");
    }
}

#[tokio::test]
async fn a_wildcard_subscription_never_delivers_what_an_earlier_rule_denies() {
    let hub = jwt_hub(secret_auth()).await;
    let now = now_secs();
    let policy = json!({ "rules": [
        { "effect": "deny", "action": "subscribe", "topics": ["a.secret.**"] },
        { "effect": "allow", "action": "subscribe", "topics": ["a.**"], "groups": ["*"] }
    ]});
    let token = hs(
        Algorithm::HS256,
        &claims_at(now, json!({ "policy": policy })),
    );
    let (mut subscriber, _) = authed(&hub, &token).await;
    assert_eq!(
        subscriber.subscribe("a.**", None, json!(null)).await["op"],
        "SUBACK"
    );
    assert_eq!(
        subscriber
            .subscribe("a.**", Some("workers"), json!(null))
            .await["op"],
        "SUBACK"
    );
    let (mut publisher, _) = authed(&hub, &hs_token(&["publish:**"], 600)).await;
    let mut allowed = HashSet::new();
    for topic in [
        "a.secret",
        "a.public",
        "a.secret.x",
        "a.ok",
        "a.secret.y.z",
        "a.b.c",
    ] {
        let ack = publisher.publish(topic, json!(topic), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        if !topic.starts_with("a.secret") {
            allowed.insert(topic);
        }
    }
    let received = subscriber.ping().await;
    let mut live = HashSet::new();
    let mut grouped = HashSet::new();
    for event in &received {
        assert_eq!(event["op"], "EVENT", "{event}");
        let topic = event["event"]["topic"].as_str().unwrap();
        assert!(
            !topic.starts_with("a.secret"),
            "denied event delivered: {event}"
        );
        let set = if event["group"].is_null() {
            &mut live
        } else {
            &mut grouped
        };
        assert!(set.insert(topic), "duplicate {event}");
    }
    let topics = |set: HashSet<&str>| set.into_iter().map(str::to_owned).collect::<HashSet<_>>();
    let allowed = topics(allowed);
    assert_eq!(topics(live), allowed);
    assert_eq!(topics(grouped), allowed);
    for event in received.iter().filter(|e| !e["group"].is_null()) {
        subscriber.ack(event).await;
    }
    subscriber.assert_alive_and_quiet().await;
}

// ------------------------------------------------------------- re-AUTH

#[tokio::test]
async fn re_auth_replaces_the_policy_and_a_refused_one_closes_with_4001() {
    let hub = jwt_hub(secret_auth()).await;
    let (mut client, ok) = authed(&hub, &hs_token(&["publish:**", "subscribe:**"], 600)).await;
    let session = ok["session"].clone();
    assert_eq!(
        client.subscribe("**", None, json!(null)).await["op"],
        "SUBACK"
    );
    let (mut publisher, _) = authed(&hub, &hs_token(&["publish:**"], 600)).await;

    // Narrow the connection's permissions with a fresh token.
    client
        .send_json(
            json!({"op": "AUTH", "token": hs_token(&["publish:a.**", "subscribe:a.**"], 600)}),
        )
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK", "{ok}");
    assert_eq!(ok["session"], session);
    assert_eq!(
        client.publish("b.x", json!(1), json!(null)).await["code"],
        "forbidden"
    );
    assert_eq!(
        client.subscribe("b.**", None, json!(null)).await["code"],
        "forbidden"
    );
    assert_eq!(
        client.publish("a.x", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    // Its own a.x event may come before or after the PUBACK; PING drains it.
    client.ping().await;
    // The existing `**` subscription now delivers only what the new token
    // allows.
    publisher.publish("b.y", json!(2), json!(null)).await;
    let allowed = publisher.publish("a.y", json!(3), json!(null)).await;
    let delivered: Vec<Value> = client.ping().await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["event"]["id"], allowed["id"]);

    // A refused re-AUTH (signed with another secret) closes the connection
    // instead of keeping the current policy.
    let forged = sign(
        Algorithm::HS256,
        None,
        &claims_at(now_secs(), json!({ "scopes": ["publish:**"] })),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    );
    client
        .send_json(json!({"op": "AUTH", "token": forged}))
        .await;
    assert_eq!(client.recv_json().await["code"], "jwt_invalid");
    assert_eq!(client.expect_close(0).await.code, 4001);

    // So does an expired one.
    let (mut other, _) = authed(&hub, &hs_token(&["subscribe:**"], 600)).await;
    let now = now_secs();
    let expired = hs(
        Algorithm::HS256,
        &claims_at(now - 600, json!({ "exp": now - 60 })),
    );
    other
        .send_json(json!({"op": "AUTH", "token": expired}))
        .await;
    assert_eq!(other.recv_json().await["code"], "token_expired");
    assert_eq!(other.expect_close(0).await.code, 4001);
}

// -------------------------------------------------------------- expiry

/// A hub that warns 1 s before `exp` and closes at `exp` (no leeway).
async fn expiry_hub() -> TestHub {
    TestHub::start_with(|c| {
        c.auth = AuthConfig {
            jwt_leeway_secs: 0,
            ..secret_auth()
        };
        c.expiring_notice_ms = 1000;
    })
    .await
}

#[tokio::test]
async fn a_token_expiring_mid_connection_gets_expiring_then_a_4001_close() {
    let hub = expiry_hub().await;
    let exp = now_secs() + 2;
    let token = hs(
        Algorithm::HS256,
        &claims_at(exp - 2, json!({ "exp": exp, "scopes": ["subscribe:t.**"] })),
    );
    let (mut client, ok) = authed(&hub, &token).await;
    assert_eq!(ok["expires_at"], exp * 1000);
    assert_eq!(
        client.subscribe("t.**", None, json!(null)).await["op"],
        "SUBACK"
    );
    let warning = client.recv_json().await;
    assert_eq!(warning["op"], "EXPIRING", "{warning}");
    assert_eq!(warning["expires_at"], exp * 1000);
    let error = client.recv_json().await;
    assert_eq!(error["code"], "token_expired", "{error}");
    assert_eq!(client.expect_close(0).await.code, 4001);
    assert!(now_ms() >= exp * 1000, "closed at exp, not before");
}

#[tokio::test]
async fn a_fresh_auth_before_exp_keeps_the_connection_and_its_subscription() {
    let hub = expiry_hub().await;
    let exp = now_secs() + 2;
    let short = hs(
        Algorithm::HS256,
        &claims_at(exp - 2, json!({ "exp": exp, "scopes": ["subscribe:t.**"] })),
    );
    let (mut client, _) = authed(&hub, &short).await;
    assert_eq!(
        client.subscribe("t.**", None, json!(null)).await["op"],
        "SUBACK"
    );
    assert_eq!(client.recv_json().await["op"], "EXPIRING");

    let fresh_exp = now_secs() + 600;
    let fresh = hs(
        Algorithm::HS256,
        &claims_at(
            fresh_exp - 600,
            json!({ "exp": fresh_exp, "scopes": ["subscribe:t.**"] }),
        ),
    );
    client
        .send_json(json!({"op": "AUTH", "token": fresh}))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK", "{ok}");
    assert_eq!(ok["expires_at"], fresh_exp * 1000);

    // Wait until the first token's exp (+ leeway 0) has passed.
    let deadline = exp * 1000 + 300;
    tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now_ms()))).await;
    let (mut publisher, _) = authed(&hub, &hs_token(&["publish:t.**"], 600)).await;
    let ack = publisher.publish("t.after", json!(1), json!(null)).await;
    let event = client.recv_event().await;
    assert_eq!(event["event"]["id"], ack["id"]);
    client.assert_alive_and_quiet().await;
}

// ------------------------------------------------------------ binaries
