//! Least privilege, proven on a real kube-apiserver: the chart's RBAC (cluster-wide, and
//! with `operator.watchNamespace`) and a pool's own ServiceAccount are installed, and
//! `kubectl auth can-i --list` as each ServiceAccount must equal an exact table. Every
//! authenticated identity gets some rights of its own (discovery, self reviews); the
//! tables are what each holds beyond a ServiceAccount with no bindings at all.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_e2e::pods::wait_until;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{create_pool, install_crd};

/// What the operator holds wherever it acts (docs/security.md), as `can-i --list`
/// prints it.
const OPERATOR: &[&str] = &[
    "deployments.apps [] [] [get list watch create patch]",
    "endpointslices.discovery.k8s.io [] [] [list watch]",
    "events.events.k8s.io [] [] [create patch]",
    "poddisruptionbudgets.policy [] [] [create patch]",
    "pods [] [] [list patch]",
    "rolebindings.rbac.authorization.k8s.io [] [] [create patch]",
    "roles.rbac.authorization.k8s.io [] [] [create patch]",
    "secrets [] [] [create]",
    "serviceaccounts [] [] [create patch]",
    "services [] [] [list watch create patch]",
    "workpools.workpool.dev [] [] [list watch patch]",
    "workpools.workpool.dev/finalizers [] [] [update]",
    "workpools.workpool.dev/status [] [] [patch]",
];
/// And in its own namespace, its leader Lease.
const LEADER: &str = "leases.coordination.k8s.io [] [] [get create patch]";
/// A pool's api and worker pods.
const POOL: &[&str] = &["endpointslices.discovery.k8s.io [] [] [list watch]"];

struct Plane(&'static ControlPlane);

impl Plane {
    /// `can-i --list` of `account` (`namespace:name`) in `namespace`, one normalised
    /// line per right.
    fn rights(&self, account: &str, namespace: &str) -> BTreeSet<String> {
        let mut args = vec!["auth", "can-i", "--list", "-n", namespace];
        let identity = impersonate(account);
        args.extend(identity.iter().map(String::as_str));
        let listed = self
            .0
            .kubectl(&args)
            .unwrap_or_else(|err| panic!("can-i --list as {account}: {err}"));
        listed
            .lines()
            .skip(1) // the header
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|line| !line.is_empty())
            .collect()
    }

    fn can(&self, account: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
        let mut args = vec!["auth", "can-i", verb, resource];
        let identity = impersonate(account);
        args.extend(identity.iter().map(String::as_str));
        args.extend_from_slice(scope);
        self.0
            .kubectl(&args)
            .is_ok_and(|answer| answer.trim() == "yes")
    }

    /// Renders the chart as release `release` in `namespace` and applies it.
    fn install(&self, release: &str, namespace: &str, extra: &[&str]) {
        let helm = workpool_local_cluster::paths::tool("helm", "helm").expect("helm");
        let chart = workpool_local_cluster::paths::repo_root().join("charts/workpool");
        let rendered = std::process::Command::new(helm)
            .args(["template", release, &chart.display().to_string()])
            .args(["--namespace", namespace])
            .args(extra)
            .output()
            .expect("helm template");
        assert!(rendered.status.success(), "{rendered:?}");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &rendered.stdout).expect("write");
        let path = file.path().display().to_string();
        self.0
            .kubectl(&["apply", "-f", &path])
            .expect("apply the chart");
    }
}

/// kubectl's flags to act as ServiceAccount `account` (`namespace:name`), with the
/// groups the apiserver gives its tokens.
fn impersonate(account: &str) -> Vec<String> {
    let namespace = account.split(':').next().unwrap_or_default();
    vec![
        format!("--as=system:serviceaccount:{account}"),
        "--as-group=system:authenticated".into(),
        "--as-group=system:serviceaccounts".into(),
        format!("--as-group=system:serviceaccounts:{namespace}"),
    ]
}

/// `rights` less what an identity with no bindings has.
fn beyond(rights: BTreeSet<String>, baseline: &BTreeSet<String>) -> Vec<String> {
    rights.difference(baseline).cloned().collect()
}

fn table(lines: &[&str], extra: &[&str]) -> Vec<String> {
    let mut table: Vec<String> = lines.iter().chain(extra).map(|l| (*l).to_owned()).collect();
    table.sort();
    table
}

#[tokio::test]
async fn every_service_account_holds_exactly_what_its_code_uses() {
    let control_plane = ControlPlane::shared().expect("control plane");
    install_crd(control_plane).await.expect("crd");
    let plane = Plane(control_plane);
    let release_ns = control_plane.namespace("rbac-release").await.unwrap();
    let pool_ns = control_plane.namespace("rbac-pool").await.unwrap();
    let other_ns = control_plane.namespace("rbac-other").await.unwrap();
    control_plane
        .kubectl(&["-n", &other_ns, "create", "serviceaccount", "nobody"])
        .expect("a ServiceAccount with no bindings");
    let baseline = plane.rights(&format!("{other_ns}:nobody"), &other_ns);
    assert!(!baseline.is_empty(), "can-i --list printed nothing");

    plane.install("rbac-all", &release_ns, &[]);
    let watch_one = format!("operator.watchNamespace={pool_ns}");
    plane.install("rbac-one", &release_ns, &["--set", &watch_one]);
    let all = format!("{release_ns}:rbac-all-workpool");
    let one = format!("{release_ns}:rbac-one-workpool");

    // Watching every namespace: the same rights in each, the Lease in its own.
    for ns in [&pool_ns, &other_ns] {
        assert_eq!(
            beyond(plane.rights(&all, ns), &baseline),
            table(OPERATOR, &[])
        );
    }
    let own = beyond(plane.rights(&all, &release_ns), &baseline);
    assert_eq!(own, table(OPERATOR, &[LEADER]));
    // Watching one namespace: rights there, none elsewhere.
    assert_eq!(
        beyond(plane.rights(&one, &pool_ns), &baseline),
        table(OPERATOR, &[])
    );
    assert_eq!(
        beyond(plane.rights(&one, &other_ns), &baseline),
        Vec::<String>::new()
    );
    // No Secret is readable anywhere, by either.
    for account in [&all, &one] {
        for verb in ["get", "list", "watch"] {
            assert!(
                !plane.can(account, verb, "secrets", &["-A"]),
                "{account} {verb}"
            );
            assert!(!plane.can(account, verb, "secrets", &["-n", &pool_ns]));
        }
    }
    // The chart's test Pod runs as the namespace's default account, which has nothing.
    let test_pod = format!("{release_ns}:default");
    let test_rights = beyond(plane.rights(&test_pod, &release_ns), &baseline);
    assert_eq!(test_rights, Vec::<String>::new());

    // A pool's api and worker pods, through the Role the operator gives them.
    let nats = NatsServer::start().await.expect("nats");
    let _operator = RunningOperator::start(control_plane, &pool_ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(
        &control_plane.client().await.unwrap(),
        &pool_ns,
        &pool_yaml("demo", &nats.url(), ""),
    )
    .await
    .expect("create");
    let bindings: Api<RoleBinding> =
        Api::namespaced(control_plane.client().await.unwrap(), &pool_ns);
    wait_until(
        "the pool's RoleBinding",
        Duration::from_secs(60),
        || async {
            bindings
                .get_opt("demo-workpool")
                .await
                .is_ok_and(|b| b.is_some())
        },
    )
    .await
    .unwrap();
    let pool_account = format!("{pool_ns}:demo-workpool");
    let pool_rights = beyond(plane.rights(&pool_account, &pool_ns), &baseline);
    assert_eq!(pool_rights, table(POOL, &[]));
    assert_eq!(
        beyond(plane.rights(&pool_account, &other_ns), &baseline),
        Vec::<String>::new()
    );
}
