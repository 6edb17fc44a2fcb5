//! Who is in the pool: the ready endpoints of one of its Services, read from the
//! Kubernetes API with a reflector on EndpointSlices (`kubernetes.io/service-name`), with
//! pod names from each endpoint's `targetRef`. No registry and no seed list.
//!
//! The watcher re-lists after an apiserver restart or watch expiry, and while the
//! apiserver is away the last known members stay as they were: work never waits on it.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

/// The pod names behind the ready endpoints of `slices`.
pub fn ready_pods<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeSet<String> {
    slices
        .into_iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(false)
        })
        .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.clone())
        .collect()
}

/// Watches the ready pods of `service` in `namespace`. The receiver starts empty and
/// changes only when the set of ready pods does. The watch runs until every receiver is
/// dropped.
pub fn watch_service(
    client: Client,
    namespace: &str,
    service: &str,
) -> watch::Receiver<BTreeSet<String>> {
    let (sender, receiver) = watch::channel(BTreeSet::new());
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let (store, writer) = reflector::store();
    let service = service.to_owned();
    tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(_)) => {
                        let pods = ready_pods(store.state().iter().map(AsRef::as_ref));
                        sender.send_if_modified(|current| {
                            let changed = *current != pods;
                            if changed {
                                tracing::info!(service = %service, members = ?pods, "members changed");
                                *current = pods;
                            }
                            changed
                        });
                    }
                    // Watch errors (apiserver away, expired resource versions) are retried
                    // by the backoff and a re-list; members stay as they were meanwhile.
                    Some(Err(err)) => tracing::debug!(service = %service, %err, "membership watch interrupted"),
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                },
                () = sender.closed() => break,
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn endpoint(pod: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_endpoints_with_a_pod_count() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                endpoint("a", Some(true)),
                endpoint("b", Some(false)),
                endpoint("c", None),
                Endpoint {
                    target_ref: None,
                    ..endpoint("d", Some(true))
                },
            ],
            ..Default::default()
        };
        let other = EndpointSlice {
            endpoints: vec![endpoint("e", Some(true))],
            ..slice.clone()
        };
        assert_eq!(
            ready_pods([&slice, &other]),
            BTreeSet::from(["a".to_owned(), "e".to_owned()])
        );
    }
}
