//! Why an outbox operation failed.

/// An outbox store or drainer error.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox payload is not JSON-serializable: {0}")]
    Payload(#[source] serde_json::Error),
    #[error("outbox record {0:?} already exists")]
    DuplicateId(String),
    #[error("corrupt outbox record: {0}")]
    Corrupt(String),
    #[cfg(feature = "sqlite")]
    #[error("outbox SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[cfg(feature = "mongodb")]
    #[error("outbox MongoDB error: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// The MongoDB deployment cannot run multi-document transactions, so an
    /// outbox record could not commit or roll back with the business write.
    #[error("{0}")]
    NoTransactions(String),
    #[error("outbox store task failed: {0}")]
    Task(String),
}
