//! The release returns freed memory to the OS: without it mimalloc keeps it.

mod common;
use common::rss_kib;

#[global_allocator]
static ALLOCATOR: workpool_alloc::Allocator = workpool_alloc::Allocator;

const BLOCKS: usize = 64 * 1024;
const BLOCK_BYTES: usize = 512;

/// 32 MiB in small blocks, each touched, then freed: what a burst of connections leaves.
fn burst() {
    let blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|n| vec![n as u8; BLOCK_BYTES]).collect();
    drop(std::hint::black_box(blocks));
}

#[test]
fn a_burst_s_memory_is_kept_until_the_thread_releases_it() {
    // On a thread of its own, so that no other test's allocations share its heap.
    std::thread::spawn(|| {
        let before = rss_kib();
        burst();
        let kept = rss_kib();
        let burst_kib = (BLOCKS * BLOCK_BYTES / 1024) as u64;
        assert!(
            kept > before + burst_kib / 2,
            "mimalloc already returned the burst's memory ({before} → {kept} kB): the release is not what frees it"
        );
        workpool_alloc::release_if_due();
        let released = rss_kib();
        assert!(
            released < before + burst_kib / 4,
            "after the release the thread still holds {released} kB (before the burst {before}, with it {kept})"
        );
    })
    .join()
    .map_err(|_| "the burst thread panicked")
    .unwrap_or_else(|err| panic!("{err}"));
}
