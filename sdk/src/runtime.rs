//! The glue `#[task]` expands to, and the job context.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TaskError;
use crate::bindings::taskflow::task::types::TaskError as WitTaskError;
use crate::log::Level;

/// Which job and attempt a task is running.
pub use crate::bindings::taskflow::task::host::JobContext;

/// The job and attempt being run.
///
/// Outside WebAssembly (in a task's unit tests) there is no host to ask, so
/// this returns a placeholder: job id `"local"`, attempt 1 of 1, queue
/// `"default"`.
pub fn context() -> JobContext {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::taskflow::task::host::context();
    #[cfg(not(target_arch = "wasm32"))]
    JobContext {
        job_id: "local".into(),
        attempt: 1,
        max_attempts: 1,
        queue: "default".into(),
    }
}

/// Runs a task function on `input`: installs the panic hook and the `log`
/// facade, decodes, calls, encodes, and converts the error for the host.
pub fn run<I, O, E: Into<TaskError>>(
    input: Vec<u8>,
    decode: fn(Vec<u8>) -> Result<I, TaskError>,
    task: fn(I) -> Result<O, E>,
    encode: fn(O) -> Result<Vec<u8>, TaskError>,
) -> Result<Vec<u8>, WitTaskError> {
    install_panic_hook();
    if ::log::set_logger(&crate::log::FacadeLogger).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Trace);
    }
    decode(input)
        .and_then(|input| task(input).map_err(Into::into))
        .and_then(encode)
        .map_err(|error| {
            let (message, retryable) = error.into_parts();
            WitTaskError { message, retryable }
        })
}

/// Reports a panic as one error line, `panicked at <file:line:column>:
/// <message>`, before WebAssembly aborts. The host recognises the line and
/// fails the attempt as a non-retryable `panic` with this message.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "<unknown>".to_owned());
        crate::log::write(Level::Error, &format!("panicked at {location}: {message}"));
    }));
}

/// Decodes a JSON input. Bad input cannot get better on retry: fatal.
pub fn decode_json<T: DeserializeOwned>(input: Vec<u8>) -> Result<T, TaskError> {
    serde_json::from_slice(&input)
        .map_err(|error| TaskError::fatal(format!("the input is not valid for this task: {error}")))
}

/// Passes the input bytes through.
pub fn decode_raw<T: From<Vec<u8>>>(input: Vec<u8>) -> Result<T, TaskError> {
    Ok(T::from(input))
}

/// Encodes a JSON output.
pub fn encode_json<T: Serialize>(output: T) -> Result<Vec<u8>, TaskError> {
    serde_json::to_vec(&output).map_err(|error| {
        TaskError::fatal(format!("the output could not be encoded as JSON: {error}"))
    })
}

/// Passes the output bytes through.
pub fn encode_raw<T: Into<Vec<u8>>>(output: T) -> Result<Vec<u8>, TaskError> {
    Ok(output.into())
}
