//! Completion webhooks (docs/api.md, "Completion webhooks"): which callback URLs a pool
//! allows, how a delivery is signed, and the delivery state its record keeps.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// The header of a delivery carrying its signature: `t=<unix seconds>,v1=<hex>`, the hex
/// an HMAC-SHA256, under the pool's webhook key, of `<unix seconds>.<body>`.
pub const SIGNATURE_HEADER: &str = "Workpool-Signature";
/// The header naming the work a delivery is about (the same on every retry of it).
pub const DELIVERY_HEADER: &str = "Workpool-Delivery";
/// The environment variable a worker reads the pool's webhook key from (hex).
pub const WEBHOOK_KEY_ENV: &str = "WORKPOOL_WEBHOOK_KEY";
/// The longest `callback_url` accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// The longest pause between two attempts of one delivery.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Completion webhooks of a pool (`spec.webhooks`).
#[derive(kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Hosts a submission's `callback_url` may name: `host`, `host:port` or
    /// `*.domain` (any host under the domain). Empty, the default: no callbacks.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub allowed_hosts: Vec<String>,
    /// Attempts of one delivery before it is given up (1-50).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 50))]
    pub max_attempts: u32,
    /// How long one attempt may take, such as `10s` (1s-5m).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_max_attempts() -> u32 {
    10
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for WebhookSpec {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_attempts: default_max_attempts(),
            timeout: default_timeout(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("callback_url must be an absolute http or https URL of at most 2048 bytes")]
    BadUrl,
    #[error("this pool allows no callback_url (its spec.webhooks.allowedHosts is empty)")]
    NoneAllowed,
    #[error("callback_url host {0:?} is not in the pool's spec.webhooks.allowedHosts")]
    NotAllowed(String),
}

impl WebhookSpec {
    pub fn enabled(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }

    /// `url` parsed, if it is a callback this pool allows.
    pub fn allow(&self, url: &str) -> Result<url::Url, CallbackError> {
        if !self.enabled() {
            return Err(CallbackError::NoneAllowed);
        }
        let parsed = url::Url::parse(url).map_err(|_| CallbackError::BadUrl)?;
        let host = match parsed.host_str() {
            Some(host) if url.len() <= MAX_URL_BYTES => host.to_ascii_lowercase(),
            _ => return Err(CallbackError::BadUrl),
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CallbackError::BadUrl);
        }
        let port = parsed.port_or_known_default().unwrap_or(0);
        let with_port = format!("{host}:{port}");
        let allowed = self.allowed_hosts.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => entry == host || entry == with_port,
            }
        });
        if allowed {
            Ok(parsed)
        } else {
            Err(CallbackError::NotAllowed(host))
        }
    }

    /// Checks what the resource's schema cannot: each entry is a host name or address,
    /// with an optional port, or `*.` and a domain.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=50).contains(&self.max_attempts) {
            return Err("maxAttempts must be between 1 and 50".into());
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(300) {
            return Err("timeout must be between 1s and 5m".into());
        }
        for entry in &self.allowed_hosts {
            let bare = entry.strip_prefix("*.").unwrap_or(entry);
            let as_url = format!("http://{bare}/");
            let parsed = url::Url::parse(&as_url).ok();
            let plain = parsed.as_ref().is_some_and(|u| {
                u.host_str().is_some() && u.path() == "/" && u.username().is_empty()
            });
            if !plain || bare.contains(['/', '@', '?', '#']) {
                return Err(format!(
                    "allowedHosts entry {entry:?} must be a host, host:port or *.domain"
                ));
            }
        }
        Ok(())
    }
}

/// The `Workpool-Signature` of `body` sent at `timestamp` (unix seconds).
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(key, timestamp, body))
    )
}

fn mac(key: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// What a receiver does with a delivery: true if `header` signs `body` under `key` and
/// was made within `tolerance` of `now` (so a recorded delivery cannot be replayed later).
pub fn verify(key: &[u8], header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signature = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    let fresh = now.abs_diff(timestamp) <= tolerance.as_secs();
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut check = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    check.update(timestamp.to_string().as_bytes());
    check.update(b".");
    check.update(body);
    fresh && check.verify_slice(&signature).is_ok()
}

/// Where a completion webhook stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Retrying,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

/// The delivery of a record's completion webhook, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the latest answer, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

impl WebhookDelivery {
    /// The state after attempt number `attempts` was answered 2xx.
    pub fn delivered(attempts: u32, status: u16, now: DateTime<Utc>) -> Self {
        Self {
            state: DeliveryState::Delivered,
            attempts,
            last_status: Some(status),
            last_error: None,
            next_attempt_at: None,
            delivered_at: Some(now),
        }
    }

    /// The state after attempt number `attempts` failed: retried after a pause that
    /// doubles from one second up to [`MAX_RETRY_DELAY`], or given up after the last.
    pub fn failed(
        attempts: u32,
        status: Option<u16>,
        error: String,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Self {
        let last = attempts >= max_attempts;
        let delay = retry_delay(attempts);
        Self {
            state: if last {
                DeliveryState::Failed
            } else {
                DeliveryState::Retrying
            },
            attempts,
            last_status: status,
            last_error: Some(error),
            next_attempt_at: (!last)
                .then(|| now + chrono::Duration::from_std(delay).unwrap_or_default()),
            delivered_at: None,
        }
    }

    /// No attempt is left to make.
    pub fn is_settled(&self) -> bool {
        self.state != DeliveryState::Retrying
    }
}

/// The pause after failed attempt number `attempts`: 1 s, 2 s, 4 s, ... at most
/// [`MAX_RETRY_DELAY`].
pub fn retry_delay(attempts: u32) -> Duration {
    let doubled = 1u64
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(doubled).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(hosts: &[&str]) -> WebhookSpec {
        WebhookSpec {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..WebhookSpec::default()
        }
    }

    #[test]
    fn only_listed_hosts_are_allowed() {
        let spec = allowing(&["hooks.example.com", "*.corp.example", "127.0.0.1:9000"]);
        assert!(spec.allow("https://hooks.example.com/done").is_ok());
        assert!(spec.allow("http://HOOKS.example.com:80/x?y=1").is_ok());
        assert!(spec.allow("https://a.b.corp.example/").is_ok());
        assert!(spec.allow("http://127.0.0.1:9000/hook").is_ok());
        assert_eq!(
            spec.allow("http://127.0.0.1:9001/hook"),
            Err(CallbackError::NotAllowed("127.0.0.1".into()))
        );
        assert_eq!(
            spec.allow("https://corp.example/"),
            Err(CallbackError::NotAllowed("corp.example".into()))
        );
        assert_eq!(
            spec.allow("https://evil.com/?hooks.example.com"),
            Err(CallbackError::NotAllowed("evil.com".into()))
        );
        for bad in [
            "ftp://hooks.example.com/",
            "hooks.example.com/x",
            "",
            "http://",
        ] {
            assert_eq!(spec.allow(bad), Err(CallbackError::BadUrl), "{bad}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(spec.allow(&long), Err(CallbackError::BadUrl));
        assert_eq!(
            WebhookSpec::default().allow("https://hooks.example.com/"),
            Err(CallbackError::NoneAllowed)
        );
    }

    #[test]
    fn host_entries_are_checked() {
        assert!(
            allowing(&["a.example", "*.b.example", "10.0.0.1:8080"])
                .validate()
                .is_ok()
        );
        for bad in ["http://a.example", "a.example/path", "user@a.example", ""] {
            assert!(allowing(&[bad]).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_body_key_and_time() {
        let key = b"0123456789abcdef";
        let header = signature(key, 1_700_000_000, b"{\"id\":1}");
        let window = Duration::from_secs(300);
        assert!(verify(key, &header, b"{\"id\":1}", 1_700_000_100, window));
        assert!(!verify(key, &header, b"{\"id\":2}", 1_700_000_100, window));
        assert!(!verify(
            b"another key",
            &header,
            b"{\"id\":1}",
            1_700_000_100,
            window
        ));
        assert!(!verify(key, &header, b"{\"id\":1}", 1_700_001_000, window));
        assert!(!verify(key, "t=1,v1=zz", b"", 1, window));
    }

    #[test]
    fn retries_back_off_and_end_after_the_last_attempt() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(4), Duration::from_secs(8));
        assert_eq!(retry_delay(40), MAX_RETRY_DELAY);
        let now = Utc::now();
        let second = WebhookDelivery::failed(2, Some(500), "500".into(), 3, now);
        assert_eq!(second.state, DeliveryState::Retrying);
        assert_eq!(
            second.next_attempt_at,
            Some(now + chrono::Duration::seconds(2))
        );
        let third = WebhookDelivery::failed(3, None, "refused".into(), 3, now);
        assert!(third.is_settled() && third.next_attempt_at.is_none());
        assert!(WebhookDelivery::delivered(1, 204, now).is_settled());
    }
}
