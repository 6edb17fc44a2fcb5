//! `make bench`: Workpool's figures beside raw JetStream baselines measured in the same
//! run on the same server, medians of several runs, written as one table (figure,
//! baseline, ratio, target, command) into `docs/BENCHMARKS.md`. `--smoke` runs the same
//! suite in seconds, so `make test` keeps it working.

pub mod floor;
pub mod load;
pub mod operator_scale;
pub mod raw;
pub mod report;
pub mod suite;

use std::time::Duration;

use workpool_e2e::{HarnessError as Error, Result};

use crate::raw::RawSizes;
use crate::report::{Figures, Row, Target};
use crate::suite::Sizes;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workpool-bench",
    about = "Workpool's benchmark suite (make bench)"
)]
pub struct BenchArgs {
    /// Seconds-long sizes (the smoke run of `make test`); figures are not meaningful.
    #[arg(long)]
    pub smoke: bool,
    /// Runs of the suite, each on a fresh server and pool; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Jobs of the end-to-end run at saturation.
    #[arg(long, default_value_t = 60_000)]
    pub jobs: usize,
    /// Offered arrival rate of that run, in jobs per second (open loop). The default is
    /// above what two cores sustain, so the figure is the system's capacity.
    #[arg(long, default_value_t = 40_000)]
    pub rate: u64,
    /// Most POSTs the open loop keeps in flight (later ones count from their schedule).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Jobs queued with no worker running, then drained.
    #[arg(long, default_value_t = 200_000)]
    pub backlog: usize,
    /// Messages of the raw publish and fetch + ack baselines.
    #[arg(long, default_value_t = 200_000)]
    pub raw_messages: usize,
    /// Acks (and KV puts) outstanding at once in the raw baselines.
    #[arg(long, default_value_t = 4096)]
    pub raw_window: usize,
    /// Items per batch in the bulk-submit run (of as many jobs as the single-POST one).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Jobs in flight per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Jobs for the run on a server with `sync_interval: always`; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub synced_jobs: usize,
    /// WorkPools of the operator-scale run; 0 skips it.
    #[arg(long, default_value_t = 1_000)]
    pub operator_pools: usize,
    /// Write the table into this Markdown file, between its bench markers.
    #[arg(long)]
    pub write: Option<std::path::PathBuf>,
}

impl BenchArgs {
    fn sizes(&self) -> Sizes {
        if self.smoke {
            return Sizes {
                raw: RawSizes {
                    messages: 2_000,
                    window: 256,
                    kv_puts: 1_000,
                    sync_publishes: 100,
                    floor_jobs: 500,
                    submitters: 16,
                    concurrency: 32,
                },
                healthz_for: Duration::from_millis(500),
                connections: 16,
                backlog: 500,
                jobs: 500,
                rate: 2_000.0,
                max_in_flight: 64,
                batch: 50,
                half_for: Duration::from_millis(500),
                concurrency: 32,
            };
        }
        Sizes {
            raw: RawSizes {
                messages: self.raw_messages,
                window: self.raw_window,
                kv_puts: self.raw_messages / 4,
                sync_publishes: 2_000,
                floor_jobs: self.raw_messages / 4,
                submitters: 64,
                concurrency: self.concurrency,
            },
            healthz_for: Duration::from_secs(5),
            connections: 64,
            backlog: self.backlog,
            jobs: self.jobs,
            rate: self.rate as f64,
            max_in_flight: self.max_in_flight,
            batch: self.batch,
            half_for: Duration::from_secs(10),
            concurrency: self.concurrency,
        }
    }
}

pub const SYNCED_RAW: &str = "synced_raw_async_publish_per_s";
pub const SYNCED_E2E: &str = "synced_e2e_per_s";

const MIB: &str = "MiB";
const MS: &str = "ms";

/// The table's rows, in order.
pub const ROWS: &[Row] = &[
    row(
        "raw JetStream async publish (128 B)",
        raw::ASYNC_PUBLISH,
        "msgs/s",
        None,
        None,
    ),
    row("raw pull fetch + ack", raw::FETCH_ACK, "msgs/s", None, None),
    row("raw KV put", raw::KV_PUT, "puts/s", None, None),
    row(
        "raw synchronous publish, mean",
        raw::SYNC_PUBLISH_MEAN_MS,
        MS,
        None,
        None,
    ),
    row(
        "raw synchronous publish, p99",
        raw::SYNC_PUBLISH_P99_MS,
        MS,
        None,
        None,
    ),
    row(
        "floor: a job's JetStream operations alone (submit and consume racing) †",
        raw::JOB_FLOOR,
        "jobs/s",
        Some((raw::ASYNC_PUBLISH, "raw async publish")),
        None,
    ),
    row(
        "floor: a POST's JetStream operations alone †",
        raw::INGEST_FLOOR,
        "POST/s",
        None,
        None,
    ),
    row(
        "floor: a drained job's JetStream operations alone †",
        raw::DRAIN_FLOOR,
        "jobs/s",
        Some((raw::FETCH_ACK, "raw fetch + ack")),
        None,
    ),
    row(
        "end to end, single POSTs (open loop, saturation)",
        suite::E2E,
        "jobs/s",
        Some((raw::ASYNC_PUBLISH, "raw async publish")),
        Some(Target::RatioAtLeast(0.15)),
    ),
    row(
        "  the same, against its floor",
        suite::E2E,
        "jobs/s",
        Some((raw::JOB_FLOOR, "job floor")),
        None,
    ),
    row(
        "end to end, bulk submit (batches of 100, open loop, saturation)",
        suite::E2E_BULK,
        "jobs/s",
        Some((raw::ASYNC_PUBLISH, "raw async publish")),
        Some(Target::RatioAtLeast(0.3)),
    ),
    row(
        "  POST→worked p50 at saturation",
        suite::E2E_WORKED_P50_MS,
        MS,
        None,
        None,
    ),
    row(
        "  POST→worked p99 at saturation",
        suite::E2E_WORKED_P99_MS,
        MS,
        None,
        None,
    ),
    row(
        "ingest: highest sustained POST rate (no workers)",
        suite::INGEST,
        "POST/s",
        Some((suite::HEALTHZ, "GET /healthz of the same api")),
        Some(Target::RatioAtLeast(0.5)),
    ),
    row(
        "  the same, against its floor",
        suite::INGEST,
        "POST/s",
        Some((raw::INGEST_FLOOR, "POST floor")),
        None,
    ),
    row(
        "POST p50 at half the end-to-end rate",
        suite::HALF_POST_P50_MS,
        MS,
        None,
        None,
    ),
    row(
        "POST p99 at half the end-to-end rate",
        suite::HALF_POST_P99_MS,
        MS,
        Some((raw::SYNC_PUBLISH_MEAN_MS, "mean synchronous publish")),
        Some(Target::RatioAtMost(25.0)),
    ),
    row(
        "POST p99.9 at half the end-to-end rate",
        suite::HALF_POST_P999_MS,
        MS,
        Some((suite::HALF_POST_P99_MS, "POST p99")),
        Some(Target::RatioAtMost(3.0)),
    ),
    row(
        "  POST→worked p50 at half",
        suite::HALF_WORKED_P50_MS,
        MS,
        None,
        None,
    ),
    row(
        "  POST→worked p99 at half",
        suite::HALF_WORKED_P99_MS,
        MS,
        None,
        None,
    ),
    row(
        "backlog drain (queued before the worker starts)",
        suite::DRAIN,
        "jobs/s",
        Some((raw::FETCH_ACK, "raw fetch + ack")),
        Some(Target::RatioAtLeast(0.5)),
    ),
    row(
        "  the same, against its floor",
        suite::DRAIN,
        "jobs/s",
        Some((raw::DRAIN_FLOOR, "drain floor")),
        None,
    ),
    row(
        "api RSS, idle",
        suite::API_IDLE_MIB,
        MIB,
        None,
        Some(Target::AtMost(20.0)),
    ),
    row(
        "worker RSS, idle",
        suite::WORKER_IDLE_MIB,
        MIB,
        None,
        Some(Target::AtMost(20.0)),
    ),
    row(
        "api RSS after the load runs",
        suite::API_LOADED_MIB,
        MIB,
        Some((suite::API_IDLE_MIB, "idle")),
        Some(Target::RatioAtMost(1.5)),
    ),
    row(
        "worker RSS after the load runs",
        suite::WORKER_LOADED_MIB,
        MIB,
        Some((suite::WORKER_IDLE_MIB, "idle")),
        Some(Target::RatioAtMost(1.5)),
    ),
    row(
        "end to end on a server with sync_interval: always (one run)",
        SYNCED_E2E,
        "jobs/s",
        Some((SYNCED_RAW, "raw async publish, same server")),
        None,
    ),
];

const fn row(
    figure: &'static str,
    key: &'static str,
    unit: &'static str,
    baseline: Option<(&'static str, &'static str)>,
    target: Option<Target>,
) -> Row {
    Row {
        figure,
        key,
        unit,
        baseline,
        target,
    }
}

/// The operator-scale rows (one run, not a median: it needs the shared control plane).
pub const OPERATOR_ROWS: &[Row] = &[
    row(
        "operator: 1,000 WorkPools reconciled (one run)",
        operator_scale::OPERATOR_SECS,
        "s",
        Some((
            operator_scale::PLAIN_SECS,
            "a plain client creating the same objects",
        )),
        Some(Target::RatioAtMost(3.0)),
    ),
    row(
        "  reconciles per pool",
        operator_scale::RECONCILES_PER_POOL,
        "",
        None,
        Some(Target::AtMost(1.5)),
    ),
    row(
        "  operator RSS after",
        operator_scale::OPERATOR_RSS_MIB,
        MIB,
        None,
        Some(Target::AtMost(100.0)),
    ),
];

/// Runs the suite and returns the medians (and the synced figures of one run).
pub async fn measure(args: &BenchArgs) -> Result<Figures> {
    let sizes = args.sizes();
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        println!("run {} of {} ...", run + 1, args.runs.max(1));
        runs.push(suite::one_run(sizes, run).await?);
    }
    let mut figures = report::medians(&runs);
    if args.synced_jobs > 0 && !args.smoke {
        println!("one run on a nats-server with sync_interval: always ...");
        let (raw, e2e) = suite::synced(sizes, args.synced_jobs).await?;
        figures.insert(SYNCED_RAW, raw);
        figures.insert(SYNCED_E2E, e2e);
    }
    if args.operator_pools > 0 {
        let pools = if args.smoke { 5 } else { args.operator_pools };
        println!("the operator with {pools} WorkPools ...");
        // Its rows say "not measured" if it fails; the other figures still count.
        match operator_scale::measure(pools).await {
            Ok(operator) => figures.extend(operator),
            Err(err) => eprintln!("the operator-scale run failed: {err}"),
        }
    }
    Ok(figures)
}

/// Every row of the table, in order.
pub fn rows() -> Vec<Row> {
    ROWS.iter().chain(OPERATOR_ROWS).copied().collect()
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let figures = measure(&args).await?;
    let command = if args.smoke {
        "workpool-bench --smoke"
    } else {
        "make bench"
    };
    let table = report::table(&rows(), &figures, command);
    println!("\n{table}");
    if let Some(path) = &args.write {
        let heading = format!(
            "Medians of {} runs; {}. Regenerated by `make bench`.\n\n",
            args.runs.max(1),
            machine()
        );
        let document = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        std::fs::write(
            path,
            report::splice(&document, &format!("{heading}{table}")),
        )
        .map_err(Error::io(format!("writing {}", path.display())))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// The machine the figures came from: cores and CPU model.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}); load generator, api, worker and nats-server share them")
}
