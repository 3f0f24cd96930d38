//! A guest's stdout and stderr: WASI output streams that hand what the
//! guest writes to its [`LogCapture`] (capture.rs), each write at most
//! [`WRITE_PERMIT`] bytes (streams.rs checks that before copying).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::capture::{LogCapture, LogSource};

/// A guest's stdout or stderr, writing into a [`LogCapture`]. Always ready:
/// writes past the bound are accepted and dropped, so a guest never blocks
/// or fails on its output.
#[derive(Debug, Clone)]
pub struct CaptureStream {
    capture: Arc<LogCapture>,
    source: LogSource,
}

impl CaptureStream {
    pub(super) fn new(capture: Arc<LogCapture>, source: LogSource) -> Self {
        Self { capture, source }
    }
}

/// Largest write permit handed to the guest at once: the most a single
/// `write` may copy out of guest memory.
pub const WRITE_PERMIT: usize = 64 * 1024;

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::trap("write exceeds the permit of check-write"));
        }
        self.capture.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
