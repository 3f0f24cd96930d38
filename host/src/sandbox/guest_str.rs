//! Strings a guest passes to TaskFlow's own host calls (`host.log`,
//! `secrets.*`, `host/src/sandbox/guest.rs`), read where they lie in guest
//! memory and copied only within a limit.
//!
//! wasmtime's [`WasmStr`] is a view into guest memory, and a UTF-8 guest's
//! string is read from it without a copy. A component may instead declare
//! its strings UTF-16 or Latin-1+UTF-16 (its canonical options'
//! `string-encoding`); [`WasmStr::to_str`] then transcodes the whole string
//! into a new `String` of up to twice its size in the guest, before
//! the host call could compare its length with anything. One call could make
//! the worker allocate more than the guest's own memory limit.
//!
//! [`GuestStr`] is that view plus the string's length in code units, which
//! no string's UTF-8 form is shorter than: [`GuestStr::read`] transcodes a
//! string only if it can be within the caller's limit, so what it copies is
//! bounded by three times that limit.
//!
//! This implements wasmtime's `ComponentType` and `Lift` traits by hand, as
//! `sandbox/output.rs` does and for the same reasons; a wasmtime upgrade that
//! changes them fails to compile here, and
//! `a_utf16_guests_long_strings_are_refused_without_being_transcoded`
//! (`host/tests/integration/execution.rs`) checks the behaviour.

use std::borrow::Cow;

use wasmtime::StoreContext;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmStr};

/// The tag of a Latin-1+UTF-16 string's length that says it is UTF-16.
pub(super) const UTF16_TAG: u32 = 1 << 31;

/// A `string` argument of a host call, still in guest memory.
pub(super) struct GuestStr {
    view: WasmStr,
    /// Its length in code units when reading it transcodes it (it is not
    /// UTF-8 in the guest); `None` when reading it borrows it.
    transcoded_units: Option<usize>,
}

impl GuestStr {
    /// The string, unless reading it would transcode one longer than
    /// `limit` bytes of UTF-8 (`Ok(None)`). A UTF-8 guest's string is
    /// borrowed whatever its length: the caller applies its own limit to
    /// it without a copy having been made.
    pub(super) fn read<'a, T: 'static>(
        &self,
        store: impl Into<StoreContext<'a, T>>,
        limit: usize,
    ) -> wasmtime::Result<Option<Cow<'a, str>>> {
        if self.transcoded_units.is_some_and(|units| units > limit) {
            return Ok(None);
        }
        self.view.to_str(store).map(Some)
    }

    fn new(cx: &LiftContext<'_>, view: WasmStr, length: u32) -> Self {
        let transcoded_units = match cx.options().string_encoding {
            StringEncoding::Utf8 => None,
            StringEncoding::Utf16 => Some(length),
            StringEncoding::CompactUtf16 => Some(length & !UTF16_TAG),
        };
        Self {
            view,
            transcoded_units: transcoded_units.map(|units| units as usize),
        }
    }
}

/// The pointer and length of a `string` or `list` stored in guest memory
/// (`bytes`, as wasmtime hands it to [`Lift::linear_lift_from_memory`]).
pub(super) fn pointer_and_length(bytes: &[u8]) -> wasmtime::Result<(u32, u32)> {
    let word = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok());
    let (Some(pointer), Some(length)) = (word(0), word(4)) else {
        wasmtime::bail!("a string's pointer and length take 8 bytes");
    };
    Ok((u32::from_le_bytes(pointer), u32::from_le_bytes(length)))
}

// SAFETY: the representation is exactly `WasmStr`'s (`string`): the same
// lowered form, ABI and type check.
unsafe impl ComponentType for GuestStr {
    type Lower = <WasmStr as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <WasmStr as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting is `WasmStr`'s own (which checks alignment and bounds and
// charges fuel); the length kept beside it is read from the same place.
unsafe impl Lift for GuestStr {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let view = <WasmStr as Lift>::linear_lift_from_flat(cx, ty, src)?;
        Ok(Self::new(cx, view, src[1].get_u32()))
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let view = <WasmStr as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        let (_, length) = pointer_and_length(bytes)?;
        Ok(Self::new(cx, view, length))
    }
}
