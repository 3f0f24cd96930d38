//! TaskFlow: a fault-tolerant job platform that runs untrusted WebAssembly
//! tasks in a sandbox and never loses a job.
//!
//! # Architecture at a glance
//!
//! - [`job`]: the domain: states, submissions and their limits, how an
//!   attempt ends, failure codes. Knows nothing of HTTP, SQL or the CLI.
//! - [`queue`]: what a queue's operator grants its tasks: the hosts they
//!   may call, configuration, secrets they may use but never read.
//! - [`api`]: the control plane. Accepts module uploads and job submissions
//!   over REST, validates them and writes them to PostgreSQL. Holds no job
//!   state in memory, so it can be restarted or scaled at will.
//! - [`console`]: the web console at `/ui`, served by the API: pages for
//!   people over the same store and actions.
//! - [`store`]: every SQL statement TaskFlow runs. PostgreSQL is the only
//!   source of truth; each job state transition is one guarded statement.
//! - [`lease`]: Redis leases and wake-ups. Redis coordinates but holds no
//!   truth: it can be flushed at any moment without losing a job.
//! - [`worker`]: the execution plane. Claims due jobs, leases them, runs
//!   them in the [`sandbox`] and records each outcome with its fencing token.
//! - [`sandbox`]: wasmtime configured for hostile code: fuel, wall-clock
//!   deadlines, memory and stack limits, no ambient capabilities.
//! - [`maintenance`]: background services that keep jobs moving, run by one
//!   elected worker at a time: the [`maintenance::Scheduler`] makes
//!   scheduled and retrying jobs available when they fall due, the
//!   [`maintenance::Rescuer`] recovers jobs whose worker died.
//! - [`backoff`]: the deterministic retry schedule.
//! - [`duration`]: durations as people write them, read one way everywhere.
//! - [`config`] and [`cli`]: every knob, in one place, and the `taskflow`
//!   binary's commands (server roles and the HTTP client).
//!
//! Where a job is claimed: [`store::Store::claim`]. Where it runs:
//! [`sandbox::Sandbox::run`]. Where it is finished:
//! [`store::Store::finish_if_lease_matches`].
#![deny(missing_docs)]

pub mod api;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod duration;
pub mod job;
pub mod lease;
pub mod maintenance;
pub mod queue;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod worker;
