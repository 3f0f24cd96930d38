//! JSON carried as text ([`JsonText`]): checked, never parsed into a tree.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// JSON kept as text, never parsed into a tree: a job's input as the client
/// sent it (the server checks its size and compacts it in one streaming
/// pass, [`JobSpec::resolve`]), and a job's input and output as the API
/// shows them ([`render_payload`]). A tree of a 1 MiB array of numbers
/// takes tens of megabytes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = serde_json::Value, as = JsonInput)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, owned.
    pub fn into_text(self) -> String {
        Box::<str>::from(self.0).into_string()
    }

    /// Parses JSON text.
    ///
    /// # Errors
    ///
    /// If `text` is not one JSON value.
    pub fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text).map(Self)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(&value).expect("a JSON value serializes"))
    }
}

impl JsonText {
    /// The value as a tree, for a client that wants to look inside it.
    ///
    /// # Errors
    ///
    /// If the value nests deeper than a tree may (serde_json's recursion
    /// limit).
    pub fn value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.text())
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl std::fmt::Display for JsonText {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.text())
    }
}

/// Bytes as JSON when they are JSON a client can parse, as base64
/// otherwise; checked without building a tree ([`JsonText`], [`StrictJson`]).
pub fn render_payload(bytes: &[u8]) -> (Option<JsonText>, Option<String>) {
    let parsed = serde_json::from_slice::<StrictJson>(bytes)
        .and_then(|_| serde_json::from_slice::<Box<serde_json::value::RawValue>>(bytes));
    match parsed {
        Ok(text) => (Some(JsonText(text)), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

/// One JSON value checked as strictly as parsing it into a tree would check
/// it (nesting at most 128 deep, string escapes whole, numbers within
/// `f64`), building nothing. A `RawValue` alone checks less: a guest's
/// output nested 100,000 deep, or holding `1e400`, would reach clients as
/// JSON their parsers refuse, where it used to come as base64.
struct StrictJson;

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictJson)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson {
    type Value = StrictJson;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut list: A) -> Result<Self, A::Error> {
        while list.next_element::<StrictJson>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<StrictJson, StrictJson>()?.is_some() {}
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::render_payload;

    #[test]
    fn json_a_client_can_parse_is_shown_as_it_is_stored_and_anything_else_as_base64() {
        let shown = |bytes: &[u8]| render_payload(bytes).0.map(|text| text.text().to_owned());
        assert_eq!(
            shown(br#"{"b": 1, "a": [2]}"#).as_deref(),
            Some(r#"{"b": 1, "a": [2]}"#)
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for refused in [deep.as_bytes(), b"1e400", br#""\ud800""#, b"{} {}", b"\xff"] {
            let (json, base64) = render_payload(refused);
            assert!(json.is_none() && base64.is_some(), "{refused:?}");
        }
    }
}
