//! JWT test fixtures shared by the verifier tests and the gateway tests:
//! real keys (RSA 2048, P-256, P-384, Ed25519) generated once per test
//! binary, token signing (also deliberately malformed tokens), and a JWKS
//! HTTP server on 127.0.0.1:0 whose key set, status and latency a test
//! controls and whose fetches it can count.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand_core::OsRng;
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The HMAC secret of the tests (at least 32 bytes).
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

// ---------------------------------------------------------------- keys

pub struct RsaKey {
    pub private: RsaPrivateKey,
    pub kid: &'static str,
}

impl RsaKey {
    pub fn generate(kid: &'static str) -> Self {
        RsaKey {
            private: RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA key generation"),
            kid,
        }
    }

    pub fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_der(self.private.to_pkcs1_der().unwrap().as_bytes())
    }
}

pub struct EcKey {
    pub private: p256::ecdsa::SigningKey,
    pub kid: &'static str,
}

impl EcKey {
    pub fn generate(kid: &'static str) -> Self {
        EcKey {
            private: p256::ecdsa::SigningKey::random(&mut OsRng),
            kid,
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.private.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        })
    }

    pub fn encoding_key(&self) -> EncodingKey {
        use p256::pkcs8::EncodePrivateKey;
        EncodingKey::from_ec_der(self.private.to_pkcs8_der().unwrap().as_bytes())
    }
}

/// P-384 for ES384; kept apart from [`EcKey`] because the curve types differ.
pub struct Ec384Key {
    pub private: p384::ecdsa::SigningKey,
    pub kid: &'static str,
}

impl Ec384Key {
    pub fn generate(kid: &'static str) -> Self {
        Ec384Key {
            private: p384::ecdsa::SigningKey::random(&mut OsRng),
            kid,
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.private.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-384",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        })
    }

    pub fn encoding_key(&self) -> EncodingKey {
        use p384::pkcs8::EncodePrivateKey;
        EncodingKey::from_ec_der(self.private.to_pkcs8_der().unwrap().as_bytes())
    }
}

pub struct EdKey {
    pub private: ed25519_dalek::SigningKey,
    pub kid: &'static str,
}

impl EdKey {
    pub fn generate(kid: &'static str) -> Self {
        EdKey {
            private: ed25519_dalek::SigningKey::generate(&mut OsRng),
            kid,
        }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(self.private.verifying_key().as_bytes()),
        })
    }

    pub fn encoding_key(&self) -> EncodingKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        EncodingKey::from_ed_der(self.private.to_pkcs8_der().unwrap().as_bytes())
    }
}

pub struct Keys {
    pub rsa: RsaKey,
    pub rsa_next: RsaKey,
    pub ec: EcKey,
    pub ec384: Ec384Key,
    pub ed: EdKey,
}

/// Generated once per test binary: RSA generation is slow in debug builds.
pub static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    rsa: RsaKey::generate("rsa-1"),
    rsa_next: RsaKey::generate("rsa-2"),
    ec: EcKey::generate("ec-1"),
    ec384: Ec384Key::generate("ec384-1"),
    ed: EdKey::generate("ed-1"),
});

pub fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

pub fn standard_jwks() -> Value {
    jwks(&[
        KEYS.rsa.jwk(),
        KEYS.ec.jwk(),
        KEYS.ec384.jwk(),
        KEYS.ed.jwk(),
    ])
}

// -------------------------------------------------------------- tokens

/// Claims `sub: alice`, issued at `now` (seconds), expiring 10 min later,
/// with `extra` merged over them.
pub fn claims_at(now: u64, extra: Value) -> Value {
    let mut base = json!({ "sub": "alice", "iat": now, "exp": now + 600 });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing")
}

pub fn hs(alg: Algorithm, claims: &Value) -> String {
    sign(
        alg,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

pub fn rs(alg: Algorithm, key: &RsaKey, claims: &Value) -> String {
    sign(alg, Some(key.kid), claims, &key.encoding_key())
}

pub fn es(claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        Some(KEYS.ec.kid),
        claims,
        &KEYS.ec.encoding_key(),
    )
}

pub fn ed(claims: &Value) -> String {
    sign(
        Algorithm::EdDSA,
        Some(KEYS.ed.kid),
        claims,
        &KEYS.ed.encoding_key(),
    )
}

/// A token with any header, payload and signature bytes.
pub fn handcrafted(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

// -------------------------------------------------------- JWKS server

pub struct ServerState {
    pub jwks: Mutex<Value>,
    pub fetches: AtomicUsize,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // Keeps a fetch in flight so concurrent verifications overlap it.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    if status != StatusCode::OK {
        return (status, "unavailable").into_response();
    }
    let body = state.jwks.lock().unwrap().to_string();
    ([("content-type", "application/json")], body).into_response()
}

pub struct JwksServer {
    pub url: String,
    pub state: Arc<ServerState>,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(jwks: Value) -> Self {
        let state = Arc::new(ServerState {
            jwks: Mutex::new(jwks),
            fetches: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        JwksServer {
            url,
            state,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening: later fetches get "connection refused".
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await.unwrap();
    }
}

/// The wall clock in Unix ms (token times are Unix seconds).
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit in u64")
}
