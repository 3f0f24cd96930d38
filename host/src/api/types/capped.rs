//! Lists and maps of a request body read with their bound applied while
//! they are read: a request over the bound is refused at its first entry
//! past it, before the rest is built. A 2 MiB body of empty strings is
//! about 700,000 entries, some 36 MiB of `Vec<String>` while it grows,
//! against the 8 MiB the body reserved (`api/body.rs`); a bound checked
//! only after parsing comes too late. Used through `deserialize_with`, so
//! the request types keep plain `Vec`s and `BTreeMap`s, and an error names
//! the field like any other parse error (`allowed_hosts: at most 64
//! entries`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A list of at most `MAX` entries.
struct List<T, const MAX: usize>(Vec<T>);

/// A map of at most `MAX` entries, by string key.
struct Map<V, const MAX: usize>(BTreeMap<String, V>);

fn over<E: de::Error>(max: usize) -> E {
    E::custom(format!("at most {max} entries"))
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for List<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T, const MAX: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for ListVisitor<T, MAX> {
            type Value = List<T, MAX>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                write!(formatter, "a list of at most {MAX} entries")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    if entries.len() == MAX {
                        return Err(over(MAX));
                    }
                    entries.push(entry);
                }
                Ok(List(entries))
            }
        }

        deserializer.deserialize_seq(ListVisitor(PhantomData))
    }
}

impl<'de, V: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Map<V, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V, const MAX: usize>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>, const MAX: usize> Visitor<'de> for MapVisitor<V, MAX> {
            type Value = Map<V, MAX>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                write!(formatter, "an object of at most {MAX} entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = BTreeMap::new();
                let mut read = 0;
                while let Some((key, value)) = map.next_entry()? {
                    if read == MAX {
                        return Err(over(MAX));
                    }
                    read += 1;
                    entries.insert(key, value);
                }
                Ok(Map(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A list of at most `MAX` entries.
pub(super) fn list<'de, const MAX: usize, T, D>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    List::<T, MAX>::deserialize(deserializer).map(|list| list.0)
}

/// [`list`], or `null`.
pub(super) fn optional_list<'de, const MAX: usize, T, D>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<List<T, MAX>>::deserialize(deserializer).map(|list| list.map(|list| list.0))
}

/// A map of at most `MAX` entries.
pub(super) fn map<'de, const MAX: usize, V, D>(
    deserializer: D,
) -> Result<BTreeMap<String, V>, D::Error>
where
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Map::<V, MAX>::deserialize(deserializer).map(|map| map.0)
}

/// [`map`], or `null`.
pub(super) fn optional_map<'de, const MAX: usize, V, D>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<Map<V, MAX>>::deserialize(deserializer).map(|map| map.map(|map| map.0))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::list::<2, _, _>")]
        hosts: Vec<String>,
        #[serde(default, deserialize_with = "super::optional_map::<2, _, _>")]
        config: Option<std::collections::BTreeMap<String, u8>>,
    }

    #[test]
    fn entries_up_to_the_bound_are_read_and_one_more_is_refused_where_it_is() {
        let body: Body =
            serde_json::from_str(r#"{"hosts": ["a", "b"], "config": {"x": 1, "y": 2}}"#).unwrap();
        assert_eq!(body.hosts, ["a", "b"]);
        assert_eq!(body.config.unwrap().len(), 2);
        let body: Body = serde_json::from_str(r#"{"config": null}"#).unwrap();
        assert!(body.hosts.is_empty() && body.config.is_none());

        let error = serde_json::from_str::<Body>(r#"{"hosts": ["a", "b", "c", 7]}"#).unwrap_err();
        // Refused at the third entry: the fourth, not a string, is never read.
        assert!(
            error.to_string().starts_with("at most 2 entries"),
            "{error}"
        );
        let error =
            serde_json::from_str::<Body>(r#"{"config": {"x": 1, "y": 2, "z": 3}}"#).unwrap_err();
        assert!(
            error.to_string().starts_with("at most 2 entries"),
            "{error}"
        );
    }
}
