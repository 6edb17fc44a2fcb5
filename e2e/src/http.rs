//! JSON over HTTP against an api, for tests that talk to pods directly.

use serde_json::Value;

use crate::{HarnessError, Result};

async fn json_of(request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
    request
        .send()
        .await
        .map_err(HarnessError::context(what))?
        .json()
        .await
        .map_err(HarnessError::context(format!("{what}: answer is not JSON")))
}

/// POSTs `body` as JSON to `url`; the JSON answer, whatever its status.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    json_of(http.post(url).json(body), &format!("POST {url}")).await
}

/// GETs `url`; the JSON answer, whatever its status.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    json_of(http.get(url), &format!("GET {url}")).await
}
