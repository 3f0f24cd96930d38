//! Unit tests of `spec.rs`, in a file of their own to keep that one short.

use super::*;

fn limits() -> SubmissionLimits {
    SubmissionLimits {
        max_input_bytes: 16,
        default_max_attempts: 3,
        max_attempts_limit: 10,
        default_timeout: Duration::from_secs(1),
        max_timeout: Duration::from_secs(10),
        default_fuel: 100,
        max_fuel: 1000,
        default_memory_limit_bytes: 1 << 20,
        max_memory_limit_bytes: 1 << 24,
    }
}

fn spec(input: JobInput) -> JobSpec {
    JobSpec {
        module: "a".repeat(64),
        input,
        max_attempts: None,
        timeout_ms: None,
        fuel: None,
        memory_limit_bytes: None,
        queue: None,
        priority: None,
        run_at: None,
        idempotency_key: None,
        concurrency_key: None,
    }
}

#[test]
fn defaults_fill_what_the_client_left_out() {
    let job = spec(JobInput::Json("{ \"a\" : 1 }".into()))
        .resolve(&limits(), &ModuleNames::new())
        .unwrap();
    assert_eq!(job.input, br#"{"a":1}"#);
    assert_eq!(job.queue, DEFAULT_QUEUE);
    assert_eq!((job.max_attempts, job.timeout_ms, job.fuel), (3, 1000, 100));
    assert_eq!(job.memory_limit_bytes, 1 << 20);
    assert_eq!(job.request_fingerprint, None);
}

#[test]
fn each_field_out_of_range_is_named() {
    let cases: Vec<(JobSpec, &str, Problem)> = vec![
        (
            JobSpec {
                module: "A".repeat(64),
                ..spec(JobInput::Json("1".into()))
            },
            "module",
            Problem::NotAModuleHash,
        ),
        (
            spec(JobInput::Json("\"0123456789abcdef\"".into())),
            "input",
            Problem::InputTooLarge,
        ),
        (
            spec(JobInput::Base64("A".repeat(40))),
            "input_base64",
            Problem::InputTooLarge,
        ),
        (
            spec(JobInput::Json("1 2".into())),
            "input",
            Problem::Invalid,
        ),
        (
            spec(JobInput::Base64("***".into())),
            "input_base64",
            Problem::Invalid,
        ),
        (
            JobSpec {
                max_attempts: Some(0),
                ..spec(JobInput::Json("1".into()))
            },
            "max_attempts",
            Problem::Invalid,
        ),
        (
            JobSpec {
                timeout_ms: Some(10_001),
                ..spec(JobInput::Json("1".into()))
            },
            "timeout_ms",
            Problem::Invalid,
        ),
        (
            JobSpec {
                fuel: Some(0),
                ..spec(JobInput::Json("1".into()))
            },
            "fuel",
            Problem::Invalid,
        ),
        (
            JobSpec {
                memory_limit_bytes: Some(1),
                ..spec(JobInput::Json("1".into()))
            },
            "memory_limit_bytes",
            Problem::Invalid,
        ),
        (
            JobSpec {
                queue: Some("Q".into()),
                ..spec(JobInput::Json("1".into()))
            },
            "queue",
            Problem::Invalid,
        ),
        (
            JobSpec {
                idempotency_key: Some("a\0b".into()),
                ..spec(JobInput::Json("1".into()))
            },
            "idempotency_key",
            Problem::Invalid,
        ),
        (
            JobSpec {
                concurrency_key: Some(String::new()),
                ..spec(JobInput::Json("1".into()))
            },
            "concurrency_key",
            Problem::Invalid,
        ),
        (
            JobSpec {
                concurrency_key: Some("k".repeat(MAX_CONCURRENCY_KEY_BYTES + 1)),
                ..spec(JobInput::Json("1".into()))
            },
            "concurrency_key",
            Problem::Invalid,
        ),
        (
            JobSpec {
                run_at: DateTime::from_timestamp(-62_135_596_801, 0),
                ..spec(JobInput::Json("1".into()))
            },
            "run_at",
            Problem::Invalid,
        ),
    ];
    for (spec, field, problem) in cases {
        let error = spec
            .clone()
            .resolve(&limits(), &ModuleNames::new())
            .unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.problem),
            (field, problem),
            "{spec:?}"
        );
    }
}

#[test]
fn an_idempotent_submission_is_fingerprinted_by_what_it_asks_for() {
    let keyed = |input: &str| {
        JobSpec {
            idempotency_key: Some("k".into()),
            ..spec(JobInput::Json(input.into()))
        }
        .resolve(&limits(), &ModuleNames::new())
        .unwrap()
        .request_fingerprint
    };
    assert_eq!(
        keyed("1"),
        keyed(" 1 "),
        "whitespace is not part of the request"
    );
    assert_ne!(keyed("1"), keyed("2"));
}

/// Each optional field is tagged in the fingerprint: before, a `run_at`
/// (8 bytes, untagged) could read as a concurrency key (a tag byte, then
/// the key) and a different request with the same key returned the first
/// one's job.
#[test]
fn no_run_at_fingerprints_as_a_concurrency_key() {
    let run_at_micros = i64::from_be_bytes(*b"\x01abcdefg");
    let scheduled = JobSpec {
        idempotency_key: Some("k".into()),
        run_at: DateTime::from_timestamp_micros(run_at_micros),
        ..spec(JobInput::Json("1".into()))
    };
    let keyed = JobSpec {
        idempotency_key: Some("k".into()),
        concurrency_key: Some("abcdefg".into()),
        ..spec(JobInput::Json("1".into()))
    };
    let fingerprint = |spec: JobSpec| {
        spec.resolve(&limits(), &ModuleNames::new())
            .unwrap()
            .request_fingerprint
    };
    assert_ne!(fingerprint(scheduled), fingerprint(keyed));
}

#[test]
fn a_nested_error_names_its_parent() {
    let error = FieldError::invalid("fuel", "bad").within("jobs[3]");
    assert_eq!(error.to_string(), "jobs[3].fuel: bad");
}
