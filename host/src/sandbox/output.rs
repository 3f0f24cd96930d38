//! The output a task returns, copied out of guest memory only when it is
//! within the output limit; and the error it returns, whose message is
//! copied only as far as it is kept ([`GuestError`]).
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

use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList, WasmStr};

use super::MAX_ERROR_MESSAGE_BYTES;
use super::failure::Capped;
use super::guest_str::{UTF16_TAG, pointer_and_length};

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

/// The `task-error` a task returned, its message copied out of guest memory
/// only up to [`MAX_ERROR_MESSAGE_BYTES`], as it is stored: lifted as the
/// generated record, a guest's message would be copied whole first, and a
/// task could make the worker copy most of its memory to keep 8 KiB.
#[derive(Debug, ComponentType, Lift)]
#[component(record)]
pub(super) struct GuestError {
    /// The message, cut.
    pub message: CutMessage,
    /// Whether the task asked to be retried.
    pub retryable: bool,
}

/// A guest's `string`, of which only the first [`MAX_ERROR_MESSAGE_BYTES`]
/// are copied.
#[derive(Debug)]
pub(super) struct CutMessage(pub String);

// SAFETY: the representation is exactly `WasmStr`'s (`string`): the same
// lowered form, ABI and type check.
unsafe impl ComponentType for CutMessage {
    type Lower = <WasmStr as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <WasmStr as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting goes through `WasmStr`'s own lifting first (which checks
// alignment and bounds and charges fuel), then reads a prefix of the bytes
// it checked, at the pointer and length it read from the same place.
unsafe impl Lift for CutMessage {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        <WasmStr as Lift>::linear_lift_from_flat(cx, ty, src)?;
        Self::read(cx, src[0].get_u32(), src[1].get_u32())
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        <WasmStr as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        let (ptr, len) = pointer_and_length(bytes)?;
        Self::read(cx, ptr, len)
    }
}

impl CutMessage {
    /// The first [`MAX_ERROR_MESSAGE_BYTES`] of the string at `ptr` of
    /// `len` units (bytes for UTF-8 and Latin-1, 16-bit units for UTF-16),
    /// decoded; invalid sequences become U+FFFD.
    fn read(cx: &mut LiftContext<'_>, ptr: u32, len: u32) -> wasmtime::Result<Self> {
        let memory = &cx.memory()[ptr as usize..];
        let text = match cx.options().string_encoding {
            StringEncoding::Utf8 => {
                let bytes = &memory[..(len as usize).min(MAX_ERROR_MESSAGE_BYTES)];
                String::from_utf8_lossy(bytes).into_owned()
            }
            StringEncoding::Utf16 => utf16(memory, len as usize),
            StringEncoding::CompactUtf16 if len & UTF16_TAG != 0 => {
                utf16(memory, (len ^ UTF16_TAG) as usize)
            }
            StringEncoding::CompactUtf16 => memory[..(len as usize).min(MAX_ERROR_MESSAGE_BYTES)]
                .iter()
                .map(|&byte| char::from(byte))
                .collect(),
        };
        Ok(Self(Capped::cut(text, MAX_ERROR_MESSAGE_BYTES)))
    }
}

/// The first units of a UTF-16 string of `units` units at the start of
/// `memory`, as many as can make [`MAX_ERROR_MESSAGE_BYTES`] of UTF-8.
fn utf16(memory: &[u8], units: usize) -> String {
    let units = units.min(MAX_ERROR_MESSAGE_BYTES);
    char::decode_utf16(
        memory[..units * 2]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]])),
    )
    .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
    .collect()
}
