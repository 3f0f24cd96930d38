//! Write TaskFlow tasks as plain Rust functions.
//!
//! A TaskFlow task is a WebAssembly component of the `taskflow:task` world
//! (`wit/task.wit`). This crate hides the component plumbing: write a
//! function from your input type to your output type, mark it
//! [`#[task]`](task), build for `wasm32-wasip2`, and upload the `.wasm`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use taskflow_sdk::{TaskError, task};
//!
//! #[derive(Deserialize)]
//! struct Order { items: Vec<u32> }
//!
//! #[derive(Serialize)]
//! struct Total { total: u64 }
//!
//! #[task]
//! fn total(order: Order) -> Result<Total, TaskError> {
//!     if order.items.is_empty() {
//!         return Err(TaskError::fatal("an order needs at least one item"));
//!     }
//!     taskflow_sdk::log::info!("adding {} items", order.items.len());
//!     Ok(Total { total: order.items.iter().map(|&i| u64::from(i)).sum() })
//! }
//! # fn main() {}
//! ```
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! taskflow module push target/wasm32-wasip2/release/my_task.wasm
//! taskflow job submit --module <hash> --input '{"items": [1, 2, 3]}' --wait
//! ```
//!
//! # Input and output
//!
//! JSON by default: the input bytes are deserialized into the argument's
//! type with serde, and the output is serialized back. Use `Vec<u8>` or
//! [`Bytes`] as the argument or output type to get the raw bytes instead
//! (images, archives, anything not JSON). An input that does not deserialize
//! fails the job as not retryable: retrying cannot fix it.
//!
//! # Errors
//!
//! Return a [`TaskError`] and say whether another attempt may help:
//! [`TaskError::retry`] for transient trouble (the job is retried with
//! backoff), [`TaskError::fatal`] for bad input (the job goes straight to
//! the dead-letter state). `?` converts any `std::error::Error` into a
//! retryable `TaskError`; [`ResultExt::fatal`] marks one as fatal instead.
//! A panic fails the attempt as not retryable, and its message and source
//! location are in the attempt's record.
//!
//! # Logging
//!
//! [`log::info!`] and friends write to the attempt's log, which the API
//! returns with the attempt. Records from the [`log`](https://docs.rs/log)
//! crate facade (for example from your dependencies) land there too. The log
//! is bounded by the server; past the bound lines are counted and dropped.
//!
//! # Job context
//!
//! [`context()`] tells the task which job and attempt it is running.
//!
//! # HTTP, configuration and secrets
//!
//! What a task may reach is granted by its queue's operator: [`http`] sends
//! requests to the hosts the queue allows, [`config`] reads the queue's
//! configuration, and [`secret`] hands out stand-ins for the queue's secrets
//! that the host swaps for their values in outgoing request headers; the task
//! itself never sees a secret's value. `?` on an
//! [`HttpError`](http::HttpError) picks the right kind of `TaskError`: a
//! timeout or a 503 is retried, a denied request or a 404 is not.
//!
//! # Testing a task
//!
//! The `#[task]` function stays an ordinary function: call it from a
//! `#[test]` on your machine. Outside WebAssembly, logging prints to stderr
//! and [`context()`] returns a placeholder; HTTP requests and secrets fail
//! (there is no host to serve them) and the configuration is empty. To run
//! the built component under the same sandbox and limits as a worker,
//! without a server:
//! `taskflow run target/wasm32-wasip2/release/my_task.wasm --input '{…}'`.
#![deny(missing_docs)]

mod bytes;
pub mod config;
mod error;
pub mod http;
pub mod log;
mod runtime;
mod secrets;

pub use bytes::Bytes;
pub use error::{ResultExt, TaskError};
pub use runtime::{JobContext, context};
pub use secrets::{Secret, secret};
pub use taskflow_sdk_macros::task;

/// Bindings generated from `wit/task.wit`; used by `#[task]`.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_task",
        default_bindings_module: "taskflow_sdk::bindings",
        // The world imports wasi:http, wasi:config and, through them,
        // wasi:io; generate those here rather than depend on a WASI crate
        // whose versions would have to match `wit/deps`.
        generate_all,
    });
}

/// What `#[task]` expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::taskflow::task::types::TaskError as WitTaskError;
    pub use crate::bindings::{Guest, export_task};
    pub use crate::runtime::{decode_json, decode_raw, encode_json, encode_raw, run};

    pub mod bindings {
        pub use crate::bindings::*;
    }
}
