//! The chaos checker's handler: an `exec` program that sends a `start` and an `end` line
//! (and `tick`s while it runs) to the checker's ledger server outside the pods, so
//! executions are counted independently of Workpool's own records. Usage:
//! `workpool-ledger <host:port>`, the work JSON on stdin (`data.ms` is how long to run,
//! `data.fail` makes the attempt fail).
//!
//! A killed run sends no end; its connection closes when its process dies, however it
//! died, and the server writes `gone` then. A run that cannot reach the ledger fails
//! before it starts, so no execution goes uncounted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use workpool_e2e::chaos::ledger::{Edge, Line, TICK_NS};

fn send(ledger: &mut TcpStream, line: &Line) -> Result<(), String> {
    ledger
        .write_all(line.to_text().as_bytes())
        .map_err(|err| format!("ledger: {err}"))
}

fn run(address: &str) -> Result<serde_json::Value, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|err| format!("reading stdin: {err}"))?;
    let work: serde_json::Value =
        serde_json::from_str(&input).map_err(|err| format!("work JSON: {err}"))?;
    let mut ledger =
        TcpStream::connect(address).map_err(|err| format!("ledger at {address}: {err}"))?;
    // Each line is sent as written: its timestamp is when it happened.
    ledger
        .set_nodelay(true)
        .map_err(|err| format!("ledger: {err}"))?;
    let line = |edge| Line::of_work(edge, &work);
    send(&mut ledger, &line(Edge::Start))?;
    let until = Instant::now() + Duration::from_millis(work["data"]["ms"].as_u64().unwrap_or(0));
    let tick = Duration::from_nanos(TICK_NS as u64);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(tick));
        if Instant::now() < until {
            send(&mut ledger, &line(Edge::Tick))?;
        }
    }
    send(&mut ledger, &line(Edge::End))?;
    if work["data"]["fail"].as_bool() == Some(true) {
        return Err("failing as asked".into());
    }
    Ok(serde_json::json!({"n": work["data"]["n"]}))
}

fn main() -> ExitCode {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: workpool-ledger <host:port>");
        return ExitCode::from(2);
    };
    match run(&address) {
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
