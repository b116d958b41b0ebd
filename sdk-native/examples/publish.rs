//! Publishes JSON events and prints the hub's receipts.
//!
//! ```text
//! cargo run -p promhub --example publish -- --topic demo.hello --payload '{"hello":"world"}' --count 3
//! ```

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use promhub::{Client, ClientConfig, PublishOptions};

#[derive(Debug, Parser)]
#[command(about = "Publish JSON events to a promhub hub")]
struct Args {
    /// The hub's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws")]
    url: String,
    /// A JWT (none: anonymous, for a hub in development mode).
    #[arg(long, env = "PROMHUB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "demo.hello")]
    topic: String,
    /// The payload, as JSON.
    #[arg(long, default_value = r#"{"hello":"world"}"#)]
    payload: String,
    /// How many times to publish it (up to 256 at once).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Latest-by-key key.
    #[arg(long)]
    key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let mut config = ClientConfig::new();
    if let Some(token) = args.token {
        config = config.token(token);
    }
    let client = Client::connect(args.url.as_str(), config)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;

    let opts = match &args.key {
        Some(key) => PublishOptions::new().key(key),
        None => PublishOptions::new(),
    };
    let results: Vec<_> = futures_util::stream::iter(0..args.count)
        .map(|_| client.publish(&args.topic, &payload, opts.clone()))
        .buffer_unordered(256)
        .collect()
        .await;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(ack) => println!("published {} as seq {}", ack.id, ack.seq),
            Err(e) => {
                failed += 1;
                eprintln!("publish failed: {e}");
            }
        }
    }
    client.close().await;
    anyhow::ensure!(failed == 0, "{failed} of {} publishes failed", args.count);
    Ok(())
}
