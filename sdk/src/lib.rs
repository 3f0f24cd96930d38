//! The guest SDK for TaskFlow tasks.
//!
//! A task is a WebAssembly component of the `taskflow:task` world (see
//! `wit/task.wit`): it exports `run(input) -> result<output, task-error>` and
//! may log through the host. This crate generates the bindings once so task
//! crates do not run `wit-bindgen` themselves.
//!
//! ```ignore
//! use taskflow_sdk::{Guest, TaskError};
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
//!         Ok(input)
//!     }
//! }
//!
//! taskflow_sdk::export_task!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`.
#![deny(missing_docs)]

/// Bindings generated from `wit/task.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_task",
        default_bindings_module: "taskflow_sdk::bindings",
    });
}

pub use bindings::taskflow::task::host::{JobContext, Level, context, log};
pub use bindings::taskflow::task::types::TaskError;
pub use bindings::{Guest, export_task};

impl TaskError {
    /// A failure that another attempt may fix (an overloaded dependency, a
    /// transient outage). The job is retried with backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix (the input is invalid). The job goes
    /// straight to the dead-letter state.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}
