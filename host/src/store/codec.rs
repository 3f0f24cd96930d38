//! How the [`job`](crate::job) domain's types are stored, so they need know
//! nothing of SQL: its enums as PostgreSQL's `job_state` and
//! `attempt_outcome` enums (migrations/), sent and read as their names; a
//! [`TraceContext`] as its `traceparent` text.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::job::{AttemptOutcome, JobState, TraceContext};

/// Maps a domain enum with `as_str` and `FromStr` to the PostgreSQL enum
/// `$sql_type`.
macro_rules! stored_as_enum {
    ($domain:ty, $sql_type:literal, $array_type:literal) => {
        impl Type<Postgres> for $domain {
            fn type_info() -> PgTypeInfo {
                PgTypeInfo::with_name($sql_type)
            }
        }

        impl PgHasArrayType for $domain {
            fn array_type_info() -> PgTypeInfo {
                PgTypeInfo::with_name($array_type)
            }
        }

        impl Encode<'_, Postgres> for $domain {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $domain {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
            }
        }
    };
}

// Each type here is also looked up up front on connections through a
// transaction-mode pooler (`prime_type_caches` in store/pool.rs, ADR 007);
// a new one must be added there.
stored_as_enum!(JobState, "job_state", "_job_state");
stored_as_enum!(AttemptOutcome, "attempt_outcome", "_attempt_outcome");

impl Type<Postgres> for TraceContext {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for TraceContext {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for TraceContext {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.to_string().as_str(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for TraceContext {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        Ok(TraceContext::parse_traceparent(text)
            .ok_or_else(|| format!("not a traceparent: {text:?}"))?)
    }
}
