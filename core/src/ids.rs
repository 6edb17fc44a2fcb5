//! Work ids: 32 lowercase hex characters, derived from the content of the work or from
//! the client's idempotency key, so the same submission always gets the same id.
//!
//! Within a pool they are derived in an [`IdScope`]: keyed with the pool's secret (an
//! HMAC, so nobody without it can compute the id of a payload they guess), and within
//! the tenant the request's token names (so one tenant's work never shares an id with
//! another's). See docs/security.md#work-ids-and-tenants.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The id of one piece of work (the `callback` of the POST answer).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[0-9a-f]{32}$", example = "acbd18db4cc2f85cedef654fccc4a4d8")]
pub struct WorkId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a work id is 32 lowercase hex characters")]
pub struct InvalidWorkId;

/// The secret a pool's work ids are keyed with, as an HMAC already keyed with it (each
/// id clones it rather than hashing the key again). Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct IdKey(Hmac<Sha256>);

impl IdKey {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Hmac::new_from_slice(&bytes).expect("any key length"))
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(redacted)")
    }
}

/// What ids are derived within: the pool's key (none: plain SHA-256, as outside a
/// cluster) and the request's tenant (none: auth is off, or names no tenant).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdScope<'a> {
    pub key: Option<&'a IdKey>,
    pub tenant: Option<&'a str>,
}

impl WorkId {
    /// The id of work with this task, key and data, with no pool key and no tenant.
    pub fn from_content(task: &str, key: Option<&str>, data: &serde_json::Value) -> Self {
        Self::content_in(IdScope::default(), task, key, data)
    }

    /// The id of work submitted with an `Idempotency-Key` header, with no pool key and
    /// no tenant.
    pub fn from_idempotency_key(key: &str) -> Self {
        Self::idempotency_in(IdScope::default(), key)
    }

    /// The id of work with this task, key and data in `scope`. `data` is hashed in its
    /// canonical JSON form (object keys sorted), so formatting and key order do not
    /// change the id.
    pub fn content_in(
        scope: IdScope<'_>,
        task: &str,
        key: Option<&str>,
        data: &serde_json::Value,
    ) -> Self {
        let mut hasher = IdHasher::new(scope);
        hasher.field(b"content");
        hasher.field(task.as_bytes());
        match key {
            Some(key) => {
                hasher.field(b"key");
                hasher.field(key.as_bytes());
            }
            None => hasher.field(b"nokey"),
        }
        // serde_json's Map is ordered by key, so this serialization is canonical.
        hasher.field(data.to_string().as_bytes());
        hasher.finish()
    }

    /// The id of work submitted with an `Idempotency-Key` header in `scope`.
    pub fn idempotency_in(scope: IdScope<'_>, key: &str) -> Self {
        let mut hasher = IdHasher::new(scope);
        hasher.field(b"idempotency-key");
        hasher.field(key.as_bytes());
        hasher.finish()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SHA-256, or HMAC-SHA256 with the pool's key; the tenant, if any, comes first.
enum IdHasher {
    Plain(Sha256),
    Keyed(Hmac<Sha256>),
}

impl IdHasher {
    fn new(scope: IdScope<'_>) -> Self {
        let mut hasher = match scope.key {
            Some(key) => Self::Keyed(key.0.clone()),
            None => Self::Plain(Sha256::new()),
        };
        if let Some(tenant) = scope.tenant {
            hasher.field(b"tenant");
            hasher.field(tenant.as_bytes());
        }
        hasher
    }

    /// Length-prefixes each field so that ("ab","c") and ("a","bc") hash differently.
    fn field(&mut self, bytes: &[u8]) {
        let length = (bytes.len() as u64).to_be_bytes();
        match self {
            Self::Plain(hasher) => {
                Digest::update(hasher, length);
                Digest::update(hasher, bytes);
            }
            Self::Keyed(mac) => {
                mac.update(&length);
                mac.update(bytes);
            }
        }
    }

    fn finish(self) -> WorkId {
        let digest: [u8; 32] = match self {
            Self::Plain(hasher) => hasher.finalize().into(),
            Self::Keyed(mac) => mac.finalize().into_bytes().into(),
        };
        WorkId(hex::encode(&digest[..16]))
    }
}

impl FromStr for WorkId {
    type Err = InvalidWorkId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid =
            text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidWorkId)
        }
    }
}

impl TryFrom<String> for WorkId {
    type Error = InvalidWorkId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<WorkId> for String {
    fn from(id: WorkId) -> Self {
        id.0
    }
}

impl fmt::Display for WorkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn content_ids_are_stable_and_ignore_key_order() {
        let a = WorkId::from_content("default", None, &json!({"a": 1, "b": [1, 2]}));
        let b = WorkId::from_content("default", None, &json!({"b": [1, 2], "a": 1}));
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().parse::<WorkId>().is_ok());
    }

    #[test]
    fn task_key_and_data_all_change_the_id() {
        let base = WorkId::from_content("t", None, &json!("foo"));
        assert_ne!(base, WorkId::from_content("u", None, &json!("foo")));
        assert_ne!(base, WorkId::from_content("t", Some("k"), &json!("foo")));
        assert_ne!(base, WorkId::from_content("t", None, &json!("fop")));
        assert_ne!(
            WorkId::from_content("ab", Some("c"), &json!(null)),
            WorkId::from_content("a", Some("bc"), &json!(null))
        );
    }

    #[test]
    fn the_pool_key_and_the_tenant_each_change_the_id() {
        let data = json!({"n": 1});
        let (one, two) = (IdKey::from_bytes([1; 32]), IdKey::from_bytes([2; 32]));
        let scope = |key, tenant| IdScope { key, tenant };
        let plain = WorkId::from_content("t", None, &data);
        let keyed = WorkId::content_in(scope(Some(&one), None), "t", None, &data);
        let ids = [
            plain.clone(),
            keyed.clone(),
            WorkId::content_in(scope(Some(&two), None), "t", None, &data),
            WorkId::content_in(scope(Some(&one), Some("a")), "t", None, &data),
            WorkId::content_in(scope(Some(&one), Some("b")), "t", None, &data),
            WorkId::content_in(scope(None, Some("a")), "t", None, &data),
        ];
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        // The same scope gives the same id, for content and for idempotency keys alike.
        let again = WorkId::content_in(scope(Some(&one), None), "t", None, &json!({"n": 1}));
        assert_eq!(keyed, again);
        let keyed_key = |tenant| WorkId::idempotency_in(scope(Some(&one), tenant), "k");
        assert_eq!(keyed_key(Some("a")), keyed_key(Some("a")));
        assert_ne!(keyed_key(Some("a")), keyed_key(Some("b")));
        assert_ne!(keyed_key(None), WorkId::from_idempotency_key("k"));
        assert_eq!(format!("{one:?}"), "IdKey(redacted)");
    }

    #[test]
    fn idempotency_keys_give_their_own_ids() {
        assert_eq!(
            WorkId::from_idempotency_key("x"),
            WorkId::from_idempotency_key("x")
        );
        assert_ne!(
            WorkId::from_idempotency_key("x"),
            WorkId::from_idempotency_key("y")
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "0123",
            "g123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(bad.parse::<WorkId>(), Err(InvalidWorkId), "{bad}");
        }
    }
}
