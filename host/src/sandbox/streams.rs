//! A guest's writes to its output streams, checked before their bytes are
//! copied out of guest memory.
//!
//! wasmtime-wasi's `output-stream.write` and `blocking-write-and-flush`
//! receive the guest's bytes already copied into a `Vec`, whatever their
//! length, and only then compare it with the stream's permit (or not at all,
//! for `write`). A guest could so make the worker copy its whole memory on
//! every call. These two functions are defined again here on top of
//! wasmtime-wasi's, taking the bytes as a [`WasmList`] (a view into guest
//! memory): a write longer than the stream allows traps before anything is
//! copied, as the WASI specification says it must. Every other stream
//! function is wasmtime-wasi's own.
//!
//! The streams themselves are `CaptureStream`s (capture_stream.rs), which
//! hand what the guest writes to its log capture.

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable, WasmList};
use wasmtime_wasi::p2::bindings::io::streams::{Host as _, StreamError as GuestStreamError};
use wasmtime_wasi::p2::{DynOutputStream, StreamError, StreamResult};

use super::guest::GuestState;

/// The `wasi:io/streams` instance wasmtime-wasi defines (guests importing an
/// older 0.2 version are linked to it by semver).
const STREAMS_INTERFACE: &str = "wasi:io/streams@0.2.12";

/// Most bytes `blocking-write-and-flush` takes, per the WASI specification.
const BLOCKING_WRITE_MAX: usize = 4096;

type WriteResult = wasmtime::Result<(Result<(), GuestStreamError>,)>;

/// Replaces wasmtime-wasi's `write` and `blocking-write-and-flush` in
/// `linker`, which must already hold wasmtime-wasi's `wasi:io/streams`.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut streams = linker.instance(STREAMS_INTERFACE)?;
    streams.func_wrap(
        "[method]output-stream.write",
        |mut store, (stream, contents): (Resource<DynOutputStream>, WasmList<u8>)| {
            let result = write(&mut store, &stream, &contents);
            to_guest(&mut store.data_mut().table, result)
        },
    )?;
    streams.func_wrap_async(
        "[method]output-stream.blocking-write-and-flush",
        |mut store, (stream, contents): (Resource<DynOutputStream>, WasmList<u8>)| {
            Box::new(async move {
                let result = blocking_write_and_flush(&mut store, &stream, &contents).await;
                to_guest(&mut store.data_mut().table, result)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn write(
    store: &mut StoreContextMut<'_, GuestState>,
    stream: &Resource<DynOutputStream>,
    contents: &WasmList<u8>,
) -> StreamResult<()> {
    let permit = store.data_mut().table.get_mut(stream)?.check_write()?;
    if contents.len() > permit {
        return Err(StreamError::Trap(wasmtime::Error::msg(format!(
            "output-stream.write of {} bytes exceeds the {permit} bytes check-write permits",
            contents.len()
        ))));
    }
    let bytes = Bytes::copy_from_slice(contents.as_le_slice(&*store));
    store.data_mut().table.get_mut(stream)?.write(bytes)
}

async fn blocking_write_and_flush(
    store: &mut StoreContextMut<'_, GuestState>,
    stream: &Resource<DynOutputStream>,
    contents: &WasmList<u8>,
) -> StreamResult<()> {
    if contents.len() > BLOCKING_WRITE_MAX {
        return Err(StreamError::Trap(wasmtime::Error::msg(format!(
            "blocking-write-and-flush of {} bytes exceeds the {BLOCKING_WRITE_MAX} bytes it takes",
            contents.len()
        ))));
    }
    let bytes = Bytes::copy_from_slice(contents.as_le_slice(&*store));
    store
        .data_mut()
        .table
        .get_mut(stream)?
        .blocking_write_and_flush(bytes)
        .await
}

/// A stream result as the guest sees it: a trap stays a trap, other errors
/// become the `stream-error` the function returns.
fn to_guest(table: &mut ResourceTable, result: StreamResult<()>) -> WriteResult {
    match result {
        Ok(()) => Ok((Ok(()),)),
        Err(error) => Ok((Err(table.convert_stream_error(error)?),)),
    }
}
