//! Errors of a reconcile. Each has a stable category: the metric label and the reason of
//! the Warning event and condition.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spec cannot be used: {0}")]
    InvalidSpec(String),
    #[error("NATS unreachable: {0}")]
    NatsUnreachable(String),
    #[error("NATS refused the configuration: {0}")]
    NatsConfigRejected(String),
    #[error("NATS credentials: {0}")]
    NatsCredentials(String),
    #[error("reading queue figures: {0}")]
    QueueFigures(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("the object has no {0}")]
    MissingField(&'static str),
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
    ];

    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::NatsUnreachable(_) => "NatsUnreachable",
            Error::NatsConfigRejected(_) => "NatsConfigRejected",
            Error::NatsCredentials(_) => "NatsCredentials",
            Error::QueueFigures(_) => "QueueFigures",
            Error::Kube(_) => "KubernetesApi",
            Error::Finalizer(_) => "Finalizer",
            Error::MissingField(_) => "MissingField",
        }
    }

    /// Errors that another attempt with the same spec cannot fix: reported as a
    /// condition, not retried in a loop.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::NatsConfigRejected(_))
    }
}
