//! The secrets the job's queue grants: usable, never readable.

use std::fmt;

use crate::TaskError;
use crate::bindings::taskflow::task::secrets;

/// A stand-in for one of the queue's secrets, from [`secret`].
///
/// The task never sees the secret's value: it stays in the host. What the
/// task holds is a placeholder, valid for this attempt only, which it uses
/// in two ways:
///
/// - **In a request header**, alone or inside a longer value: the host
///   replaces the placeholder with the value as the request leaves, and only
///   for the hosts the queue binds the secret to. A request carrying it to
///   any other host is refused ([`HttpError::Denied`](crate::http::HttpError::Denied)).
///   Anywhere else (a URL, a body, a log line) it stays an opaque string.
/// - **To sign data** with [`Secret::hmac_sha256`], computed by the host.
///
/// `Secret` is [`AsRef<str>`] and [`Display`](fmt::Display), so it can be a
/// header value as is or be formatted into one. Printing it is harmless: it
/// prints the placeholder, not the value.
///
/// ```no_run
/// use taskflow_sdk::{TaskError, http, secret};
///
/// fn list_repos() -> Result<String, TaskError> {
///     let token = secret("github_token")?;
///     let response = http::request(http::Method::Get, "https://api.github.com/user/repos")
///         .header("authorization", format!("Bearer {token}"))
///         .send()?
///         .error_for_status()?;
///     Ok(response.text()?)
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    name: String,
    placeholder: String,
}

/// The queue's secret `name`. Fails (fatally: the queue's operator must add
/// it) when the queue has no such secret, and outside WebAssembly (a task's
/// unit tests), where there is no host to hold secrets.
pub fn secret(name: &str) -> Result<Secret, TaskError> {
    if !cfg!(target_arch = "wasm32") {
        return Err(no_host());
    }
    let placeholder = secrets::placeholder(name).map_err(|reason| unavailable(name, &reason))?;
    Ok(Secret {
        name: name.to_owned(),
        placeholder,
    })
}

impl Secret {
    /// The secret's name, as the queue grants it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// HMAC-SHA256 of `data`, keyed with the secret's value: to sign a
    /// request (a webhook signature) without ever holding the key.
    pub fn hmac_sha256(&self, data: &[u8]) -> Result<Vec<u8>, TaskError> {
        if !cfg!(target_arch = "wasm32") {
            return Err(no_host());
        }
        secrets::hmac_sha256(&self.name, data).map_err(|reason| unavailable(&self.name, &reason))
    }
}

impl AsRef<str> for Secret {
    fn as_ref(&self) -> &str {
        &self.placeholder
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.placeholder)
    }
}

fn unavailable(name: &str, reason: &str) -> TaskError {
    TaskError::fatal(format!("secret {name:?} is unavailable: {reason}"))
}

fn no_host() -> TaskError {
    TaskError::fatal("no TaskFlow host: secrets are available only inside a task")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_reads_as_its_placeholder() {
        let secret = Secret {
            name: "api_token".into(),
            placeholder: "tf-secret-7f3a".into(),
        };
        assert_eq!(format!("Bearer {secret}"), "Bearer tf-secret-7f3a");
        assert_eq!(secret.as_ref(), "tf-secret-7f3a");
        assert_eq!(secret.name(), "api_token");
    }

    #[test]
    fn a_missing_secret_is_fatal_and_named() {
        let error = unavailable("api_token", "no such secret");
        assert!(!error.is_retryable());
        assert_eq!(
            error.message(),
            "secret \"api_token\" is unavailable: no such secret"
        );
        assert!(!secret("api_token").unwrap_err().is_retryable());
    }
}
