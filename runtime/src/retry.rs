//! The retry delays the components wait with (backon) while NATS or their pool's objects
//! are not reachable: waits that last until NATS answers (100 ms, doubling up to 5 s, for
//! as long as it takes), and the worker's results-bucket calls, which give up after about
//! half a minute so the message they were for is redelivered.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The longest pause between two tries of a wait that lasts until NATS answers.
const UNTIL_ANSWERED_MAX: Duration = Duration::from_secs(5);

/// Tries until NATS answers: 100 ms, doubling up to 5 s, without end. For
/// `backon::Retryable::retry`, or step it with [`UntilAnswered`].
pub const UNTIL_ANSWERED: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(UNTIL_ANSWERED_MAX)
    .without_max_times();

/// How many times a results-bucket call is made while NATS is unreachable.
pub const RESULTS_BUCKET_CALLS: usize = 20;

/// Between the calls to the results bucket: 100 ms, doubling up to 2 s (the 20 calls
/// span about half a minute).
pub const RESULTS_BUCKET: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(2))
    .with_max_times(RESULTS_BUCKET_CALLS - 1);

/// The pauses of a wait that lasts until NATS answers, for loops that must also watch a
/// shutdown between tries; start a new one to begin again from the shortest.
#[derive(Debug)]
pub struct UntilAnswered(ExponentialBackoff);

impl UntilAnswered {
    pub fn new() -> Self {
        Self(UNTIL_ANSWERED.build())
    }

    /// The pause before the next try. Never runs out: the backoff has no limit of tries
    /// (past `usize::MAX` of them the longest pause stands in).
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(UNTIL_ANSWERED_MAX)
    }
}

impl Default for UntilAnswered {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// backon multiplies in `f32`; a millisecond is precise enough for these delays.
    fn millis(delay: Duration) -> u128 {
        (delay.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn a_wait_for_nats_doubles_to_five_seconds_and_never_ends() {
        let mut delays = UntilAnswered::new();
        let first: Vec<u128> = (0..8).map(|_| millis(delays.next_delay())).collect();
        assert_eq!(first, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        for _ in 0..10_000 {
            assert_eq!(millis(delays.next_delay()), 5000);
        }
        assert_eq!(UNTIL_ANSWERED.build().take(100_000).count(), 100_000);
    }

    #[test]
    fn a_new_wait_starts_from_the_shortest_pause() {
        let mut delays = UntilAnswered::new();
        for _ in 0..5 {
            delays.next_delay();
        }
        assert_eq!(millis(UntilAnswered::new().next_delay()), 100);
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
