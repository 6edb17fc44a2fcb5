//! The chaos checker's handler: an `exec` program that appends a `start` and an `end`
//! line to a ledger file outside the pods, so executions are counted independently of
//! Workpool's own records. Usage: `workpool-ledger <ledger-file>`, the work JSON on stdin
//! (`data.ms` is how long to run, `data.fail` makes the attempt fail).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use workpool_e2e::chaos::ledger::{Edge, Line, TICK_NS};

fn append(path: &str, line: &Line) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: appends of one short write do not interleave.
    file.write_all(line.to_text().as_bytes())
}

fn run(path: &str) -> Result<serde_json::Value, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|err| format!("reading stdin: {err}"))?;
    let work: serde_json::Value =
        serde_json::from_str(&input).map_err(|err| format!("work JSON: {err}"))?;
    let line = |edge| Line::of_work(edge, &work);
    append(path, &line(Edge::Start)).map_err(|err| format!("ledger: {err}"))?;
    let until = Instant::now() + Duration::from_millis(work["data"]["ms"].as_u64().unwrap_or(0));
    let tick = Duration::from_nanos(TICK_NS as u64);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(tick));
        if Instant::now() < until {
            append(path, &line(Edge::Tick)).map_err(|err| format!("ledger: {err}"))?;
        }
    }
    append(path, &line(Edge::End)).map_err(|err| format!("ledger: {err}"))?;
    if work["data"]["fail"].as_bool() == Some(true) {
        return Err("failing as asked".into());
    }
    Ok(serde_json::json!({"n": work["data"]["n"]}))
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: workpool-ledger <ledger-file>");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
