//! NATS over TLS with a private CA (docs/security.md): a real nats-server serving a
//! certificate of a CA made here, with auth on. A pool's processes (their connection,
//! `workpool_runtime::config::connect_nats`) given the CA file connect, and only over
//! TLS; without the CA the certificate is refused; the operator with the CA provisions.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use clap::Parser;
use workpool_core::PoolNames;
use workpool_e2e::certificates::signed_by_a_new_ca;
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::{NatsServer, ServerAuth};
use workpool_local_cluster::pools::{create_pool, install_crd, queue_ready, wait_pool};
use workpool_runtime::nats_auth::Trust;

/// A server with auth on and TLS required, its files in `dir`.
async fn tls_server(dir: &std::path::Path) -> (NatsServer, ServerAuth, std::path::PathBuf) {
    let signed = signed_by_a_new_ca(&["localhost", "127.0.0.1"]).unwrap();
    let (ca, certificate, key) = (
        signed.ca_pem,
        signed.certificate.pem(),
        signed.key.serialize_pem(),
    );
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let trust = Trust::generate();
    let auth = ServerAuth {
        admin_creds: dir.join("admin.creds"),
        account_seed: dir.join("account.seed"),
    };
    std::fs::write(
        &auth.admin_creds,
        trust.account().user_creds("admin", None).unwrap(),
    )
    .unwrap();
    std::fs::write(&auth.account_seed, trust.account().seed().unwrap()).unwrap();
    // The server reads these relative to its working directory: absolute paths.
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, certificate).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let config = format!(
        "port: 0\nhttp_port: 0\nmax_payload: 8MB\njetstream {{\n  store_dir: /data\n}}\n\
         tls {{\n  cert_file: {cert_file:?}\n  key_file: {key_file:?}\n}}\n{}",
        trust.server_config().unwrap()
    );
    let nats = NatsServer::start_from_config(&config, &[])
        .await
        .expect("nats with TLS");
    (nats, auth, ca_file)
}

fn pool_args(
    nats: &NatsServer,
    creds: &std::path::Path,
    ca: Option<&std::path::Path>,
) -> Vec<String> {
    let mut args = vec![
        "workpool-api".to_owned(),
        "--pool=demo".to_owned(),
        format!("--nats-url=tls://localhost:{}", nats.port()),
        format!("--nats-creds-file={}", creds.display()),
    ];
    args.extend(ca.map(|ca| format!("--nats-ca-file={}", ca.display())));
    args
}

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    pool: workpool_runtime::config::PoolArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_the_operator_reach_a_tls_nats_through_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, auth, ca_file) = tls_server(dir.path()).await;

    // The operator, given the CA, provisions a pool on it.
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("nats-tls").await.expect("namespace");
    let url = format!("tls://localhost:{}", nats.port());
    let _operator = RunningOperator::start_with_nats_auth(
        plane,
        &ns,
        "op",
        "op-0",
        Some(&auth),
        Some(&ca_file),
    )
    .await
    .expect("operator");
    create_pool(&client, &ns, &pool_yaml("demo", &url, ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", Duration::from_secs(60), queue_ready)
        .await
        .expect("provisioned over TLS");

    // The pool's own connection, as its api and workers open it, with its minted user.
    let names = PoolNames::new(&ns, "demo").unwrap();
    let account = workpool_runtime::nats_auth::AccountKey::from_file(&auth.account_seed).unwrap();
    let creds = dir.path().join("pool.creds");
    let minted = account
        .user_creds("demo", Some(&names.permissions()))
        .unwrap();
    std::fs::write(&creds, minted).unwrap();
    let with_ca = Args::parse_from(pool_args(&nats, &creds, Some(&ca_file)));
    let mut config = with_ca.pool.load().expect("config");
    config.names = names.clone();
    let pool = workpool_runtime::config::connect_nats(&config, "workpool-api")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(pool.clone());
    js.get_stream(names.stream())
        .await
        .expect("its stream, over TLS");
    assert_eq!(
        pool.connection_state(),
        async_nats::connection::State::Connected
    );

    // Without the CA the server's certificate is refused: no connection.
    let refused = async_nats::ConnectOptions::with_credentials_file(creds.clone())
        .await
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(format!("tls://localhost:{}", nats.port()))
        .await;
    let err = refused.expect_err("an unknown CA is refused");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
}
