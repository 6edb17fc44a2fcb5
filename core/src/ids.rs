//! Work ids: 32 lowercase hex characters, derived from the content of the work or from
//! the client's idempotency key, so the same submission always gets the same id.

use std::fmt;
use std::str::FromStr;

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

impl WorkId {
    /// The id of work with this task, key and data. `data` is hashed in its canonical JSON
    /// form (object keys sorted), so formatting and key order do not change the id.
    pub fn from_content(task: &str, key: Option<&str>, data: &serde_json::Value) -> Self {
        let mut hasher = Sha256::new();
        hash_field(&mut hasher, b"content");
        hash_field(&mut hasher, task.as_bytes());
        match key {
            Some(key) => {
                hash_field(&mut hasher, b"key");
                hash_field(&mut hasher, key.as_bytes());
            }
            None => hash_field(&mut hasher, b"nokey"),
        }
        // serde_json's Map is ordered by key, so this serialization is canonical.
        hash_field(&mut hasher, data.to_string().as_bytes());
        Self::from_digest(hasher)
    }

    /// The id of work submitted with an `Idempotency-Key` header.
    pub fn from_idempotency_key(key: &str) -> Self {
        let mut hasher = Sha256::new();
        hash_field(&mut hasher, b"idempotency-key");
        hash_field(&mut hasher, key.as_bytes());
        Self::from_digest(hasher)
    }

    fn from_digest(hasher: Sha256) -> Self {
        let digest = hasher.finalize();
        Self(hex::encode(&digest[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Length-prefixes each field so that ("ab","c") and ("a","bc") hash differently.
fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
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
