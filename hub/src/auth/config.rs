//! Authentication settings: [`AuthConfig`] (typed, from TOML) and
//! [`AuthArgs`] (the `promhub serve` flags, each with a `PROMHUB_*`
//! environment variable).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use promhub_core::acl::{AclError, Policy};
use reqwest::Url;
use serde::Deserialize;

use super::MIN_SECRET_BYTES;

/// Default clock-skew allowance for `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// Largest accepted leeway: a bigger one would quietly extend every token.
pub const MAX_LEEWAY_SECS: u64 = 600;
/// How long a fetched JWKS is used before it is fetched again.
pub const DEFAULT_JWKS_CACHE_TTL_SECS: u64 = 600;
/// Minimum time between two JWKS fetches (unknown `kid`s, expired cache).
pub const DEFAULT_JWKS_REFETCH_INTERVAL_SECS: u64 = 30;
/// Timeout of one JWKS fetch (connect, request and body).
pub const DEFAULT_JWKS_FETCH_TIMEOUT_SECS: u64 = 5;

/// A shared secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself; only for building keys.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted, {} bytes])", self.0.len())
    }
}

/// How the hub verifies tokens. Nothing configured ([`AuthConfig::is_dev_mode`])
/// means development mode: no verifier, anonymous connections.
///
/// Meant as its own TOML table (e.g. `[auth]`): unknown keys are refused so
/// a misspelt security setting fails at start instead of being ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret for HS256/384/512 tokens (at least 32 bytes).
    pub jwt_secret: Option<Secret>,
    /// JWKS URL for RS/PS/ES/EdDSA tokens: `https://`, or `http://` to a
    /// loopback address only.
    pub jwks_url: Option<String>,
    /// JWKS file for RS/PS/ES/EdDSA tokens; read at start, reloaded like a
    /// URL (cache TTL, unknown `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Accepted audiences. When set, a token must carry one of them in `aud`;
    /// when empty, tokens that carry an `aud` are refused (RFC 7519 §4.1.3).
    pub jwt_aud: Vec<String>,
    /// Required issuer (`iss`), when set.
    pub jwt_iss: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Scopes (`ACTION:PATTERN ...`) for tokens with no `policy`, `scopes`
    /// or `scope` claim. Unset: such tokens may do nothing.
    pub default_scopes: Option<String>,
    pub jwks_cache_ttl_secs: u64,
    pub jwks_refetch_interval_secs: u64,
    pub jwks_fetch_timeout_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwks_url: None,
            jwks_file: None,
            jwt_aud: Vec::new(),
            jwt_iss: None,
            jwt_leeway_secs: DEFAULT_LEEWAY_SECS,
            default_scopes: None,
            jwks_cache_ttl_secs: DEFAULT_JWKS_CACHE_TTL_SECS,
            jwks_refetch_interval_secs: DEFAULT_JWKS_REFETCH_INTERVAL_SECS,
            jwks_fetch_timeout_secs: DEFAULT_JWKS_FETCH_TIMEOUT_SECS,
        }
    }
}

/// A configuration the verifier cannot run with. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no JWT verifier is configured (set --jwt-secret, --jwks-url or --jwks-file)")]
    NothingConfigured,
    #[error("--jwks-url and --jwks-file are mutually exclusive")]
    TwoJwksSources,
    #[error("--jwt-secret is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort { len: usize },
    #[error("--jwks-url is invalid: {0}")]
    JwksUrl(String),
    #[error("--jwks-file {path}: {reason}")]
    JwksFile { path: PathBuf, reason: String },
    #[error("--default-scopes is invalid: {0}")]
    DefaultScopes(#[source] AclError),
    #[error("--jwt-aud has an empty audience")]
    EmptyAudience,
    #[error("--jwt-iss is empty")]
    EmptyIssuer,
    #[error("--jwt-leeway is {0} s; at most {MAX_LEEWAY_SECS} s is allowed")]
    LeewayTooLarge(u64),
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("cannot build the JWKS HTTP client: {0}")]
    HttpClient(String),
}

impl AuthConfig {
    /// True when no verifier is configured: the hub then runs in development
    /// mode (anonymous connections, loud warning at start).
    pub fn is_dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwks_url.is_none() && self.jwks_file.is_none()
    }

    /// The policy for tokens without permission claims: `default_scopes`
    /// parsed by sdk-core, else deny-all.
    pub fn default_policy(&self) -> Result<Policy, AuthConfigError> {
        match &self.default_scopes {
            Some(scopes) => Policy::from_scope_str(scopes).map_err(AuthConfigError::DefaultScopes),
            None => Ok(Policy::deny_all()),
        }
    }

    /// Checks everything that does not need IO.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.is_dev_mode() {
            return Err(AuthConfigError::NothingConfigured);
        }
        if self.jwks_url.is_some() && self.jwks_file.is_some() {
            return Err(AuthConfigError::TwoJwksSources);
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < MIN_SECRET_BYTES
        {
            return Err(AuthConfigError::SecretTooShort {
                len: secret.expose().len(),
            });
        }
        if let Some(url) = &self.jwks_url {
            jwks_url(url)?;
        }
        if self.jwt_aud.iter().any(|aud| aud.is_empty()) {
            return Err(AuthConfigError::EmptyAudience);
        }
        if self.jwt_iss.as_deref() == Some("") {
            return Err(AuthConfigError::EmptyIssuer);
        }
        if self.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::LeewayTooLarge(self.jwt_leeway_secs));
        }
        for (value, name) in [
            (self.jwks_cache_ttl_secs, "jwks_cache_ttl_secs"),
            (self.jwks_fetch_timeout_secs, "jwks_fetch_timeout_secs"),
        ] {
            if value == 0 {
                return Err(AuthConfigError::ZeroDuration(name));
            }
        }
        self.default_policy()?;
        Ok(())
    }

    pub(crate) fn fetch_timeout(&self) -> Duration {
        Duration::from_secs(self.jwks_fetch_timeout_secs)
    }
}

/// Parses a JWKS URL. Plain `http` would let anyone on the path swap the
/// signing keys, so it is only accepted for loopback addresses (tests, a
/// local sidecar).
pub(crate) fn jwks_url(url: &str) -> Result<Url, AuthConfigError> {
    let parsed = Url::parse(url).map_err(|e| AuthConfigError::JwksUrl(e.to_string()))?;
    if is_allowed_jwks_url(&parsed) {
        Ok(parsed)
    } else {
        Err(AuthConfigError::JwksUrl(
            "must be https:// (http:// only to a loopback address)".to_owned(),
        ))
    }
}

/// `https` anywhere, `http` only to loopback. Also applied to redirects.
pub(crate) fn is_allowed_jwks_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => url.host_str().is_some_and(|host| {
            // IPv6 hosts come bracketed: `[::1]`.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// The URL for logs: no credentials, query or fragment.
pub(crate) fn redacted_url(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

/// The authentication flags of `promhub serve`. Each overrides the same
/// setting from the config file ([`AuthArgs::apply`]).
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AuthArgs {
    /// HMAC secret for HS256/384/512 tokens (at least 32 bytes). Prefer the
    /// environment variable: command lines are visible to other users.
    #[arg(
        long,
        env = "PROMHUB_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<String>,
    /// JWKS URL for RS/PS/ES/EdDSA tokens (https://, or http:// to loopback).
    #[arg(long, env = "PROMHUB_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// JWKS file for RS/PS/ES/EdDSA tokens.
    #[arg(long, env = "PROMHUB_JWKS_FILE", value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted audience; repeat or separate with commas.
    #[arg(
        long,
        env = "PROMHUB_JWT_AUD",
        value_name = "AUD",
        value_delimiter = ','
    )]
    pub jwt_aud: Vec<String>,
    /// Required issuer.
    #[arg(long, env = "PROMHUB_JWT_ISS", value_name = "ISS")]
    pub jwt_iss: Option<String>,
    /// Clock-skew allowance for exp/nbf in seconds [default: 5].
    #[arg(long, env = "PROMHUB_JWT_LEEWAY", value_name = "SECS")]
    pub jwt_leeway: Option<u64>,
    /// Scopes for tokens without policy/scopes/scope claims, e.g.
    /// "subscribe:public.**".
    #[arg(long, env = "PROMHUB_DEFAULT_SCOPES", value_name = "SCOPES")]
    pub default_scopes: Option<String>,
    /// How long a fetched JWKS is used, in seconds [default: 600].
    #[arg(long, env = "PROMHUB_JWKS_CACHE_TTL", value_name = "SECS")]
    pub jwks_cache_ttl: Option<u64>,
    /// Minimum seconds between two JWKS fetches [default: 30].
    #[arg(long, env = "PROMHUB_JWKS_REFETCH_INTERVAL", value_name = "SECS")]
    pub jwks_refetch_interval: Option<u64>,
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwks_file", &self.jwks_file)
            .field("jwt_aud", &self.jwt_aud)
            .field("jwt_iss", &self.jwt_iss)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("default_scopes", &self.default_scopes)
            .field("jwks_cache_ttl", &self.jwks_cache_ttl)
            .field("jwks_refetch_interval", &self.jwks_refetch_interval)
            .finish()
    }
}

impl AuthArgs {
    /// Overrides the settings of `config` that were given on the command line
    /// or in the environment.
    pub fn apply(self, config: &mut AuthConfig) {
        if let Some(secret) = self.jwt_secret {
            config.jwt_secret = Some(Secret::new(secret));
        }
        if self.jwks_url.is_some() {
            config.jwks_url = self.jwks_url;
        }
        if self.jwks_file.is_some() {
            config.jwks_file = self.jwks_file;
        }
        if !self.jwt_aud.is_empty() {
            config.jwt_aud = self.jwt_aud;
        }
        if self.jwt_iss.is_some() {
            config.jwt_iss = self.jwt_iss;
        }
        if let Some(leeway) = self.jwt_leeway {
            config.jwt_leeway_secs = leeway;
        }
        if self.default_scopes.is_some() {
            config.default_scopes = self.default_scopes;
        }
        if let Some(ttl) = self.jwks_cache_ttl {
            config.jwks_cache_ttl_secs = ttl;
        }
        if let Some(interval) = self.jwks_refetch_interval {
            config.jwks_refetch_interval_secs = interval;
        }
    }
}

impl From<AuthArgs> for AuthConfig {
    fn from(args: AuthArgs) -> Self {
        let mut config = AuthConfig::default();
        args.apply(&mut config);
        config
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthArgs,
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn toml_round_trip_with_defaults() {
        let config: AuthConfig = toml::from_str(&format!(
            "jwt_secret = \"{SECRET}\"\njwt_aud = [\"hub\", \"ops\"]\ndefault_scopes = \"subscribe:a.**\"\n"
        ))
        .unwrap();
        assert_eq!(config.jwt_secret, Some(Secret::new(SECRET)));
        assert_eq!(config.jwt_aud, ["hub", "ops"]);
        assert_eq!(config.jwt_leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(config.jwks_cache_ttl_secs, 600);
        assert!(!config.is_dev_mode());
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains(SECRET));
    }

    #[test]
    fn unknown_or_mistyped_toml_keys_are_refused() {
        assert!(toml::from_str::<AuthConfig>("jwt_secrett = \"x\"").is_err());
        assert!(toml::from_str::<AuthConfig>("jwt_aud = \"hub\"").is_err());
    }

    #[test]
    fn empty_config_is_dev_mode() {
        let config = AuthConfig::default();
        assert!(config.is_dev_mode());
        assert!(matches!(
            config.validate(),
            Err(AuthConfigError::NothingConfigured)
        ));
    }

    #[test]
    fn validation_errors() {
        let base = AuthConfig {
            jwt_secret: Some(Secret::new(SECRET)),
            ..AuthConfig::default()
        };
        let cases: Vec<(AuthConfig, &str)> = vec![
            (
                AuthConfig {
                    jwt_secret: Some(Secret::new("short")),
                    ..base.clone()
                },
                "at least 32",
            ),
            (
                AuthConfig {
                    jwks_url: Some("https://idp.example/jwks".into()),
                    jwks_file: Some("k.json".into()),
                    ..base.clone()
                },
                "mutually exclusive",
            ),
            (
                AuthConfig {
                    jwks_url: Some("http://idp.example/jwks".into()),
                    ..base.clone()
                },
                "https",
            ),
            (
                AuthConfig {
                    jwks_url: Some("ftp://127.0.0.1/jwks".into()),
                    ..base.clone()
                },
                "https",
            ),
            (
                AuthConfig {
                    default_scopes: Some("publish:a..b".into()),
                    ..base.clone()
                },
                "default-scopes",
            ),
            (
                AuthConfig {
                    jwt_leeway_secs: 3600,
                    ..base.clone()
                },
                "leeway",
            ),
            (
                AuthConfig {
                    jwt_aud: vec![String::new()],
                    ..base.clone()
                },
                "audience",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains(SECRET));
        }
    }

    #[test]
    fn loopback_http_is_allowed() {
        for ok in [
            "https://idp.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            jwks_url(ok).unwrap();
        }
    }

    #[test]
    fn logged_url_has_no_credentials_or_query() {
        let url = Url::parse("https://user:pw@idp.example/jwks?token=abc#x").unwrap();
        assert_eq!(redacted_url(&url), "https://idp.example/jwks");
    }

    #[test]
    fn cli_flags_override_the_file_and_hide_the_secret() {
        let cli = Cli::try_parse_from([
            "promhub",
            "--jwt-secret",
            SECRET,
            "--jwt-aud",
            "a,b",
            "--jwt-leeway",
            "7",
            "--default-scopes",
            "subscribe:x.*",
        ])
        .unwrap();
        assert!(!format!("{:?}", cli.auth).contains(SECRET));
        let mut config = AuthConfig {
            jwt_iss: Some("from-file".into()),
            ..AuthConfig::default()
        };
        cli.auth.apply(&mut config);
        assert_eq!(config.jwt_secret, Some(Secret::new(SECRET)));
        assert_eq!(config.jwt_aud, ["a", "b"]);
        assert_eq!(config.jwt_leeway_secs, 7);
        assert_eq!(config.jwt_iss.as_deref(), Some("from-file"));
        assert_eq!(config.default_scopes.as_deref(), Some("subscribe:x.*"));
        config.validate().unwrap();
    }
}
