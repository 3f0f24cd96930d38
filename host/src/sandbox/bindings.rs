//! Host bindings for the `taskflow:task` world, generated from `wit/`.
//!
//! This is the only place `bindgen!` runs, so the host's view of the
//! contract has exactly one source.

wasmtime::component::bindgen!({
    world: "task",
    path: "../wit/versions/0.1.0",
    exports: { default: async },
});

pub use self::taskflow::task::host::{JobContext, Level};
