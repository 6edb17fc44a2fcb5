//! Errors of a reconcile. Each has a stable category: the metric label and the reason of
//! the Warning event and condition.
//!
//! The messages end up in conditions, events and logs, so each names what it was about
//! (a redacted server URL, a stream, a consumer, a Secret) and includes its source's
//! message; the source stays reachable through [`std::error::Error::source`] as well.

use kube::runtime::finalizer;
use workpool_core::crd::InvalidSpec;
use workpool_core::names::InvalidName;
use workpool_runtime::provision::ProvisionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spec cannot be used: {0}")]
    InvalidSpec(#[source] InvalidSpec),
    /// The namespace or pool name cannot name NATS objects.
    #[error("the spec cannot be used: {0}")]
    InvalidName(#[source] InvalidName),
    #[error("NATS unreachable: {0}")]
    NatsUnreachable(#[source] NatsError),
    #[error("NATS refused the configuration: {0}")]
    NatsConfigRejected(#[source] ProvisionError),
    #[error("NATS credentials: {0}")]
    NatsCredentials(#[source] CredentialsError),
    /// JetStream answered, but a stream or consumer the figures are read from is missing.
    #[error("reading queue figures: {0}")]
    QueueFigures(#[source] NatsError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer machinery itself failed (not the apply or cleanup it ran).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// The system's random source failed making a pool's peer key.
    #[error("making the peer key: {0}")]
    Random(String),
}

/// A request to a pool's NATS and what went wrong with it, with the client's own error.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The shared client lost its connection and is reconnecting on its own.
    #[error("{server}: not connected (reconnecting)")]
    Reconnecting { server: String },
    #[error("{server}: connection timed out")]
    ConnectTimeout { server: String },
    #[error("{server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// Provisioning or deprovisioning failed without a refusal from NATS.
    #[error(transparent)]
    Provision(ProvisionError),
    #[error(transparent)]
    Figures(workpool_runtime::queue_figures::FiguresError),
}

/// Why the operator's own NATS credentials could not be used. A pool's credentials
/// Secret is its pods' alone: the operator never reads it (docs/security.md).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {file}: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("minting the pool's NATS user: {0}")]
    Mint(#[from] workpool_runtime::nats_auth::AuthError),
}

impl From<finalizer::Error<Error>> for Error {
    /// The apply's or cleanup's own error as it is; a failed finalizer patch as the
    /// Kubernetes API error it is.
    fn from(err: finalizer::Error<Error>) -> Self {
        match err {
            finalizer::Error::ApplyFailed(err) | finalizer::Error::CleanupFailed(err) => err,
            finalizer::Error::AddFinalizer(err) | finalizer::Error::RemoveFinalizer(err) => {
                Error::Kube(err)
            }
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

impl Error {
    /// CamelCase, bounded: used as metric label, event reason and condition reason.
    /// Every value of [`Error::category`], for metrics that start at zero.
    pub const CATEGORIES: &'static [&'static str] = &[
        "InvalidSpec",
        "NatsUnreachable",
        "NatsConfigRejected",
        "NatsCredentials",
        "QueueFigures",
        "KubernetesApi",
        "Finalizer",
        "MissingField",
        "Random",
    ];

    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) | Error::InvalidName(_) => "InvalidSpec",
            Error::NatsUnreachable(_) => "NatsUnreachable",
            Error::NatsConfigRejected(_) => "NatsConfigRejected",
            Error::NatsCredentials(_) => "NatsCredentials",
            Error::QueueFigures(_) => "QueueFigures",
            Error::Kube(_) => "KubernetesApi",
            Error::Finalizer(_) => "Finalizer",
            Error::MissingField(_) => "MissingField",
            Error::Random(_) => "Random",
        }
    }

    /// Errors that another attempt with the same spec cannot fix: reported as a
    /// condition, not retried in a loop.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_) | Error::InvalidName(_) | Error::NatsConfigRejected(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::error::Error as _;

    use super::*;

    fn unreachable() -> NatsError {
        NatsError::Reconnecting {
            server: "nats://nats:4222".into(),
        }
    }

    /// One error of every variant.
    fn one_of_each() -> Vec<Error> {
        vec![
            Error::InvalidSpec(InvalidSpec {
                field: "resultTTL",
                message: "bad".into(),
            }),
            Error::InvalidName(InvalidName {
                what: "pool name",
                value: "Bad".into(),
            }),
            Error::NatsUnreachable(unreachable()),
            Error::NatsConfigRejected(ProvisionError::PartitionNotEmpty {
                name: "p16".into(),
                pending: 3,
            }),
            Error::NatsCredentials(CredentialsError::Unreadable {
                file: "/etc/workpool/nats/nats.creds".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            Error::QueueFigures(unreachable()),
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Finalizer(Box::new(finalizer::Error::UnnamedObject)),
            Error::MissingField("namespace"),
            Error::Random("no entropy".into()),
        ]
    }

    /// The variant's position in the declaration. The match has no wildcard, so a new
    /// variant does not compile until it is numbered here; `one_of_each` must then give
    /// an example of it, or the test below fails.
    fn variant(error: &Error) -> usize {
        match error {
            Error::InvalidSpec(_) => 0,
            Error::InvalidName(_) => 1,
            Error::NatsUnreachable(_) => 2,
            Error::NatsConfigRejected(_) => 3,
            Error::NatsCredentials(_) => 4,
            Error::QueueFigures(_) => 5,
            Error::Kube(_) => 6,
            Error::Finalizer(_) => 7,
            Error::MissingField(_) => 8,
            Error::Random(_) => 9,
        }
    }
    const VARIANTS: usize = 10;

    #[test]
    fn categories_lists_exactly_the_categories_of_the_variants() {
        let examples = one_of_each();
        let covered: BTreeSet<usize> = examples.iter().map(variant).collect();
        assert_eq!(
            covered,
            (0..VARIANTS).collect(),
            "one example of every variant"
        );
        let used: BTreeSet<&str> = examples.iter().map(Error::category).collect();
        let listed: BTreeSet<&str> = Error::CATEGORIES.iter().copied().collect();
        assert_eq!(used, listed, "CATEGORIES and category() agree");
        assert_eq!(listed.len(), Error::CATEGORIES.len(), "no category twice");
    }

    #[test]
    fn only_what_the_spec_decides_is_permanent() {
        let permanent: Vec<&str> = one_of_each()
            .iter()
            .filter(|e| e.is_permanent())
            .map(Error::category)
            .collect();
        assert_eq!(
            permanent,
            ["InvalidSpec", "InvalidSpec", "NatsConfigRejected"]
        );
    }

    #[test]
    fn messages_say_what_and_keep_the_source() {
        let err = Error::NatsCredentials(CredentialsError::Unreadable {
            file: "/creds".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(
            err.to_string(),
            "NATS credentials: cannot read /creds: entity not found"
        );
        assert!(err.source().is_some());
        let err = Error::NatsUnreachable(unreachable());
        assert_eq!(
            err.to_string(),
            "NATS unreachable: nats://nats:4222: not connected (reconnecting)"
        );
    }

    #[test]
    fn a_finalizer_error_unwraps_to_the_reconcile_error_it_carries() {
        let apply = finalizer::Error::ApplyFailed(Error::MissingField("namespace"));
        assert!(matches!(
            Error::from(apply),
            Error::MissingField("namespace")
        ));
        let patch =
            finalizer::Error::<Error>::AddFinalizer(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert_eq!(Error::from(patch).category(), "KubernetesApi");
        let other = finalizer::Error::<Error>::UnnamedObject;
        assert_eq!(Error::from(other).category(), "Finalizer");
    }
}
