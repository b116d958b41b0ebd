//! Hub benchmarks over loopback against the real `promhub` binary: the
//! hub issue's targets, measured by the `promhub-bench` harness (one source
//! of measurement code; see docs/sizing.md for the full harness).
//!
//! `cargo bench -p promhub-hub --bench hub [-- TARGET...]` with targets
//! `publish`, `consume`, `fanout`, `latency`, `idle`, `groups`, `subscriptions`,
//! `group-memory` (default: all), each on a fresh hub subprocess and store.
//! `--url ws://...` targets an already running hub instead (then `idle` and
//! `group-memory` cannot read the hub's memory and are skipped).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use promhub_bench::targets::{self, HubSource};

fn main() -> Result<()> {
    let mut names = Vec::new();
    let mut url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "--url" => url = Some(args.next().context("--url needs a value")?),
            name if !name.starts_with('-') => names.push(name.to_owned()),
            other => bail!("unknown argument {other}"),
        }
    }
    let source = match url {
        Some(url) => HubSource::External {
            url,
            pid: None,
            token: None,
        },
        None => HubSource::Spawn {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_promhub")),
            args: Vec::new(),
            // Under the target dir: a real disk (tmp may be tmpfs, where
            // fsync is free and the numbers would lie).
            data_base: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = runtime.block_on(targets::run(&source, &names))?;
    for result in &results {
        println!("{}", result.line());
    }
    Ok(())
}
