//! A real node (containerd, runc, kubelet, kube-scheduler, kube-proxy, CoreDNS) against
//! a control plane of its own runs our image: a pool's api and worker as Deployments, and
//! the chart's smoke test as a pod that finds the api by its Service's DNS name and
//! reaches it through the ClusterIP. Secrets mount as volumes, `securityContext` is
//! enforced, `kubectl logs` and `exec` work, and after `stop` nothing of the node is left.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::{Duration, Instant};

use workpool_core::{PoolNames, PoolSpec};
use workpool_e2e::pods;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::node::{HOST_IP, RealNode, workpool_image_reference};

const POOL: &str = "demo";

fn manifests(namespace: &str, nats_url: &str, spec_json: &str) -> String {
    let image = workpool_image_reference();
    let spec_literal = serde_json::to_string(spec_json).expect("spec as a YAML string");
    let component = |name: &str, port: u16| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      securityContext:
        runAsUser: 65532
        runAsGroup: 65532
        runAsNonRoot: true
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: {name}
        image: {image}
        imagePullPolicy: Never
        command: [workpool-{name}]
        env:
        - {{name: WORKPOOL_NAMESPACE, value: {namespace}}}
        - {{name: WORKPOOL_POOL, value: {POOL}}}
        - {{name: WORKPOOL_SPEC_FILE, value: /etc/workpool/spec.json}}
        - {{name: WORKPOOL_LISTEN, value: "0.0.0.0:{port}"}}
        - {{name: NATS_URL, value: "{nats_url}"}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        ports: [{{containerPort: {port}}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: {port}}}, periodSeconds: 1}}
        resources: {{limits: {{memory: 256Mi, cpu: 500m}}}}
        securityContext:
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
        volumeMounts:
        - {{name: spec, mountPath: /etc/workpool, readOnly: true}}
        - {{name: tmp, mountPath: /tmp}}
      volumes:
      - {{name: spec, secret: {{secretName: pool-spec}}}}
      - {{name: tmp, emptyDir: {{}}}}
---
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: pool-spec, namespace: {namespace}}}
stringData:
  spec.json: {spec_literal}
---
{api}{worker}apiVersion: v1
kind: Service
metadata: {{name: api, namespace: {namespace}}}
spec:
  selector: {{app: api}}
  ports: [{{port: 8080, targetPort: 8080}}]
"#,
        api = component("api", 8080),
        worker = component("worker", 8081),
    )
}

fn smoke_pod(namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: smoke, namespace: {namespace}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 65532, runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: smoke
    image: {image}
    imagePullPolicy: Never
    command: [workpool-smoke, --url, "http://api.{namespace}.svc:8080", --timeout, 60s]
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
"#,
        image = workpool_image_reference()
    )
}

fn apply(plane: &ControlPlane, manifest: &str, dir: &std::path::Path, name: &str) {
    let file = dir.join(name);
    std::fs::write(&file, manifest).expect("writing a manifest");
    plane
        .kubectl(&["apply", "-f", &file.to_string_lossy()])
        .unwrap_or_else(|err| panic!("kubectl apply {name}: {err}"));
}

/// The value of `field` (e.g. `Uid`) in /proc/<pid>/status: real, effective, saved, fs.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The mount options of the process's root filesystem, as it sees it.
fn root_mount_options(pid: i32) -> String {
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("process mountinfo");
    mountinfo
        .lines()
        .rfind(|line| line.split(' ').nth(4) == Some("/"))
        .and_then(|line| line.split(' ').nth(5))
        .unwrap_or_default()
        .to_owned()
}

/// The host's named network namespaces (containerd puts pods' here unless told to keep
/// them under its state directory, as the node does).
fn host_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_runs_our_image_with_services_dns_volumes_and_security() {
    let started = Instant::now();
    let netns_before = host_netns();
    let mut node = RealNode::prepare().expect("preparing the real node");
    let plane = ControlPlane::start_for_pods(HOST_IP)
        .await
        .expect("control plane");
    node.start(&plane).await.expect("starting the real node");
    eprintln!("node Ready after {:.1?}", started.elapsed());

    let nodes = plane.kubectl(&["get", "nodes", "-o", "wide"]).unwrap();
    eprintln!("{nodes}");
    let line = nodes
        .lines()
        .find(|line| line.starts_with(&node.node_name))
        .unwrap_or_else(|| panic!("node {} not registered: {nodes}", node.node_name));
    assert!(
        line.contains(" Ready ") && line.contains(HOST_IP) && line.contains("containerd://"),
        "{line}"
    );

    // The `kubernetes` Service's ClusterIP leads to the apiserver (through kube-proxy's
    // rules, which also apply to the host's own traffic), with a certificate valid for
    // it: what in-cluster clients such as the operator use.
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&plane.kubeconfig).expect("reading the kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    config.cluster_url = "https://10.96.0.1:443".parse().expect("the ClusterIP URL");
    let version = kube::Client::try_from(config)
        .expect("client")
        .apiserver_version()
        .await
        .expect("the apiserver through the kubernetes Service's ClusterIP");
    assert_eq!(version.git_version, "v1.35.4");

    let nats = NatsServer::start_on(HOST_IP).await.expect("NATS for pods");
    let namespace = plane.namespace("real-node").await.expect("namespace");
    let spec = PoolSpec::from_json("{}").expect("default spec");
    let names = PoolNames::new(&namespace, POOL).expect("pool names");
    workpool_runtime::provision::provision(
        &async_nats::jetstream::new(nats.client().await.expect("NATS client")),
        &names,
        &spec,
    )
    .await
    .expect("provisioning the pool");
    let spec_json = serde_json::to_string(&spec).expect("spec JSON");
    apply(
        &plane,
        &manifests(&namespace, &nats.url(), &spec_json),
        node.dir(),
        "pool.yaml",
    );
    for deployment in ["api", "worker"] {
        let rollout = plane.kubectl(&[
            "-n",
            &namespace,
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=90s",
        ]);
        if let Err(err) = rollout {
            let pods = plane
                .kubectl(&["-n", &namespace, "describe", "pods"])
                .unwrap_or_default();
            panic!(
                "{deployment} did not become available: {err}\n{pods}\nkubelet:\n{}",
                std::fs::read_to_string(node.log("kubelet")).unwrap_or_default()
            );
        }
    }

    let wide = plane
        .kubectl(&["-n", &namespace, "get", "pods", "-o", "wide"])
        .unwrap();
    eprintln!("{wide}");
    for component in ["api-", "worker-"] {
        let line = wide
            .lines()
            .find(|line| line.starts_with(component))
            .unwrap_or_else(|| panic!("no {component} pod: {wide}"));
        assert!(
            line.contains("Running")
                && line.contains(" 10.89.0.")
                && line.contains(&node.node_name),
            "{line}"
        );
    }
    let scheduled = plane
        .kubectl(&[
            "-n",
            &namespace,
            "get",
            "events",
            "--field-selector=reason=Scheduled",
            "-o",
            "jsonpath={.items[*].reportingComponent}",
        ])
        .unwrap();
    assert!(
        scheduled.contains("default-scheduler"),
        "pods were not bound by kube-scheduler: {scheduled:?}"
    );

    // securityContext: the api runs as 65532 on a read-only root, its Secret mounted.
    let api_pod = wide
        .lines()
        .find(|line| line.starts_with("api-"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pids = pods::pod_processes(&namespace, &api_pod);
    let pid = *pids
        .first()
        .unwrap_or_else(|| panic!("no process of {api_pod}"));
    assert_eq!(status_field(pid, "Uid"), "65532 65532 65532 65532");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    // The runtime's default seccomp filter and no privilege escalation are in force.
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let root_options = root_mount_options(pid);
    assert!(
        root_options.split(',').next() == Some("ro"),
        "the api's root filesystem is mounted {root_options}"
    );
    // Limits: the container's memory cgroup has the pod's limit.
    let memory_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("process cgroups")
        .lines()
        .find_map(|line| line.split_once(":memory:").map(|(_, path)| path.to_owned()))
        .expect("a memory cgroup");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{memory_cgroup}/memory.limit_in_bytes"
    ))
    .expect("the memory limit");
    assert_eq!(limit.trim(), (256u64 << 20).to_string(), "{memory_cgroup}");
    let mounted_spec = std::fs::read_to_string(format!("/proc/{pid}/root/etc/workpool/spec.json"))
        .expect("the Secret's file in the pod");
    assert_eq!(mounted_spec, spec_json);

    // kubectl exec, through the apiserver to the kubelet.
    let help = plane
        .kubectl(&[
            "-n",
            &namespace,
            "exec",
            &api_pod,
            "--",
            "workpool-smoke",
            "--help",
        ])
        .expect("kubectl exec");
    assert!(help.contains("Submit one work item"), "{help}");

    // Service DNS name and ClusterIP, from a pod: the chart's smoke test.
    apply(&plane, &smoke_pod(&namespace), node.dir(), "smoke.yaml");
    let deadline = Instant::now() + Duration::from_secs(90);
    let phase = loop {
        let phase = plane
            .kubectl(&[
                "-n",
                &namespace,
                "get",
                "pod",
                "smoke",
                "-o",
                "jsonpath={.status.phase}",
            ])
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" || Instant::now() > deadline {
            break phase;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs = plane
        .kubectl(&["-n", &namespace, "logs", "smoke"])
        .expect("kubectl logs");
    assert_eq!(phase, "Succeeded", "the smoke pod: {logs}");
    assert!(logs.contains("worked"), "smoke's log: {logs}");
    let api_logs = plane
        .kubectl(&["-n", &namespace, "logs", "deployment/api"])
        .expect("kubectl logs of the api");
    assert!(!api_logs.is_empty());

    // A pod deleted at once takes its processes with it.
    let worker_pod = wide
        .lines()
        .find(|line| line.starts_with("worker-"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(!pods::pod_processes(&namespace, &worker_pod).is_empty());
    plane
        .kubectl(&[
            "-n",
            &namespace,
            "delete",
            "pod",
            &worker_pod,
            "--force",
            "--grace-period=0",
        ])
        .expect("force-deleting the worker pod");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !pods::pod_processes(&namespace, &worker_pod).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the force-deleted pod's processes still run"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let stopping = Instant::now();
    let stopped = node.stop();
    eprintln!(
        "stopped in {:.1?}; whole test {:.1?}",
        stopping.elapsed(),
        started.elapsed()
    );
    stopped.expect("nothing of the node is left");
    assert!(
        !std::path::Path::new("/sys/class/net/wpk0").exists(),
        "the bridge is still there"
    );
    let new_netns: Vec<String> = host_netns()
        .into_iter()
        .filter(|name| !netns_before.contains(name))
        .collect();
    assert!(
        new_netns.iter().all(|name| !name.starts_with("cni-")),
        "network namespaces left: {new_netns:?}"
    );
}
