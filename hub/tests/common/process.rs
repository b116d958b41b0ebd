//! The real `promhub` binary as a subprocess.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::Client;

/// The URL a `promhub serve` child announces on its first line of stdout
/// (`listening on URL`), read from its piped stdout.
pub async fn listening_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no output from promhub")
        .expect("reading stdout")
        .expect("promhub exited before printing");
    first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .to_owned()
}

/// Runs `promhub serve --listen 127.0.0.1:0 ARGS` on `data`, expecting it to
/// refuse to start: checks that it exits non-zero (within 60 s) with
/// nothing on stdout, and returns its stderr.
pub async fn refused_start(data: &Path, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_promhub"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("PROMHUB_DATA", data)
            .output(),
    )
    .await
    .expect("promhub did not give up")
    .expect("run promhub");
    assert!(!output.status.success(), "{args:?} started");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout when not listening"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `promhub serve` child process, killed when dropped.
pub struct HubProcess {
    pub child: Child,
    pub url: String,
}

impl HubProcess {
    pub async fn spawn(data: &Path, envs: &[(&str, &str)], args: &[&str]) -> HubProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_promhub"));
        command
            .arg("serve")
            .args(args)
            .env("PROMHUB_DATA", data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn promhub");
        let url = listening_url(&mut child).await;
        assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
        HubProcess { child, url }
    }

    pub async fn client(&self) -> Client {
        let mut client = Client::connect(&self.url).await;
        client.auth().await;
        client
    }

    pub async fn kill9(mut self) {
        // `Child::kill` sends SIGKILL: no shutdown code runs.
        self.child.kill().await.expect("kill");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}
