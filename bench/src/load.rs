//! HTTP load: an open loop (a fixed arrival schedule that does not wait for answers,
//! latency counted from each request's *scheduled* time, so a stalled server is not
//! excused by the generator falling behind: coordinated omission corrected) and a closed
//! loop (a fixed number of requests always in flight: the highest rate a server keeps up).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use workpool_e2e::{HarnessError as Error, Result};

/// Builds request `n` of a load.
pub type MakeRequest = Arc<dyn Fn(usize) -> reqwest::RequestBuilder + Send + Sync>;

/// One answered request of an open loop.
#[derive(Debug, Clone)]
pub struct Answered {
    pub scheduled: Instant,
    pub answered: Instant,
    pub status: u16,
    /// The work it got accepted: the `callback` of a `202`, or of each accepted item of
    /// a batch.
    pub ids: Vec<String>,
}

impl Answered {
    pub fn latency(&self) -> Duration {
        self.answered.duration_since(self.scheduled)
    }
}

/// What an open loop did.
#[derive(Debug)]
pub struct OpenLoop {
    pub started: Instant,
    pub answers: Vec<Answered>,
    /// Requests that went out later than scheduled because `max_in_flight` were open.
    pub late: usize,
}

/// `count` requests at `rate` per second, at most `max_in_flight` open at once.
pub async fn open_loop(
    make: MakeRequest,
    rate: f64,
    count: usize,
    max_in_flight: usize,
) -> Result<OpenLoop> {
    let limit = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let mut late = 0;
    for n in 0..count {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                late += 1;
                limit
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(Error::context("the in-flight limit"))?
            }
        };
        let request = make(n);
        let sender = sender.clone();
        tokio::spawn(async move {
            let answered = send(request, scheduled).await;
            drop(permit);
            let _ = sender.send(answered);
        });
    }
    drop(sender);
    let mut answers = Vec::with_capacity(count);
    while let Some(answered) = receiver.recv().await {
        answers.push(answered);
    }
    Ok(OpenLoop {
        started,
        answers,
        late,
    })
}

async fn send(request: reqwest::RequestBuilder, scheduled: Instant) -> Answered {
    let (status, ids) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap_or_default();
            (status, accepted_ids(status, &body))
        }
        Err(_) => (0, Vec::new()),
    };
    Answered {
        scheduled,
        answered: Instant::now(),
        status,
        ids,
    }
}

/// The ids a POST's answer accepted: a `202`'s callback, or a batch's accepted items'.
fn accepted_ids(status: u16, body: &[u8]) -> Vec<String> {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    match (status, body["items"].as_array()) {
        (202, _) => body["callback"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        (200, Some(items)) => items
            .iter()
            .filter(|item| item["status"] == "accepted")
            .filter_map(|item| item["callback"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// How long a closed loop runs: for a time, or until a number of requests succeeded.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Elapsed(Duration),
    Succeeded(usize),
}

/// What a closed loop did.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    pub succeeded: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

impl ClosedLoop {
    pub fn rate(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` requests in flight at all times until `until`; a request succeeds on a
/// 2xx answer.
pub async fn closed_loop(make: MakeRequest, concurrency: usize, until: Until) -> ClosedLoop {
    let issued = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (make, issued, succeeded, failed) = (
            make.clone(),
            issued.clone(),
            succeeded.clone(),
            failed.clone(),
        );
        lanes.spawn(async move {
            loop {
                let more = match until {
                    Until::Elapsed(limit) => started.elapsed() < limit,
                    Until::Succeeded(target) => succeeded.load(Ordering::Relaxed) < target,
                };
                if !more {
                    break;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if let Until::Succeeded(target) = until
                    && n >= target + failed.load(Ordering::Relaxed)
                {
                    break;
                }
                let ok = match make(n).send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                let counter = if ok { &succeeded } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while lanes.join_next().await.is_some() {}
    ClosedLoop {
        succeeded: succeeded.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

/// The `p` quantile (0..=1) of sorted durations; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_durations() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
