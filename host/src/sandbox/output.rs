//! The output a task returns, copied out of guest memory only when it is
//! within the output limit.
//!
//! `run` returns `result<list<u8>, task-error>`. Lifted as a `Vec<u8>`, the
//! list would be copied into the host whatever its length, before TaskFlow
//! could compare it with `--max-output-bytes`: a guest could make the worker
//! copy its whole memory. A `WasmList` view would avoid the copy, but
//! wasmtime runs the guest's `cabi_post_run` (which frees the list) before a
//! typed call returns, so the view could only be read after the guest freed
//! it. [`GuestOutput`] lifts the list itself: it takes the `WasmList` view
//! (bounds-checked, fuel charged, nothing copied) and copies the bytes only
//! if there are no more than [`lift_limit`].
//!
//! This implements wasmtime's `ComponentType` and `Lift` traits by hand,
//! forwarding to wasmtime's own implementations for `list<u8>`; the methods
//! are the (documentation-hidden) ones `bindgen!` generates for every record
//! and variant. A wasmtime upgrade that changes them fails to compile here,
//! and `a_big_output_is_refused_without_being_copied_out_of_the_guest`
//! (`host/tests/integration/execution.rs`) checks the behaviour.

use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

/// The largest output any sandbox of this process accepts: the bound of
/// what is copied out of a guest. Each sandbox then applies its own limit
/// (`Sandbox::run`), which is never larger.
static LIFT_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Raises the copy bound to `max_output_bytes` (a new sandbox's limit).
pub(super) fn raise_lift_limit(max_output_bytes: usize) {
    LIFT_LIMIT.fetch_max(max_output_bytes, Ordering::Relaxed);
}

/// The current copy bound.
pub(super) fn lift_limit() -> usize {
    LIFT_LIMIT.load(Ordering::Relaxed)
}

/// The `list<u8>` a task returned: its bytes, or only its length when it is
/// longer than [`lift_limit`].
#[derive(Debug)]
pub(super) enum GuestOutput {
    /// The output, copied.
    Bytes(Vec<u8>),
    /// An output of this many bytes, left in guest memory.
    TooLong(usize),
}

// SAFETY: the representation is exactly `Vec<u8>`'s (`list<u8>`): the same
// lowered form, ABI and type check.
unsafe impl ComponentType for GuestOutput {
    type Lower = <Vec<u8> as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <Vec<u8> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting goes through `WasmList<u8>`'s own lifting (which checks
// bounds and alignment and charges fuel) and `u8`'s own list copy.
unsafe impl Lift for GuestOutput {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let list = <WasmList<u8> as Lift>::linear_lift_from_flat(cx, ty, src)?;
        Self::copy_if_within_limit(cx, &list)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let list = <WasmList<u8> as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        Self::copy_if_within_limit(cx, &list)
    }
}

impl GuestOutput {
    fn copy_if_within_limit(
        cx: &mut LiftContext<'_>,
        list: &WasmList<u8>,
    ) -> wasmtime::Result<Self> {
        if list.len() > lift_limit() {
            return Ok(GuestOutput::TooLong(list.len()));
        }
        Ok(GuestOutput::Bytes(
            <u8 as Lift>::linear_lift_list_from_memory(cx, list)?,
        ))
    }
}
