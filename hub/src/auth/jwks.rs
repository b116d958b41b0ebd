//! JWKS: parsing a key set into verification keys, and the cached store that
//! (re)loads it from a URL or a file.
//!
//! Key policy, applied per JWK when a set is loaded:
//! - only `RSA` (2048–4096 bits), `EC` (P-256, P-384) and `OKP` (Ed25519)
//!   public keys are used; `oct` (symmetric) keys never are: the HMAC secret
//!   comes only from the hub's own configuration;
//! - a key marked `use` other than `sig`, or `key_ops` without `verify`, or
//!   carrying private members, is ignored, and tokens naming its `kid` are
//!   refused;
//! - the algorithms a key verifies: its `alg` if present (it must fit the key
//!   type), else its type's algorithms (an EC curve pins one algorithm).
//!
//! Store policy: a loaded set is used for `cache_ttl`; an unknown `kid` or an
//! expired cache triggers a reload at most once per `refetch_interval`, with
//! a single fetch in flight (concurrent callers wait for it); a failed load
//! keeps the last good set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use reqwest::Url;
use serde_json::{Map, Value};

use super::config::{is_allowed_jwks_url, redacted_url};
use super::strict_json::{self, truncate};

/// Largest JWKS document accepted (URL body or file).
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Most keys one set may hold.
pub const MAX_JWKS_KEYS: usize = 100;

const MIN_RSA_BITS: usize = 2048;
/// The RustCrypto `rsa` crate refuses larger moduli when verifying.
const MAX_RSA_BITS: usize = 4096;

/// Why a key set could not be loaded. Messages name no key material.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS request failed: {0}")]
    Http(String),
    #[error("JWKS server answered HTTP {0}")]
    Status(u16),
    #[error("JWKS file cannot be read: {0}")]
    Io(#[from] std::io::Error),
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not valid: {0}")]
    Malformed(String),
}

/// One usable verification key.
#[derive(Debug, Clone)]
struct JwksKey {
    kid: Option<String>,
    /// All of one asymmetric family; never HMAC.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// A parsed key set: the usable keys, plus the `kid`s of keys that were
/// present but ignored (so tokens naming them are refused without a refetch).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<JwksKey>,
    ignored_kids: HashSet<String>,
}

/// The keys a token may be verified with.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(Vec<&'a DecodingKey>),
    /// No key has this `kid`.
    UnknownKid,
    /// The `kid` names keys that are not usable for signatures.
    NotForSignatures,
    /// Keys with this `kid` exist but none allows the token's algorithm.
    AlgorithmNotAllowed,
    /// The token has no `kid` and not exactly one key allows its algorithm.
    AmbiguousWithoutKid {
        candidates: usize,
    },
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[...]}`). A malformed document is an
    /// error; a malformed or unusable key is skipped with a warning.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let document = strict_json::from_slice(bytes)
            .map_err(|e| JwksError::Malformed(format!("not JSON: {e}")))?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(JwksError::Malformed(
                "no `keys` array at the top level".to_owned(),
            ));
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError::Malformed(format!(
                "{} keys; at most {MAX_JWKS_KEYS} are accepted",
                entries.len()
            )));
        }
        let mut set = KeySet::default();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                tracing::warn!(index, "JWKS entry is not an object; ignored");
                continue;
            };
            let kid = match jwk.get("kid") {
                None => None,
                Some(Value::String(kid)) => Some(kid.clone()),
                Some(_) => {
                    tracing::warn!(index, "JWK `kid` is not a string; key ignored");
                    continue;
                }
            };
            match parse_jwk(jwk) {
                Ok((algorithms, key)) => set.keys.push(JwksKey {
                    kid,
                    algorithms,
                    key,
                }),
                Err(reason) => {
                    tracing::warn!(index, kid = ?kid.as_deref().map(|k| truncate(k, 64)), reason, "JWK ignored");
                    set.ignored_kids.extend(kid);
                }
            }
        }
        Ok(set)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Is `kid` mentioned at all (usable or ignored)?
    fn knows(&self, kid: &str) -> bool {
        self.ignored_kids.contains(kid) || self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let named: Vec<&JwksKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return if self.ignored_kids.contains(kid) {
                        Lookup::NotForSignatures
                    } else {
                        Lookup::UnknownKid
                    };
                }
                let fitting: Vec<&DecodingKey> = named
                    .into_iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .map(|k| &k.key)
                    .collect();
                if fitting.is_empty() {
                    Lookup::AlgorithmNotAllowed
                } else {
                    Lookup::Found(fitting)
                }
            }
            // Without a `kid` only an unambiguous key is tried: guessing
            // through the whole set would multiply the cost of every forged
            // token by the number of keys.
            None => {
                let fitting: Vec<&DecodingKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .map(|k| &k.key)
                    .collect();
                if fitting.len() == 1 {
                    Lookup::Found(fitting)
                } else {
                    Lookup::AmbiguousWithoutKid {
                        candidates: fitting.len(),
                    }
                }
            }
        }
    }
}

/// One JWK → (algorithms it verifies, key), or why it is not used.
fn parse_jwk(jwk: &Map<String, Value>) -> Result<(Vec<Algorithm>, DecodingKey), String> {
    match jwk.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(_) => return Err("`use` is not `sig`".to_owned()),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("`key_ops` does not include `verify`".to_owned());
        }
    }
    // Private members: the hub must never be handed a private key.
    if ["d", "p", "q", "dp", "dq", "qi", "oth"]
        .iter()
        .any(|member| jwk.contains_key(*member))
    {
        return Err("contains private key material".to_owned());
    }
    let declared_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(alg)) => Some(
            Algorithm::from_str(alg)
                .map_err(|_| format!("`alg` {:?} is not supported", truncate(alg, 16)))?,
        ),
        Some(_) => return Err("`alg` is not a string".to_owned()),
    };

    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
    let (family_algs, key): (&[Algorithm], DecodingKey) = match kty {
        "RSA" => {
            let n = b64_member(jwk, "n")?;
            let e = b64_member(jwk, "e")?;
            let bits = bit_length(&n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
                ));
            }
            // e = 1 would make every "signature" valid; even e is never an
            // RSA exponent. The backend checks too; this names the reason.
            let exponent = if e.len() <= 8 {
                e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            } else {
                0
            };
            if exponent < 3 || exponent % 2 == 0 {
                return Err("RSA exponent is not an odd number of at least 3".to_owned());
            }
            (
                AlgorithmFamily::Rsa.algorithms(),
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        "EC" => {
            let (algs, coordinate_len): (&[Algorithm], usize) =
                match jwk.get("crv").and_then(Value::as_str) {
                    Some("P-256") => (&[Algorithm::ES256], 32),
                    Some("P-384") => (&[Algorithm::ES384], 48),
                    _ => return Err("EC curve is not P-256 or P-384".to_owned()),
                };
            let x = b64_member(jwk, "x")?;
            let y = b64_member(jwk, "y")?;
            if x.len() != coordinate_len || y.len() != coordinate_len {
                return Err("EC coordinates have the wrong length".to_owned());
            }
            let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (algs, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("OKP curve is not Ed25519".to_owned());
            }
            let x = b64_member(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes".to_owned());
            }
            (&[Algorithm::EdDSA], DecodingKey::from_ed_der(&x))
        }
        "oct" => {
            return Err(
                "symmetric (`oct`) keys are never used from a JWKS; HS tokens use --jwt-secret"
                    .to_owned(),
            );
        }
        _ => return Err("`kty` is not RSA, EC or OKP".to_owned()),
    };

    let algorithms = match declared_alg {
        Some(alg) if family_algs.contains(&alg) => vec![alg],
        Some(_) => return Err("`alg` does not fit the key type".to_owned()),
        None => family_algs.to_vec(),
    };
    // Building a verifier parses the key (EC point on the curve, Ed25519
    // point), so a broken key is dropped now rather than failing every token.
    (DEFAULT_PROVIDER.verifier_factory)(&algorithms[0], &key)
        .map_err(|_| "key is not a valid public key".to_owned())?;
    Ok((algorithms, key))
}

fn b64_member(jwk: &Map<String, Value>, member: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{member}` is missing or not a string"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("`{member}` is not base64url"))
}

/// Bits of a big-endian unsigned integer, ignoring leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize),
        None => 0,
    }
}

/// Where a key set comes from.
#[derive(Debug)]
pub(crate) enum JwksSource {
    Url { url: Url, client: reqwest::Client },
    File(PathBuf),
}

impl JwksSource {
    pub(crate) fn url(url: Url, timeout: Duration) -> Result<Self, String> {
        // reqwest is built without a TLS crypto provider (to keep aws-lc out);
        // ring is installed unless the process already chose one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("promhub-hub/", env!("CARGO_PKG_VERSION")))
            // Redirects may not downgrade to plain http (except loopback).
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("too many redirects")
                } else if is_allowed_jwks_url(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.error("redirect to a URL that is not https")
                }
            }))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(JwksSource::Url { url, client })
    }

    fn describe(&self) -> String {
        match self {
            JwksSource::Url { url, .. } => redacted_url(url),
            JwksSource::File(path) => path.display().to_string(),
        }
    }

    async fn load(&self) -> Result<KeySet, JwksError> {
        match self {
            JwksSource::Url { url, client } => {
                let mut response = client
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| JwksError::Http(e.without_url().to_string()))?;
                if !response.status().is_success() {
                    return Err(JwksError::Status(response.status().as_u16()));
                }
                if response
                    .content_length()
                    .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
                {
                    return Err(JwksError::TooLarge);
                }
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| JwksError::Http(e.without_url().to_string()))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(JwksError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                KeySet::parse(&body)
            }
            JwksSource::File(path) => KeySet::parse(&read_limited(path).await?),
        }
    }
}

async fn read_limited(path: &Path) -> Result<Vec<u8>, JwksError> {
    let metadata = tokio::fs::metadata(path).await?;
    if metadata.len() > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    Ok(tokio::fs::read(path).await?)
}

/// Reads and parses a JWKS file synchronously (at start-up).
pub(crate) fn load_file_now(path: &Path) -> Result<KeySet, JwksError> {
    let metadata = std::fs::metadata(path)?;
    if metadata.len() > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    KeySet::parse(&std::fs::read(path)?)
}

#[derive(Debug)]
struct CacheState {
    keys: Arc<KeySet>,
    /// False until a load succeeded: no key can be trusted yet.
    loaded: bool,
    /// `now_ms` of the last successful load; `None` = reload on first use.
    loaded_at_ms: Option<u64>,
    /// `now_ms` of the last load attempt, successful or not.
    last_attempt_ms: Option<u64>,
}

/// The key set of one source, cached, reloaded on demand.
#[derive(Debug)]
pub(crate) struct JwksStore {
    source: JwksSource,
    cache_ttl_ms: u64,
    refetch_interval_ms: u64,
    state: Mutex<CacheState>,
    /// Held while a load is in flight: the single-flight gate.
    load_gate: tokio::sync::Mutex<()>,
}

/// The set to verify with; `loaded` is false when no load ever succeeded.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub keys: Arc<KeySet>,
    pub loaded: bool,
}

impl JwksStore {
    pub(crate) fn new(
        source: JwksSource,
        initial: Option<KeySet>,
        cache_ttl: Duration,
        refetch_interval: Duration,
    ) -> Self {
        let loaded = initial.is_some();
        JwksStore {
            source,
            cache_ttl_ms: duration_ms(cache_ttl),
            refetch_interval_ms: duration_ms(refetch_interval),
            state: Mutex::new(CacheState {
                keys: Arc::new(initial.unwrap_or_default()),
                loaded,
                loaded_at_ms: None,
                last_attempt_ms: None,
            }),
            load_gate: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        // The state is replaced whole under the lock, so a panic elsewhere
        // cannot leave it half-written: recovering from poison is sound.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn is_stale(&self, state: &CacheState, now_ms: u64) -> bool {
        state
            .loaded_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.cache_ttl_ms)
    }

    fn may_attempt(&self, state: &CacheState, now_ms: u64) -> bool {
        state
            .last_attempt_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.refetch_interval_ms)
    }

    /// The key set to verify a token naming `kid` with, reloading first when
    /// the cache expired or `kid` is unknown (subject to the refetch limit).
    pub(crate) async fn snapshot(&self, kid: Option<&str>, now_ms: u64) -> Snapshot {
        let (stale, needs_new_set) = {
            let state = self.state();
            (
                self.is_stale(&state, now_ms),
                !state.loaded || kid.is_some_and(|kid| !state.keys.knows(kid)),
            )
        };
        if needs_new_set {
            // The caller needs the new set: wait for an in-flight load.
            let _gate = self.load_gate.lock().await;
            self.load_if_allowed(now_ms).await;
        } else if stale {
            // The cached set can serve this token; if a load is already in
            // flight, do not wait for it.
            if let Ok(_gate) = self.load_gate.try_lock() {
                self.load_if_allowed(now_ms).await;
            }
        }
        let state = self.state();
        Snapshot {
            keys: Arc::clone(&state.keys),
            loaded: state.loaded,
        }
    }

    /// Loads now unless the refetch interval forbids it. Call with the gate
    /// held. Returns the number of usable keys loaded.
    async fn load_if_allowed(&self, now_ms: u64) -> Option<Result<usize, JwksError>> {
        {
            let mut state = self.state();
            if !self.may_attempt(&state, now_ms) {
                return None;
            }
            state.last_attempt_ms = Some(now_ms);
        }
        let result = self.source.load().await;
        let mut state = self.state();
        Some(match result {
            Ok(keys) => {
                let count = keys.len();
                tracing::info!(
                    source = %self.source.describe(),
                    keys = count,
                    ignored = keys.ignored_kids.len(),
                    "JWKS loaded"
                );
                state.keys = Arc::new(keys);
                state.loaded = true;
                state.loaded_at_ms = Some(now_ms);
                Ok(count)
            }
            Err(error) => {
                tracing::warn!(
                    source = %self.source.describe(),
                    %error,
                    kept_keys = state.keys.len(),
                    "JWKS load failed; keeping the last good key set"
                );
                Err(error)
            }
        })
    }

    /// Loads now (waiting for an in-flight load), subject to the refetch
    /// interval. `None`: skipped by the interval.
    pub(crate) async fn load(&self, now_ms: u64) -> Option<Result<usize, JwksError>> {
        let _gate = self.load_gate.lock().await;
        self.load_if_allowed(now_ms).await
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f; 256]), 2047);
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            &b"nope"[..],
            br#"{"keys":{}}"#,
            br#"{"kees":[]}"#,
            br#"[]"#,
            br#"{"keys":[],"keys":[]}"#,
        ] {
            assert!(KeySet::parse(bad).is_err());
        }
        let many = format!(
            r#"{{"keys":[{}]}}"#,
            vec!["{}"; MAX_JWKS_KEYS + 1].join(",")
        );
        assert!(KeySet::parse(many.as_bytes()).is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_and_their_kids_remembered() {
        let short_rsa = b64(&[0xff; 128]); // 1024 bits
        let good_rsa = b64(&[0xc5; 256]); // 2048 bits
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"oct","kid":"sym","k":"c2VjcmV0"}},
                {{"kty":"RSA","kid":"small","n":"{short_rsa}","e":"AQAB"}},
                {{"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"}},
                {{"kty":"OKP","kid":"short-ed","crv":"Ed25519","x":"{}"}},
                {{"kty":"OKP","kid":"x448","crv":"X448","x":"AA"}},
                {{"kty":"EC","kid":"off-curve","crv":"P-256","x":"{}","y":"{}"}},
                {{"kty":"RSA","kid":"e-one","n":"{}","e":"AQ"}},
                {{"kty":"RSA","kid":"e-even","n":"{}","e":"AQAA"}},
                {{"kty":"RSA","kid":"priv","n":"{}","e":"AQAB","d":"AQAB"}},
                {{"kty":"RSA","kid":"bad-alg","alg":"ES256","n":"{}","e":"AQAB"}},
                {{"kty":"RSA","kid":"oaep","alg":"RSA-OAEP","n":"{}","e":"AQAB"}},
                {{"kty":"RSA","kid":7,"n":"AA","e":"AQAB"}},
                "not an object"
            ]}}"#,
            b64(&[1; 16]),
            b64(&[1; 32]),
            b64(&[2; 32]),
            good_rsa,
            good_rsa,
            good_rsa,
            good_rsa,
            good_rsa,
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert!(set.is_empty());
        for kid in [
            "sym",
            "small",
            "p521",
            "short-ed",
            "x448",
            "off-curve",
            "e-one",
            "e-even",
            "priv",
            "bad-alg",
            "oaep",
        ] {
            assert!(
                matches!(
                    set.lookup(Some(kid), Algorithm::ES256),
                    Lookup::NotForSignatures
                ),
                "{kid}"
            );
        }
        assert!(matches!(
            set.lookup(Some("other"), Algorithm::ES256),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn a_well_formed_rsa_key_without_alg_allows_the_whole_family() {
        let n = b64(&[0xc5; 256]);
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"r","n":"{n}","e":"AQAB"}}]}}"#);
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        for alg in AlgorithmFamily::Rsa.algorithms() {
            assert!(matches!(set.lookup(Some("r"), *alg), Lookup::Found(_)));
        }
        for alg in [Algorithm::HS256, Algorithm::ES256, Algorithm::EdDSA] {
            assert!(matches!(
                set.lookup(Some("r"), alg),
                Lookup::AlgorithmNotAllowed
            ));
        }
    }
}
