//! The suite's smoke run: every figure of the table is measured, against a real
//! nats-server and the real api and worker binaries, in seconds. The figures of so small
//! a run mean nothing; `make bench` is the measurement.

#![allow(clippy::expect_used)] // tests state their expectations

use clap::Parser;
use workpool_bench::{BenchArgs, SYNCED_E2E, report};

#[tokio::test(flavor = "multi_thread")]
async fn a_smoke_run_measures_every_row_of_the_table() {
    let args = BenchArgs::parse_from(["workpool-bench", "--smoke", "--runs", "1"]);
    let figures = workpool_bench::measure(&args).await.expect("the smoke run");
    let rows = workpool_bench::rows();
    let table = report::table(&rows, &figures, "workpool-bench --smoke");
    for row in rows.iter().filter(|row| row.key != SYNCED_E2E) {
        let value = figures.get(row.key).copied();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{} ({}) was not measured: {value:?}",
            row.figure,
            row.key
        );
        assert!(table.contains(row.figure), "{} is in the table", row.figure);
        if let Some((baseline, _)) = row.baseline {
            assert!(
                figures.contains_key(baseline),
                "the baseline of {}",
                row.figure
            );
        }
    }
}
