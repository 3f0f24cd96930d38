//! What names a queue and a module: the rules every entry point checks
//! (submissions, queries, worker configuration).

use super::field_error::{FieldError, Problem};

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

/// Longest module name, in bytes.
pub const MAX_MODULE_NAME_BYTES: usize = 128;

/// Most names that may point at one module at once. What shows a module's
/// names (`GET /v1/modules/{hash}`, the console's pages, a refused delete)
/// reads them all, so this bounds that read; a move or rollback that would
/// pass it is refused.
pub const MAX_NAMES_PER_MODULE: usize = 100;

/// Whether `name` is a module name: `[a-z0-9][a-z0-9._-]*`, optionally
/// followed by `:` and a tag of `[a-z0-9._-]+` (`resize`, `resize:stable`),
/// at most [`MAX_MODULE_NAME_BYTES`], and not itself a hash (a reference
/// that looks like one is one).
pub fn is_valid_module_name(name: &str) -> bool {
    let part = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    };
    let (base, tag) = match name.split_once(':') {
        Some((base, tag)) => (base, Some(tag)),
        None => (name, None),
    };
    name.len() <= MAX_MODULE_NAME_BYTES
        && part(base)
        && base.as_bytes()[0].is_ascii_alphanumeric()
        && tag.is_none_or(part)
        && !is_valid_module_hash(name)
}

/// Rejects `name` in `field` unless it is a module name.
///
/// # Errors
///
/// If it is not ([`is_valid_module_name`]).
pub fn check_module_name(field: &str, name: &str) -> Result<(), FieldError> {
    if is_valid_module_name(name) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!(
                "must be a name such as resize or resize:stable: [a-z0-9][a-z0-9._-]*, \
                 optionally :tag of [a-z0-9._-]+, at most {MAX_MODULE_NAME_BYTES} bytes"
            ),
        ))
    }
}

/// How a submission names its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleRef<'a> {
    /// By hash: that module.
    Hash(&'a str),
    /// By name: the module the name points at when the job is submitted.
    Name(&'a str),
}

impl<'a> ModuleRef<'a> {
    /// Reads a reference, a hash first.
    ///
    /// # Errors
    ///
    /// If `text` is neither a hash nor a name.
    pub fn parse(field: &str, text: &'a str) -> Result<Self, FieldError> {
        if is_valid_module_hash(text) {
            Ok(Self::Hash(text))
        } else if is_valid_module_name(text) {
            Ok(Self::Name(text))
        } else {
            Err(FieldError {
                field: field.to_owned(),
                problem: Problem::NotAModuleHash,
                message: "must be a module's SHA-256 (64 lowercase hex digits) or a module \
                          name such as resize:stable"
                    .to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_grammar_and_are_never_hashes() {
        for good in [
            "resize",
            "resize:stable",
            "a",
            "0.9_x-y:v1.2",
            "img.resize:2026-12",
        ] {
            assert!(is_valid_module_name(good), "{good}");
        }
        let hash = "a".repeat(64);
        for bad in [
            "",
            "Resize",
            ":stable",
            "resize:",
            "resize:a:b",
            "-resize",
            ".x",
            "re size",
            "résumé",
            &hash,
            &"a".repeat(129),
        ] {
            assert!(!is_valid_module_name(bad), "{bad}");
        }
        assert_eq!(
            ModuleRef::parse("m", &hash).unwrap(),
            ModuleRef::Hash(&hash)
        );
        assert_eq!(
            ModuleRef::parse("m", "resize:stable").unwrap(),
            ModuleRef::Name("resize:stable")
        );
        assert_eq!(ModuleRef::parse("m", "Nope").unwrap_err().field, "m");
    }
}
