//! Development tokens: `promhub token --secret S --scopes "..."` mints an
//! HS256 JWT that a hub started with the same `--jwt-secret` accepts.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, EncodingKey};
use promhub_core::acl::{AclError, Policy};
use serde_json::{Map, Value, json};

use super::MIN_SECRET_BYTES;

/// What to put in a development token.
#[derive(Clone)]
pub struct MintOptions {
    /// The hub's `--jwt-secret` (at least 32 bytes).
    pub secret: String,
    /// Space-separated scopes, e.g. `"publish:a.* subscribe:b.**"`; stored as
    /// the `scopes` array claim.
    pub scopes: String,
    /// Lifetime; `exp` = now + `ttl` (whole seconds, at least 1).
    pub ttl: Duration,
    pub sub: Option<String>,
    pub aud: Option<String>,
    pub iss: Option<String>,
}

impl fmt::Debug for MintOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintOptions")
            .field("secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("ttl", &self.ttl)
            .field("sub", &self.sub)
            .field("aud", &self.aud)
            .field("iss", &self.iss)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the secret is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort { len: usize },
    #[error("no scopes given")]
    NoScopes,
    #[error("invalid scopes: {0}")]
    Scopes(#[source] AclError),
    #[error("invalid ttl: {0}")]
    Ttl(&'static str),
    #[error("the system clock is before 1970")]
    Clock,
    #[error("signing failed")]
    Signing,
}

/// Mints an HS256 token valid from now for `options.ttl`.
pub fn mint_dev_token(options: MintOptions) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?;
    mint_dev_token_at(options, now.as_secs())
}

/// [`mint_dev_token`] with the clock given (`iat`, seconds since the epoch).
pub fn mint_dev_token_at(options: MintOptions, now_secs: u64) -> Result<String, MintError> {
    if options.secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::SecretTooShort {
            len: options.secret.len(),
        });
    }
    // Validated with the hub's own parser so a typo fails here, not at AUTH.
    Policy::from_scope_str(&options.scopes).map_err(MintError::Scopes)?;
    let scopes: Vec<&str> = options.scopes.split_ascii_whitespace().collect();
    if scopes.is_empty() {
        return Err(MintError::NoScopes);
    }
    let ttl_secs = options.ttl.as_secs();
    if ttl_secs == 0 {
        return Err(MintError::Ttl("must be at least 1s"));
    }
    let exp = now_secs
        .checked_add(ttl_secs)
        .ok_or(MintError::Ttl("too large"))?;

    let mut claims = Map::new();
    claims.insert("iat".into(), now_secs.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("scopes".into(), json!(scopes));
    for (name, value) in [
        ("sub", options.sub),
        ("aud", options.aud),
        ("iss", options.iss),
    ] {
        if let Some(value) = value {
            claims.insert(name.into(), Value::String(value));
        }
    }

    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
    let signing_input = format!("{header}.{payload}");
    let key = EncodingKey::from_secret(options.secret.as_bytes());
    let signer = (DEFAULT_PROVIDER.signer_factory)(&Algorithm::HS256, &key)
        .map_err(|_| MintError::Signing)?;
    let signature = signer
        .try_sign(signing_input.as_bytes())
        .map_err(|_| MintError::Signing)?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// `promhub token`: prints a development token (HS256) for a hub started
/// with the same secret.
#[derive(Clone, clap::Args)]
pub struct TokenArgs {
    /// The hub's --jwt-secret (at least 32 bytes).
    #[arg(
        long,
        env = "PROMHUB_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: String,
    /// Space-separated scopes, e.g. "publish:jobs.* subscribe:process.**".
    #[arg(long, value_name = "SCOPES")]
    pub scopes: String,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Subject (`sub`).
    #[arg(long)]
    pub sub: Option<String>,
    /// Audience (`aud`); the hub must list it in --jwt-aud.
    #[arg(long)]
    pub aud: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
}

impl fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenArgs")
            .field("secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("ttl", &self.ttl)
            .field("sub", &self.sub)
            .field("aud", &self.aud)
            .field("iss", &self.iss)
            .finish()
    }
}

/// Runs `promhub token`: returns just the token (the binary prints it).
pub fn run_token_command(args: TokenArgs) -> Result<String, MintError> {
    mint_dev_token(MintOptions {
        secret: args.secret,
        scopes: args.scopes,
        ttl: args.ttl,
        sub: args.sub,
        aud: args.aud,
        iss: args.iss,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        token: TokenArgs,
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn options(scopes: &str) -> MintOptions {
        MintOptions {
            secret: SECRET.into(),
            scopes: scopes.into(),
            ttl: Duration::from_secs(3600),
            sub: Some("dev".into()),
            aud: None,
            iss: None,
        }
    }

    #[test]
    fn token_has_the_expected_claims() {
        let token = mint_dev_token_at(options("publish:a.* subscribe:b.**"), 1000).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"iat": 1000, "exp": 4600, "sub": "dev", "scopes": ["publish:a.*", "subscribe:b.**"]})
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            mint_dev_token_at(options("publish:a..b"), 0),
            Err(MintError::Scopes(_))
        ));
        assert!(matches!(
            mint_dev_token_at(options("  "), 0),
            Err(MintError::NoScopes)
        ));
        let mut short = options("publish:a");
        short.secret = "short".into();
        assert!(matches!(
            mint_dev_token_at(short, 0),
            Err(MintError::SecretTooShort { len: 5 })
        ));
        let mut zero = options("publish:a");
        zero.ttl = Duration::from_millis(500);
        assert!(matches!(mint_dev_token_at(zero, 0), Err(MintError::Ttl(_))));
        assert!(matches!(
            mint_dev_token_at(options("publish:a"), u64::MAX),
            Err(MintError::Ttl(_))
        ));
    }

    #[test]
    fn cli_parses_humantime_ttl_and_hides_the_secret() {
        let cli = Cli::try_parse_from([
            "promhub",
            "--secret",
            SECRET,
            "--scopes",
            "subscribe:x",
            "--ttl",
            "90m",
            "--sub",
            "me",
        ])
        .unwrap();
        assert_eq!(cli.token.ttl, Duration::from_secs(5400));
        assert!(!format!("{cli:?}").contains(SECRET));
        let token = run_token_command(cli.token).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let default_ttl =
            Cli::try_parse_from(["promhub", "--secret", SECRET, "--scopes", "subscribe:x"])
                .unwrap();
        assert_eq!(default_ttl.token.ttl, Duration::from_secs(3600));
    }
}
