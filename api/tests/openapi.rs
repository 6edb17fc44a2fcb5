//! The OpenAPI document describes every route (`make drift` checks the checked-in copy
//! equals the generator's output).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

#[test]
fn the_document_describes_every_route() {
    let document: serde_json::Value =
        serde_json::from_str(&workpool_api::openapi::document()).expect("valid JSON");
    let paths = document["paths"].as_object().expect("paths");
    for route in [
        "/api/v1/work",
        "/api/v1/work/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(route), "{route} missing");
    }
    let post = &document["paths"]["/api/v1/work"]["post"]["responses"];
    for code in ["202", "200", "400", "401", "413", "415", "429", "503"] {
        assert!(post.get(code).is_some(), "POST lacks {code}");
    }
}
