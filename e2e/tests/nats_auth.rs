//! Each pool's NATS user reaches its own pool only (docs/security.md): the operator mints
//! it with the account key, the server (auth on) enforces its permissions. Real
//! nats-server, real kube-apiserver, the operator in this process.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use async_nats::{Event, ServerError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::mpsc;
use workpool_core::PoolNames;
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{create_pool, install_crd, queue_ready, wait_pool};

const WAIT: Duration = Duration::from_secs(60);

/// A client of pool `names` with the credentials the operator minted for it, and the
/// server errors it is sent (permission violations arrive as those).
async fn pool_client(
    nats: &NatsServer,
    creds: &str,
    names: &PoolNames,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors, received) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials(creds)
        .expect("creds parse")
        .custom_inbox_prefix(names.inbox_prefix())
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let Event::ServerError(ServerError::Other(text)) = event {
                    let _ = errors.send(text);
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("the pool's user connects");
    (client, received)
}

/// Waits for a permissions violation naming `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(text) = errors.recv().await {
            if text.contains("Permissions Violation") && text.contains(subject) {
                return text;
            }
        }
        String::new()
    })
    .await
    .expect("a permissions violation");
    assert!(seen.contains(subject), "{seen}");
}

async fn minted_creds(client: &kube::Client, ns: &str, pool: &str) -> String {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{pool}-workpool-nats"))
        .await
        .expect("the minted Secret");
    let bytes = &secret.data.expect("data")["nats.creds"].0;
    String::from_utf8(bytes.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_user_reaches_its_own_pool_and_nothing_of_another() {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("nats-auth").await.expect("namespace");
    let nats = NatsServer::start_secured_on("127.0.0.1")
        .await
        .expect("nats");
    let _operator =
        RunningOperator::start_with_nats_auth(plane, &ns, "op", "op-0", nats.auth(), None)
            .await
            .expect("operator");
    for pool in ["alpha", "beta"] {
        create_pool(&client, &ns, &pool_yaml(pool, &nats.url(), ""))
            .await
            .expect("create");
        wait_pool(&client, &ns, pool, WAIT, queue_ready)
            .await
            .expect("provisioned with the operator's own user");
    }
    // The pods are given the minted user.
    let api = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("alpha-api")
        .await
        .expect("api Deployment");
    let pod = api.spec.unwrap().template.spec.unwrap();
    let mounted =
        pod.volumes.unwrap_or_default().into_iter().any(|v| {
            v.secret.and_then(|s| s.secret_name).as_deref() == Some("alpha-workpool-nats")
        });
    assert!(mounted, "the api pod mounts the pool's NATS user");

    let (alpha, beta) = (
        PoolNames::new(&ns, "alpha").unwrap(),
        PoolNames::new(&ns, "beta").unwrap(),
    );
    let creds = minted_creds(&client, &ns, "alpha").await;
    let (own, mut errors) = pool_client(&nats, &creds, &alpha).await;
    let js = async_nats::jetstream::new(own.clone());

    // Its own pool: queue work, read the stream and the bucket.
    let id = "0123456789abcdef0123456789abcdef".parse().unwrap();
    js.publish(alpha.work_subject("echo", &id), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("own work is queued");
    js.get_stream(alpha.stream())
        .await
        .expect("own stream info");
    let bucket = js.get_key_value(alpha.bucket()).await.expect("own bucket");
    bucket
        .put("probe", "x".into())
        .await
        .expect("own bucket put");

    // Another pool's: every attempt refused by the server.
    assert!(js.get_stream(beta.stream()).await.is_err());
    violation(
        &mut errors,
        &format!("$JS.API.STREAM.INFO.{}", beta.stream()),
    )
    .await;
    let theirs = beta.work_subject("echo", &id);
    own.publish(theirs.clone(), "{}".into()).await.unwrap();
    violation(&mut errors, &theirs).await;
    let _sub = own.subscribe(format!("wp.{ns}.beta.>")).await.unwrap();
    violation(&mut errors, &format!("wp.{ns}.beta.>")).await;
    let their_inbox = format!("{}.>", beta.inbox_prefix());
    let _snoop = own.subscribe(their_inbox.clone()).await.unwrap();
    violation(&mut errors, &their_inbox).await;
    let their_results = format!("$KV.{}.probe", beta.bucket());
    own.publish(their_results.clone(), "x".into())
        .await
        .unwrap();
    violation(&mut errors, &their_results).await;

    // Nor may it change its own pool's streams: that is the operator's.
    assert!(js.delete_stream(alpha.stream()).await.is_err());
    violation(
        &mut errors,
        &format!("$JS.API.STREAM.DELETE.{}", alpha.stream()),
    )
    .await;
    js.get_stream(alpha.stream())
        .await
        .expect("the stream is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_credentials_is_refused() {
    let nats = NatsServer::start_secured_on("127.0.0.1")
        .await
        .expect("nats");
    let refused = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    let err = refused.expect_err("no credentials, no connection");
    assert!(
        matches!(
            err.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication
        ),
        "{err}"
    );
    // The admin user still gets in.
    nats.client().await.expect("admin connects");
}

/// The pool's processes, connected as the pool's user, run the whole protocol (unkeyed
/// and keyed work, long-polls, a cancel of running work, the cluster view, results)
/// without one refused subject: the permissions are complete as well as tight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_processes_need_nothing_beyond_the_pools_user() {
    use serde_json::json;
    use workpool_e2e::pool::TestPool;
    let spec = workpool_core::PoolSpec::from_json(r#"{"worker": {"partitions": 2}}"#);
    let pool = TestPool::start(spec.expect("spec"), 2, 2)
        .await
        .expect("pool");
    let mut ids = Vec::new();
    for n in 0..20 {
        let key = (n % 2 == 0).then(|| format!("key-{}", n % 4));
        let body = json!({"data": {"ms": 10, "n": n}, "key": key});
        ids.push(pool.submit(&body).await.expect("submit"));
    }
    let polled = pool
        .send(pool.http.get(format!(
            "{}/api/v1/work/{}?wait=10s",
            pool.api_url(1),
            ids[19]
        )))
        .await
        .expect("long-poll");
    assert_eq!(polled.str("status"), "worked", "{polled:?}");
    for id in &ids {
        pool.wait_status(id, "worked", WAIT).await.expect("worked");
    }
    let long = pool
        .submit(&json!({"data": {"ms": 30000}}))
        .await
        .expect("submit");
    pool.wait_status(&long, "working", WAIT)
        .await
        .expect("working");
    let view =
        workpool_e2e::http::get_json(&pool.http, &format!("{}/api/v1/cluster", pool.api_url(0)))
            .await
            .expect("cluster view");
    assert_eq!(view["workers"].as_array().map(Vec::len), Some(2), "{view}");
    let cancelled = pool.cancel(&long).await.expect("cancel");
    assert_eq!(cancelled.str("status"), "cancelled", "{cancelled:?}");
    assert_eq!(pool.nats.permission_violations(), Vec::<String>::new());
}

/// The `nats.conf` of the chart rendered with its bundled NATS (charts/rendered/).
fn charts_nats_conf() -> String {
    let path =
        workpool_local_cluster::paths::repo_root().join("charts/rendered/workpool-with-nats.yaml");
    let rendered = std::fs::read_to_string(path).expect("the rendered chart");
    rendered
        .lines()
        .skip_while(|line| line.trim() != "nats.conf: |")
        .skip(1)
        .take_while(|line| line.starts_with("    "))
        .map(|line| format!("{}\n", &line[4..]))
        .collect()
}

/// The chart's bootstrap (`workpool-operator bootstrap-nats`) against the real apiserver,
/// and the chart's own `nats.conf` served by a real nats-server with the trust it made:
/// clients without credentials are refused, the operator's user provisions, a pool's
/// user minted with the account seed reaches its pool and not another's. A second run
/// keeps the Secret as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_nats_runs_with_auth_from_the_bootstrapped_trust() {
    use workpool_operator::bootstrap::{BootstrapArgs, Bootstrapped, bootstrap};
    use workpool_runtime::nats_auth::AccountKey;
    let plane = ControlPlane::shared().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("nats-bootstrap").await.expect("namespace");
    let args = BootstrapArgs {
        namespace: ns.clone(),
        secret: "workpool-nats-auth".into(),
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let made = bootstrap(client.clone(), &args).await.expect("bootstrap");
    assert_eq!(made, Bootstrapped::Created);
    let first = secrets.get(&args.secret).await.expect("secret").data;
    let again = bootstrap(client.clone(), &args).await.expect("bootstrap");
    assert_eq!(again, Bootstrapped::Kept);
    let data = secrets.get(&args.secret).await.expect("secret").data;
    assert_eq!(data, first, "a second run changes nothing");
    let data = data.expect("data");
    let text = |key: &str| String::from_utf8(data[key].0.clone()).expect("utf-8");

    let conf = charts_nats_conf();
    assert!(conf.contains("include auth.conf"), "{conf}");
    let nats = NatsServer::start_from_config(&conf, &[("auth.conf", &text("auth.conf"))])
        .await
        .expect("the chart's NATS with the bootstrapped trust");
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "no credentials, no connection");

    let operator = async_nats::ConnectOptions::with_credentials(&text("nats.creds"))
        .expect("creds")
        .connect(nats.url())
        .await
        .expect("the operator's user connects");
    let names = PoolNames::new(&ns, "demo").unwrap();
    let spec = workpool_core::PoolSpec::default();
    let js = async_nats::jetstream::new(operator);
    workpool_runtime::provision::provision(&js, &names, &spec)
        .await
        .expect("the operator's user provisions");

    let dir = tempfile::tempdir().expect("dir");
    let seed = dir.path().join("account.seed");
    std::fs::write(&seed, text("account.seed")).expect("write");
    let account = AccountKey::from_file(&seed).expect("the account seed");
    let creds = account
        .user_creds("demo", Some(&names.permissions()))
        .expect("mint");
    let (pool, mut errors) = pool_client(&nats, &creds, &names).await;
    let pool_js = async_nats::jetstream::new(pool.clone());
    pool_js
        .get_stream(names.stream())
        .await
        .expect("its own stream");
    let other = PoolNames::new(&ns, "other").unwrap();
    assert!(pool_js.get_stream(other.stream()).await.is_err());
    violation(
        &mut errors,
        &format!("$JS.API.STREAM.INFO.{}", other.stream()),
    )
    .await;
}
