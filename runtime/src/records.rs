//! Writes to a pool's results bucket, each with the expiry its record's status calls for
//! ([`workpool_core::expiry::record_ttl`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use workpool_core::WorkRecord;
use workpool_core::expiry::record_ttl;

/// The results bucket's writes, each with the expiry of the record it writes.
#[derive(Clone, Debug)]
pub struct RecordStore {
    pub kv: kv::Store,
    js: jetstream::Context,
    result_ttl: Duration,
}

impl RecordStore {
    pub fn new(kv: kv::Store, js: jetstream::Context, result_ttl: Duration) -> Self {
        Self { kv, js, result_ttl }
    }

    /// Compare-and-set of `key` at `revision` (0: the key must not exist) with `record`,
    /// serialised as `value`; a terminal record lives its own ttl (the pool's `resultTTL`
    /// unless its submission asked for less), plus the time it is kept past expiry.
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        record: &WorkRecord,
    ) -> Result<u64, kv::UpdateError> {
        let lives = record.ttl.unwrap_or(self.result_ttl);
        match record_ttl(lives, record.status) {
            Some(ttl) => self.update_expiring(key, value, revision, ttl).await,
            None => self.kv.update(key, value, revision).await,
        }
    }

    /// Compare-and-set of `key` at `revision` with `value`, which the server removes
    /// `ttl` after this write (whole seconds, at least one) unless it is written again.
    pub async fn update_expiring(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        ttl: Duration,
    ) -> Result<u64, kv::UpdateError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", revision.to_string());
        headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string());
        let subject = format!(
            "{}{key}",
            self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix)
        );
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(kv::UpdateError::from)?
            .await
            .map_err(kv::UpdateError::from)?;
        Ok(ack.sequence)
    }
}
