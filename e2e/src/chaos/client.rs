//! A client as a real one behaves: it retries on 429, 503 and connection errors (moving
//! to another api pod), and records what it finally saw.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::history::{Cancel, Intent, Submission};
use super::ledger::now_ns;

/// How long a client keeps retrying one request before it gives up (code 0).
const GIVE_UP: Duration = Duration::from_secs(60);

/// The api pods' base URLs; the fault schedule replaces pods, so the list changes.
pub type Apis = Arc<RwLock<Vec<String>>>;

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub apis: Apis,
}

/// What one request finally answered.
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

fn retryable(code: u16) -> bool {
    matches!(code, 429 | 502 | 503 | 504)
}

impl Client {
    pub fn new(apis: Apis) -> Self {
        let http = workpool_local_cluster::http::client_builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self { http, apis }
    }

    fn api(&self, turn: usize) -> Option<String> {
        let apis = self.apis.read().ok()?;
        (!apis.is_empty()).then(|| apis[turn % apis.len()].clone())
    }

    /// Sends `build(base_url)` until it gets a final answer or gives up.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Answer {
        let deadline = tokio::time::Instant::now() + GIVE_UP;
        let mut turn = fastrand::usize(..16);
        let mut pause = Duration::from_millis(50);
        while tokio::time::Instant::now() < deadline {
            turn += 1;
            let Some(base) = self.api(turn) else {
                tokio::time::sleep(pause).await;
                continue;
            };
            if let Ok(response) = build(&self.http, &base).send().await {
                let code = response.status().as_u16();
                if !retryable(code) {
                    let body = response.json().await.unwrap_or(Value::Null);
                    return Answer { code, body };
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        Answer {
            code: 0,
            body: Value::Null,
        }
    }

    pub async fn submit(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
        intent: Intent,
    ) -> Submission {
        let sent_ns = now_ns();
        let answer = self
            .send(|http, base| {
                let request = http.post(format!("{base}/api/v1/work")).json(body);
                match idempotency_key {
                    Some(key) => request.header("Idempotency-Key", key),
                    None => request,
                }
            })
            .await;
        Submission {
            id: text(&answer.body, "callback"),
            key: body["key"].as_str().map(str::to_owned),
            intent,
            sent_ns,
            answered_ns: now_ns(),
            code: answer.code,
            status: text(&answer.body, "status"),
            run_ms: body["data"]["ms"].as_u64().unwrap_or(0),
        }
    }

    pub async fn cancel(&self, id: &str) -> Cancel {
        let sent_ns = now_ns();
        let answer = self
            .send(|http, base| http.delete(format!("{base}/api/v1/work/{id}")))
            .await;
        Cancel {
            id: id.to_owned(),
            sent_ns,
            answered_ns: now_ns(),
            code: answer.code,
            status: text(&answer.body, "status"),
            created_at: answer.body["created_at"].as_str().map(str::to_owned),
        }
    }

    /// The current record (`None` on 404 or no answer) with its status and generation.
    pub async fn get(&self, id: &str) -> Option<Value> {
        let answer = self
            .send(|http, base| http.get(format!("{base}/api/v1/work/{id}")))
            .await;
        (answer.code == 200).then_some(answer.body)
    }
}

/// A string field of an answer, empty when it is missing (a refusal has none).
fn text(body: &serde_json::Value, field: &str) -> String {
    body[field].as_str().unwrap_or_default().to_owned()
}
