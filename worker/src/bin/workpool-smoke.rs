//! `workpool-smoke --url http://demo-api.default.svc`: submits one work item and waits
//! until it is worked. The Helm chart's `helm test` runs it; it works against any api.

use std::process::ExitCode;
use std::time::{Duration, Instant};

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

async fn smoke(args: &Args) -> Result<String, String> {
    let deadline = Instant::now() + args.timeout;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(35))
        .build()
        .map_err(|e| e.to_string())?;
    let base = args.url.trim_end_matches('/');
    let data = serde_json::json!({"data": {"smoke": chrono::Utc::now().to_rfc3339()}});
    let answer: serde_json::Value = loop {
        match http
            .post(format!("{base}/api/v1/work"))
            .json(&data)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                break response.json().await.map_err(|e| e.to_string())?;
            }
            Ok(response) if Instant::now() < deadline => {
                eprintln!("POST answered {}; retrying", response.status())
            }
            Err(err) if Instant::now() < deadline => eprintln!("POST failed ({err}); retrying"),
            Ok(response) => return Err(format!("POST answered {}", response.status())),
            Err(err) => return Err(format!("POST failed: {err}")),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let id = answer["callback"]
        .as_str()
        .ok_or("no callback in the answer")?
        .to_owned();
    while Instant::now() < deadline {
        let record: serde_json::Value = http
            .get(format!("{base}/api/v1/work/{id}?wait=30s"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match record["status"].as_str() {
            Some("worked") => return Ok(id),
            Some("failed" | "cancelled") => {
                return Err(format!(
                    "work {id} ended {}: {}",
                    record["status"], record["error"]
                ));
            }
            _ => {}
        }
    }
    Err(format!(
        "work {id} did not finish within {:?}",
        args.timeout
    ))
}
