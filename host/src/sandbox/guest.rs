//! The per-attempt state a `Store` carries, and the host side of the
//! `taskflow:task/host` interface.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, JobContext, Level};
use super::capture::LogCapture;
use super::clocks::{AttemptMonotonicClock, CoarseWallClock};
use super::failure::MemoryLimitExceeded;

/// Most table elements one attempt may allocate. Tables hold function
/// references; real programs use thousands, not millions.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Everything one attempt's `Store` holds. Created fresh per attempt and
/// dropped with the store, so nothing leaks from one job into the next.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: AttemptLimiter,
    log: Arc<LogCapture>,
    context: JobContext,
}

impl GuestState {
    /// State for one attempt. The WASI context grants nothing: no files, no
    /// environment, no arguments, no sockets, no name lookups; stdin is
    /// closed and stdout/stderr go to the attempt's log; the clocks are
    /// coarse (see [`super::clocks`]); randomness comes from the host's
    /// cryptographic generator.
    pub(super) fn new(
        log: Arc<LogCapture>,
        context: JobContext,
        memory_limit_bytes: usize,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(log.stdout())
            .stderr(log.stderr())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(CoarseWallClock)
            .monotonic_clock(AttemptMonotonicClock::new())
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: AttemptLimiter {
                memory_limit_bytes,
                allocated_bytes: 0,
                last_grant: 0,
            },
            log,
            context,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::taskflow::task::host::Host for GuestState {
    fn log(&mut self, level: Level, message: String) {
        self.log.log(level, message);
    }

    fn context(&mut self) -> JobContext {
        self.context.clone()
    }
}

impl bindings::taskflow::task::types::Host for GuestState {}

/// Enforces the attempt's memory limit on the sum of all the guest's
/// memories (a component may have several).
///
/// Growth past the limit traps at once with [`MemoryLimitExceeded`] instead
/// of returning -1 to the guest, so the attempt fails with a precise reason
/// rather than a guest-specific out-of-memory abort.
pub(super) struct AttemptLimiter {
    memory_limit_bytes: usize,
    /// Bytes of linear memory granted so far; memories never shrink.
    allocated_bytes: usize,
    /// The latest grant, taken back if that growth then fails.
    last_grant: usize,
}

impl ResourceLimiter for AttemptLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.allocated_bytes + desired.saturating_sub(current);
        if total > self.memory_limit_bytes {
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.memory_limit_bytes,
            }
            .into());
        }
        self.last_grant = total - self.allocated_bytes;
        self.allocated_bytes = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.allocated_bytes -= std::mem::take(&mut self.last_grant);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
