//! The start of a job id, as someone reads it off a page or a log: the
//! console's "id prefix" filter.

use uuid::Uuid;

use super::FieldError;

/// The ids that begin with some hex digits, as the range `first..=last`
/// (ids compare as 128-bit numbers, so a prefix is a contiguous range that
/// the primary key serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPrefix {
    /// The smallest id with the prefix.
    pub first: Uuid,
    /// The largest.
    pub last: Uuid,
}

impl IdPrefix {
    /// Reads 1 to 32 hex digits, dashes ignored (`3fa8`, `3fa85f64-57`).
    ///
    /// # Errors
    ///
    /// If `text` holds no digit, more than 32, or anything but hex digits
    /// and dashes.
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldError> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.is_empty() || digits.len() > 32 || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(FieldError::invalid(
                field,
                "must be the start of a job id: 1 to 32 hex digits, dashes allowed",
            ));
        }
        let padded = |fill: char| {
            let mut hex = digits.clone();
            hex.extend(std::iter::repeat_n(fill, 32 - digits.len()));
            u128::from_str_radix(&hex, 16).map(Uuid::from_u128)
        };
        match (padded('0'), padded('f')) {
            (Ok(first), Ok(last)) => Ok(Self { first, last }),
            _ => Err(FieldError::invalid(field, "must be hex digits")),
        }
    }

    /// Whether `id` begins with the prefix.
    pub fn matches(&self, id: Uuid) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_the_range_of_ids_that_begin_with_it() {
        let prefix = IdPrefix::parse("id", "3FA8-5f").unwrap();
        assert_eq!(
            prefix.first,
            Uuid::parse_str("3fa85f00-0000-0000-0000-000000000000").unwrap()
        );
        assert_eq!(
            prefix.last,
            Uuid::parse_str("3fa85fff-ffff-ffff-ffff-ffffffffffff").unwrap()
        );
        assert!(prefix.matches(Uuid::parse_str("3fa85f64-5717-4562-b3fc-2c963f66afa6").unwrap()));
        assert!(!prefix.matches(Uuid::parse_str("3fa86000-0000-0000-0000-000000000000").unwrap()));
        let whole = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
        let exact = IdPrefix::parse("id", whole).unwrap();
        assert_eq!(
            (exact.first, exact.last),
            (whole.parse().unwrap(), whole.parse().unwrap())
        );
    }

    #[test]
    fn refuses_what_is_not_the_start_of_an_id() {
        for text in ["", "-", "xyz", "3fa8 5f", &"a".repeat(33), "+1"] {
            let error = IdPrefix::parse("id_prefix", text).unwrap_err();
            assert_eq!(error.field, "id_prefix", "{text:?}");
        }
    }
}
