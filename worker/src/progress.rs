//! Progress a running handler reports. The handler hands it to a [`Reporter`]; the
//! attempt's heartbeat (module `hold`) writes the latest into the record, at most once per
//! [`PROGRESS_WRITE_EVERY`], and the outcome's write carries the last one.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use workpool_core::progress::Progress;

/// The shortest time between two writes of progress into a record.
pub const PROGRESS_WRITE_EVERY: Duration = Duration::from_secs(1);

/// Where a running handler reports progress; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reporter(watch::Sender<Option<Progress>>);

impl Reporter {
    /// A reporter and the receiving end the heartbeat follows.
    pub fn channel() -> (Self, watch::Receiver<Option<Progress>>) {
        let (sender, receiver) = watch::channel(None);
        (Self(sender), receiver)
    }

    /// A reporter nobody follows (reports are dropped).
    pub fn unheard() -> Self {
        Self(watch::channel(None).0)
    }

    /// Replaces the progress reported so far; only the latest is written.
    pub fn report(&self, progress: Progress) {
        self.0.send_replace(Some(progress));
    }
}

/// Reads a program's stderr to its end: progress lines
/// ([`workpool_core::progress::PROGRESS_LINE_PREFIX`]) go to `reporter` as they come;
/// the rest is handed to `keep`, which keeps what it wants of it (the end, for errors).
/// A line longer than `max_line` is no progress line and goes to `keep` unread as one.
pub async fn read_stderr(
    mut pipe: impl AsyncRead + Unpin,
    reporter: &Reporter,
    max_line: usize,
    mut keep: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    let mut line = Vec::new();
    loop {
        let read = pipe.read(&mut buffer).await?;
        if read == 0 {
            keep(&line);
            return Ok(());
        }
        for chunk in buffer[..read].split_inclusive(|byte| *byte == b'\n') {
            line.extend_from_slice(chunk);
            if line.ends_with(b"\n") {
                let progress = std::str::from_utf8(&line)
                    .ok()
                    .and_then(Progress::from_line);
                match progress {
                    Some(progress) => reporter.report(progress),
                    None => keep(&line),
                }
                line.clear();
            } else if line.len() > max_line {
                keep(&line);
                line.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_lines_are_reported_and_the_rest_kept() {
        let (reporter, receiver) = Reporter::channel();
        let stderr: &[u8] = b"starting\nworkpool-progress: 10 one\nworkpool-progress: 60 two\nboom";
        let mut kept = Vec::new();
        read_stderr(stderr, &reporter, 4096, |bytes| {
            kept.extend_from_slice(bytes)
        })
        .await
        .expect("read");
        assert_eq!(kept, b"starting\nboom");
        let latest = receiver.borrow().clone().expect("reported");
        assert_eq!(
            (latest.percent, latest.message.as_deref()),
            (Some(60.0), Some("two"))
        );
    }

    #[tokio::test]
    async fn an_endless_line_is_kept_in_pieces_not_buffered_whole() {
        let stderr = vec![b'x'; 100_000];
        let mut pieces = Vec::new();
        read_stderr(&stderr[..], &Reporter::unheard(), 4096, |bytes| {
            pieces.push(bytes.len())
        })
        .await
        .expect("read");
        assert!(
            pieces.iter().all(|len| *len <= 4096 + 16 * 1024),
            "{pieces:?}"
        );
        assert_eq!(pieces.iter().sum::<usize>(), 100_000);
    }
}
