//! `workpool-smoke --url http://demo-api.default.svc`: submits one work item and waits
//! until it is worked. The Helm chart's `helm test` runs it; it works against any api.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use backon::{ConstantBuilder, Retryable};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "workpool-smoke",
    about = "Submit one work item and wait until it is worked"
)]
struct Args {
    /// Base URL of a WorkPool's api.
    #[arg(long)]
    url: String,
    /// How long to wait in all.
    #[arg(long, default_value = "60s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match smoke(&args).await {
        Ok(id) => {
            println!("work {id} worked");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("workpool-smoke: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Why the smoke test failed.
#[derive(Debug, thiserror::Error)]
enum SmokeError {
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("setting up TLS: {0}")]
    Tls(#[source] workpool_worker::http_client::ClientError),
    #[error("POST answered {0}")]
    Refused(reqwest::StatusCode),
    #[error("POST failed: {0}")]
    Post(#[source] reqwest::Error),
    #[error("reading the answer to the POST: {0}")]
    Answer(#[source] reqwest::Error),
    #[error("no callback in the answer")]
    NoCallback,
    #[error("GET of work {id}: {source}")]
    Get {
        id: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("work {id} ended {status}: {error}")]
    Ended {
        id: String,
        status: serde_json::Value,
        error: serde_json::Value,
    },
    #[error("work {id} did not finish within {timeout:?}")]
    Unfinished { id: String, timeout: Duration },
}

/// Between two POSTs the api did not take: a second, until the deadline.
const POST_RETRY: ConstantBuilder = ConstantBuilder::new()
    .with_delay(Duration::from_secs(1))
    .without_max_times();

async fn smoke(args: &Args) -> Result<String, SmokeError> {
    let deadline = Instant::now() + args.timeout;
    let http = workpool_worker::http_client::client_builder()
        .map_err(SmokeError::Tls)?
        .timeout(Duration::from_secs(35))
        .build()
        .map_err(SmokeError::Client)?;
    let base = args.url.trim_end_matches('/');
    let data = serde_json::json!({"data": {"smoke": chrono::Utc::now().to_rfc3339()}});
    let post = || async {
        let response = http
            .post(format!("{base}/api/v1/work"))
            .json(&data)
            .send()
            .await
            .map_err(SmokeError::Post)?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(SmokeError::Refused(response.status()))
        }
    };
    let answer: serde_json::Value = post
        .retry(POST_RETRY)
        .when(|_| Instant::now() < deadline)
        .notify(|err, _| match err {
            SmokeError::Post(err) => eprintln!("POST failed ({err}); retrying"),
            other => eprintln!("{other}; retrying"),
        })
        .await?
        .json()
        .await
        .map_err(SmokeError::Answer)?;
    let id = answer["callback"]
        .as_str()
        .ok_or(SmokeError::NoCallback)?
        .to_owned();
    while Instant::now() < deadline {
        let get = |source| SmokeError::Get {
            id: id.clone(),
            source,
        };
        let record: serde_json::Value = http
            .get(format!("{base}/api/v1/work/{id}?wait=30s"))
            .send()
            .await
            .map_err(get)?
            .json()
            .await
            .map_err(get)?;
        match record["status"].as_str() {
            Some("worked") => return Ok(id),
            Some("failed" | "cancelled") => {
                return Err(SmokeError::Ended {
                    id,
                    status: record["status"].clone(),
                    error: record["error"].clone(),
                });
            }
            _ => {}
        }
    }
    Err(SmokeError::Unfinished {
        id,
        timeout: args.timeout,
    })
}
