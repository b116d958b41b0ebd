//! The tokio client for promhub. Built in a later issue on `promhub-core`.
pub use promhub_core as core;
