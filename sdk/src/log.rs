//! Writing to the attempt's log.
//!
//! ```
//! taskflow_sdk::log::info!("resized {} images", 3);
//! taskflow_sdk::log::warn!("input had {} duplicate ids", 2);
//! ```
//!
//! Each call becomes one line of the attempt's log, with its level. Inside a
//! task, records of the [`log`](https://docs.rs/log) crate facade are routed
//! here as well, so libraries that use it need no changes.

pub use crate::bindings::taskflow::task::host::Level;

/// Writes one line at `level`. Outside WebAssembly (in a task's unit
/// tests), the line goes to stderr.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::taskflow::task::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __taskflow_log {
    ($level:ident, $($argument:tt)+) => {
        $crate::log::write($crate::log::Level::$level, &::std::format!($($argument)+))
    };
}

/// Logs at trace level, with `format!` syntax.
#[macro_export]
macro_rules! __taskflow_trace { ($($argument:tt)+) => { $crate::__taskflow_log!(Trace, $($argument)+) }; }
/// Logs at debug level, with `format!` syntax.
#[macro_export]
macro_rules! __taskflow_debug { ($($argument:tt)+) => { $crate::__taskflow_log!(Debug, $($argument)+) }; }
/// Logs at info level, with `format!` syntax.
#[macro_export]
macro_rules! __taskflow_info { ($($argument:tt)+) => { $crate::__taskflow_log!(Info, $($argument)+) }; }
/// Logs at warn level, with `format!` syntax.
#[macro_export]
macro_rules! __taskflow_warn { ($($argument:tt)+) => { $crate::__taskflow_log!(Warn, $($argument)+) }; }
/// Logs at error level, with `format!` syntax.
#[macro_export]
macro_rules! __taskflow_error { ($($argument:tt)+) => { $crate::__taskflow_log!(Error, $($argument)+) }; }

#[doc(inline)]
pub use crate::{
    __taskflow_debug as debug, __taskflow_error as error, __taskflow_info as info,
    __taskflow_trace as trace, __taskflow_warn as warn,
};

/// Routes the `log` crate facade to the attempt's log.
pub(crate) struct FacadeLogger;

impl ::log::Log for FacadeLogger {
    fn enabled(&self, _metadata: &::log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &::log::Record<'_>) {
        let level = match record.level() {
            ::log::Level::Trace => Level::Trace,
            ::log::Level::Debug => Level::Debug,
            ::log::Level::Info => Level::Info,
            ::log::Level::Warn => Level::Warn,
            ::log::Level::Error => Level::Error,
        };
        write(level, &format!("{}: {}", record.target(), record.args()));
    }

    fn flush(&self) {}
}
