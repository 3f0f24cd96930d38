//! Filter, project, sort and limit a list of JSON records.
//!
//! Input:
//!
//! ```json
//! {
//!   "records": [{"name": "Ada", "age": 36, "address": {"city": "London"}}, ...],
//!   "where": [{"field": "age", "op": "gte", "value": 30}],
//!   "select": ["name", "address.city"],
//!   "sort_by": "age", "descending": true,
//!   "limit": 10
//! }
//! ```
//!
//! Every part but `records` is optional. Fields are dot-separated paths.
//! Operators: `eq`, `ne`, `lt`, `lte`, `gt`, `gte` (numbers compare as
//! numbers, strings as strings, anything else never matches the ordering
//! operators), `contains` (substring, or array element), `exists`.
//! `sort_by` puts numbers first, then strings, then booleans, each kind in
//! its own order, and records without the field (or with an object, array
//! or null there) last, as they came.
//! Output: `{"matched": n, "records": [...]}`, where `matched` counts records
//! before `limit`.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use taskflow_sdk::{TaskError, task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    records: Vec<Value>,
    #[serde(default, rename = "where")]
    conditions: Vec<Condition>,
    #[serde(default)]
    select: Option<Vec<String>>,
    #[serde(default)]
    sort_by: Option<String>,
    #[serde(default)]
    descending: bool,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Condition {
    field: String,
    op: Op,
    #[serde(default)]
    value: Value,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    Contains,
    Exists,
}

#[derive(Debug, PartialEq, Serialize)]
struct Output {
    matched: usize,
    records: Vec<Value>,
}

#[task]
fn jsonpipe(pipeline: Pipeline) -> Result<Output, TaskError> {
    let total = pipeline.records.len();
    let mut records: Vec<Value> = pipeline
        .records
        .into_iter()
        .filter(|record| pipeline.conditions.iter().all(|c| matches(record, c)))
        .collect();
    let matched = records.len();
    if let Some(field) = &pipeline.sort_by {
        records.sort_by(|a, b| sort_order(lookup(a, field), lookup(b, field), pipeline.descending));
    }
    if let Some(limit) = pipeline.limit {
        records.truncate(limit);
    }
    if let Some(fields) = &pipeline.select {
        records = records
            .iter()
            .map(|record| project(record, fields))
            .collect();
    }
    taskflow_sdk::log::info!("{matched} of {total} records matched");
    Ok(Output { matched, records })
}

fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(record, |value, key| value.get(key))
}

fn compare(left: Option<&Value>, right: Option<&Value>) -> Option<Ordering> {
    match (left?, right?) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// A total order for sorting, as `sort_by` needs: numbers, then strings,
/// then booleans, each in its own order (reversed when `descending`), then
/// every record without the field or with another kind of value, in the
/// order they came.
fn sort_order(left: Option<&Value>, right: Option<&Value>, descending: bool) -> Ordering {
    fn kind(value: Option<&Value>) -> u8 {
        match value {
            Some(Value::Number(_)) => 0,
            Some(Value::String(_)) => 1,
            Some(Value::Bool(_)) => 2,
            _ => 3,
        }
    }
    let by_value = match (left, right) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => {
            let as_f64 = |n: &serde_json::Number| n.as_f64().unwrap_or(f64::NAN);
            as_f64(a).total_cmp(&as_f64(b))
        }
        _ => compare(left, right).unwrap_or(Ordering::Equal),
    };
    let by_value = if descending {
        by_value.reverse()
    } else {
        by_value
    };
    kind(left).cmp(&kind(right)).then(by_value)
}

fn matches(record: &Value, condition: &Condition) -> bool {
    let field = lookup(record, &condition.field);
    let ordering = || compare(field, Some(&condition.value));
    match condition.op {
        Op::Exists => field.is_some(),
        Op::Eq => field == Some(&condition.value),
        Op::Ne => field != Some(&condition.value),
        Op::Lt => ordering() == Some(Ordering::Less),
        Op::Lte => matches!(ordering(), Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => ordering() == Some(Ordering::Greater),
        Op::Gte => matches!(ordering(), Some(Ordering::Greater | Ordering::Equal)),
        Op::Contains => match (field, &condition.value) {
            (Some(Value::String(text)), Value::String(needle)) => text.contains(needle.as_str()),
            (Some(Value::Array(items)), needle) => items.contains(needle),
            _ => false,
        },
    }
}

/// A record holding only `fields`, keyed by their full paths.
fn project(record: &Value, fields: &[String]) -> Value {
    let mut projected = Map::new();
    for field in fields {
        if let Some(value) = lookup(record, field) {
            projected.insert(field.clone(), value.clone());
        }
    }
    Value::Object(projected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(pipeline: Value) -> Output {
        jsonpipe(serde_json::from_value(pipeline).unwrap()).unwrap()
    }

    #[test]
    fn filters_sorts_limits_and_projects() {
        let output = run(json!({
            "records": [
                {"name": "Ada", "age": 36, "address": {"city": "London"}},
                {"name": "Alan", "age": 41, "address": {"city": "Wilmslow"}},
                {"name": "Grace", "age": 85, "address": {"city": "Arlington"}},
                {"name": "Linus", "age": 21}
            ],
            "where": [{"field": "age", "op": "gte", "value": 30}, {"field": "address.city", "op": "exists"}],
            "select": ["name", "address.city"],
            "sort_by": "age", "descending": true,
            "limit": 2
        }));
        assert_eq!(output.matched, 3);
        assert_eq!(
            output.records,
            [
                json!({"name": "Grace", "address.city": "Arlington"}),
                json!({"name": "Alan", "address.city": "Wilmslow"})
            ]
        );
    }

    #[test]
    fn contains_works_on_strings_and_arrays_and_mismatched_types_never_order() {
        let output = run(json!({
            "records": [{"tags": ["a", "b"], "s": "hello"}, {"tags": ["c"], "s": 5}],
            "where": [{"field": "tags", "op": "contains", "value": "b"}]
        }));
        assert_eq!(output.matched, 1);
        let output = run(json!({
            "records": [{"s": "hello"}, {"s": 5}],
            "where": [{"field": "s", "op": "gt", "value": 1}]
        }));
        assert_eq!(output.records, [json!({"s": 5})]);
    }

    /// Records without the field, or with a value of another kind, are
    /// ordinary input: sorting must neither panic (Rust's sort may, on a
    /// comparison that is not a total order) nor scramble the others.
    #[test]
    fn records_missing_the_sort_field_go_last_and_the_rest_are_in_order() {
        let ages = [
            Some(45),
            Some(44),
            Some(37),
            Some(69),
            Some(88),
            Some(22),
            Some(28),
            Some(18),
            Some(2),
            Some(77),
            Some(58),
            None,
            Some(26),
            None,
            None,
            Some(72),
            None,
            Some(9),
            Some(8),
            Some(46),
            Some(59),
        ];
        let records: Vec<Value> = ages
            .iter()
            .map(|age| age.map_or_else(|| json!({}), |age| json!({"age": age})))
            .collect();
        for descending in [false, true] {
            let mut records = records.clone();
            records.push(json!({"age": "unknown"}));
            let output =
                run(json!({"records": records, "sort_by": "age", "descending": descending}));
            let sorted: Vec<Option<i64>> = output
                .records
                .iter()
                .map(|record| record["age"].as_i64())
                .collect();
            let mut expected: Vec<i64> = ages.iter().flatten().copied().collect();
            expected.sort_unstable();
            if descending {
                expected.reverse();
            }
            assert_eq!(
                sorted[..expected.len()],
                expected.iter().map(|&a| Some(a)).collect::<Vec<_>>()[..]
            );
            assert_eq!(
                output.records[expected.len()],
                json!({"age": "unknown"}),
                "strings after numbers"
            );
            assert!(
                output.records[expected.len() + 1..]
                    .iter()
                    .all(|r| r == &json!({}))
            );
        }
    }

    #[test]
    fn an_unknown_operator_is_rejected_as_bad_input() {
        let error = taskflow_sdk::__private::decode_json::<Pipeline>(
            br#"{"records": [], "where": [{"field": "a", "op": "like"}]}"#.to_vec(),
        )
        .err()
        .unwrap();
        assert!(!error.is_retryable());
        assert!(error.message().contains("like"));
    }
}
