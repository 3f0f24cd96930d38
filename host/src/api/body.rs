//! Reading request bodies under the API's limits.
//!
//! Every body is read here, never by axum's extractors, so that every limit
//! holds before a byte is parsed:
//!
//! - **size**: a declared `Content-Length` over the route's limit is refused
//!   at once (413), and reading stops at the limit;
//! - **memory**: a request first reserves its body size, times what parsing
//!   it costs, from one budget shared by every request in flight
//!   ([`RequestBudget`], `--max-request-bytes-in-flight`), and holds it until
//!   its response is ready; a request that finds no room waits, unread. A
//!   body of unknown length reserves as its bytes arrive ([`read`]);
//! - **time**: waiting for room and receiving the body both fall within
//!   `--request-body-timeout` (503 while waiting for room, 408 once reading),
//!   and a body of declared length that has its room must keep the pace that
//!   brings it whole by then ([`Pace`]; 408 `body_too_slow`), so a stalled
//!   body gives its room back within seconds.
//!
//! JSON bodies ([`JsonBody`]) are then parsed straight into their request
//! type: job inputs stay unparsed text ([`JsonText`](super::types::JsonText))
//! until `JobSpec::resolve` (`job/spec.rs`) has checked their size, so no request is ever turned
//! into a `serde_json::Value` tree.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::{DeserializeOwned, DeserializeSeed};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ApiState};
use crate::config::ApiLimits;

/// What parsing a JSON request costs in memory, as a multiple of its body:
/// the body itself, the request's strings (job inputs are kept as raw
/// text), the compacted inputs, and their copy in the insert statement.
pub const JSON_MEMORY_FACTOR: usize = 4;

/// The bytes all requests in flight may hold.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
    timeout: Duration,
}

/// A request's share of the [`RequestBudget`], returned when dropped.
#[derive(Debug)]
#[must_use = "the reservation must live as long as the request's data"]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl RequestBudget {
    /// A budget of `capacity` bytes; requests wait for room, and read their
    /// body, within `timeout`.
    pub fn new(capacity: usize, timeout: Duration) -> Self {
        // Reservations are counted in `u32`s (`acquire_many`).
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
            timeout,
        }
    }

    /// Sets the gauge of [`RequestBudget::reserved`].
    fn report_reserved(&self) {
        metrics::gauge!("taskflow_api_request_bytes_reserved").set(self.reserved() as f64);
    }

    /// Bytes reserved by requests in flight now.
    pub fn reserved(&self) -> usize {
        self.capacity - self.bytes.available_permits()
    }

    /// How long a body may take to arrive (`--request-body-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reserves `bytes`, waiting until `deadline`. A request bigger than
    /// the whole budget reserves all of it (and so waits until it is alone).
    async fn reserve(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Reservation, ApiError> {
        let wanted = bytes.clamp(1, self.capacity) as u32;
        let permit =
            tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(wanted))
                .await
                .map_err(|_| {
                    ApiError::busy("the server is holding as many request bodies as it may; retry")
                })?
                .map_err(ApiError::internal)?;
        self.report_reserved();
        Ok(Reservation { permit })
    }

    /// Adds `bytes` to `reservation` if the budget has room now; like a
    /// first reservation, it never grows past the whole budget.
    ///
    /// It never waits: a request that waits for more room while holding
    /// some can wait for requests that wait on it. Bodies growing side by
    /// side, each holding part of what it needs, took the whole budget
    /// between them and all waited out the body timeout. A request only
    /// waits for its first reservation, when it holds nothing; past that, a
    /// body that finds no room gets 503 `busy`, and its room goes to the
    /// others.
    fn grow(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), ApiError> {
        let held = reservation.permit.num_permits();
        let more = bytes.min(self.capacity.saturating_sub(held));
        if more > 0 {
            let extra = self
                .bytes
                .clone()
                .try_acquire_many_owned(more as u32)
                .map_err(|_| {
                    ApiError::busy(
                        "the server is holding as many request bodies as it may and this one \
                         outgrew its room; retry",
                    )
                })?;
            reservation.permit.merge(extra);
            self.report_reserved();
        }
        Ok(())
    }
}

/// The room a body of unknown length (chunked) reserves first; it reserves
/// more, doubling, as its bytes arrive.
const UNKNOWN_LENGTH_FIRST_ROOM: usize = 64 << 10;

/// How long a body of declared length may take to get going once it has
/// its room, before [`Pace`] holds it to its pace.
const PACE_GRACE: Duration = Duration::from_secs(5);

/// The pace a body of declared length must keep once it holds its room:
/// from [`PACE_GRACE`] after reading starts, a share of its bytes no
/// smaller than the share of the time left to the body timeout that has
/// passed. Its room is reserved whole before a byte is read (so big bodies
/// take turns rather than fail halfway), and a body that stalled held that
/// room until the body timeout: two stalled 64 MiB batches held the default
/// budget for a minute, and every other request waited. A body that keeps
/// the pace arrives whole in time; one that falls behind would not have.
#[derive(Debug, Clone, Copy)]
struct Pace {
    from: tokio::time::Instant,
    until: tokio::time::Instant,
    length: usize,
}

impl Pace {
    /// The pace of a `length`-byte body read from now until `until`.
    fn new(length: usize, until: tokio::time::Instant) -> Self {
        Self {
            from: tokio::time::Instant::now() + PACE_GRACE,
            until,
            length,
        }
    }

    /// When more than `received` bytes must have arrived.
    fn next_byte_due(&self, received: usize) -> tokio::time::Instant {
        if self.length == 0 || self.from >= self.until {
            return self.until;
        }
        let share = (received + 1).min(self.length) as f64 / self.length as f64;
        self.from + (self.until - self.from).mul_f64(share)
    }
}

/// Reads a request body of at most `limit` bytes, holding `factor` times
/// its size of the budget; see the [module docs](self).
///
/// A body of declared length reserves its room at once, is read into one
/// buffer of that size (so it is copied once), and must keep its [`Pace`].
/// One of unknown length
/// reserves room as its bytes arrive, so one that stalls holds room for no
/// more than twice what it sent: reserving its route's whole limit up front let two
/// stalled 64 MiB batches hold the default budget for the body timeout.
/// Growing never waits ([`RequestBudget::grow`]).
pub async fn read(
    budget: &RequestBudget,
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    factor: usize,
) -> Result<(Bytes, Reservation), ApiError> {
    let too_large = || {
        ApiError::too_large(
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + budget.timeout;
    let mut room = declared.map_or(UNKNOWN_LENGTH_FIRST_ROOM.min(limit), |length| {
        length as usize
    });
    let mut reservation = budget
        .reserve(room.saturating_mul(factor), deadline)
        .await?;
    let pace = declared.map(|length| Pace::new(length as usize, deadline));
    let mut bytes = BytesMut::with_capacity(room);
    loop {
        let due = pace.map_or(deadline, |pace| pace.next_byte_due(bytes.len()));
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) if due < deadline => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_too_slow",
                    format!(
                        "the request body fell behind: {} of {} bytes arrived, too few to \
                         arrive whole within {:?}",
                        bytes.len(),
                        declared.unwrap_or_default(),
                        budget.timeout
                    ),
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {:?}",
                        budget.timeout
                    ),
                ));
            }
            Ok(None) => return Ok((bytes.freeze(), reservation)),
            Ok(Some(frame)) => frame.map_err(|error| {
                ApiError::bad_request(
                    "bad_body",
                    format!("the request body could not be read: {error}"),
                )
            })?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let length = bytes.len() + data.len();
        if length > limit {
            return Err(too_large());
        }
        if length > room {
            let grown = length.max(room.saturating_mul(2)).min(limit);
            budget.grow(&mut reservation, (grown - room).saturating_mul(factor))?;
            room = grown;
        }
        bytes.extend_from_slice(&data);
    }
}

/// Request types that say how big their JSON body may be, and how it is
/// parsed.
pub trait BodyLimit: DeserializeOwned {
    /// Largest body, in bytes, under `limits`.
    fn max_body_bytes(limits: &ApiLimits) -> usize;

    /// Parses a body of this type: whole, by [`parse_json`], unless the type
    /// holds a list `limits` caps, which is refused as soon as it passes the
    /// cap (`SubmitBatch`, api/batch.rs).
    ///
    /// # Errors
    ///
    /// A 4xx naming what is wrong.
    fn parse(bytes: &[u8], _limits: &ApiLimits) -> Result<Self, ApiError> {
        parse_json(bytes)
    }
}

/// A JSON body parsed into `T` after [`read`], with the reservation that
/// must be held until the response is ready (bind it: `JsonBody(request,
/// _reserved)`).
#[derive(Debug)]
pub struct JsonBody<T>(pub T, pub Reservation);

impl<T: BodyLimit> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        if !is_json(&parts.headers) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let limit = T::max_body_bytes(&state.limits);
        let (bytes, reservation) = read(
            &state.budget,
            &parts.headers,
            body,
            limit,
            JSON_MEMORY_FACTOR,
        )
        .await?;
        Ok(JsonBody(T::parse(&bytes, &state.limits)?, reservation))
    }
}

/// Parses `bytes` into `T`; a mistake is a 400 naming where it is, in its
/// message (`jobs[3].fuel: invalid value…`) and its `field`. The message
/// never repeats a value of the body ([`without_values`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json_seed(bytes, std::marker::PhantomData::<T>)
}

/// [`parse_json`] through a seed, for a parse that needs more than the
/// bytes (a limit it applies while it reads, api/batch.rs).
pub fn parse_json_seed<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = seed.deserialize(serde_path_to_error::Deserializer::new(
        &mut deserializer,
        &mut track,
    ));
    let value = parsed.map_err(|inner| {
        let path = track.path().to_string();
        let code = if inner.is_data() {
            "invalid_field"
        } else {
            "invalid_json"
        };
        let message = without_values(&inner.to_string());
        if path == "." {
            return ApiError::bad_request(code, message);
        }
        ApiError {
            field: Some(path.clone()),
            ..ApiError::bad_request(code, format!("{path}: {message}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?;
    Ok(value)
}

/// serde's message for a value of the wrong type or range without the
/// value: `invalid type: string "sk_live…", expected a sequence` becomes
/// `invalid type: string, expected a sequence`. A value in the wrong place
/// may be a secret (a queue's `secrets`), and an error message reaches the
/// response, the client's terminal and logs. serde words these messages
/// `invalid type: {what was found}, expected {what}`; the found part is cut
/// to its kind, and the expected part, serde's own words, is kept, found
/// from the end since a string value may contain `, expected` itself.
pub fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(found) = message.strip_prefix(prefix)
            && let Some(at) = found.rfind(", expected ")
        {
            // `string "…"`, ``floating point `1.5` ``: the words before the value.
            let kind = found[..at]
                .split(['"', '`'])
                .next()
                .unwrap_or_default()
                .trim_end();
            return format!("{prefix}{kind}{}", &found[at..]);
        }
    }
    message.to_owned()
}

/// Whether the request says its body is JSON (`application/json` or
/// `application/*+json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four chunked bodies of 1 MiB, their frames sent in turn so they grow
    /// together, under a budget that holds two: growing while holding room
    /// left all four waiting on each other until the body timeout.
    #[tokio::test]
    async fn bodies_growing_side_by_side_never_wait_on_each_other() {
        const FRAME: usize = 64 << 10;
        const BODY: usize = 16 * FRAME;
        let budget = RequestBudget::new(2 * BODY, Duration::from_secs(20));
        let headers = HeaderMap::new();
        let (senders, bodies): (Vec<_>, Vec<_>) = (0..4)
            .map(|_| {
                let (sender, frames) = tokio::sync::mpsc::channel::<Bytes>(1);
                let body =
                    Body::from_stream(futures::stream::unfold(frames, |mut frames| async move {
                        let frame = frames.recv().await?;
                        Some((Ok::<_, std::io::Error>(frame), frames))
                    }));
                (sender, body)
            })
            .unzip();
        let reads = bodies
            .into_iter()
            .map(|body| read(&budget, &headers, body, BODY, 1));
        let feed = async move {
            for _ in 0..BODY / FRAME {
                for sender in &senders {
                    // A body refused drops its end: nothing to send it.
                    let _ = sender.send(Bytes::from(vec![b' '; FRAME])).await;
                }
            }
        };
        let (results, ()) = tokio::join!(futures::future::join_all(reads), feed);

        let mut read_whole = 0;
        for result in results {
            match result {
                Ok((bytes, _reservation)) => {
                    assert_eq!(bytes.len(), BODY);
                    read_whole += 1;
                }
                Err(error) => assert_eq!(
                    (error.status, error.code),
                    (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                    "{}",
                    error.message
                ),
            }
        }
        assert!(read_whole >= 1, "every body was refused");
        assert_eq!(budget.reserved(), 0, "every reservation was returned");
    }

    #[test]
    fn messages_keep_what_was_expected_and_lose_what_was_sent() {
        assert_eq!(
            without_values(
                r#"invalid type: string "sk, expected x", expected a sequence at line 1 column 9"#
            ),
            "invalid type: string, expected a sequence at line 1 column 9"
        );
        assert_eq!(
            without_values("invalid value: integer `-1`, expected u64"),
            "invalid value: integer, expected u64"
        );
        assert_eq!(
            without_values("invalid type: floating point `1.5`, expected u32"),
            "invalid type: floating point, expected u32"
        );
        assert_eq!(
            without_values("invalid type: map, expected a string"),
            "invalid type: map, expected a string"
        );
        assert_eq!(
            without_values("missing field `value`"),
            "missing field `value`"
        );
    }
}
