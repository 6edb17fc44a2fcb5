//! The checked-in OpenAPI document must match the code. `make generate` rewrites it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

#[test]
fn docs_openapi_json_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = workpool_api::openapi::document();
    if std::env::var_os("WORKPOOL_UPDATE_GENERATED").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date with the api code; run `make generate` and commit the result"
    );
}

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
