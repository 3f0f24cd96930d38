//! The configuration the job's queue grants, over `wasi:config/store`.
//!
//! ```
//! use taskflow_sdk::{TaskError, config};
//!
//! fn endpoint() -> Result<String, TaskError> {
//!     let base = config::get("api_base")?;
//!     Ok(base.unwrap_or_else(|| "https://api.example.com".to_owned()))
//! }
//! # assert_eq!(endpoint().unwrap(), "https://api.example.com");
//! ```
//!
//! The queue's operator sets the values (`taskflow queue set --config
//! KEY=VALUE`); every job of the queue sees the same ones. Keep secrets out
//! of configuration: a task can read configuration, but never a
//! [`Secret`](crate::Secret)'s value. Outside WebAssembly (a task's unit
//! tests) there is no configuration: [`get`] returns `None` and [`all`] is
//! empty.

use std::collections::BTreeMap;

use crate::TaskError;
use crate::bindings::wasi::config::store;

/// The value of configuration key `name`, or `None` when the queue does not
/// set it.
pub fn get(name: &str) -> Result<Option<String>, TaskError> {
    if !cfg!(target_arch = "wasm32") {
        return Ok(None);
    }
    store::get(name).map_err(|error| unavailable(&format!("configuration key {name:?}"), error))
}

/// Every configuration key the queue sets, with its value.
pub fn all() -> Result<BTreeMap<String, String>, TaskError> {
    if !cfg!(target_arch = "wasm32") {
        return Ok(BTreeMap::new());
    }
    let pairs = store::get_all().map_err(|error| unavailable("the configuration", error))?;
    Ok(pairs.into_iter().collect())
}

/// The host could not read the configuration: a transient failure.
fn unavailable(what: &str, error: store::Error) -> TaskError {
    let (store::Error::Upstream(reason) | store::Error::Io(reason)) = error;
    TaskError::retry(format!("{what} is unavailable: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_task_there_is_no_configuration() {
        assert_eq!(get("api_base"), Ok(None));
        assert_eq!(all(), Ok(BTreeMap::new()));
    }

    #[test]
    fn store_errors_are_retryable_and_say_what_was_read() {
        let error = unavailable(
            "configuration key \"a\"",
            store::Error::Io("timeout".into()),
        );
        assert!(error.is_retryable());
        assert_eq!(
            error.message(),
            "configuration key \"a\" is unavailable: timeout"
        );
    }
}
