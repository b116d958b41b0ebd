//! The `promhub token` and `promhub serve` binaries together: a token the
//! one mints is accepted by the other with the same secret, the `[auth]`
//! TOML table with flags winning, and clear messages for bad settings and
//! bad token requests. Real binaries, real sockets (127.0.0.1:0).
//!
//! Waits are hang guards (the common client's), never timing assertions.

mod common;

use common::Client;
use common::jwt::{SECRET, now_ms};
use common::process::HubProcess;
use serde_json::{Value, json};

fn promhub(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_promhub"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run promhub")
}

/// `promhub token ...`: the token, alone on stdout.
fn mint(args: &[&str]) -> String {
    let mut all = vec!["token", "--secret", SECRET];
    all.extend_from_slice(args);
    let output = promhub(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout
        .strip_suffix('\n')
        .expect("one line ending in a newline");
    assert!(
        !token.contains('\n') && token.split('.').count() == 3,
        "{stdout:?}"
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains(token));
    token.to_owned()
}

async fn auth_answer(url: &str, token: &str) -> (Client, Value) {
    let mut client = Client::connect(url).await;
    client
        .send_json(json!({"op": "AUTH", "token": token}))
        .await;
    let answer = client.recv_json().await;
    (client, answer)
}

#[tokio::test]
async fn promhub_token_is_accepted_by_promhub_serve_with_the_same_secret() {
    let token = mint(&["--scopes", "publish:a.* subscribe:a.**", "--sub", "cli"]);
    let dir = common::data_dir();
    let hub = HubProcess::spawn(
        dir.path(),
        &[],
        &["--listen", "127.0.0.1:0", "--jwt-secret", SECRET],
    )
    .await;
    let (mut client, ok) = auth_answer(&hub.url, &token).await;
    assert_eq!(ok["op"], "OK", "{ok}");
    assert!(ok["expires_at"].as_u64().unwrap() > now_ms());
    assert_eq!(
        client.publish("a.x", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    assert_eq!(
        client.publish("b.x", json!(1), json!(null)).await["code"],
        "forbidden"
    );
    assert_eq!(
        client.subscribe("a.**", None, json!(null)).await["op"],
        "SUBACK"
    );
    assert_eq!(
        client.subscribe("b.**", None, json!(null)).await["code"],
        "forbidden"
    );
    // Not development mode: no token, no connection.
    let (mut anonymous, answer) = auth_answer(&hub.url, "").await;
    assert_eq!(answer["code"], "no_token");
    assert_eq!(anonymous.expect_close(0).await.code, 4001);
    hub.kill9().await;
}

#[tokio::test]
async fn auth_settings_come_from_the_toml_table_with_flags_winning() {
    let dir = common::data_dir();
    let config = dir.path().join("promhub.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\n[auth]\njwt_secret = \"{SECRET}\"\njwt_aud = [\"from-file\"]\n"),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let file_token = mint(&["--scopes", "publish:a", "--aud", "from-file"]);
    let flag_token = mint(&["--scopes", "publish:a", "--aud", "from-flag"]);

    let hub = HubProcess::spawn(dir.path(), &[], &["--config", config_arg]).await;
    assert_eq!(auth_answer(&hub.url, &file_token).await.1["op"], "OK");
    assert_eq!(
        auth_answer(&hub.url, &flag_token).await.1["code"],
        "jwt_invalid"
    );
    hub.kill9().await;

    let hub = HubProcess::spawn(
        dir.path(),
        &[("PROMHUB_JWT_AUD", "from-flag")],
        &["--config", config_arg],
    )
    .await;
    assert_eq!(auth_answer(&hub.url, &flag_token).await.1["op"], "OK");
    assert_eq!(
        auth_answer(&hub.url, &file_token).await.1["code"],
        "jwt_invalid"
    );
    hub.kill9().await;
}

#[tokio::test]
async fn bad_auth_settings_and_bad_token_requests_fail_with_a_clear_message() {
    let dir = common::data_dir();
    let data = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "serve",
                "--data",
                data,
                "--listen",
                "127.0.0.1:0",
                "--jwt-secret",
                SECRET,
                "--dev-scopes",
                "publish:**",
            ],
            "development mode",
        ),
        (
            &[
                "serve",
                "--data",
                data,
                "--listen",
                "127.0.0.1:0",
                "--jwt-secret",
                "too-short",
            ],
            "at least 32",
        ),
        (
            &[
                "serve",
                "--data",
                data,
                "--listen",
                "127.0.0.1:0",
                "--jwks-url",
                "http://idp.example/jwks",
            ],
            "https",
        ),
        (
            &["token", "--secret", SECRET, "--scopes", "publish:a..b"],
            "invalid scopes",
        ),
        (
            &["token", "--secret", "too-short", "--scopes", "publish:a"],
            "at least 32",
        ),
    ];
    for (args, expected) in cases {
        let output = promhub(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("too-short"), "secret echoed: {stderr}");
    }
}
