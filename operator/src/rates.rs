//! Rates of a pool's queue, from two looks at its work stream: what came in (messages
//! stored, its last sequence) and what went out (acknowledged, so removed) per second
//! between them. The operator keeps each pool's last look in memory; the first look
//! after a start gives no rate yet.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

/// One look at a work stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Instant,
    /// The stream's last sequence: every message it ever stored.
    pub published: u64,
    /// Messages it holds now.
    pub stored: u64,
}

/// Messages per second in and out between two looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub in_per_second: f64,
    pub out_per_second: f64,
}

impl Rates {
    /// The rates between `earlier` and `later`; `None` if no time passed or the stream
    /// was made again in between (its sequence went back).
    pub fn between(earlier: Sample, later: Sample) -> Option<Self> {
        let seconds = later.at.checked_duration_since(earlier.at)?.as_secs_f64();
        let came_in = later.published.checked_sub(earlier.published)?;
        if seconds <= 0.0 {
            return None;
        }
        // Out: what came in, less what the stream holds more than before.
        let held_more = i128::from(later.stored) - i128::from(earlier.stored);
        let went_out = (i128::from(came_in) - held_more).max(0);
        Some(Self {
            in_per_second: round(came_in as f64 / seconds),
            out_per_second: round(went_out as f64 / seconds),
        })
    }
}

/// One decimal: enough to read, and a status that does not change with every jitter.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The last look at each pool's stream.
#[derive(Debug, Default)]
pub struct Samples {
    last: Mutex<HashMap<String, Sample>>,
}

impl Samples {
    /// Records `sample` for `pool` and gives the rates since the one before.
    pub fn record(&self, pool: &str, sample: Sample) -> Option<Rates> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let earlier = last.insert(pool.to_owned(), sample)?;
        Rates::between(earlier, sample)
    }

    /// Forgets a pool that is gone.
    pub fn forget(&self, pool: &str) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pool);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn in_is_what_was_stored_and_out_what_left() {
        let start = Instant::now();
        let earlier = Sample {
            at: start,
            published: 100,
            stored: 40,
        };
        // 50 came in within 10 s; the stream holds 10 more: 40 went out.
        let later = Sample {
            at: start + Duration::from_secs(10),
            published: 150,
            stored: 50,
        };
        let rates = Rates::between(earlier, later).expect("rates");
        assert_eq!((rates.in_per_second, rates.out_per_second), (5.0, 4.0));
    }

    #[test]
    fn a_first_look_or_a_remade_stream_gives_no_rate() {
        let samples = Samples::default();
        let now = Instant::now();
        let look = |published, secs| Sample {
            at: now + Duration::from_secs(secs),
            published,
            stored: 0,
        };
        assert_eq!(samples.record("ns/a", look(10, 0)), None);
        assert!(samples.record("ns/a", look(20, 1)).is_some());
        assert_eq!(
            samples.record("ns/a", look(5, 2)),
            None,
            "the stream was made again"
        );
    }
}
