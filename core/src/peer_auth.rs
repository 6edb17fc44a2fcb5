//! Peer requests travel signed, so a worker acts only on requests from its own pool.
//!
//! Each pool has a peer key: the operator keeps it in the Secret `<pool>-workpool-peer`
//! and gives it to the pool's pods as [`PEER_KEY_ENV`]. A request goes out as
//! `<mac> <sent at> <request JSON>`: the send time in milliseconds since the epoch, and
//! an HMAC-SHA256 with the key over `<sent at> <request JSON>`. A worker acts on a
//! request only if the MAC is right and it was sent within [`MAX_SKEW`] of its own
//! clock. So nobody without the key can cancel the pool's work, read what it runs, or
//! move its partitions, and a recorded request is useless once that time is over
//! (docs/security.md#peer-messages).

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cluster::PeerRequest;

/// The environment variable that carries the pool's peer key (hex).
pub const PEER_KEY_ENV: &str = "WORKPOOL_PEER_KEY";
/// The key's length in bytes; the operator makes keys of exactly this length.
pub const KEY_BYTES: usize = 32;
/// How far a request's send time may be from the receiver's clock, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// A pool's peer key. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerKey(Vec<u8>);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(redacted)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the peer key must be hex of at least {KEY_BYTES} bytes")]
pub struct InvalidPeerKey;

/// Why a peer request was not acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("this process has no peer key: it acts on no peer request")]
    NoKey,
    #[error("not a signed peer request")]
    Unsigned,
    #[error("the signature does not match this pool's peer key")]
    BadSignature,
    #[error("sent {0} ms away from this clock, more than the {MAX_SKEW:?} a request is valid")]
    OutOfTime(i64),
    #[error("unreadable request: {0}")]
    Unreadable(String),
}

impl PeerKey {
    pub fn from_hex(text: &str) -> Result<Self, InvalidPeerKey> {
        let bytes = hex::decode(text.trim()).map_err(|_| InvalidPeerKey)?;
        if bytes.len() < KEY_BYTES {
            return Err(InvalidPeerKey);
        }
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes.to_vec())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The key of the pool's work ids, derived from this one (no second Secret to keep):
    /// an HMAC of a fixed label, so knowing ids tells nothing of the peer key.
    pub fn id_key(&self) -> crate::ids::IdKey {
        let digest = self
            .mac_over("workpool work ids v1")
            .finalize()
            .into_bytes();
        crate::ids::IdKey::from_bytes(digest.into())
    }

    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    fn mac_over(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(body.as_bytes());
        mac
    }

    /// `request`, signed as sent at `now`.
    #[allow(clippy::expect_used)] // a tagged enum of strings always serialises
    pub fn sign(&self, request: &PeerRequest, now: DateTime<Utc>) -> Vec<u8> {
        let json = serde_json::to_string(request).expect("a PeerRequest always serialises");
        let body = format!("{} {json}", now.timestamp_millis());
        let tag = hex::encode(self.mac_over(&body).finalize().into_bytes());
        format!("{tag} {body}").into_bytes()
    }

    /// The request in `payload`, if it is signed with this key and in time at `now`.
    pub fn open(&self, payload: &[u8], now: DateTime<Utc>) -> Result<PeerRequest, Refused> {
        let text = std::str::from_utf8(payload).map_err(|_| Refused::Unsigned)?;
        let (tag, body) = text.split_once(' ').ok_or(Refused::Unsigned)?;
        let tag = hex::decode(tag).map_err(|_| Refused::Unsigned)?;
        self.mac_over(body)
            .verify_slice(&tag)
            .map_err(|_| Refused::BadSignature)?;
        let (sent, json) = body.split_once(' ').ok_or(Refused::Unsigned)?;
        let sent: i64 = sent.parse().map_err(|_| Refused::Unsigned)?;
        let off = now.timestamp_millis().saturating_sub(sent);
        if off.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
            return Err(Refused::OutOfTime(off));
        }
        serde_json::from_str(json).map_err(|err| Refused::Unreadable(err.to_string()))
    }
}

/// Opens `payload` with `key`, refusing everything when there is no key.
pub fn open(
    key: Option<&PeerKey>,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<PeerRequest, Refused> {
    key.ok_or(Refused::NoKey)?.open(payload, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PeerKey {
        PeerKey::from_bytes([byte; KEY_BYTES])
    }

    #[test]
    fn a_request_signed_with_the_pool_key_opens_in_time() {
        let now = Utc::now();
        let request = PeerRequest::Cancel { id: "abc".into() };
        let signed = key(1).sign(&request, now);
        assert_eq!(key(1).open(&signed, now), Ok(request.clone()));
        let later = now + chrono::Duration::seconds(29);
        assert_eq!(key(1).open(&signed, later), Ok(request));
    }

    #[test]
    fn unsigned_forged_altered_and_old_requests_are_refused() {
        let now = Utc::now();
        let request = PeerRequest::Leaving { pod: "w-0".into() };
        let unsigned = serde_json::to_vec(&request).expect("json");
        assert_eq!(key(1).open(&unsigned, now), Err(Refused::Unsigned));
        let forged = key(2).sign(&request, now);
        assert_eq!(key(1).open(&forged, now), Err(Refused::BadSignature));
        let signed = String::from_utf8(key(1).sign(&request, now)).expect("text");
        let altered = signed.replace("w-0", "w-1");
        assert_eq!(
            key(1).open(altered.as_bytes(), now),
            Err(Refused::BadSignature)
        );
        let late = now + chrono::Duration::seconds(31);
        assert!(matches!(
            key(1).open(signed.as_bytes(), late),
            Err(Refused::OutOfTime(_))
        ));
        assert_eq!(open(None, signed.as_bytes(), now), Err(Refused::NoKey));
    }

    #[test]
    fn keys_are_hex_of_32_bytes_or_more_and_never_shown() {
        assert_eq!(PeerKey::from_hex(&key(7).to_hex()), Ok(key(7)));
        assert_eq!(PeerKey::from_hex("abcd"), Err(InvalidPeerKey));
        assert_eq!(PeerKey::from_hex("not hex"), Err(InvalidPeerKey));
        assert_eq!(format!("{:?}", key(7)), "PeerKey(redacted)");
    }
}
