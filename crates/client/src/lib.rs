//! What every Cairn client needs and nothing a server does. Applications
//! embed this through the client libraries (the producer, later the consumer
//! and worker SDKs), so it pulls in no server runtime: no SQL, no reflection,
//! no config-file loader.
//!
//! - [`channel`]: the one channel constructor and [`channel::Client`], the
//!   tower layer that stamps every outgoing call with the API key, a deadline
//!   no later than the caller's, and trace context, and ends it locally at
//!   that deadline.
//! - [`status`]: the error vocabulary: [`status::ServiceError`] (each crate's
//!   `Error` maps to a status once), the shared [`status::ErrorReason`]s, retry
//!   information and field violations.
//! - [`context`]: the deadline of the request being handled.
//! - [`metrics`]: the process's one registry and RPC metrics.
//! - [`backoff`]: the one retry policy (exponential, full jitter).
//! - [`units`]: human-readable durations and sizes in configuration.
//! - [`names`]: the topic-name rule and time conversions.

pub mod backoff;
pub mod body;
pub mod channel;
pub mod context;
pub mod json;
pub mod metrics;
pub mod names;
pub mod propagation;
pub mod status;
pub mod units;

pub use backoff::Backoff;
pub use channel::{Client, ClientConfig};
pub use metrics::Metrics;
pub use status::{ErrorReason, ServiceError};
