//! The hub under test: an external URL (loopback only) or a `promhub`
//! binary spawned on 127.0.0.1:0 with its store in a fresh directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::http::Uri;

/// How long a spawned hub may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A hub to drive.
#[derive(Debug)]
pub struct Hub {
    pub url: String,
    /// The hub's process id, for CPU and RSS (known when spawned, or given).
    pub pid: Option<u32>,
    /// `AUTH.token` for hubs that verify tokens.
    pub token: Option<String>,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Hub {
    /// A running hub at `url`; refused unless the host is loopback.
    pub fn external(url: &str, pid: Option<u32>) -> Result<Hub> {
        check_loopback(url)?;
        Ok(Hub {
            url: url.to_owned(),
            pid,
            token: None,
            child: None,
            _data: None,
        })
    }

    /// Spawns `binary serve --listen 127.0.0.1:0 ARGS...` with a fresh data
    /// directory under `data_base` (a real disk: on tmpfs fsync is free and
    /// durable numbers would lie) and waits for its first stdout line.
    pub async fn spawn(binary: &Path, args: &[String], data_base: &Path) -> Result<Hub> {
        std::fs::create_dir_all(data_base)
            .with_context(|| format!("creating {}", data_base.display()))?;
        let data = tempfile::tempdir_in(data_base)?;
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("PROMHUB_DATA", data.path())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).lines().next_line())
            .await
            .context("the hub printed nothing within 60 s")??
            .context("the hub exited before listening")?;
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        check_loopback(&url)?;
        Ok(Hub {
            url,
            pid: child.id(),
            token: None,
            child: Some(child),
            _data: Some(data),
        })
    }

    pub fn with_token(mut self, token: Option<String>) -> Hub {
        self.token = token;
        self
    }

    /// Stops a spawned hub (SIGTERM, then waits up to 30 s); nothing for an
    /// external one.
    pub async fn stop(mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Where spawned hubs keep their data by default: beside the build output.
pub fn default_data_base() -> PathBuf {
    PathBuf::from("target/bench-data")
}

/// Accepts `ws://` URLs whose host is a loopback address or `localhost`.
pub fn check_loopback(url: &str) -> Result<()> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("{url}: only ws:// URLs are supported (loopback load tests need no TLS)");
    }
    let host = uri.host().with_context(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: promhub-bench only drives hubs on this machine (127.0.0.1, ::1, localhost)");
    }
    Ok(())
}

/// Accepts `nats://` URLs whose host is a loopback address.
pub fn check_nats_loopback(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("nats://")
        .with_context(|| format!("{url:?} is not a nats:// URL"))?;
    check_loopback(&format!("ws://{rest}/"))
}

#[cfg(test)]
mod tests {
    use super::{check_loopback, check_nats_loopback};

    #[test]
    fn only_loopback_nats_urls_are_accepted() {
        check_nats_loopback("nats://127.0.0.1:4222").unwrap();
        assert!(check_nats_loopback("nats://10.1.2.3:4222").is_err());
        assert!(check_nats_loopback("tls://127.0.0.1:4222").is_err());
    }

    #[test]
    fn only_loopback_ws_urls_are_accepted() {
        for ok in [
            "ws://127.0.0.1:8090/ws",
            "ws://127.0.0.2:1/ws",
            "ws://localhost:8090/ws",
            "ws://[::1]:8090/ws",
        ] {
            check_loopback(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "ws://10.0.0.1:8090/ws",
            "ws://example.com/ws",
            "ws://0.0.0.0:8090/ws",
            "wss://127.0.0.1:8090/ws",
            "http://127.0.0.1:8090/ws",
            "not a url",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}
