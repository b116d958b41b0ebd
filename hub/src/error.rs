//! Errors of the hub as a library.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("outbox {uri}: {source}")]
    Outbox {
        uri: String,
        #[source]
        source: promhub_outbox::OutboxError,
    },
}
