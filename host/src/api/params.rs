//! Path and query parameters whose mistakes are [`ApiError`]s naming their
//! parameter in `field`, as a body's mistakes name theirs
//! ([`body::parse_json`](super::body::parse_json)). axum's own extractors
//! say which parameter only in their message, if at all.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, RawPathParams};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use super::body::without_values;

/// Path parameters (`PathParams(id): PathParams<Uuid>`).
#[derive(Debug)]
pub struct PathParams<T>(pub T);

/// A query string (`QueryParams(query): QueryParams<JobQuery>`).
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let rejection = match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => return Ok(Self(params)),
            Err(rejection) => rejection,
        };
        // The route's parameter names, in order: a tuple's mistake is
        // reported by index, a single value's by none.
        let names: Vec<String> = RawPathParams::from_request_parts(parts, state)
            .await
            .map(|raw| raw.iter().map(|(name, _)| name.to_owned()).collect())
            .unwrap_or_default();
        let answer = ApiError::bad_request("invalid_path", rejection.body_text());
        Err(match blamed_parameter(&rejection, &names) {
            Some(name) => answer.for_field(name),
            None => answer,
        })
    }
}

/// The path parameter `rejection` is about, of a route whose parameters
/// are `names`.
fn blamed_parameter(rejection: &PathRejection, names: &[String]) -> Option<String> {
    let PathRejection::FailedToDeserializePathParams(error) = rejection else {
        return None;
    };
    match error.kind() {
        ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::DeserializeError { key, .. }
        | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
        ErrorKind::ParseErrorAtIndex { index, .. } => names.get(*index).cloned(),
        _ => match names {
            [only] => Some(only.clone()),
            _ => None,
        },
    }
}

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(|error| {
                let parameter = error.path().to_string();
                let message = without_values(&error.inner().to_string());
                ApiError::bad_request("invalid_query", format!("{parameter}: {message}"))
                    .for_field(parameter)
            })
    }
}
