//! A worker in a consumer group: prints every event it is handed and
//! acknowledges it. Start several to share the work; stop one and the others
//! (or its restart) get what it had not acknowledged.
//!
//! ```text
//! cargo run -p promhub --example subscribe -- --pattern 'process.**' --group workers
//! ```

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use promhub::{Client, ClientConfig, SubscribeOptions};

#[derive(Debug, Parser)]
#[command(about = "Consume events from a promhub hub as a worker of a consumer group")]
struct Args {
    /// The hub's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws")]
    url: String,
    /// A JWT (none: anonymous, for a hub in development mode).
    #[arg(long, env = "PROMHUB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Topic pattern (`*` one segment, `**` any number).
    #[arg(long, default_value = "process.**")]
    pattern: String,
    /// The consumer group.
    #[arg(long, default_value = "workers", conflicts_with = "ephemeral")]
    group: String,
    /// An ephemeral subscription instead of a group: live events only.
    #[arg(long)]
    ephemeral: bool,
    /// A new group starts at the first retained event (default: the next
    /// one published).
    #[arg(long)]
    earliest: bool,
    /// First the latest event of every key.
    #[arg(long)]
    snapshot: bool,
    /// Stop after this many events.
    #[arg(long)]
    max: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = ClientConfig::new();
    if let Some(token) = args.token {
        config = config.token(token);
    }
    let client = Client::connect(args.url.as_str(), config)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;

    // Connection events (reconnects, token refreshes…) on stderr.
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            eprintln!("connection: {event:?}");
        }
    });

    let mut opts = SubscribeOptions::new().snapshot(args.snapshot);
    if args.earliest {
        opts = opts.from_earliest();
    }
    let group = (!args.ephemeral).then_some(args.group.as_str());
    let mut subscription = client
        .subscribe::<serde_json::Value>(&args.pattern, group, opts)
        .await
        .with_context(|| format!("cannot subscribe to {}", args.pattern))?;
    eprintln!(
        "subscribed to {} ({}) from seq {}",
        args.pattern,
        group.map_or("ephemeral".to_owned(), |g| format!("group {g}")),
        subscription.from_seq()
    );

    let mut handled = 0u64;
    while let Some(delivery) = subscription.next().await {
        println!(
            "{} seq={} attempt={} key={} {}",
            delivery.topic(),
            delivery.seq(),
            delivery.attempt(),
            delivery.key().unwrap_or("-"),
            delivery.raw_payload().get()
        );
        if let Err(e) = delivery.ack().await {
            // Not connected: the hub delivers it again after the reconnect.
            eprintln!("ack failed: {e}");
        }
        handled += 1;
        if args.max.is_some_and(|max| handled >= max) {
            break;
        }
    }
    if let Some(reason) = subscription.end_reason() {
        eprintln!("subscription ended: {reason}");
    }
    drop(subscription);
    client.close().await;
    Ok(())
}
