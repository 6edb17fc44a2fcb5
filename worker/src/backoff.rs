//! The worker's own retry delays (backon): a results-bucket call gives up after about half
//! a minute, and the message it was for is redelivered. Waits that last until NATS answers
//! (the pool's objects at startup, a pull) use `workpool_runtime::retry`.

use std::time::Duration;

use backon::ExponentialBuilder;

/// How many times a results-bucket call is made while NATS is unreachable.
pub(crate) const RESULTS_BUCKET_CALLS: usize = 20;

/// Between the calls to the results bucket: 100 ms, doubling up to 2 s (the 20 calls
/// span about half a minute).
pub(crate) const RESULTS_BUCKET: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(2))
    .with_max_times(RESULTS_BUCKET_CALLS - 1);

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    /// backon multiplies in `f32`; a millisecond is precise enough for these delays.
    fn millis(delay: Duration) -> u128 {
        (delay.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn results_bucket_calls_give_up_after_about_half_a_minute() {
        let delays: Vec<Duration> = RESULTS_BUCKET.build().collect();
        // One pause between two calls.
        assert_eq!(delays.len(), RESULTS_BUCKET_CALLS - 1);
        let shown: Vec<u128> = delays.iter().copied().map(millis).collect();
        assert_eq!(shown[..6], [100, 200, 400, 800, 1600, 2000]);
        assert!(shown[6..].iter().all(|&delay| delay == 2000), "{shown:?}");
        let total: Duration = delays.iter().sum();
        assert_eq!(millis(total), 31_100);
    }
}
