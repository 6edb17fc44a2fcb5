//! The Workpool api: an axum gateway that accepts work over HTTP, records it in the pool's
//! results bucket, queues it on the pool's stream, and answers its status.

pub mod auth;
pub mod batch;
pub mod cluster;
pub mod dead_letters;
pub mod dead_routes;
pub mod error;
pub mod jwks;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod overview;
pub mod queue;
pub mod recent;
pub mod routes;
mod send_span;
pub mod waiters;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use backon::Retryable;
use workpool_core::PoolNames;
use workpool_core::ids::{IdKey, IdScope};
use workpool_core::peer_auth::PeerKey;
use workpool_runtime::config::{PoolArgs, PoolConfig};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::metrics::ApiMetrics;
use crate::queue::Queue;

/// Command-line settings of the api.
#[derive(Debug, clap::Parser)]
#[command(name = "workpool-api", about = "Workpool HTTP gateway")]
pub struct Args {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Address to serve HTTP on.
    #[arg(long, env = "WORKPOOL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Serve `/healthz`, `/readyz` and `/metrics` here, and not on `listen`, so the
    /// public port shows clients nothing of the process (the operator sets it).
    #[arg(long, env = "WORKPOOL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the HS256 secret or a PEM public key; when set, /api/v1/work
    /// requires a bearer JWT.
    #[arg(
        long,
        env = "WORKPOOL_JWT_SECRET_FILE",
        conflicts_with = "jwt_jwks_url"
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// An identity provider's JWKS URL (its `jwks_uri`); when set, /api/v1/work requires
    /// a bearer JWT signed with one of its RS256 or ES256 keys, named by `kid`.
    #[arg(long, env = "WORKPOOL_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// The token claim that names the tenant whose work a request may submit, read and
    /// cancel.
    #[arg(long, env = "WORKPOOL_JWT_TENANT_CLAIM", default_value = auth::DEFAULT_TENANT_CLAIM)]
    pub jwt_tenant_claim: String,
    /// The token claim that, `true`, lets a request use the cluster view.
    #[arg(long, env = "WORKPOOL_JWT_ADMIN_CLAIM", default_value = auth::DEFAULT_ADMIN_CLAIM)]
    pub jwt_admin_claim: String,
    /// The pool's headless worker Service, whose ready endpoints are the worker members
    /// shown by `GET /api/v1/cluster` (without it, only workers that answer are shown).
    #[arg(long, env = "WORKPOOL_WORKERS_SERVICE")]
    pub workers_service: Option<String>,
    /// The pool's api Service, whose ready endpoints are the api members.
    #[arg(long, env = "WORKPOOL_API_SERVICE")]
    pub api_service: Option<String>,
    /// Most requests that may wait at once in this process (`?wait=` long-polls and
    /// DELETEs of running work); past it they get `429 too_many_waiters`.
    #[arg(long, env = "WORKPOOL_MAX_WAITERS", default_value_t = waiters::DEFAULT_MAX_WAITERS)]
    pub max_waiters: usize,
    /// How often this pod looks at its queue for the console's charts
    /// (`GET /api/v1/queue` keeps the last 120 looks).
    #[arg(long, env = "WORKPOOL_QUEUE_SAMPLE_EVERY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub queue_sample_every: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] workpool_runtime::config::ConfigError),
    #[error("reading JWT secret {path}: {source}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: auth::KeyError,
    },
    #[error("JWT keys: {0}")]
    Jwks(#[from] jwks::JwksError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("connecting to NATS: {0}")]
    Nats(#[from] workpool_runtime::config::ConnectError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Shared by all handlers.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: PoolConfig,
    queue: OnceLock<Queue>,
    metrics: ApiMetrics,
    auth: Option<Auth>,
    /// Keys the pool's work ids; none without a peer key (outside a cluster).
    id_key: Option<IdKey>,
    members: cluster::Members,
    max_waiters: usize,
    /// This pod's looks at the queue, for the console.
    history: overview::History,
}

impl AppState {
    pub fn new(
        config: PoolConfig,
        auth: Option<Auth>,
        members: cluster::Members,
        max_waiters: usize,
    ) -> Result<Self, prometheus::Error> {
        let metrics = ApiMetrics::new(&config.names.namespace, &config.names.pool)?;
        let id_key = config.peer_key.as_ref().map(PeerKey::id_key);
        Ok(Self(Arc::new(Inner {
            id_key,
            config,
            queue: OnceLock::new(),
            metrics,
            auth,
            members,
            max_waiters,
            history: overview::History::default(),
        })))
    }

    pub fn history(&self) -> &overview::History {
        &self.0.history
    }

    pub fn members(&self) -> &cluster::Members {
        &self.0.members
    }

    pub fn config(&self) -> &PoolConfig {
        &self.0.config
    }

    /// The bound queue, or 503 while the api has not reached NATS yet.
    pub fn queue(&self) -> Result<&Queue, ApiError> {
        self.0
            .queue
            .get()
            .ok_or_else(|| ApiError::unavailable("not yet bound to the pool's NATS objects"))
    }

    pub fn pod(&self) -> &str {
        &self.0.config.pod
    }

    pub fn names(&self) -> &PoolNames {
        &self.0.config.names
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.0.metrics
    }

    pub fn max_body_bytes(&self) -> usize {
        self.0.config.spec.queue.max_payload_bytes
    }

    /// The token check, when auth is on (see [`auth::authenticate`]).
    pub fn auth(&self) -> Option<&Auth> {
        self.0.auth.as_ref()
    }

    /// What `caller`'s work ids are derived within: the pool's id key (from its peer
    /// key) and the caller's tenant.
    pub fn id_scope<'a>(&'a self, caller: &'a auth::Caller) -> IdScope<'a> {
        IdScope {
            key: self.0.id_key.as_ref(),
            tenant: caller.tenant.as_deref(),
        }
    }

    /// Binds to the pool's NATS objects, retrying until they exist.
    pub async fn bind(&self, client: async_nats::Client) {
        let config = &self.0.config;
        let bind = || {
            Queue::bind(
                client.clone(),
                config.names.clone(),
                &config.spec,
                config.peer_key.clone(),
                self.0.max_waiters,
            )
        };
        let bound = bind
            .retry(workpool_runtime::retry::UNTIL_ANSWERED)
            .notify(|err, _| {
                tracing::warn!(%err, "pool's NATS objects not reachable yet; retrying");
            })
            .await;
        match bound {
            Ok(queue) => {
                let _ = self.0.queue.set(queue);
                tracing::info!(stream = %config.names.stream(), "bound to the pool's stream and bucket");
            }
            // Not reached: the backoff never runs out.
            Err(err) => tracing::error!(%err, "gave up binding to the pool's NATS objects"),
        }
    }
}

/// The whole HTTP surface on one port (outside a cluster, and in tests).
pub fn router(state: AppState) -> Router {
    let routes = public_routes(&state).merge(admin_routes());
    finish(routes, state)
}

/// What clients use: the work routes, the console and the OpenAPI document.
pub fn public_router(state: AppState) -> Router {
    finish(public_routes(&state), state)
}

/// What probes and Prometheus use: `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    finish(admin_routes(), state)
}

fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
}

fn public_routes(state: &AppState) -> Router<AppState> {
    let work = Router::new()
        .route(
            "/api/v1/work",
            axum::routing::post(routes::submit).get(recent::recent),
        )
        .route(
            "/api/v1/work/batch",
            axum::routing::post(batch::submit_batch)
                .layer(DefaultBodyLimit::max(batch::batch_limit(state))),
        )
        .route("/api/v1/work/{id}", get(routes::get).delete(routes::cancel))
        .route("/api/v1/work/{id}/events", get(live::events))
        .route("/api/v1/cluster", get(cluster::view))
        .route("/api/v1/queue", get(overview::overview))
        .route(
            "/api/v1/dead",
            get(dead_routes::list).delete(dead_routes::purge_all),
        )
        .route(
            "/api/v1/dead/retry",
            axum::routing::post(dead_routes::retry_all),
        )
        .route(
            "/api/v1/dead/{id}",
            get(dead_routes::inspect).delete(dead_routes::purge),
        )
        .route(
            "/api/v1/dead/{id}/retry",
            axum::routing::post(dead_routes::retry),
        );
    let work = guarded(work, state).layer(DefaultBodyLimit::max(state.max_body_bytes()));
    Router::new()
        .merge(work)
        // Open: the document, and the console page (its token is in the fragment).
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/console", get(cluster::console))
}

/// Answers for what no route matched, and the request metrics, around `routes`.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(
            |request: Request| async move { ApiError::NoRoute(request.uri().path().to_owned()) },
        )
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .with_state(state)
}

/// `routes`, each of which now needs a token when auth is on ([`auth::authenticate`]).
/// It runs once a route matched: an unknown route or method is answered 404 or 405
/// whatever the token.
fn guarded(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ))
}

async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics().request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The token check the flags ask for: a key from a file, the keys of a JWKS URL, or none.
async fn load_auth(args: &Args) -> Result<Option<Auth>, StartError> {
    let (tenant, admin) = (&args.jwt_tenant_claim, &args.jwt_admin_claim);
    if let Some(url) = &args.jwt_jwks_url {
        let jwks = jwks::Jwks::start(url).await?;
        return Ok(Some(Auth::from_jwks(jwks, tenant, admin)));
    }
    let Some(path) = &args.jwt_secret_file else {
        return Ok(None);
    };
    let secret = std::fs::read(path).map_err(|source| StartError::Secret {
        path: path.clone(),
        source,
    })?;
    let auth = Auth::from_key(secret.trim_ascii(), tenant, admin);
    Ok(Some(auth.map_err(|source| StartError::Key {
        path: path.clone(),
        source,
    })?))
}

/// Runs the api until `shutdown` completes.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let config = args.pool.load()?;
    let auth = load_auth(&args).await?;
    let client = workpool_runtime::config::connect_nats(&config, "workpool-api").await?;
    let members = cluster::Members::watch(
        &config.names.namespace,
        args.api_service.as_deref(),
        args.workers_service.as_deref(),
    )
    .await;
    let state = AppState::new(config, auth, members, args.max_waiters)?;
    let binder = state.clone();
    tokio::spawn(async move { binder.bind(client).await });
    tokio::spawn(overview::sample(state.clone(), args.queue_sample_every));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, pod = state.pod(), "api serving");
    let Some(admin_listen) = args.admin_listen else {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    };
    let admin_listener = tokio::net::TcpListener::bind(admin_listen).await?;
    tracing::info!(listen = %admin_listener.local_addr()?, "health and metrics serving");
    let stop = tokio_util::sync::CancellationToken::new();
    let admin = axum::serve(admin_listener, admin_router(state.clone()))
        .with_graceful_shutdown(stop.clone().cancelled_owned());
    let admin = tokio::spawn(admin.into_future());
    let public = axum::serve(listener, public_router(state)).with_graceful_shutdown(shutdown);
    let served = public.await;
    // Probes see the process until it stops serving clients.
    stop.cancel();
    let _ = admin.await;
    Ok(served?)
}

#[cfg(test)]
mod router_tests;
