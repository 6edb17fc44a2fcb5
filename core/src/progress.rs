//! What a running handler says of its progress, and the stderr line an `exec` handler
//! says it with (docs/worker.md, "Progress").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The start of a progress line on an `exec` program's stderr:
/// `workpool-progress: 42 resizing 3 of 7`, `workpool-progress: 42` or
/// `workpool-progress: resizing`.
pub const PROGRESS_LINE_PREFIX: &str = "workpool-progress:";

/// The header of an `http` handler's request naming where it may POST progress:
/// `{"percent"?: 0-100, "message"?: "..."}` (a loopback URL, good for that attempt only).
pub const PROGRESS_URL_HEADER: &str = "Workpool-Progress-Url";

/// The longest message kept, in characters.
pub const MAX_PROGRESS_MESSAGE_CHARS: usize = 256;

/// The latest progress a running attempt reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// How far, 0 to 100, if the handler gave a figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What it is doing, in its own words (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was reported.
    pub at: DateTime<Utc>,
}

impl Progress {
    /// Progress reported now; a `percent` outside 0-100 is clamped to it, a message is
    /// cut to [`MAX_PROGRESS_MESSAGE_CHARS`].
    pub fn now(percent: Option<f64>, message: Option<&str>) -> Self {
        let message = message
            .map(str::trim)
            .filter(|message| !message.is_empty())
            .map(|message| message.chars().take(MAX_PROGRESS_MESSAGE_CHARS).collect());
        Self {
            percent: percent
                .filter(|p| p.is_finite())
                .map(|p| p.clamp(0.0, 100.0)),
            message,
            at: Utc::now(),
        }
    }

    /// The progress a stderr line reports, if it is a progress line: the prefix, then
    /// a number (the percent) and a message, either one alone, or both.
    pub fn from_line(line: &str) -> Option<Self> {
        let rest = line
            .trim_end()
            .strip_prefix(PROGRESS_LINE_PREFIX)?
            .trim_start();
        let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let progress = match first.parse::<f64>() {
            Ok(percent) if percent.is_finite() => Self::now(Some(percent), Some(after)),
            _ => Self::now(None, Some(rest)),
        };
        (progress.percent.is_some() || progress.message.is_some()).then_some(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Option<(Option<f64>, Option<String>)> {
        Progress::from_line(line).map(|p| (p.percent, p.message))
    }

    #[test]
    fn progress_lines_give_a_percent_a_message_or_both() {
        let both = parsed("workpool-progress: 42.5 resizing 3 of 7\n");
        assert_eq!(both, Some((Some(42.5), Some("resizing 3 of 7".into()))));
        assert_eq!(parsed("workpool-progress: 7"), Some((Some(7.0), None)));
        let message = parsed("workpool-progress:   almost there ");
        assert_eq!(message, Some((None, Some("almost there".into()))));
        assert_eq!(
            parsed("workpool-progress: 250 over"),
            Some((Some(100.0), Some("over".into())))
        );
        assert_eq!(
            parsed("workpool-progress: NaN"),
            Some((None, Some("NaN".into())))
        );
    }

    #[test]
    fn other_lines_are_not_progress() {
        for line in [
            "",
            "progress: 5",
            " workpool-progress: 5",
            "workpool-progress:",
            "workpool-progress:   ",
        ] {
            assert_eq!(parsed(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_long_message_is_cut() {
        let long = format!("workpool-progress: 1 {}", "é".repeat(1000));
        let message = parsed(&long)
            .and_then(|(_, message)| message)
            .expect("a message");
        assert_eq!(message.chars().count(), MAX_PROGRESS_MESSAGE_CHARS);
    }
}
