//! What an attempt may hold beyond its linear memory: table elements, and
//! on the host's side, where the memory limiter does not see them, how many
//! resources and how many bytes each. Read by the engine's pool
//! (engine.rs), the guest's state and its limiter (guest.rs), wasi:http
//! (outbound/) and the failure that names a guest over the budget
//! (failure.rs).

/// Most table elements one attempt may allocate: the pool's table slots
/// and the store's limiter. Tables hold function references; real programs
/// use thousands, not millions.
pub(super) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Most bytes the host holds for one resource a guest creates: a wasi:http
/// header map (`WasiHttpCtx::set_field_size_limit`, which counts their
/// in-memory size) or what one write to an outgoing body buffers
/// (`AttemptHttp::p2_outgoing_body_chunk_size`). Lower than wasi-http's
/// defaults (128 KiB and 1 MiB): the resource budget below is counted in
/// these.
pub(super) const RESOURCE_BYTES: usize = 64 * 1024;

/// Fewest resources an attempt may hold at once, however small its memory
/// limit: what a guest needs for its streams, pollables and a few requests.
const MIN_RESOURCES: usize = 64;

/// How many resources (streams, header maps, requests, pollables…) an
/// attempt with `memory_limit_bytes` may hold at once. What the host keeps
/// for them lives outside the guest's linear memory, where the memory
/// limiter does not see it; capped so, it can reach about the memory limit
/// again, not the 1,000,000 entries wasmtime allows by default (at 128 KiB
/// a header map, a worker's whole memory). A guest that asks for more
/// fails its own attempt with `memory_limit` (sandbox/failure.rs).
pub(super) fn resource_capacity(memory_limit_bytes: usize) -> usize {
    (memory_limit_bytes / RESOURCE_BYTES).max(MIN_RESOURCES)
}
