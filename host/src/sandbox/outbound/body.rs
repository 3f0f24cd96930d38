//! Request and response bodies counted as they stream ([`Metered`]): each
//! frame is added to the request's record and to the attempt's total, and
//! the body fails as soon as a cap or the request's deadline is passed,
//! without buffering anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;
use wasmtime_wasi_http::Error;

use super::audit::RequestMeter;

/// Which way a body flows, and so which error passing a cap is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    /// Guest to server.
    Out,
    /// Server to guest.
    In,
}

/// A body that counts its bytes into its request's record and into
/// `counters`, and fails once any counter passes its cap, or once
/// `deadline` passes. A response body that ends or fails ends its request's
/// record.
pub(super) struct Metered<B> {
    inner: B,
    direction: Direction,
    meter: Arc<RequestMeter>,
    /// (counter, cap) pairs: the response's own and the attempt's.
    counters: Vec<(Arc<AtomicU64>, u64)>,
    deadline: Pin<Box<Sleep>>,
    failed: bool,
}

impl<B> Metered<B> {
    pub(super) fn new(
        inner: B,
        direction: Direction,
        meter: Arc<RequestMeter>,
        counters: Vec<(Arc<AtomicU64>, u64)>,
        deadline: tokio::time::Instant,
    ) -> Self {
        Self {
            inner,
            direction,
            meter,
            counters,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            failed: false,
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.failed = true;
        let (kind, reason) = match (&error, self.direction) {
            (Error::ConnectionReadTimeout, _) => ("timeout", "the request's time ran out"),
            (_, Direction::Out) => ("request_too_large", "the attempt's cap on bytes sent"),
            (_, Direction::In) => ("response_too_large", "a cap on bytes received"),
        };
        self.meter.fail(kind, reason);
        Poll::Ready(Some(Err(error)))
    }

    fn too_large(&self) -> Error {
        match self.direction {
            Direction::Out => Error::HttpRequestBodySize(None),
            Direction::In => Error::HttpResponseBodySize(None),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.fail(Error::ConnectionReadTimeout);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                if matches!(self.direction, Direction::In) {
                    self.meter.end();
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => {
                self.failed = true;
                self.meter.fail("protocol_error", error.to_string());
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let bytes = data.len() as u64;
            let carried = match self.direction {
                Direction::Out => &self.meter.bytes_out,
                Direction::In => &self.meter.bytes_in,
            };
            carried.fetch_add(bytes, Ordering::Relaxed);
            let over = self
                .counters
                .iter()
                .any(|(counter, cap)| counter.fetch_add(bytes, Ordering::Relaxed) + bytes > *cap);
            if over {
                let error = self.too_large();
                return self.fail(error);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn body(bytes: &'static [u8]) -> impl Body<Data = Bytes, Error = Error> + Unpin {
        Full::new(Bytes::from_static(bytes)).map_err(|never| match never {})
    }

    fn meter() -> Arc<RequestMeter> {
        super::super::audit::Audit::new(1).start("GET", "http://a.example.com:80/".into())
    }

    #[tokio::test]
    async fn bytes_are_counted_into_every_counter_and_a_cap_fails_the_body() {
        let counted = meter();
        let attempt_total = Arc::new(AtomicU64::new(5));
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let fits = Metered::new(
            body(b"hello"),
            Direction::In,
            counted.clone(),
            vec![(attempt_total.clone(), 10)],
            far,
        );
        assert_eq!(fits.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(counted.bytes_in.load(Ordering::Relaxed), 5);
        assert_eq!(attempt_total.load(Ordering::Relaxed), 10);

        let over = Metered::new(
            body(b"!"),
            Direction::In,
            meter(),
            vec![(attempt_total, 10)],
            far,
        );
        assert!(matches!(
            over.collect().await,
            Err(Error::HttpResponseBodySize(None))
        ));
    }

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_fails() {
        let silent = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, Error>,
        >());
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        let late = Metered::new(silent, Direction::In, meter(), vec![], soon);
        assert!(matches!(
            late.collect().await,
            Err(Error::ConnectionReadTimeout)
        ));
    }
}
