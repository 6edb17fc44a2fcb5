//! Closed by default for clients: work ids are keyed with the pool's secret, so nobody
//! derives an id from a payload they guess; with auth on, a token's tenant scopes the
//! work it submits, reads and cancels, and only an admin token sees the cluster view.
//! Against the real api and worker processes and a real nats-server.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::{PoolSpec, WorkId};
use workpool_e2e::pool::{Answer, TestPool};

const SECRET: &[u8] = b"a tenant test secret of enough length";

fn token(claims: Value) -> String {
    let mut claims = claims;
    claims["exp"] = json!(4_000_000_000u64);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("token")
}

async fn pool_with_auth(workers: usize) -> (TestPool, tempfile::TempDir) {
    pool_with_auth_spec(r#"{"worker": {"handler": {"builtin": "echo"}}}"#, workers).await
}

async fn pool_with_auth_spec(spec: &str, workers: usize) -> (TestPool, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let env = vec![(
        "WORKPOOL_JWT_SECRET_FILE".to_owned(),
        secret_file.display().to_string(),
    )];
    let spec = PoolSpec::from_json(spec).unwrap();
    let pool = TestPool::start_with_api_env(spec, 1, workers, env)
        .await
        .expect("pool");
    (pool, dir)
}

async fn as_tenant(pool: &TestPool, token: &str, method: reqwest::Method, path: &str) -> Answer {
    let url = format!("{}{path}", pool.api_url(0));
    pool.send(pool.http.request(method, url).bearer_auth(token))
        .await
        .expect("request")
}

async fn post(pool: &TestPool, token: &str, body: &Value) -> Answer {
    let url = format!("{}/api/v1/work", pool.api_url(0));
    pool.send(pool.http.post(url).json(body).bearer_auth(token))
        .await
        .expect("post")
}

#[tokio::test]
async fn ids_are_keyed_with_the_pools_secret() {
    let spec = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).unwrap();
    let pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let data = json!({"guess": "me"});
    let id = pool.submit(&json!({"data": data})).await.expect("post");
    assert_ne!(
        id,
        WorkId::from_content("default", None, &data).as_str(),
        "the unkeyed hash of the content"
    );
    assert_eq!(
        id,
        pool.content_id(&data).as_str(),
        "keyed with the pool's id key"
    );
    let unkeyed = WorkId::from_content("default", None, &data);
    assert_eq!(pool.get(unkeyed.as_str()).await.unwrap().status, 404);
}

#[tokio::test]
async fn a_tenant_sees_and_cancels_only_its_own_work() {
    let (pool, _dir) = pool_with_auth(0).await;
    let (a, b) = (token(json!({"sub": "a"})), token(json!({"sub": "b"})));
    let body = json!({"data": {"same": "content"}});
    let posted_a = post(&pool, &a, &body).await;
    let posted_b = post(&pool, &b, &body).await;
    assert_eq!(
        (posted_a.status, posted_b.status),
        (202, 202),
        "{posted_a:?} {posted_b:?}"
    );
    let (id_a, id_b) = (posted_a.str("callback"), posted_b.str("callback"));
    assert_ne!(
        id_a, id_b,
        "one tenant's work never shares an id with another's"
    );
    // The same content from the same tenant is the same work.
    let again = post(&pool, &a, &body).await;
    assert_eq!(
        (again.status, again.str("callback")),
        (200, id_a),
        "{again:?}"
    );

    let work_a = format!("/api/v1/work/{id_a}");
    let paths = [
        work_a.clone(),
        format!("{work_a}?wait=1s"),
        format!("{work_a}/events"),
    ];
    for path in paths {
        let seen = as_tenant(&pool, &b, reqwest::Method::GET, &path).await;
        assert_eq!(seen.status, 404, "another tenant's GET {path}: {seen:?}");
    }
    let cancelled = as_tenant(&pool, &b, reqwest::Method::DELETE, &work_a).await;
    assert_eq!(
        cancelled.status, 404,
        "another tenant's DELETE: {cancelled:?}"
    );
    let untenanted = token(json!({}));
    let seen = as_tenant(&pool, &untenanted, reqwest::Method::GET, &work_a).await;
    assert_eq!(seen.status, 404, "a token with no tenant: {seen:?}");
    let own = as_tenant(&pool, &a, reqwest::Method::GET, &work_a).await;
    assert_eq!((own.status, own.str("status")), (200, "pending"), "{own:?}");
    // Still queued: B's DELETE did nothing. A's own cancels it.
    let own_cancel = as_tenant(&pool, &a, reqwest::Method::DELETE, &work_a).await;
    assert_eq!(
        (own_cancel.status, own_cancel.str("status")),
        (200, "cancelled")
    );
    let b_work = as_tenant(
        &pool,
        &b,
        reqwest::Method::GET,
        &format!("/api/v1/work/{id_b}"),
    )
    .await;
    assert_eq!(
        (b_work.status, b_work.str("status")),
        (200, "pending"),
        "{b_work:?}"
    );
}

#[tokio::test]
async fn a_tenants_work_runs_and_its_result_is_its_own() {
    let (pool, _dir) = pool_with_auth(1).await;
    let a = token(json!({"sub": "a"}));
    let posted = post(&pool, &a, &json!({"data": {"n": 7}})).await;
    let path = format!("/api/v1/work/{}?wait=10s", posted.str("callback"));
    let mut worked = as_tenant(&pool, &a, reqwest::Method::GET, &path).await;
    for _ in 0..20 {
        if worked.str("status") == "worked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        worked = as_tenant(&pool, &a, reqwest::Method::GET, &path).await;
    }
    assert_eq!(worked.str("status"), "worked", "{worked:?}");
    assert_eq!(worked.body["result"], json!({"n": 7}));
    let other = as_tenant(
        &pool,
        &token(json!({"sub": "b"})),
        reqwest::Method::GET,
        &path,
    )
    .await;
    assert_eq!(
        other.status, 404,
        "the finished record is still a's alone: {other:?}"
    );
}

#[tokio::test]
async fn the_cluster_view_and_the_queue_figures_need_the_admin_claim() {
    let (pool, _dir) = pool_with_auth(0).await;
    let tenant = token(json!({"sub": "a"}));
    let admin = token(json!({"sub": "ops", "workpool_admin": true}));
    for view in ["/api/v1/cluster", "/api/v1/queue"] {
        let anonymous = pool
            .send(pool.http.get(format!("{}{view}", pool.api_url(0))))
            .await
            .unwrap();
        assert_eq!(anonymous.status, 401, "{view}: {anonymous:?}");
        let refused = as_tenant(&pool, &tenant, reqwest::Method::GET, view).await;
        assert_eq!(
            (refused.status, refused.str("code")),
            (403, "forbidden"),
            "{view}: {refused:?}"
        );
        let allowed = as_tenant(&pool, &admin, reqwest::Method::GET, view).await;
        assert_eq!(allowed.status, 200, "{view}: {allowed:?}");
    }
}

/// The ids `GET /api/v1/work` lists for `token`.
async fn listed(pool: &TestPool, token: &str) -> Vec<String> {
    let answer = as_tenant(pool, token, reqwest::Method::GET, "/api/v1/work").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_recent_work() {
    let (pool, _dir) = pool_with_auth(0).await;
    let (a, b) = (token(json!({"sub": "a"})), token(json!({"sub": "b"})));
    let admin = token(json!({"sub": "ops", "workpool_admin": true}));
    let a_work = post(&pool, &a, &json!({"data": "a's"}))
        .await
        .str("callback")
        .to_owned();
    let b_work = post(&pool, &b, &json!({"data": "b's"}))
        .await
        .str("callback")
        .to_owned();
    assert_eq!(listed(&pool, &a).await, std::slice::from_ref(&a_work));
    assert_eq!(listed(&pool, &b).await, std::slice::from_ref(&b_work));
    let all = listed(&pool, &admin).await;
    assert!(all.contains(&a_work) && all.contains(&b_work), "{all:?}");
}

/// The ids of the dead letters `token` lists.
async fn dead_letter_ids(pool: &TestPool, token: &str) -> Vec<String> {
    let page = as_tenant(pool, token, reqwest::Method::GET, "/api/v1/dead").await;
    let letters = page.body["dead_letters"].as_array().cloned();
    letters
        .unwrap_or_default()
        .iter()
        .map(|letter| letter["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenant_sees_retries_and_purges_only_its_own_dead_letters() {
    let failing = r#"{"worker": {"maxAttempts": 1, "handler": {"exec": {"command": ["sh", "-c", "exit 3"]}}}}"#;
    let (pool, _dir) = pool_with_auth_spec(failing, 1).await;
    let (a, b) = (token(json!({"sub": "a"})), token(json!({"sub": "b"})));
    let admin = token(json!({"sub": "ops", "workpool_admin": true}));
    let id_a = post(&pool, &a, &json!({"data": 1}))
        .await
        .str("callback")
        .to_owned();
    let id_b = post(&pool, &b, &json!({"data": 1}))
        .await
        .str("callback")
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead_letter_ids(&pool, &admin).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", pool.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead_letter_ids(&pool, &a).await, [id_a.as_str()]);
    assert_eq!(dead_letter_ids(&pool, &b).await, [id_b.as_str()]);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let path = format!("/api/v1/dead/{id_a}");
        let theirs = as_tenant(&pool, &b, method, &path).await;
        assert_eq!(theirs.status, 404, "{theirs:?}");
    }
    let retry = format!("/api/v1/dead/{id_a}/retry");
    assert_eq!(
        as_tenant(&pool, &b, reqwest::Method::POST, &retry)
            .await
            .status,
        404
    );
    let purged = as_tenant(&pool, &b, reqwest::Method::DELETE, "/api/v1/dead").await;
    assert_eq!(
        purged.body["purged"],
        json!(1),
        "b's own letter only: {purged:?}"
    );
    assert_eq!(dead_letter_ids(&pool, &admin).await, [id_a]);
}

/// A pool whose key is an EC public key (PEM) takes ES256 tokens signed with its private
/// half, and refuses an HS256 token made with the public key as the secret.
#[tokio::test]
async fn a_public_key_checks_tokens_signed_with_its_private_half() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key.pem");
    std::fs::write(
        &key_file,
        include_bytes!("../../api/testdata/es256-public.pem"),
    )
    .unwrap();
    let env = vec![(
        "WORKPOOL_JWT_SECRET_FILE".to_owned(),
        key_file.display().to_string(),
    )];
    let pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, env)
        .await
        .expect("pool");
    let claims = json!({"sub": "a", "exp": 4_000_000_000u64});
    let private = include_bytes!("../../api/testdata/es256-private.pem");
    let es256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(private).unwrap(),
    )
    .unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(include_bytes!(
            "../../api/testdata/es256-public.pem"
        )),
    )
    .unwrap();
    let body = json!({"data": "signed"});
    assert_eq!(post(&pool, &es256, &body).await.status, 202);
    assert_eq!(post(&pool, &confused, &body).await.status, 401);
}

/// A token signed with `algorithm` by the test key in `private`, naming key id `kid`.
fn signed(algorithm: jsonwebtoken::Algorithm, private: &[u8], kid: &str) -> String {
    let key = match algorithm {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(private),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(private),
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    let claims = json!({"sub": "a", "exp": 4_000_000_000u64});
    jsonwebtoken::encode(&header, &claims, &key.unwrap()).unwrap()
}

/// A pool that names an identity provider's JWKS URL takes tokens signed with any key
/// of the set, picked by `kid`, and follows a rotation: a key added to the set is
/// accepted once the api fetched the set again, which a token naming it causes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_checks_tokens_by_key_id_and_follows_a_rotation() {
    use jsonwebtoken::Algorithm::{ES256, RS256};
    let published: Value =
        serde_json::from_str(include_str!("../../api/testdata/jwks.json")).unwrap();
    // At first the provider publishes only the RSA key.
    let rsa_only = json!({"keys": [published["keys"][0].clone()]});
    let served = std::sync::Arc::new(std::sync::Mutex::new(rsa_only));
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let served = served.clone();
            move || async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let env = vec![("WORKPOOL_JWT_JWKS_URL".to_owned(), url)];
    let pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, env)
        .await
        .expect("pool");

    let rs256 = signed(
        RS256,
        include_bytes!("../../api/testdata/rs256-private.pem"),
        "rs-1",
    );
    let es256 = signed(
        ES256,
        include_bytes!("../../api/testdata/es256-private.pem"),
        "ec-1",
    );
    // Each POST its own content, so none is answered as a duplicate.
    let count = std::sync::atomic::AtomicUsize::new(0);
    let body = || json!({"data": count.fetch_add(1, std::sync::atomic::Ordering::Relaxed)});
    assert_eq!(post(&pool, &rs256, &body()).await.status, 202);
    assert_eq!(
        post(&pool, &es256, &body()).await.status,
        401,
        "ec-1 not published yet"
    );
    // The RSA key's token under another key's id, and an HS256 token "signed" with a
    // public key, are refused.
    let rsa_private = include_bytes!("../../api/testdata/rs256-private.pem");
    let misnamed = signed(RS256, rsa_private, "ec-1");
    let header = jsonwebtoken::Header {
        kid: Some("rs-1".into()),
        ..Default::default()
    };
    let confused = jsonwebtoken::encode(
        &header,
        &json!({"sub": "a", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(include_bytes!(
            "../../api/testdata/rs256-public.pem"
        )),
    )
    .unwrap();
    for token in [&misnamed, &confused, &token(json!({"sub": "a"}))] {
        assert_eq!(post(&pool, token, &body()).await.status, 401);
    }

    // The provider adds the EC key: the api follows within its refetch interval.
    *served.lock().unwrap() = published;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = post(&pool, &es256, &body()).await.status;
        if status == 202 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ec-1 never accepted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(post(&pool, &rs256, &body()).await.status, 202);
}
