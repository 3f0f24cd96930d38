//! Property-based fuzzing of the places hostile bytes enter: module
//! validation (corrupted real components), uploads of generated components
//! that then run on a worker (`wasm-smith` code in the task world's shape),
//! and request parsing. Bounded for CI; set `TASKFLOW_FUZZ_CASES` for a
//! longer run.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow::sandbox::{CompileError, Compiler};

use crate::support::{TaskWorld, TestApp, compile_config, plugin};

fn cases(default: u32) -> u32 {
    std::env::var("TASKFLOW_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn validator() -> Compiler {
    Compiler::new(compile_config().compiler_config().unwrap(), false)
}

/// Corrupts a real component: flips bytes, truncates, or splices garbage in.
fn mutated_component() -> impl Strategy<Value = Vec<u8>> {
    let original = plugin("hello");
    let len = original.len();
    prop_oneof![
        proptest::collection::vec((0..len, any::<u8>()), 1..8).prop_map({
            let original = original.clone();
            move |flips| {
                let mut bytes = original.clone();
                for (at, value) in flips {
                    bytes[at] = value;
                }
                bytes
            }
        }),
        (0..len).prop_map({
            let original = original.clone();
            move |cut| original[..cut].to_vec()
        }),
        (8..len, proptest::collection::vec(any::<u8>(), 1..64)).prop_map(move |(at, junk)| {
            let mut bytes = original.clone();
            bytes.splice(at..at, junk);
            bytes
        }),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|mut bytes| {
            bytes.splice(0..0, *b"\0asm\x0d\0\x01\0");
            bytes
        }),
    ]
}

#[test]
fn module_validation_never_crashes_the_compiler_on_corrupted_components() {
    let compiler = validator();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: cases(64),
        ..Config::default()
    });
    runner
        .run(&mutated_component(), |bytes| {
            // A verdict either way is fine; a crash or a hang is not.
            match runtime.block_on(compiler.check(&bytes)) {
                Ok(()) | Err(CompileError::Invalid(_)) => Ok(()),
                Err(error) => Err(proptest::test_runner::TestCaseError::fail(
                    error.to_string(),
                )),
            }
        })
        .unwrap();
}

/// Arbitrary JSON, biased towards the fields a submission has; `module`
/// names the uploaded module half of the time, so cases get past the hash
/// check into limits, payloads and the insert.
fn submission(module: String) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("'; DROP TABLE jobs; --")),
        Just(json!("\u{202e}\u{0000}\u{fffd}🦀")),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    let field = prop_oneof![
        Just("module"),
        Just("input"),
        Just("input_base64"),
        Just("max_attempts"),
        Just("timeout_ms"),
        Just("fuel"),
        Just("memory_limit_bytes"),
        Just("queue"),
        Just("priority"),
        Just("run_at"),
        Just("idempotency_key"),
        Just("other"),
    ];
    let fields = proptest::collection::btree_map(field, value, 0..8).prop_map(|map| {
        map.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<serde_json::Map<_, _>>()
    });
    (fields, any::<bool>(), any::<bool>()).prop_map(move |(mut fields, real_module, give_input)| {
        if real_module {
            fields.insert("module".into(), json!(module));
        }
        if give_input && !fields.contains_key("input_base64") {
            fields.entry("input").or_insert(json!({}));
        }
        Value::Object(fields)
    })
}

#[test]
fn arbitrary_submissions_get_a_json_answer_never_a_server_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(TestApp::start());
    let module = runtime.block_on(app.upload("hello"));
    let http = app.http();
    let accepted = std::cell::Cell::new(0i64);
    let mut runner = TestRunner::new(Config {
        cases: cases(200),
        ..Config::default()
    });
    runner
        .run(&submission(module), |body| {
            let (status, answer) = runtime.block_on(async {
                let response = http
                    .post(format!("{}/v1/jobs", app.url))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.json::<Value>().await)
            });
            prop_assert!(!status.is_server_error(), "{body} → {status}");
            let answer = answer
                .map_err(|e| TestCaseError::fail(format!("{body} → non-JSON answer: {e}")))?;
            if status.is_client_error() {
                prop_assert!(
                    answer["error"]["code"].is_string() && answer["error"]["message"].is_string()
                );
            }
            if status == StatusCode::CREATED {
                accepted.set(accepted.get() + 1);
                let state = answer["state"].as_str().unwrap_or_default();
                prop_assert!(
                    state == "available" || state == "scheduled",
                    "{body} → {answer}"
                );
            } else {
                prop_assert!(
                    status.is_client_error() || status == StatusCode::OK,
                    "{body} → {status}"
                );
            }
            Ok(())
        })
        .unwrap();
    let jobs: i64 = runtime.block_on(app.store().count_jobs()).unwrap();
    assert_eq!(
        jobs,
        accepted.get(),
        "exactly the accepted submissions were written"
    );
    runtime.block_on(app.finish());
}

/// Error kinds a generated task may end with: its own failures, and the
/// host's limits. Anything else (`host_error`, `outcome_rejected`) would be
/// a bug in TaskFlow.
const EXPECTED_KINDS: &[&str] = &[
    "guest_error",
    "timeout",
    "fuel_exhausted",
    "memory_limit",
    "stack_overflow",
    "panic",
    "trap",
    "output_too_large",
    "module_unavailable",
];

/// A component made from `seed`: half the time a task of the right world
/// whose code is random (`wasm-smith` fills in the task world's shape), half
/// the time a random core module wrapped in a component (refused, but only
/// after it compiled). `None` when the seed makes nothing encodable.
fn generated_component(world: &TaskWorld, shape: &[u8], seed: &[u8]) -> Option<Vec<u8>> {
    let mut input = arbitrary::Unstructured::new(&seed[1..]);
    let mut config = wasm_smith::Config {
        max_funcs: 20,
        max_instructions: 2_000,
        ..wasm_smith::Config::default()
    };
    if seed[0].is_multiple_of(2) {
        config.module_shape = Some(shape.to_vec());
        let module = wasm_smith::Module::new(config, &mut input).ok()?.to_bytes();
        world
            .component(module, wit_component::StringEncoding::UTF8)
            .ok()
    } else {
        let module = wasm_smith::Module::new(config, &mut input).ok()?.to_bytes();
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::RawSection {
            id: wasm_encoder::ComponentSectionId::CoreModule as u8,
            data: &module,
        });
        Some(component.finish())
    }
}

#[test]
fn generated_components_never_get_a_5xx_compile_in_bounded_time_and_never_harm_a_worker() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut options = crate::support::TestOptions::default();
    options.compile.compile_timeout = std::time::Duration::from_secs(20);
    let app = runtime.block_on(TestApp::start_with(options));
    let worker = {
        let _in_runtime = runtime.enter();
        app.spawn_worker("fuzz")
    };
    let world = TaskWorld::load();
    let shape = world.core_shape();
    let http = app.http();
    let jobs = std::cell::RefCell::new(Vec::new());
    let refused = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(24),
        ..Config::default()
    });
    let seeds = proptest::collection::vec(any::<u8>(), 2_048..16_384);
    runner
        .run(&seeds, |seed| {
            let Some(component) = generated_component(&world, &shape, &seed) else {
                return Ok(());
            };
            // The compile timeout bounds the answer: a compile that runs
            // longer is killed and refused.
            let upload = http
                .put(format!("{}/v1/modules", app.url))
                .body(component)
                .send();
            let answer = runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(60), upload).await
            });
            let response = answer
                .map_err(|_| TestCaseError::fail("no answer within 60 s"))?
                .unwrap();
            let status = response.status();
            let body: Value = runtime.block_on(response.json()).unwrap();
            prop_assert!(!status.is_server_error(), "{status} {body}");
            if status == StatusCode::CREATED {
                let job = runtime.block_on(app.submit_with(taskflow::api::types::SubmitJob {
                    max_attempts: Some(1),
                    timeout_ms: Some(2_000),
                    fuel: Some(100_000_000),
                    memory_limit_bytes: Some(16 << 20),
                    ..taskflow::api::types::SubmitJob::new(
                        body["hash"].as_str().unwrap().to_owned(),
                        json!({"seed": seed[..16]}),
                    )
                }));
                jobs.borrow_mut().push(job.id);
            } else {
                prop_assert!(status.is_client_error(), "{status} {body}");
                refused.set(refused.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    let jobs = jobs.into_inner();
    assert!(
        !jobs.is_empty() && refused.get() > 0,
        "the generator made both runnable tasks ({}) and refused components ({})",
        jobs.len(),
        refused.get()
    );

    for id in jobs {
        let job = runtime.block_on(app.wait_final(id));
        if let Some(error) = job.last_error {
            let kind = error["kind"].as_str().unwrap_or_default();
            assert!(EXPECTED_KINDS.contains(&kind), "{id}: {error}");
        }
    }
    // The worker still serves.
    let hello = runtime.block_on(app.upload("hello"));
    let job = runtime.block_on(app.submit(&hello, json!({"name": "after"})));
    let job = runtime.block_on(app.wait_final(job.id));
    assert_eq!(job.state, taskflow::job::JobState::Succeeded);
    runtime.block_on(worker.stop());
    runtime.block_on(app.finish());
}
