//! The chaos checker's handler: an `exec` program that appends a `start` and an `end`
//! line to a ledger file outside the pods, so executions are counted independently of
//! Workpool's own records. Usage: `workpool-ledger <ledger-file>`, the work JSON on stdin
//! (`data.ms` is how long to run, `data.fail` makes the attempt fail).
//!
//! A killed run writes no end, so each run starts a witness in a process group of its
//! own (a kill of the run's group spares it) that writes `gone` when the run's end of a
//! pipe closes: the moment the run died, however it died.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
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
    let start = line(Edge::Start);
    let _witness = witness(path, &start).map_err(|err| format!("witness: {err}"))?;
    append(path, &start).map_err(|err| format!("ledger: {err}"))?;
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

/// Starts the witness of this run; it holds the read end of a pipe whose write end
/// this process keeps (returned) until it exits.
fn witness(path: &str, start: &Line) -> std::io::Result<std::process::ChildStdin> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--witness", path])
        .stdin(std::process::Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut pipe = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the witness"))?;
    pipe.write_all(start.to_text().as_bytes())?;
    Ok(pipe)
}

/// The witness: reads the run's start line, waits for the pipe to close, writes `gone`.
fn watch(path: &str) -> ExitCode {
    let mut text = String::new();
    let _ = std::io::stdin().read_to_string(&mut text);
    let Some(mut gone) = Line::parse(text.lines().next().unwrap_or_default()) else {
        return ExitCode::FAILURE;
    };
    gone.edge = Edge::Gone;
    gone.at_ns = workpool_e2e::chaos::ledger::now_ns();
    match append(path, &gone) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path] = args.as_slice()
        && flag == "--witness"
    {
        return watch(path);
    }
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
