//! What JetStream's refusal of a publish means, read from its own answer.

use async_nats::jetstream::{self, context::PublishError};

/// JetStream's code for a message it did not store (a limit, among others).
const STORE_FAILED: jetstream::ErrorCode = jetstream::ErrorCode::STREAM_STORE_FAILED;
/// How JetStream describes the refusal of a second message on a subject.
const PER_SUBJECT_LIMIT: &str = "maximum messages per subject exceeded";

/// JetStream's own answer to a refused publish, if it gave one.
fn jetstream_answer(err: &PublishError) -> Option<&jetstream::Error> {
    std::error::Error::source(err).and_then(|source| source.downcast_ref::<jetstream::Error>())
}

/// Whether JetStream itself answered the publish with `code`.
pub fn has_code(err: &PublishError, code: jetstream::ErrorCode) -> bool {
    jetstream_answer(err).is_some_and(|js_err| js_err.error_code() == code)
}

/// A publish refused because its subject holds a message already, in a stream that
/// keeps one per subject (a pool's work stream: the work is queued).
pub fn is_subject_taken(err: &PublishError) -> bool {
    has_code(err, STORE_FAILED)
        && jetstream_answer(err)
            .is_some_and(|js_err| js_err.to_string().contains(PER_SUBJECT_LIMIT))
}

/// A publish refused by its expected-last-subject-sequence check: the subjects it named
/// hold a message already, or one is being stored.
pub fn is_sequence_check_failed(err: &PublishError) -> bool {
    has_code(err, jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE)
        || has_code(
            err,
            jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
        )
}

/// A publish refused because the stream hit `max_messages` (or its byte limit).
pub fn is_stream_full(err: &PublishError) -> bool {
    has_code(err, STORE_FAILED) || has_code(err, jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED)
}
