//! `promhub-bench`: load a promhub hub on this machine and measure it.
//!
//! ```text
//! promhub-bench (--url ws://127.0.0.1:PORT/ws [--hub-pid PID] | --spawn-hub target/release/promhub [--hub-arg ARG]...)
//!     [--token T] [--json] COMMAND
//!   load     --publishers N --subscribers M --groups G --payload B --in-flight W
//!            (--count C | --duration SECS) [--rate R] [--backlog] ...
//!   idle     --connections N
//!   targets  [publish consume fanout latency idle groups subscriptions group-memory]
//!   scenarios [--compare nats] [--runs N] [--nats-server PATH] [publish consume flat paced]
//! ```
//!
//! Text goes to stdout by default; `--json` prints one JSON document
//! instead (for scripts). Only loopback hubs are accepted, and every run is
//! bounded by a count or a duration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use promhub_bench::idle::{self, IdleOptions};
use promhub_bench::load::{self, LoadOptions};
use promhub_bench::scenarios::{self, Comparison};
use promhub_bench::target::{Hub, default_data_base};
use promhub_bench::targets::{self, HubSource};

#[derive(Debug, Parser)]
#[command(
    name = "promhub-bench",
    version,
    about = "Load and measure a promhub hub on this machine"
)]
struct Cli {
    /// A running hub (loopback only), e.g. ws://127.0.0.1:8090/ws
    #[arg(
        long,
        conflicts_with = "spawn_hub",
        required_unless_present = "spawn_hub"
    )]
    url: Option<String>,
    /// The running hub's pid, to report its CPU and RSS
    #[arg(long, requires = "url")]
    hub_pid: Option<u32>,
    /// Spawn this promhub binary on 127.0.0.1:0 with a fresh store instead
    #[arg(long)]
    spawn_hub: Option<PathBuf>,
    /// Extra argument for the spawned hub (repeat), e.g. --hub-arg=--sync --hub-arg=full
    #[arg(long, allow_hyphen_values = true, requires = "spawn_hub")]
    hub_arg: Vec<String>,
    /// Where spawned hubs keep their stores (a real disk, not tmpfs)
    #[arg(long, default_value_os_t = default_data_base())]
    data_base: PathBuf,
    /// AUTH token for hubs that verify tokens
    #[arg(long, env = "PROMHUB_BENCH_TOKEN")]
    token: Option<String>,
    /// Print one JSON document instead of text
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publishers and subscribers: throughput and latency percentiles
    Load(LoadArgs),
    /// Hub memory per idle authenticated connection
    Idle(IdleArgs),
    /// The hub's performance targets, each measured and checked
    Targets {
        /// Which (default: all): publish consume fanout latency idle groups subscriptions group-memory
        names: Vec<String>,
    },
    /// Publish, consume, flat-out and paced delivery with CPU per event;
    /// with --compare nats against NATS JetStream in the same run
    Scenarios(ScenarioArgs),
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    /// Also run every scenario against this system: nats (JetStream)
    #[arg(long, value_parser = ["nats"])]
    compare: Option<String>,
    /// Runs of each scenario per system (medians are reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The nats-server binary (else found, or built with `go install`)
    #[arg(long, env = "PROMHUB_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// JetStream's sync_interval, e.g. `always` (fsync before every ack,
    /// as promhub's default `--sync full`) [default: JetStream's, 2m]
    #[arg(long)]
    nats_sync: Option<String>,
    /// Which (default: all): publish consume flat paced
    names: Vec<String>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Durable groups the subscribers are spread over (0: ephemeral)
    #[arg(long, default_value_t = 0)]
    groups: usize,
    /// Payload bytes
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Unanswered PUBLISHes per publisher
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Events to publish in all
    #[arg(
        long,
        conflicts_with = "duration",
        required_unless_present = "duration"
    )]
    count: Option<u64>,
    /// Seconds to publish for
    #[arg(long)]
    duration: Option<f64>,
    /// Total publish rate, events/s (default: as fast as the window allows)
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "bench.load")]
    topic: String,
    /// opts.max_inflight of group members
    #[arg(long, default_value_t = 1000)]
    max_inflight: u32,
    /// Groups: publish first, then consume the backlog from the store
    #[arg(long)]
    backlog: bool,
    /// Seconds subscribers get after the last PUBACK
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Subscribers that record latency (the rest only count)
    #[arg(long, default_value_t = 32)]
    latency_subscribers: usize,
    /// Subscribers connect to this hub of the same cluster instead
    /// (repeat: in turn); publishers stay on --url / the spawned hub
    #[arg(long, value_name = "URL")]
    subscribe_url: Vec<String>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    if !(value.is_finite() && value > 0.0 && value <= 24.0 * 3600.0) {
        bail!("{flag} must be a number of seconds in (0, 86400]");
    }
    Ok(Duration::from_secs_f64(value))
}

impl LoadArgs {
    fn options(self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            publishers: self.publishers,
            subscribers: self.subscribers,
            groups: self.groups,
            payload_bytes: self.payload,
            in_flight: self.in_flight,
            count: self.count,
            duration: self
                .duration
                .map(|d| seconds(d, "--duration"))
                .transpose()?,
            rate: self.rate,
            topic: self.topic,
            max_inflight: self.max_inflight,
            backlog: self.backlog,
            drain_timeout: Some(seconds(self.drain_timeout, "--drain-timeout")?),
            latency_subscribers: self.latency_subscribers,
            subscribe_urls: self.subscribe_url,
        })
    }
}

/// One JSON document, or the text.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let source = match (&cli.url, &cli.spawn_hub) {
        (Some(url), _) => HubSource::External {
            url: url.clone(),
            pid: cli.hub_pid,
            token: cli.token.clone(),
        },
        (None, Some(binary)) => HubSource::Spawn {
            binary: binary.clone(),
            args: cli.hub_arg.clone(),
            data_base: cli.data_base.clone(),
        },
        (None, None) => bail!("give --url or --spawn-hub"),
    };
    let hub = || async {
        let hub = match &source {
            HubSource::External { url, pid, .. } => Hub::external(url, *pid)?,
            HubSource::Spawn {
                binary,
                args,
                data_base,
            } => Hub::spawn(binary, args, data_base).await?,
        };
        anyhow::Ok(hub.with_token(cli.token.clone()))
    };
    match cli.command {
        Command::Load(args) => {
            let options = args.options()?;
            options.validate()?;
            let hub = hub().await?;
            let report = load::run(&hub, &options).await;
            hub.stop().await;
            let report = report?;
            print_report(cli.json, &report, || report.to_text())?;
        }
        Command::Idle(args) => {
            let hub = hub().await?;
            let options = IdleOptions {
                connections: args.connections,
                warmup: args.warmup,
            };
            let report = idle::run(&hub, &options).await;
            hub.stop().await;
            let report = report?;
            print_report(cli.json, &report, || report.to_text())?;
        }
        Command::Scenarios(args) => {
            let comparison = match args.compare.as_deref() {
                Some("nats") => {
                    let build_dir = PathBuf::from("target/nats-bin");
                    let nats_server =
                        promhub_bench::nats::find_or_build(args.nats_server.as_deref(), &build_dir)
                            .await?;
                    Some(Comparison {
                        nats_server,
                        data_base: cli.data_base.clone(),
                        nats_sync: args.nats_sync.clone(),
                    })
                }
                Some(other) => bail!("unknown system to compare with: {other}"),
                None => None,
            };
            let report = scenarios::run(
                &source,
                &args.names,
                args.runs,
                comparison.as_ref(),
                &cli.data_base,
            )
            .await?;
            print_report(cli.json, &report, || report.to_text())?;
        }
        Command::Targets { names } => {
            let results = targets::run(&source, &names).await?;
            print_report(cli.json, &results, || {
                results.iter().map(|r| r.line() + "\n").collect()
            })?;
        }
    }
    Ok(())
}
