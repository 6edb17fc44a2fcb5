//! Rates of a pool's queue, from two looks at its work stream: what came in (messages
//! stored, its last sequence) and what went out (acknowledged, so removed) per second
//! between them. The operator keeps each pool's last look in memory; the first look
//! after a start gives no rate yet.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

pub use workpool_runtime::queue_figures::{Rates, Sample};

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

    use tokio::time::Instant;

    use super::*;

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
