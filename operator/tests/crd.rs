//! `crds/` must match what `crdgen` prints. `make generate` rewrites it.

#![allow(clippy::expect_used)] // tests state their expectations

#[test]
fn crds_match_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/workpool.dev_workpools.yaml");
    let generated = workpool_operator::crd_yaml().expect("CRD serializes");
    if std::env::var_os("WORKPOOL_UPDATE_GENERATED").is_some() {
        std::fs::write(&path, &generated).expect("write crds/");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "crds/ is out of date with the WorkPool types; run `make generate` and commit the result"
    );
}
