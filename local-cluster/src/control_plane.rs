//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager on free loopback ports, built by `scripts/tools.sh`.
//!
//! One control plane serves a whole test binary ([`ControlPlane::shared`]); tests isolate
//! themselves by namespace. Its processes run under a shell guard
//! ([`crate::process::guard_args`]) that stops them when the test process exits, however
//! it exits, and removes their directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, Result, free_port, paths};

/// Controllers the tests need: service accounts and their tokens, namespaces, garbage
/// collection (owner references), deployments, replica sets and endpoint slices, and the
/// `kube-root-ca.crt` ConfigMap in every namespace, without which a real kubelet cannot
/// mount a pod's projected ServiceAccount token volume.
const CONTROLLERS: &str = "serviceaccount-token-controller,serviceaccount-controller,namespace-controller,\
garbage-collector-controller,deployment-controller,replicaset-controller,endpointslice-controller,\
root-ca-certificate-publisher-controller";

#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// The cluster-admin bearer token (also in the kubeconfig).
    pub token: String,
    kubectl: PathBuf,
    /// The apiserver's guard process, and how to start it again (tests stop and restart
    /// it to check that nothing depends on it being up).
    apiserver: std::sync::Mutex<Option<std::process::Child>>,
    apiserver_command: (PathBuf, Vec<String>),
}

pub(crate) fn spawn_guarded(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    cleanup: Option<&Path>,
) -> Result<std::process::Child> {
    // Appending: a restarted process keeps its earlier log.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(Error::io("cloning a log handle"))?;
    Command::new("sh")
        .args(crate::process::guard_args(
            name,
            cleanup,
            Duration::from_secs(5),
        ))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(Error::io(format!("starting {name}")))
}

const KUBELET_CLIENT_CA: &str = "kubelet-client-ca.crt";
const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";

/// A CA and the client certificate kube-apiserver shows kubelets. Its organization
/// `system:masters` lets a kubelet's webhook authorizer (a SubjectAccessReview to RBAC)
/// allow the apiserver's log, exec and port-forward calls.
fn write_kubelet_client_certificates(certs: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |err: rcgen::Error| Error::Other(format!("kubelet client certificate: {err}"));
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "workpool-kubelet-client-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().map_err(failed)?;
    let mut client_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    client_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .map_err(failed)?;
    for (name, text) in [
        (KUBELET_CLIENT_CA, ca_cert.pem()),
        (KUBELET_CLIENT_CERT, client_cert.pem()),
        (KUBELET_CLIENT_KEY, client_key.serialize_pem()),
    ] {
        std::fs::write(certs.join(name), text).map_err(Error::io(format!("writing {name}")))?;
    }
    Ok(())
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    pub fn shared() -> Result<&'static ControlPlane> {
        static PLANE: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        let plane = PLANE.get_or_init(|| {
            // Started from a thread of its own: callers may be inside a runtime.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| err.to_string())?
                    .block_on(ControlPlane::start(None))
                    .map_err(|err| err.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("control plane start panicked".into()))
        });
        plane.as_ref().map_err(|err| Error::Other(err.clone()))
    }

    /// A control plane of its own whose apiserver pods can reach at `host_ip` (the pod
    /// network's bridge address), for a [`crate::node::RealNode`].
    pub async fn start_for_pods(host_ip: &str) -> Result<Self> {
        Self::start(Some(host_ip)).await
    }

    async fn start(host_ip: Option<&str>) -> Result<Self> {
        let etcd = paths::tool("etcd", "etcd")?;
        let apiserver = paths::tool("kube-apiserver", "kube-apiserver")?;
        let kcm = paths::tool("kube-controller-manager", "kube-controller-manager")?;
        let kubectl = paths::tool("kubectl", "kubectl")?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-k8s-")
            .tempdir()
            .map_err(Error::io("temp dir"))?
            .keep();
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(Error::io("cert dir"))?;
        let sa_key = certs.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .map_err(Error::io(
                "running openssl (install it: apt-get install openssl)",
            ))?;
        if !status.success() {
            return Err(Error::Other("openssl genrsa failed".into()));
        }
        let token = format!(
            "{:032x}",
            u128::from(std::process::id()) << 64 | u128::from(free_port()?)
        );
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin-uid,system:masters\n"),
        )
        .map_err(Error::io("token file"))?;

        write_kubelet_client_certificates(&certs)?;

        let [etcd_port, peer_port, api_port, kcm_port] = crate::free_ports::<4>()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_args = [
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        // The guard of etcd (started first, stopped last) removes the directory.
        spawn_guarded("etcd", &etcd, &etcd_args, &dir.join("etcd.log"), Some(&dir))?;

        let apiserver_args = [
            format!("--etcd-servers={etcd_url}"),
            format!(
                "--bind-address={}",
                if host_ip.is_some() {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                }
            ),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", certs.display()),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--endpoint-reconciler-type=none".into(),
            // A real kubelet (crate::node) authenticates the apiserver's calls for
            // `kubectl logs`/`exec` by this client certificate; node names do not
            // resolve here, so the apiserver reaches a kubelet at its InternalIP.
            format!(
                "--kubelet-client-certificate={}",
                certs.join(KUBELET_CLIENT_CERT).display()
            ),
            format!(
                "--kubelet-client-key={}",
                certs.join(KUBELET_CLIENT_KEY).display()
            ),
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        ];
        let mut apiserver_args = apiserver_args.to_vec();
        if let Some(ip) = host_ip {
            // The self-signed serving certificate is made for the advertised address.
            apiserver_args.push(format!("--advertise-address={ip}"));
        }
        let apiserver_guard = spawn_guarded(
            "kube-apiserver",
            &apiserver,
            &apiserver_args,
            &dir.join("apiserver.log"),
            None,
        )?;

        let server = format!("https://{}:{api_port}", host_ip.unwrap_or("127.0.0.1"));
        let kubeconfig = dir.join("kubeconfig");
        let ca = certs.join("apiserver.crt");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: admin, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: local, context: {{cluster: local, user: admin, namespace: default}}}}]\ncurrent-context: local\n",
            ca.display()
        );
        std::fs::write(&kubeconfig, text).map_err(Error::io("kubeconfig"))?;
        let plane = Self {
            dir,
            kubeconfig,
            server,
            token,
            kubectl,
            apiserver: std::sync::Mutex::new(Some(apiserver_guard)),
            apiserver_command: (apiserver, apiserver_args),
        };
        plane.wait_ready(&ca).await?;

        let kcm_args = [
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--controllers={CONTROLLERS}"),
            format!("--service-account-private-key-file={}", sa_key.display()),
            format!("--root-ca-file={}", ca.display()),
            "--use-service-account-credentials=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
        ];
        spawn_guarded(
            "kube-controller-manager",
            &kcm,
            &kcm_args,
            &plane.dir.join("kcm.log"),
            None,
        )?;
        Ok(plane)
    }

    /// Stops kube-apiserver (SIGTERM through its guard) and waits until it is gone.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let guard = self
            .apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut guard) = guard else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(guard.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        tokio::task::spawn_blocking(move || guard.wait())
            .await
            .map_err(Error::context("waiting for the apiserver"))?
            .map_err(Error::io("waiting for the apiserver"))?;
        Ok(())
    }

    /// Starts kube-apiserver again with its earlier flags, store and certificates, and
    /// waits until it is ready.
    pub async fn start_apiserver(&self) -> Result<()> {
        let (program, args) = &self.apiserver_command;
        let guard = spawn_guarded(
            "kube-apiserver",
            program,
            args,
            &self.dir.join("apiserver.log"),
            None,
        )?;
        *self
            .apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(guard);
        self.wait_ready(&self.ca_file()).await
    }

    async fn wait_ready(&self, ca: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            if ca.exists() {
                // /readyz, not only an answer: the default RBAC roles (such as every
                // identity's right to ask what it may do) exist only once it is ok.
                match self.client().await {
                    Ok(client) => match readyz(&client).await {
                        Ok(answer) if answer.trim() == "ok" => return Ok(()),
                        Ok(answer) => last = answer,
                        Err(err) => last = err.to_string(),
                    },
                    Err(err) => last = err.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The directory goes with the control plane, so keep the end of the log here.
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(Error::Timeout(format!(
            "kube-apiserver at {}: {last}; the end of its log:\n{}",
            self.server,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }

    /// A client for the calling test's runtime (clients must not cross runtimes).
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(Error::context("reading the kubeconfig"))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(Error::context("loading the kubeconfig"))?;
        kube::Client::try_from(config).map_err(Error::context("a client from the kubeconfig"))
    }

    /// Runs kubectl against this control plane; returns stdout, or stderr as the error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_warnings(args).map(|(stdout, _)| stdout)
    }

    /// As `kubectl`, with what it printed on stderr as well: the apiserver's warnings
    /// (such as a pod template that would violate a namespace's Pod Security level).
    pub fn kubectl_with_warnings(&self, args: &[&str]) -> Result<(String, String)> {
        let output = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(Error::io("running kubectl"))?;
        if output.status.success() {
            Ok((
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        } else {
            Err(Error::Other(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        }
    }

    /// Creates a namespace with a unique name for one test.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = format!("{prefix}-{}", free_port()?);
        self.ensure_namespace(&name).await?;
        Ok(name)
    }

    /// Creates namespace `name` unless it exists, enforcing the `restricted` Pod
    /// Security Standard: the apiserver refuses any pod in it that is not hardened, so
    /// every test that runs Workpool's pods proves they are (docs/security.md).
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let api: kube::Api<Namespace> = kube::Api::all(self.client().await?);
        let labels = ["enforce", "warn", "audit"].map(|mode| {
            (
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".to_owned(),
            )
        });
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels.into_iter().collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&Default::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => Err(Error::Other(format!("creating namespace {name}: {err}"))),
        }
    }

    /// The CA that signed the apiserver's serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// The CA of the client certificate the apiserver presents to kubelets: a kubelet's
    /// `authentication.x509.clientCAFile`.
    pub fn kubelet_client_ca_file(&self) -> PathBuf {
        self.dir.join("certs").join(KUBELET_CLIENT_CA)
    }

    /// Where the control plane's logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn readyz(client: &kube::Client) -> std::result::Result<String, kube::Error> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await
}
