//! A pool whose largest message the NATS server would refuse is refused at provisioning,
//! with both numbers in the message, rather than failing every large publish later.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use async_nats::jetstream;
use workpool_core::streams::ENVELOPE_BYTES;
use workpool_core::{PoolNames, PoolSpec};
use workpool_local_cluster::nats::NatsServer;
use workpool_runtime::provision::{ProvisionError, provision};

/// NATS's own default max_payload (1 MB), which the chart's server used to run with.
const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

#[tokio::test]
async fn the_default_pool_does_not_fit_a_server_with_the_nats_default_max_payload() {
    let server = NatsServer::start_with_max_payload(NATS_DEFAULT_MAX_PAYLOAD)
        .await
        .expect("nats");
    let js = jetstream::new(server.client().await.expect("client"));
    let names = PoolNames::new("team-a", "images").expect("names");
    let spec = PoolSpec::default();
    let needed = spec.queue.max_payload_bytes + ENVELOPE_BYTES;

    let err = provision(&js, &names, &spec)
        .await
        .expect_err("a pool whose messages the server refuses is refused");
    assert!(
        matches!(
            err,
            ProvisionError::PayloadOverServerLimit { needed: n, server_max_payload, .. }
                if n == needed && server_max_payload == NATS_DEFAULT_MAX_PAYLOAD
        ),
        "{err:?}"
    );
    assert!(err.is_refusal(), "retrying the same spec cannot help");
    let text = err.to_string();
    for number in [needed, NATS_DEFAULT_MAX_PAYLOAD] {
        assert!(text.contains(&number.to_string()), "{text} names {number}");
    }
    assert!(
        js.get_stream(names.stream()).await.is_err(),
        "nothing was created for the refused pool"
    );

    // A pool whose largest message is exactly the server's limit fits.
    let fits = PoolSpec::from_json(&format!(
        r#"{{"queue": {{"maxPayloadBytes": {}}}}}"#,
        NATS_DEFAULT_MAX_PAYLOAD - ENVELOPE_BYTES
    ))
    .expect("spec");
    provision(&js, &names, &fits).await.expect("fits exactly");
}
