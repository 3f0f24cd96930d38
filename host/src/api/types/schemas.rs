//! The OpenAPI schemas of the domain types the API's bodies carry as they
//! are. The domain (`job/`, `queue/`) derives serde for its JSON form but
//! knows nothing of the API's contract, so the contract describes that form
//! here: enums from their `ALL` list and `as_str`, which their serde names
//! follow; the two written limits field by field, checked against their
//! serde form by the tests below.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AdditionalProperties, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::job::{AttemptOutcome, JobState};
use crate::queue::{RateSpec, RetentionSpec};

/// A string enum of `names`.
fn string_enum(description: &str, names: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .into()
}

impl PartialSchema for JobState {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "Where a job is in its lifecycle (docs/data-model.md, \"States\").",
            JobState::ALL.map(JobState::as_str),
        )
    }
}

impl ToSchema for JobState {}

impl PartialSchema for AttemptOutcome {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "How one attempt ended.",
            AttemptOutcome::ALL.map(AttemptOutcome::as_str),
        )
    }
}

impl ToSchema for AttemptOutcome {}

/// A property of `schema_type` described by `description`.
fn property(schema_type: impl Into<SchemaType>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(schema_type)
        .description(Some(description))
}

/// An object that refuses unknown fields, as the written limits do
/// (`deny_unknown_fields`).
fn closed_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

impl PartialSchema for RateSpec {
    fn schema() -> RefOr<Schema> {
        let limit = property(
            Type::Integer,
            "Starts per window, 1 to 2147483647 (what PostgreSQL's `integer` holds).",
        )
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(1));
        let period = property(
            Type::String,
            "The window: `\"1s\"`, `\"1m\"`, `\"1h 30m\"`; at least 1 s.",
        );
        closed_object("`rate` of a queue: at most `limit` starts in any window of `period`.")
            .property("limit", limit)
            .required("limit")
            .property("period", period)
            .required("period")
            .into()
    }
}

impl ToSchema for RateSpec {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RateBody")
    }
}

impl PartialSchema for RetentionSpec {
    fn schema() -> RefOr<Schema> {
        let keep = |description| {
            property(
                [Type::String, Type::Null]
                    .into_iter()
                    .collect::<SchemaType>(),
                description,
            )
        };
        closed_object(
            "`retention` of a queue: per finished state, how long its jobs are kept after they \
             finish: a duration (`\"7d\"`, `\"36h\"`) or `\"forever\"`. A state left out takes \
             the default: succeeded 7 days, dead and cancelled 30.",
        )
        .property("succeeded", keep("Succeeded jobs."))
        .property("dead", keep("Dead jobs."))
        .property("cancelled", keep("Cancelled jobs."))
        .into()
    }
}

impl ToSchema for RetentionSpec {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RetentionBody")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's object, which each schema here is.
    fn object(schema: RefOr<Schema>) -> utoipa::openapi::schema::Object {
        match schema {
            RefOr::T(Schema::Object(object)) => object,
            _ => panic!("not an object schema"),
        }
    }

    /// The properties `schema` lists, sorted.
    fn property_names(schema: RefOr<Schema>) -> Vec<String> {
        let mut names: Vec<String> = object(schema).properties.into_keys().collect();
        names.sort();
        names
    }

    /// The keys of `value`'s JSON form, sorted.
    fn json_keys(value: &impl serde::Serialize) -> Vec<String> {
        let serde_json::Value::Object(map) = serde_json::to_value(value).unwrap() else {
            panic!("not a JSON object");
        };
        let mut keys: Vec<String> = map.into_iter().map(|(key, _)| key).collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_written_limits_schemas_list_exactly_their_serde_fields() {
        let rate = RateSpec {
            limit: 20,
            period: "1s".into(),
        };
        assert_eq!(property_names(RateSpec::schema()), json_keys(&rate));
        let retention = RetentionSpec {
            succeeded: Some("7d".into()),
            dead: Some("30d".into()),
            cancelled: Some("forever".into()),
        };
        assert_eq!(
            property_names(RetentionSpec::schema()),
            json_keys(&retention)
        );
    }

    #[test]
    fn the_enum_schemas_list_exactly_their_serde_names() {
        let listed = |schema| object(schema).enum_values.unwrap();
        let states: Vec<_> = JobState::ALL.iter().map(|s| serde_json::json!(s)).collect();
        assert_eq!(listed(JobState::schema()), states);
        let outcomes: Vec<_> = AttemptOutcome::ALL
            .iter()
            .map(|o| serde_json::json!(o))
            .collect();
        assert_eq!(listed(AttemptOutcome::schema()), outcomes);
    }
}
