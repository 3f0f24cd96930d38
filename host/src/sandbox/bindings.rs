//! Host bindings for the `taskflow:task` world, generated from `wit/`.
//!
//! This is the only place `bindgen!` runs, so the host's view of the
//! contract has exactly one source.

wasmtime::component::bindgen!({
    world: "task",
    path: "../wit",
    exports: { default: async },
});

pub use self::taskflow::task::host::{JobContext, Level};
