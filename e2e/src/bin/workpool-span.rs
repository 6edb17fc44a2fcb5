//! A test `exec` handler that shows when it ran: it prints its start and end times in
//! nanoseconds since the epoch, one per line, and sleeps between them (60 s when its
//! input mentions `long`, 15 s when it mentions `medium`, else 20 ms). The keyed cluster test checks overlaps with it;
//! it is in the test image, which has no shell.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(err) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("reading stdin: {err}");
        return ExitCode::FAILURE;
    }
    let start = now_ns();
    let pause = if input.contains("long") {
        Duration::from_secs(60)
    } else if input.contains("medium") {
        Duration::from_secs(15)
    } else {
        Duration::from_millis(20)
    };
    std::thread::sleep(pause);
    println!("{start}\n{}", now_ns());
    ExitCode::SUCCESS
}
