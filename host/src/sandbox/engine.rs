//! The wasmtime engine and linker every sandbox and compiler process uses,
//! and the checks that make a component one TaskFlow can run.
//!
//! The compiler process (`compiler.rs`) builds its engine here with the same
//! settings as the worker that loads its output, so compiled code is always
//! loaded by an engine it was compiled for; wasmtime refuses it otherwise
//! (`Engine::precompile_compatibility_hash`, which does not depend on the
//! allocation strategy).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::EPOCH_TICK;
use super::bindings::TaskPre;
use super::guest::{self, GuestState};
use super::resources::MAX_TABLE_ELEMENTS;
use super::streams;

/// WebAssembly stack a guest may use. Deep enough for real programs; runaway
/// recursion traps with `stack_overflow`.
const MAX_WASM_STACK: usize = 512 << 10;

/// Native stack each attempt runs on. Must exceed [`MAX_WASM_STACK`] with
/// room for host frames: running out of the host part would abort the
/// process instead of trapping.
const ASYNC_STACK_SIZE: usize = 2 << 20;

/// Per-component caps of the pooling allocator. A Rust component has one
/// memory and a few core instances; components built from interpreters
/// (Python, JavaScript) need more.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Memories an attempt takes from the pool besides its component's own: the
/// GC heap wasmtime allocates, from the same pool, for a store whose guest
/// uses GC references. `max_memories_per_component` does not count it, so
/// without this room a few attempts of a component with the most memories
/// and one GC instruction took every memory of the pool, and other jobs
/// failed to instantiate.
const GC_HEAPS_PER_ATTEMPT: u32 = 1;

/// Bytes of each pooled memory and table kept resident between attempts:
/// resetting them with `memset` is cheaper than returning the pages to the
/// kernel and taking a page fault on each first touch by the next attempt.
/// Where the kernel has `PAGEMAP_SCAN` (Linux 6.7+; see [`pooling_config`])
/// these are the first bytes of pages the guest wrote, wherever they lie;
/// elsewhere, the first bytes of the memory, and there a task built with a
/// small stack (see `.cargo/config.toml`), which keeps what it touches within
/// them, starts twice as fast as one with Rust's default 1 MiB stack; with
/// the scan both cost the same (docs/benchmarks.md). The window stays small
/// enough to cost big tasks little.
const KEEP_RESIDENT_BYTES: usize = 256 << 10;

/// What an engine that runs guests reserves: the pooling allocator's slots.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pooling {
    /// Attempts that may run at once.
    pub slots: usize,
    /// Largest memory any attempt may have.
    pub max_memory_bytes: u64,
}

/// An engine configured for hostile code. `pooling` sizes the allocator of
/// an engine that runs guests; a compiler process passes `None` (it
/// instantiates nothing). `optimize` is off for engines that only validate.
pub(super) fn engine(optimize: bool, pooling: Option<Pooling>) -> wasmtime::Result<Engine> {
    let mut config = wasmtime::Config::new();
    if !optimize {
        config.cranelift_opt_level(wasmtime::OptLevel::None);
    }
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK_SIZE);
    if let Some(pooling) = pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(pooling)));
    }
    Engine::new(&config)
}

/// The pooling allocator's slots and what it keeps between attempts.
///
/// `pagemap_scan` asks the kernel which pages of a finished attempt's
/// memory were written and resets only those, instead of `memset`ting all
/// [`KEEP_RESIDENT_BYTES`]: a no-op task writes a few pages of the window.
/// That took a fifth off an instantiate + call and raised the drain by
/// 5-8 % (docs/benchmarks.md, "Resetting only the pages a task wrote").
/// `Auto` falls back to the `memset` on kernels without the ioctl. Either
/// way nothing one attempt wrote reaches the next
/// (`sandbox::an_attempt_sees_nothing_the_previous_attempt_wrote_in_its_memory`).
fn pooling_config(pooling: Pooling) -> PoolingAllocationConfig {
    if !PoolingAllocationConfig::is_pagemap_scan_available() {
        tracing::info!(
            "the kernel lacks PAGEMAP_SCAN (Linux 6.7+): each attempt's memory is reset \
             in whole, a few µs more per attempt"
        );
    }
    let slots = pooling.slots.max(1) as u32;
    let mut config = PoolingAllocationConfig::new();
    config
        .total_component_instances(slots)
        .total_core_instances(slots * MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * (MAX_MEMORIES_PER_COMPONENT + GC_HEAPS_PER_ATTEMPT))
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .total_tables(slots * MAX_TABLES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .total_stacks(slots)
        .max_memory_size(pooling.max_memory_bytes as usize)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config
}

/// The linker every task is instantiated with: WASI preview 2 granting
/// nothing (`guest.rs`), its stream writes checked before copying
/// (`streams.rs`), and the `taskflow:task` imports.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    streams::add_to_linker(&mut linker)?;
    guest::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Why an uploaded module was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum InvalidModule {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component; build the task for \
         wasm32-wasip2 (cargo build --target wasm32-wasip2) or wrap it with \
         `wasm-tools component new`"
    )]
    CoreModule,
    /// Malformed, or rejected by the compiler.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component, but not of the `taskflow:task` world.
    #[error("the component does not fit the taskflow:task world: {0}")]
    WrongWorld(String),
}

/// Compiles `bytes` and checks that they are a component of the
/// `taskflow:task` world this host can run: its imports resolve against
/// `linker` and it exports `run`. Blocking and possibly slow: only the
/// compiler process calls it.
pub(super) fn compile(
    engine: &Engine,
    linker: &Linker<GuestState>,
    bytes: &[u8],
) -> Result<Component, InvalidModule> {
    const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(InvalidModule::NotWasm);
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(InvalidModule::CoreModule);
    }
    if bytes[4..8] != COMPONENT_VERSION {
        return Err(InvalidModule::Invalid(format!(
            "unsupported WebAssembly version/layer {:02x?}",
            &bytes[4..8]
        )));
    }
    let component = Component::new(engine, bytes)
        .map_err(|error| InvalidModule::Invalid(format!("{error:#}")))?;
    task_pre(linker, &component).map_err(InvalidModule::WrongWorld)?;
    Ok(component)
}

/// `component` with its imports resolved against `linker`, ready to
/// instantiate; or why it does not fit the world.
pub(super) fn task_pre(
    linker: &Linker<GuestState>,
    component: &Component,
) -> Result<TaskPre<GuestState>, String> {
    let instance_pre =
        linker.instantiate_pre(component).map_err(|error| {
            match missing_imports(linker, component).as_slice() {
                [] => format!("it imports something TaskFlow does not provide ({error:#})"),
                missing => format!(
                    "it imports what TaskFlow does not provide: {}",
                    missing.join(", ")
                ),
            }
        })?;
    TaskPre::new(instance_pre).map_err(|error| {
        format!(
            "it must export `run: func(input: list<u8>) -> result<list<u8>, task-error>` \
             ({error:#})"
        )
    })
}

/// Missing imports named in a refusal; each costs a type check of the
/// whole component, so a hostile one with thousands cannot make that
/// quadratic.
const MAX_MISSING_NAMED: usize = 16;

/// The imports of `component` that `linker` does not satisfy, by name (at
/// most [`MAX_MISSING_NAMED`], then `…`). wasmtime reports only the first,
/// so each one found is stubbed in a copy of the linker (as
/// `Linker::define_unknown_imports_as_traps` would) and the check runs
/// again, until it passes or names nothing new.
fn missing_imports(linker: &Linker<GuestState>, component: &Component) -> Vec<String> {
    let engine = component.engine();
    let imports: Vec<(String, ComponentItem)> = component
        .component_type()
        .imports(engine)
        .map(|(name, import)| (name.to_owned(), import.ty))
        .collect();
    let mut probe = linker.clone();
    probe.allow_shadowing(true);
    let mut missing = Vec::new();
    while let Err(error) = probe.instantiate_pre(component) {
        if missing.len() == MAX_MISSING_NAMED {
            missing.push("…".to_owned());
            break;
        }
        // The outermost message names the import: "component imports
        // instance `name`, but …".
        let reported = error.to_string();
        let Some((name, item)) = imports
            .iter()
            .find(|(name, _)| !missing.contains(name) && reported.contains(&format!("`{name}`")))
        else {
            break;
        };
        missing.push(name.clone());
        if stub(&mut probe.root(), name, item, engine).is_err() {
            break;
        }
    }
    missing
}

/// Defines `item` as `name` in `linker` with functions that trap, so a
/// type check can go past it. Only [`missing_imports`] uses it: nothing
/// stubbed is ever instantiated.
fn stub(
    linker: &mut LinkerInstance<'_, GuestState>,
    name: &str,
    item: &ComponentItem,
    engine: &Engine,
) -> wasmtime::Result<()> {
    match item {
        ComponentItem::ComponentFunc(_) => {
            linker.func_new(name, |_, _, _, _| wasmtime::bail!("not provided"))
        }
        ComponentItem::Resource(_) => {
            linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()))
        }
        ComponentItem::ComponentInstance(instance) => {
            let mut nested = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                stub(&mut nested, export, &item.ty, engine)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until `stop` is set.
pub(super) fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("taskflow-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};

    use super::*;

    /// A component with as many memories as a component may have, and a
    /// core module using a GC struct (so its store needs a GC heap).
    fn most_memories_and_a_gc_heap() -> String {
        let memories: String = (0..MAX_MEMORIES_PER_COMPONENT)
            .map(|_| "(core instance (instantiate $memory))")
            .collect();
        format!(
            r#"(component
                 (core module $memory (memory 1))
                 {memories}
                 (core module $gc
                   (type $pair (struct (field i32) (field i32)))
                   (func $start (drop (struct.new $pair (i32.const 1) (i32.const 2))))
                   (start $start))
                 (core instance (instantiate $gc)))"#
        )
    }

    #[tokio::test]
    async fn an_attempt_with_the_most_memories_and_a_gc_heap_fits_its_slot() {
        let pooling = Pooling {
            slots: 1,
            max_memory_bytes: 1 << 20,
        };
        let engine = engine(false, Some(pooling)).unwrap();
        let component = Component::new(&engine, most_memories_and_a_gc_heap()).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_fuel(1_000_000).unwrap();
        store.set_epoch_deadline(1);
        let instance = Linker::new(&engine)
            .instantiate_async(&mut store, &component)
            .await;
        assert!(instance.is_ok(), "{:#}", instance.err().unwrap());
    }
}
