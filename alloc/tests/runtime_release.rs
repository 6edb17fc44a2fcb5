//! The service runtime gives back what a burst on its worker threads freed, once idle.

use std::time::Duration;

mod common;
use common::rss_kib;

#[global_allocator]
static ALLOCATOR: workpool_alloc::Allocator = workpool_alloc::Allocator;

const TASKS: usize = 8;
const BLOCKS: usize = 8 * 1024;
const BLOCK_BYTES: usize = 512;

#[test]
fn a_burst_on_the_runtime_is_released_once_its_threads_are_idle() {
    let runtime = workpool_alloc::runtime().unwrap_or_else(|err| panic!("no runtime: {err}"));
    let burst_kib = (TASKS * BLOCKS * BLOCK_BYTES / 1024) as u64;
    let (before, after) = runtime.block_on(async {
        let before = rss_kib();
        // Tasks that each hold their blocks across an await, as connections hold buffers,
        // spread over the worker threads.
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                tokio::spawn(async move {
                    let blocks: Vec<Vec<u8>> = (0..BLOCKS)
                        .map(|b| vec![(n + b) as u8; BLOCK_BYTES])
                        .collect();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(std::hint::black_box(blocks));
                })
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap_or_else(|err| panic!("a burst task failed: {err}"));
        }
        // Idle: the threads park, are woken, park again.
        tokio::time::sleep(workpool_alloc::RELEASE_EVERY * 6).await;
        (before, rss_kib())
    });
    assert!(
        after < before + burst_kib / 4,
        "idle after a burst of {burst_kib} kB the process holds {after} kB (before it {before})"
    );
}
