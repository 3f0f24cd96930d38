//! Queues as a resource: what the operator of a queue grants its tasks and
//! how its jobs may start, free of HTTP, SQL and the CLI. The API serves it
//! at `/v1/queues` (`api/queues.rs`), the store keeps it
//! (`store/queues.rs`), the worker enforces grants on each outbound request
//! (`sandbox/outbound/`) and limits at each claim (`store/claim.rs`).
//!
//! - [`allowed_host`]: the allow-list entries and the addresses no name may
//!   lead to.
//! - [`settings`]: a queue's settings as written ([`QueueSpec`]) and as
//!   enforced ([`QueueSettings`]); [`SecretValue`], which never prints.
//! - [`secret_key`]: how secrets are sealed at rest ([`SecretKey`]).
//! - [`limits`]: how its jobs may start ([`QueueLimits`]): cluster-wide
//!   concurrency, per key, and a start rate.
//! - [`retention`]: how long its finished jobs are kept ([`Retention`]).
//! - [`stats`]: what it is doing ([`QueueStats`]): jobs per state, recent
//!   starts and failures.

pub mod allowed_host;
pub mod limits;
pub mod retention;
pub mod secret_key;
pub mod settings;
pub mod stats;

pub use allowed_host::{AllowedHost, InvalidAllowedHost, Scheme, is_public_address};
pub use limits::{LimitsSpec, QueueLimits, Rate, RateSpec};
pub use retention::{KeepFor, Retention, RetentionSpec};
pub use secret_key::{MalformedSecretKey, SealedSecret, SecretKey, WrongSecretKey};
pub use settings::{QueueChange, QueueSettings, QueueSpec, SecretSpec, SecretValue};
pub use stats::{Activity, JobCounts, QueueStats};
