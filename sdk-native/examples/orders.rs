//! The transactional outbox, end to end: an "orders" app writes each order
//! and its `orders.created` event in one transaction, a drainer publishes
//! the events to the hub, and a subscriber prints them.
//!
//! ```text
//! # embedded store (SQLite file), with a hub started in this process:
//! cargo run -p promhub --example orders
//! # against a running hub, and MongoDB (a replica set: transactions):
//! cargo run -p promhub --example orders -- --hub ws://127.0.0.1:8090/ws \
//!     --mongodb mongodb://127.0.0.1:27017/shop?replicaSet=rs0
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use mongodb::bson::doc;
use promhub::outbox::mongo::{MongoOutbox, MongoOutboxOptions};
use promhub::outbox::sqlite::{SqliteOutbox, with_transaction};
use promhub::outbox::{Drainer, DrainerOptions, NewRecord, OutboxStore};
use promhub::{Client, ClientConfig, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(about = "Orders written with their events in one transaction, drained to a hub")]
struct Args {
    /// The hub's WebSocket URL (none: start a hub in this process).
    #[arg(long)]
    hub: Option<String>,
    /// A MongoDB URI naming the database (none: the embedded store).
    #[arg(long)]
    mongodb: Option<String>,
    /// Use MongoDB even without transactions (standalone server); the
    /// order and its event are then not written atomically.
    #[arg(long, requires = "mongodb")]
    allow_without_transactions: bool,
    /// The embedded store's database file (default: a temp dir).
    #[arg(long, conflicts_with = "mongodb")]
    db: Option<PathBuf>,
    /// How many orders to place.
    #[arg(long, default_value_t = 5)]
    orders: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order: String,
    customer: String,
    total_cents: u64,
}

fn order(n: u32) -> OrderCreated {
    OrderCreated {
        order: format!("order-{n}"),
        customer: format!("customer-{}", n % 3),
        total_cents: 1_000 + u64::from(n) * 250,
    }
}

/// The event of an order: keyed by customer, so one customer's orders are
/// published in the order they were placed.
fn event(order: &OrderCreated) -> Result<NewRecord> {
    Ok(NewRecord::new("orders.created", order)?.key(&order.customer))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let (hub_url, _hub) = match &args.hub {
        Some(url) => (url.clone(), None),
        None => {
            let (url, hub) = start_hub(scratch.path().join("hub")).await?;
            println!("started a hub at {url}");
            (url, Some(hub))
        }
    };

    // The subscriber: prints every order event.
    let subscriber = Client::connect(&hub_url, ClientConfig::new()).await?;
    let mut events = subscriber
        .subscribe::<OrderCreated>("orders.**", None, SubscribeOptions::new())
        .await?;

    // The drainer, publishing through its own client.
    let publisher = Arc::new(Client::connect(&hub_url, ClientConfig::new()).await?);
    let options = DrainerOptions {
        poll_interval: Duration::from_millis(50),
        ..DrainerOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drainer = match &args.mongodb {
        Some(uri) => {
            let store =
                place_orders_mongodb(uri, args.orders, args.allow_without_transactions).await?;
            let drainer = Drainer::new(Arc::new(store), publisher, options);
            tokio::spawn(async move {
                drainer
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            })
        }
        None => {
            let path = args
                .db
                .clone()
                .unwrap_or_else(|| scratch.path().join("shop.db"));
            let store = place_orders_embedded(&path, args.orders)?;
            let drainer = Drainer::new(Arc::new(store), publisher, options);
            tokio::spawn(async move {
                drainer
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            })
        }
    };

    for _ in 0..args.orders {
        let delivery = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .context("no event within 30 s")?
            .context("the subscription ended")?;
        let order = delivery.payload().map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "event seq {:>3}  {}  {} for {} ({} cents)  id {}",
            delivery.seq(),
            delivery.topic(),
            order.order,
            order.customer,
            order.total_cents,
            delivery.id()
        );
    }
    let _ = stop.send(());
    drainer.await?;
    Ok(())
}

/// Each order row and its outbox record in one SQLite transaction; one
/// more order fails on purpose and leaves neither behind.
fn place_orders_embedded(path: &std::path::Path, count: u32) -> Result<SqliteOutbox> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total_cents INTEGER)",
    )?;
    SqliteOutbox::create_schema(&conn)?;
    for n in 0..count {
        let created = order(n);
        let id = with_transaction(&mut conn, |tx| -> Result<String> {
            tx.execute(
                "INSERT OR REPLACE INTO orders (id, customer, total_cents) VALUES (?1, ?2, ?3)",
                rusqlite::params![created.order, created.customer, created.total_cents as i64],
            )?;
            Ok(SqliteOutbox::enqueue_in(tx, event(&created)?)?)
        })?;
        println!("placed {} (outbox record {id})", created.order);
    }
    let failed = with_transaction(&mut conn, |tx| -> Result<()> {
        tx.execute("INSERT INTO orders (id) VALUES ('order-declined')", [])?;
        SqliteOutbox::enqueue_in(tx, event(&order(999))?)?;
        bail!("payment declined")
    });
    println!(
        "order-declined: {} (rolled back with its event)",
        failed.unwrap_err()
    );
    Ok(SqliteOutbox::open(path)?)
}

async fn place_orders_mongodb(uri: &str, count: u32, allow: bool) -> Result<MongoOutbox> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let db = client
        .default_database()
        .context("the MongoDB URI must name a database: mongodb://HOST/DB")?;
    let options = MongoOutboxOptions {
        allow_without_transactions: allow,
        ..MongoOutboxOptions::default()
    };
    let outbox = MongoOutbox::open(&client, &db, "outbox", options).await?;
    let orders = db.collection::<mongodb::bson::Document>("orders");
    for n in 0..count {
        let created = order(n);
        let record = event(&created)?;
        let document = doc! {
            "_id": &created.order,
            "customer": &created.customer,
            "total_cents": created.total_cents as i64,
        };
        let id = if outbox.has_transactions() {
            promhub::outbox::mongo::with_transaction(&client, |session| {
                let (orders, outbox) = (orders.clone(), outbox.clone());
                let (document, record) = (document.clone(), record.clone());
                Box::pin(async move {
                    orders.insert_one(document).session(&mut *session).await?;
                    outbox.enqueue_in(session, record).await
                })
            })
            .await?
        } else {
            orders.insert_one(document).await?;
            outbox.enqueue(record, promhub::outbox::now_ms()).await?
        };
        println!("placed {} (outbox record {id})", created.order);
    }
    Ok(outbox)
}

/// A hub on a free port of 127.0.0.1 with its store in `data`.
async fn start_hub(data: PathBuf) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let config = promhub_hub::HubConfig {
        data,
        ..promhub_hub::HubConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}{}", listener.local_addr()?, config.ws_path);
    let hub = tokio::spawn(async move {
        if let Err(e) = promhub_hub::run(listener, config, std::future::pending()).await {
            eprintln!("hub: {e}");
        }
    });
    Ok((url, hub))
}
