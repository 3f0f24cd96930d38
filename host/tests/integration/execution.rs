//! Retries, dead-lettering and sandbox limits, through real workers.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use taskflow::api::types::{JobView, SubmitJob};
use taskflow::backoff::retry_delay;
use taskflow::job::JobState;

use crate::support::{
    TaskWorld, TestApp, TestOptions, assert_state, failing_every_attempt, plugin, single_attempt,
    tree,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_retries_on_the_documented_schedule_then_is_dead_lettered() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app
        .run_with(failing_every_attempt(&module, 4, "upstream busy"))
        .await;

    assert_state(&job, JobState::Dead);
    assert_eq!(job.attempt, 4);
    assert_eq!(job.attempts_left, 0);
    assert_eq!(job.last_error.as_ref().unwrap()["kind"], "guest_error");
    assert_eq!(job.last_error.as_ref().unwrap()["message"], "upstream busy");

    let attempts = app.attempts(job.id).await;
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for pair in attempts.windows(2) {
        let (failed, next) = (&pair[0], &pair[1]);
        assert_eq!(failed.error_kind.as_deref(), Some("guest_error"));
        let delay = retry_delay(&app.retry, job.id, failed.attempt as u32);
        let waited = (next.started_at - failed.finished_at).to_std().unwrap();
        assert!(
            waited >= delay,
            "attempt {} started {waited:?} after the failure, before its backoff {delay:?}",
            next.attempt
        );
        assert!(
            waited < delay + Duration::from_secs(2),
            "attempt {} waited {waited:?}, far past {delay:?}",
            next.attempt
        );
        assert!(
            next.lease_token > failed.lease_token,
            "every attempt gets a larger fencing token"
        );
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_retryable_error_dead_letters_at_once_and_a_user_retry_gives_fresh_attempts() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let fatal = app
        .run(
            &module,
            json!({"mode": "fatal_error", "message": "bad input"}),
        )
        .await;
    assert_state(&fatal, JobState::Dead);
    assert_eq!(
        fatal.attempt, 1,
        "not retried although 5 attempts were allowed"
    );
    assert_eq!(fatal.last_error.unwrap()["message"], "bad input");

    // Attempts as the task sees them: the third of three succeeds.
    let flaky = app
        .run_with(SubmitJob {
            max_attempts: Some(3),
            ..SubmitJob::new(
                module.clone(),
                json!({"mode": "fail_until", "succeed_on": 3}),
            )
        })
        .await;
    assert_state(&flaky, JobState::Succeeded);
    assert_eq!(tree(&flaky.output), Some(json!({"attempt": 3})));

    // Out of attempts, then requeued by a user: a fresh budget, counted from 1
    // again for the task, while attempt records keep numbering the job's life.
    let exhausted = app
        .run_with(single_attempt(
            &module,
            json!({"mode": "fail_until", "succeed_on": 2}),
        ))
        .await;
    assert_state(&exhausted, JobState::Dead);
    assert_eq!(
        app.client.retry(exhausted.id).await.unwrap().attempts_left,
        1
    );
    let exhausted = app.wait_final(exhausted.id).await;
    assert_state(&exhausted, JobState::Dead);
    assert_eq!(exhausted.attempt, 2);
    let attempts = app.attempts(exhausted.id).await;
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2],
        "the dead attempt is kept"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.error_message.as_deref() == Some("attempt 1 fails on purpose")),
        "{attempts:?}"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_limit_fails_its_own_job_with_its_own_reason_while_the_worker_keeps_serving() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let hostile = |input: serde_json::Value, tweak: fn(&mut SubmitJob)| {
        let mut job = single_attempt(&module, input);
        tweak(&mut job);
        job
    };
    let cases = vec![
        (
            "timeout",
            hostile(json!({"mode": "spin"}), |j| {
                j.timeout_ms = Some(300);
                j.fuel = Some(1_000_000_000_000)
            }),
        ),
        (
            "timeout",
            hostile(json!({"mode": "sleep", "ms": 60_000}), |j| {
                j.timeout_ms = Some(300)
            }),
        ),
        (
            "fuel_exhausted",
            hostile(json!({"mode": "spin"}), |j| j.fuel = Some(5_000_000)),
        ),
        (
            "memory_limit",
            hostile(json!({"mode": "allocate"}), |j| {
                j.memory_limit_bytes = Some(16 << 20)
            }),
        ),
        (
            "stack_overflow",
            hostile(json!({"mode": "recurse"}), |_| {}),
        ),
        // A Rust guest's own stack lives in linear memory: overflowing it is
        // an out-of-bounds access, reported as stack_overflow when wasmtime
        // knows the faulting address and as a plain trap otherwise.
        (
            "stack_overflow|trap",
            hostile(json!({"mode": "deep_stack"}), |_| {}),
        ),
        ("trap", hostile(json!({"mode": "trap"}), |_| {})),
        (
            "panic",
            // Three attempts allowed, yet a panic is not retried.
            hostile(json!({"mode": "panic", "message": "it broke"}), |j| {
                j.max_attempts = Some(3)
            }),
        ),
        (
            "panic",
            // A panic line longer than the whole log bound (64 KiB): the
            // log drops it, and it is still a panic, not a retryable trap.
            hostile(
                json!({"mode": "panic", "message": format!("it broke {}", "x".repeat(70_000))}),
                |j| j.max_attempts = Some(3),
            ),
        ),
        (
            "output_too_large",
            hostile(json!({"mode": "big_output", "bytes": 2 << 20}), |_| {}),
        ),
    ];
    let mut submitted = Vec::new();
    for (kind, request) in &cases {
        submitted.push((*kind, app.submit_with(request.clone()).await));
    }
    let healthy = app
        .submit(
            &module,
            json!({"mode": "succeed", "output": {"fine": true}}),
        )
        .await;

    for (kind, job) in submitted {
        let job = app.wait_final(job.id).await;
        assert_eq!(job.state, JobState::Dead, "{kind}");
        let attempts = app.attempts(job.id).await;
        let actual = attempts[0].error_kind.as_deref().unwrap_or_default();
        assert!(
            kind.split('|').any(|expected| expected == actual),
            "{kind}: got {actual}: {:?}",
            attempts[0].error_message
        );
        if kind == "stack_overflow|trap" {
            let message = attempts[0].error_message.as_deref().unwrap();
            assert!(
                message.contains("stack") || message.contains("out of bounds memory access"),
                "{message}"
            );
        }
        assert_eq!(attempts[0].worker_id, "w1");
        if kind == "panic" {
            assert_eq!(attempts.len(), 1, "a panic is not retried");
            let message = attempts[0].error_message.as_deref().unwrap();
            assert!(
                message.contains("panicked at") && message.contains("it broke"),
                "{message}"
            );
            assert!(
                message.contains("src/lib.rs:"),
                "the panic's location is recorded: {message}"
            );
        }
        if kind == "fuel_exhausted" {
            assert_eq!(attempts[0].fuel_consumed, Some(5_000_000));
        }
        if kind == "memory_limit" {
            // Granted up to the limit, never past it: the peak recorded.
            let peak = attempts[0].memory_bytes.expect("the peak is recorded");
            assert!((8 << 20..=16 << 20).contains(&peak), "{peak}");
        }
    }
    let healthy = app.wait_final(healthy.id).await;
    assert_state(&healthy, JobState::Succeeded);
    assert_eq!(healthy.worker_id.as_deref(), Some("w1"));
    app.finish().await;
}

/// What the host holds for a guest outside its linear memory (header maps
/// here: wasi:http lets one hold 64 KiB) counts against the same memory
/// limit, in resources of the guest's table (sandbox/resources.rs), so a guest
/// that hoards them fails its own job and the worker keeps its memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_hoarding_host_resources_fails_its_job_with_memory_limit() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let mut hoarding = single_attempt(
        &module,
        json!({"mode": "hoard_headers", "count": 20_000, "bytes": 60_000}),
    );
    hoarding.memory_limit_bytes = Some(16 << 20);
    let job = app.submit_with(hoarding).await;
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Dead);
    let attempts = app.attempts(job.id).await;
    assert_eq!(
        attempts[0].error_kind.as_deref(),
        Some("memory_limit"),
        "{:?}",
        attempts[0].error_message
    );
    let healthy = app.run(&module, json!({"mode": "succeed"})).await;
    assert_state(&healthy, JobState::Succeeded);
    app.finish().await;
}

/// wasmtime-wasi-http keeps a request's method and authority, whatever
/// their length, on a request the host holds outside the guest's memory,
/// and a guest may hold hundreds of requests it never sends: a long name is
/// refused when set.
#[tokio::test(flavor = "multi_thread")]
async fn a_requests_method_and_authority_past_a_kibibyte_are_refused_when_set() {
    let (app, module) = TestApp::start_running("misbehave").await;
    for (bytes, taken) in [(16, true), (1024, true), (1025, false), (4 << 20, false)] {
        let job = app
            .run(
                &module,
                json!({"mode": "long_request_names", "bytes": bytes}),
            )
            .await;
        assert_state(&job, JobState::Succeeded);
        assert_eq!(
            tree(&job.output),
            Some(json!({"method": taken, "authority": taken})),
            "{bytes}"
        );
    }
    app.finish().await;
}

/// `wasi:random` makes the bytes a guest asks for in a host buffer before
/// copying them into the guest, so its cap is what a guest can make the
/// worker allocate in one call, outside the job's memory limit: wasmtime's
/// default cap is 64 MiB, for a job limited to 64 KiB as for any other.
#[tokio::test(flavor = "multi_thread")]
async fn random_bytes_beyond_the_jobs_memory_limit_are_refused_before_the_host_makes_them() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let limit: u64 = 1 << 20;
    let asking = |bytes: u64| SubmitJob {
        memory_limit_bytes: Some(limit),
        ..single_attempt(&module, json!({"mode": "random_bytes", "bytes": bytes}))
    };
    let job = app.run_with(asking(32 << 20)).await;
    assert_eq!(job.state, JobState::Dead, "{:?}", job.output);
    let error = job.last_error.unwrap();
    assert_eq!(error["kind"], "trap", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("exceeds limit {limit}")),
        "{message}"
    );
    let job = app.run_with(asking(4096)).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(tree(&job.output), Some(json!({"len": 4096})));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_is_bounded_by_stored_bytes_and_does_not_fail_the_job() {
    let mut options = crate::support::TestOptions::default();
    options.execution.max_log_bytes = 10_000;
    let app = TestApp::start_with(options).await;
    app.spawn_worker("w1");
    let module = app.upload("misbehave").await;
    // Wide lines, and empty ones: an empty line is not free.
    for (lines, width) in [(5_000, 100), (200_000, 0)] {
        let job = app
            .run(
                &module,
                json!({"mode": "log_spam", "lines": lines, "width": width}),
            )
            .await;
        assert_state(&job, JobState::Succeeded);
        let attempt = &app.attempts(job.id).await[0];
        let kept = attempt.logs.as_array().unwrap();
        // What PostgreSQL stores for the kept lines.
        let stored: usize = kept.iter().map(|line| line.to_string().len()).sum();
        assert!(stored <= 10_000, "width {width}: {stored} bytes stored");
        assert!(!kept.is_empty(), "width {width}: the first lines are kept");
        // A stdout line cut short by the bound keeps what fit and counts as
        // dropped.
        let whole = kept
            .iter()
            .filter(|line| line["message"].as_str().unwrap().len() == width)
            .count();
        assert_eq!(
            whole as u64 + attempt.logs_dropped as u64,
            2 * lines,
            "width {width}: every line (host.log and stdout) is kept whole or counted"
        );
    }
    app.finish().await;
}

/// Runs `input` of the misbehave plugin once under a 256 MiB memory limit
/// and returns the job with how much this process's peak memory (the
/// worker runs in it) grew meanwhile.
/// An app with one worker running `component`, for the tests that measure
/// the worker's growth: their guests fill hundreds of MiB, and while tests
/// run side by side on two cores a heartbeat round can come later than the
/// tests' usual 1 s lease allows, ending the attempt with `lease_lost`
/// before what they check. The lease has nothing to do with that.
async fn start_with_roomy_leases(component: Vec<u8>) -> (TestApp, String) {
    let app = TestApp::start_with(TestOptions {
        lease_ttl: Duration::from_secs(10),
        ..TestOptions::default()
    })
    .await;
    let module = app.upload_component(component).await;
    app.spawn_worker("w1");
    (app, module)
}

async fn run_measuring_growth(app: &TestApp, module: &str, input: Value) -> (JobView, u64) {
    let before = taskflow_testkit::peak_rss_bytes(std::process::id()).unwrap();
    let job = app
        .run_with(SubmitJob {
            memory_limit_bytes: Some(256 << 20),
            ..single_attempt(module, input)
        })
        .await;
    let grew = taskflow_testkit::peak_rss_bytes(std::process::id()).unwrap() - before;
    (job, grew)
}

/// The guest's own memory holds `bytes` of `what` once; copying them into
/// the worker would hold them twice.
#[track_caller]
fn assert_not_copied(what: &str, bytes: u64, grew: u64) {
    assert!(
        grew < bytes * 3 / 2,
        "a {} MiB {what} grew the worker by {} MiB",
        bytes >> 20,
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_output_is_refused_without_being_copied_out_of_the_guest() {
    const OUTPUT: u64 = 192 << 20;
    let (app, module) = start_with_roomy_leases(plugin("misbehave")).await;
    let input = json!({"mode": "big_output", "bytes": OUTPUT});
    let (job, grew) = run_measuring_growth(&app, &module, input).await;
    let error = job.last_error.unwrap();
    assert_eq!(error["kind"], "output_too_large", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&OUTPUT.to_string()),
        "{error}"
    );
    assert_not_copied("output", OUTPUT, grew);
    app.finish().await;
}

/// A secret's name comes from the guest: one longer than any secret's is
/// refused, by both secret calls, without being copied out of guest memory
/// or echoed back (escaped, its control characters would take six times
/// its size in the worker, and more than the guest's memory limit to hand
/// back).
#[tokio::test(flavor = "multi_thread")]
async fn a_long_secret_name_is_refused_without_being_copied_or_echoed() {
    const NAME: u64 = 48 << 20;
    let (app, module) = start_with_roomy_leases(plugin("misbehave")).await;
    let input = json!({"mode": "secret_calls", "name_bytes": NAME, "data_bytes": 0});
    let (job, grew) = run_measuring_growth(&app, &module, input).await;
    assert_state(&job, JobState::Succeeded);
    let answers = tree(&job.output).unwrap();
    for call in ["placeholder", "hmac"] {
        assert_eq!(
            answers[call]["error"], "no secret has a name over 64 bytes",
            "{answers}"
        );
        assert_eq!(answers[call]["bytes"], 34, "the whole answer: {answers}");
    }
    assert_not_copied("secret name", NAME, grew);
    app.finish().await;
}

/// The data a guest signs with a secret (`secrets.hmac-sha256`) is hashed
/// where it lies in guest memory.
#[tokio::test(flavor = "multi_thread")]
async fn data_to_sign_is_not_copied_out_of_the_guest() {
    const DATA: u64 = 128 << 20;
    let (app, module) = start_with_roomy_leases(plugin("misbehave")).await;
    let input = json!({"mode": "secret_calls", "name_bytes": 0, "data_bytes": DATA});
    let (job, grew) = run_measuring_growth(&app, &module, input).await;
    assert_state(&job, JobState::Succeeded);
    let answers = tree(&job.output).unwrap();
    assert_eq!(
        answers["hmac"]["error"], "the job's queue grants no secret \"k\"",
        "{answers}"
    );
    assert_not_copied("signed data", DATA, grew);
    app.finish().await;
}

/// The same for a guest's error: its message is cut at 8 KiB, and only
/// that much is copied out of guest memory, not the whole of it first.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_error_message_is_cut_without_being_copied_out_of_the_guest() {
    const MESSAGE: u64 = 192 << 20;
    let (app, module) = start_with_roomy_leases(plugin("misbehave")).await;
    let input = json!({"mode": "big_error", "bytes": MESSAGE});
    let (job, grew) = run_measuring_growth(&app, &module, input).await;
    assert_eq!(job.state, JobState::Dead);
    let error = job.last_error.unwrap();
    assert_eq!(error["kind"], "guest_error", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("eeee") && message.len() <= 8 << 10,
        "{}",
        message.len()
    );
    assert_not_copied("error message", MESSAGE, grew);
    app.finish().await;
}

/// A task whose strings are UTF-16, in WebAssembly text so that it can be
/// exactly that: it logs a short message, then fills 64 MiB with `U+4E4E`
/// (three bytes each in UTF-8) and passes those 32 Mi units as a log
/// message and as a secret's name, and returns the name's answer, an error
/// string, as its bytes. `tag` is or-ed into the lengths it passes, as a
/// Latin-1+UTF-16 task marks a string UTF-16; `answer_shift` turns the
/// answer's length into bytes (1 for UTF-16 units).
fn utf16_task(tag: u32, answer_shift: u32) -> String {
    let short = 7 | tag;
    let long = 0x200_0000 | tag;
    format!(
        r#"
(module
  (import "taskflow:task/host@0.2.0" "log" (func $log (param i32 i32 i32)))
  (import "taskflow:task/secrets@0.2.0" "placeholder"
    (func $placeholder (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; "héllo 中" in UTF-16LE: 7 units
  (data (i32.const 64) "\68\00\e9\00\6c\00\6c\00\6f\00\20\00\2d\4e")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (local.set $at
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $at) (local.get 3)))
    (local.get $at))
  (func (export "run") (param i32 i32) (result i32)
    (local $long i32)
    (call $log (i32.const 2) (i32.const 64) (i32.const {short}))
    (local.set $long (i32.mul (memory.grow (i32.const 1024)) (i32.const 65536)))
    (memory.fill (local.get $long) (i32.const 0x4e) (i32.const 0x4000000))
    (call $log (i32.const 2) (local.get $long) (i32.const {long}))
    (call $placeholder (local.get $long) (i32.const {long}) (i32.const 32))
    ;; ok(the answer's message, as bytes)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.load (i32.const 36)))
    (i32.store (i32.const 24) (i32.shl (i32.load (i32.const 40)) (i32.const {answer_shift})))
    (i32.const 16)))
"#
    )
}

/// Runs `task` (a [`utf16_task`] in `encoding`) on a worker of this
/// process: a `host.log` message too long for the log and a secret's name
/// too long for any secret are refused unread, a short message still
/// arrives whole, and the worker grows by less than 1.5 times the 64 MiB
/// the strings fill (transcoded, they would take 96 MiB more). The answer
/// it returns, decoded by `decode`.
async fn run_utf16_task(
    task: String,
    encoding: wit_component::StringEncoding,
    decode: fn(&[u8]) -> String,
) {
    let module = wat::parse_str(task).unwrap();
    let component = TaskWorld::load().component(module, encoding).unwrap();
    let (app, module) = start_with_roomy_leases(component).await;

    let (job, grew) = run_measuring_growth(&app, &module, json!({})).await;
    assert_state(&job, JobState::Succeeded);
    let output = base64::engine::general_purpose::STANDARD
        .decode(job.output_base64.as_ref().unwrap())
        .unwrap();
    assert_eq!(decode(&output), "no secret has a name over 64 bytes");
    let attempt = &app.attempts(job.id).await[0];
    assert_eq!(
        attempt.logs,
        json!([{"source": "log", "level": "info", "message": "héllo 中"}])
    );
    assert_eq!(attempt.logs_dropped, 1, "the long message was dropped");
    assert_not_copied("UTF-16 string", 64 << 20, grew);
    app.finish().await;
}

/// A UTF-16 guest's string is transcoded to be read, into up to twice its
/// size; it is read only if it could be within the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_utf16_guests_long_strings_are_refused_without_being_transcoded() {
    let utf16 = |bytes: &[u8]| {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16(&units).unwrap()
    };
    run_utf16_task(
        utf16_task(0, 1),
        wit_component::StringEncoding::UTF16,
        utf16,
    )
    .await;
}

/// The same for a Latin-1+UTF-16 guest passing UTF-16 strings (the top
/// bit of their lengths set). The host answers it in Latin-1, which its
/// ASCII answer fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_latin1_utf16_guests_long_strings_are_refused_without_being_transcoded() {
    run_utf16_task(
        utf16_task(1 << 31, 0),
        wit_component::StringEncoding::CompactUTF16,
        |bytes| String::from_utf8(bytes.to_vec()).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_beyond_what_the_stream_permits_traps_before_it_is_copied() {
    let (app, module) = TestApp::start_running("misbehave").await;
    for (bytes, blocking, permitted) in [(32 << 20, false, 64 << 10), (64 << 10, true, 4096)] {
        let input = json!({"mode": "raw_write", "bytes": bytes, "blocking": blocking});
        let job = app.run_with(single_attempt(&module, input)).await;
        assert_eq!(job.state, JobState::Dead, "{bytes}: {:?}", job.output);
        let error = job.last_error.unwrap();
        assert_eq!(error["kind"], "trap", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("exceeds the {permitted} bytes")),
            "{message}"
        );
        let attempt = &app.attempts(job.id).await[0];
        assert_eq!(attempt.logs, json!([]), "nothing of the write was kept");
    }
    // Within the permit, the same calls write to the log.
    let job = app
        .run(
            &module,
            json!({"mode": "raw_write", "bytes": 4096, "blocking": true}),
        )
        .await;
    assert_state(&job, JobState::Succeeded);
    let attempt = &app.attempts(job.id).await[0];
    assert_eq!(attempt.logs[0]["message"].as_str().unwrap().len(), 4096);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_log_macros_the_log_facade_and_stderr_all_reach_the_attempt_log_in_order() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app.run(&module, json!({"mode": "log_levels"})).await;
    assert_state(&job, JobState::Succeeded);
    let attempt = &app.attempts(job.id).await[0];
    let lines: Vec<(String, String, String)> = attempt
        .logs
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            let text = |key: &str| line[key].as_str().unwrap_or("").to_owned();
            (text("source"), text("level"), text("message"))
        })
        .collect();
    let expected = [
        ("log", "trace", "t"),
        ("log", "debug", "d"),
        ("log", "info", "i"),
        ("log", "warn", "w"),
        ("log", "error", "e"),
        ("log", "warn", "taskflow_plugin_misbehave: from the facade"),
        ("stderr", "", "to stderr"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(lines, expected);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_of_hostile_jobs_does_not_stop_well_behaved_ones() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let hello = app.upload("hello").await;
    let mut hostile = Vec::new();
    let mut healthy = Vec::new();
    for round in 0..4 {
        for (mode, timeout_ms) in [("spin", 500), ("allocate", 30_000), ("recurse", 30_000)] {
            let job = SubmitJob {
                timeout_ms: Some(timeout_ms),
                memory_limit_bytes: Some(16 << 20),
                ..single_attempt(&module, json!({"mode": mode}))
            };
            hostile.push(app.submit_with(job).await.id);
        }
        for i in 0..5 {
            healthy.push(
                app.submit(&hello, json!({"name": format!("{round}-{i}")}))
                    .await
                    .id,
            );
        }
    }
    for id in healthy {
        assert_state(&app.wait_final(id).await, JobState::Succeeded);
    }
    for id in hostile {
        let job = app.wait_final(id).await;
        assert_state(&job, JobState::Dead);
        let kind = job.last_error.unwrap()["kind"].as_str().unwrap().to_owned();
        assert!(
            ["timeout", "memory_limit", "stack_overflow"].contains(&kind.as_str()),
            "{kind}"
        );
    }
    app.finish().await;
}
