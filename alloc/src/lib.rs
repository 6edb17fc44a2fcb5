//! The allocator of the service binaries (mimalloc), and the release of the memory it
//! holds free once a burst of work is over.
//!
//! mimalloc keeps the pages a thread freed and returns them to the OS only when that
//! thread allocates again or collects; an api that had served some 800 connections at
//! once held more than twice its idle size afterwards, for as long as it stayed idle
//! ([BENCHMARKS.md](../../docs/BENCHMARKS.md#reading-the-current-figures)).
//! [`runtime`] builds the binaries' async runtime so that its threads give it back: each
//! collects its heap when it parks ([`release_if_due`], at most every [`RELEASE_EVERY`]),
//! and [`wake_for_release`] wakes the threads that often, so a burst's memory goes back
//! within a second or two of its end.
#![deny(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use mimalloc::MiMalloc as Allocator;

/// How often a thread may collect: rare enough that a busy runtime pays nothing
/// measurable for it (docs/BENCHMARKS.md).
pub const RELEASE_EVERY: Duration = Duration::from_millis(500);

thread_local! {
    static LAST_RELEASE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A multi-threaded runtime (all drivers enabled) whose threads return the memory they
/// freed when they go idle.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(release_if_due)
        .build()?;
    runtime.spawn(wake_for_release());
    Ok(runtime)
}

/// Returns what this thread's heap holds free to the OS, unless it did so less than
/// [`RELEASE_EVERY`] ago. Meant for a runtime's `on_thread_park`.
pub fn release_if_due() {
    let now = Instant::now();
    let due = LAST_RELEASE.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= RELEASE_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// Wakes the runtime's worker threads every other [`RELEASE_EVERY`], so that a thread
/// parked since a burst parks again and [`release_if_due`] runs after the burst's
/// memory was freed. Spawn it once on the runtime.
pub async fn wake_for_release() {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut ticks = tokio::time::interval(RELEASE_EVERY * 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A spawned task wakes a parked worker to take it: one per worker reaches all.
        for _ in 0..workers {
            tokio::spawn(std::future::ready(()));
        }
    }
}

#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect takes no pointer and mimalloc allows it on any thread at any
    // time: it frees the calling thread's empty pages and purges the arenas.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_collects_at_most_once_per_interval() {
        LAST_RELEASE.with(|last| last.set(None));
        release_if_due();
        let first = LAST_RELEASE.with(Cell::get);
        assert!(first.is_some());
        release_if_due();
        assert_eq!(
            LAST_RELEASE.with(Cell::get),
            first,
            "collected again at once"
        );
    }
}
