//! What names a queue and a module: the rules every entry point checks
//! (submissions, queries, worker configuration).

use super::spec::{FieldError, Problem};

/// Whether `name` is a valid queue name: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
/// Queue names appear in Redis channel names and metrics labels, so they are
/// kept to a safe alphabet.
pub fn is_valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Rejects `name` in `field` unless it is a valid queue name.
///
/// # Errors
///
/// If it is not ([`is_valid_queue_name`]).
pub fn check_queue_name(field: &str, name: &str) -> Result<(), FieldError> {
    if is_valid_queue_name(name) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            "must be 1-64 characters of a-z, 0-9, _ and -",
        ))
    }
}

/// Whether `hash` is a module hash: 64 lowercase hex digits.
pub fn is_valid_module_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Rejects `hash` in `field` unless it is a module hash.
///
/// # Errors
///
/// If it is not ([`is_valid_module_hash`]).
pub fn check_module_hash(field: &str, hash: &str) -> Result<(), FieldError> {
    if is_valid_module_hash(hash) {
        Ok(())
    } else {
        Err(FieldError {
            field: field.to_owned(),
            problem: Problem::NotAModuleHash,
            message: "must be a module's SHA-256: 64 lowercase hex digits".to_owned(),
        })
    }
}
