//! `workpool-operator bootstrap-nats`: the chart's NATS runs with auth on from its first
//! start. Before the chart installs it, this makes the trust once (an operator key, a
//! system account, the Workpool account; docs/security.md) and stores it in one Secret:
//! `auth.conf` for the server, `nats.creds` (a user with every right in the account) and
//! `account.seed` for the operator. One Secret, created in one call, so a failed run
//! never leaves half a trust behind; an existing one is kept, so upgrades change nothing.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use workpool_runtime::nats_auth::{AuthError, Trust};

/// The keys of the Secret.
pub const SERVER_CONFIG_KEY: &str = "auth.conf";
pub const OPERATOR_CREDS_KEY: &str = "nats.creds";
pub const ACCOUNT_SEED_KEY: &str = "account.seed";

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Namespace of the Secret (the release's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the Secret.
    #[arg(long)]
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("making the NATS trust: {0}")]
    Trust(#[from] AuthError),
    #[error("creating Secret {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrapped {
    Created,
    /// The Secret was there (an upgrade, or a rerun): left as it is.
    Kept,
}

/// Creates the Secret unless it exists.
pub async fn bootstrap(
    client: kube::Client,
    args: &BootstrapArgs,
) -> Result<Bootstrapped, BootstrapError> {
    let trust = Trust::generate();
    let admin = trust.account().user_creds("workpool-operator", None)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(args.secret.clone()),
            namespace: Some(args.namespace.clone()),
            labels: Some([("app.kubernetes.io/name".into(), "workpool".into())].into()),
            ..Default::default()
        },
        string_data: Some(
            [
                (SERVER_CONFIG_KEY.to_owned(), trust.server_config()?),
                (OPERATOR_CREDS_KEY.to_owned(), admin),
                (ACCOUNT_SEED_KEY.to_owned(), trust.account().seed()?),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client, &args.namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Bootstrapped::Created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Bootstrapped::Kept),
        Err(source) => Err(BootstrapError::Create {
            namespace: args.namespace.clone(),
            name: args.secret.clone(),
            source,
        }),
    }
}
