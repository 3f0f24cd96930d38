//! The sandbox on its own: compiled-code cache, determinism, lease loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest;
use taskflow::sandbox::{
    Attempt, CacheSource, JobContext, PreparedTask, RunGrant, Sandbox, SandboxConfig,
};

use taskflow::config::ExecutionLimits;
use taskflow::job::{AttemptLimits, FailureKind};

use crate::support::{compile_config, plugin};

/// A sandbox of `slots` slots.
fn config(slots: usize) -> SandboxConfig {
    let limits = ExecutionLimits {
        max_memory_bytes: 64 << 20,
        ..ExecutionLimits::default()
    };
    limits.sandbox_config(slots, None, compile_config().compiler_config().unwrap())
}

/// A cache directory path of this test's own, not created yet.
fn fresh_cache_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "taskflow-cache-test-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn sandbox(cache_dir: Option<std::path::PathBuf>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir,
        ..config(2)
    })
    .expect("sandbox starts")
}

fn attempt(input: &str, fuel: u64, grant: Arc<RunGrant>) -> Attempt {
    Attempt {
        input: input.as_bytes().to_vec(),
        context: JobContext {
            job_id: "test".into(),
            attempt: 1,
            max_attempts: 1,
            queue: "default".into(),
        },
        limits: AttemptLimits {
            timeout: Duration::from_secs(20),
            fuel,
            memory_bytes: 32 << 20,
        },
        grant,
        grants: Default::default(),
    }
}

async fn prepare(sandbox: &Sandbox, bytes: Vec<u8>) -> (PreparedTask, CacheSource) {
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    sandbox
        .prepare(&hash, async move { Ok(bytes) })
        .await
        .expect("plugin prepares")
}

/// Runs the `hello` plugin's `task` for `name` and checks its greeting:
/// the code the sandbox prepared, from whichever source, works.
async fn assert_greets(sandbox: &Sandbox, task: &PreparedTask, name: &str) {
    let input = format!(r#"{{"name":"{name}"}}"#);
    let execution = sandbox
        .run(task, attempt(&input, 1 << 30, RunGrant::unlimited()))
        .await;
    let expected = format!(r#"{{"greeting":"Hello, {name}!"}}"#);
    assert_eq!(execution.result.unwrap(), expected.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_loads_compiled_code_from_its_disk_cache() {
    let dir = fresh_cache_dir();
    let first = sandbox(Some(dir.clone()));
    assert_eq!(
        prepare(&first, plugin("hello")).await.1,
        CacheSource::Compiled
    );
    assert_eq!(
        prepare(&first, plugin("hello")).await.1,
        CacheSource::Memory
    );
    drop(first);

    let restarted = sandbox(Some(dir.clone()));
    let (task, source) = prepare(&restarted, plugin("hello")).await;
    assert_eq!(source, CacheSource::Disk);
    assert_greets(&restarted, &task, "cache").await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The one artifact file of `module` in the disk cache at `dir`.
fn artifact_path(dir: &std::path::Path, module: &[u8]) -> std::path::PathBuf {
    let hash = hex::encode(sha2::Sha256::digest(module));
    let compat = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.is_dir())
        .expect("the engine's compatibility directory");
    compat.join(format!("{hash}.cwasm"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_swapped_or_planted_in_the_cache_is_refused_and_the_module_compiled_again() {
    let dir = fresh_cache_dir();
    let first = sandbox(Some(dir.clone()));
    prepare(&first, plugin("hello")).await;
    prepare(&first, plugin("noop")).await;
    drop(first);
    let hello = artifact_path(&dir, &plugin("hello"));
    let noop = artifact_path(&dir, &plugin("noop"));

    // Another module's genuine artifact under hello's name: the MAC binds
    // each artifact to its module.
    std::fs::copy(&noop, &hello).unwrap();
    let restarted = sandbox(Some(dir.clone()));
    let (task, source) = prepare(&restarted, plugin("hello")).await;
    assert_eq!(source, CacheSource::Compiled);
    assert_greets(&restarted, &task, "swap").await;
    drop(restarted);

    // An artifact whose MAC was made by anyone without the key, and one
    // with no MAC at all.
    std::fs::write(noop.with_extension("mac"), [0u8; 32]).unwrap();
    let restarted = sandbox(Some(dir.clone()));
    assert_eq!(
        prepare(&restarted, plugin("noop")).await.1,
        CacheSource::Compiled
    );
    drop(restarted);
    std::fs::remove_file(noop.with_extension("mac")).unwrap();
    let restarted = sandbox(Some(dir.clone()));
    assert_eq!(
        prepare(&restarted, plugin("noop")).await.1,
        CacheSource::Compiled
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_directory_others_could_change_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let root = fresh_cache_dir();
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = Sandbox::new(SandboxConfig {
        cache_dir: Some(shared.join("taskflow-cache")),
        ..config(2)
    })
    .err()
    .expect("a cache under a world-writable directory is refused");
    assert!(
        refused.to_string().contains("group or others can write"),
        "{refused}"
    );
    std::fs::remove_dir_all(root).unwrap();
}

/// Runs the `misbehave` plugin with `input` and returns its `marks`.
async fn marks_seen(sandbox: &Sandbox, task: &PreparedTask, input: &str) -> u64 {
    let execution = sandbox
        .run(task, attempt(input, 1 << 40, RunGrant::unlimited()))
        .await;
    let output: serde_json::Value = serde_json::from_slice(&execution.result.unwrap()).unwrap();
    output["marks"].as_u64().unwrap()
}

/// With one slot, every attempt runs in the memory the previous one used,
/// which the pooling allocator resets rather than unmaps (only the pages
/// the guest wrote, found with `PAGEMAP_SCAN` where the kernel has it:
/// sandbox/engine.rs, `pooling_config`). Nothing an attempt wrote may
/// survive into the next: not its stack, not its heap within the part kept
/// resident or beyond it, not memory it grew. `mark` first shows the search
/// finds what is there.
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_sees_nothing_the_previous_attempt_wrote_in_its_memory() {
    let sandbox = Sandbox::new(config(1)).expect("sandbox starts");
    let (task, _) = prepare(&sandbox, plugin("misbehave")).await;
    let marked_bytes = 4 << 20;
    for round in 0..3 {
        let written = marks_seen(
            &sandbox,
            &task,
            &format!(r#"{{"mode":"mark","bytes":{marked_bytes}}}"#),
        )
        .await;
        assert!(
            written >= marked_bytes / 8,
            "round {round}: {written} marks written"
        );
        let left = marks_seen(
            &sandbox,
            &task,
            &format!(r#"{{"mode":"find_marks","reserve":{}}}"#, 2 * marked_bytes),
        )
        .await;
        assert_eq!(left, 0, "round {round}: marks left by the previous attempt");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_use_is_deterministic() {
    let sandbox = sandbox(None);
    let (task, _) = prepare(&sandbox, plugin("misbehave")).await;
    let input = r#"{"mode":"burn","iterations":100000}"#;
    let first = sandbox
        .run(&task, attempt(input, 1 << 40, RunGrant::unlimited()))
        .await;
    let second = sandbox
        .run(&task, attempt(input, 1 << 40, RunGrant::unlimited()))
        .await;
    assert!(first.result.is_ok() && second.result.is_ok());
    assert!(first.fuel_consumed > 100_000);
    assert_eq!(first.fuel_consumed, second.fuel_consumed);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_stops_when_its_grant_lapses_or_is_revoked() {
    let sandbox = sandbox(None);
    let (task, _) = prepare(&sandbox, plugin("misbehave")).await;

    const SPIN: &str = r#"{"mode":"spin"}"#;
    const SLEEP: &str = r#"{"mode":"sleep","ms":60000}"#;
    // The grant, and what the guest does when it ends.
    let cases = [
        ("lapses while computing", SPIN, lapsing_soon as fn() -> _),
        ("lapses while blocked in a host call", SLEEP, lapsing_soon),
        (
            "is revoked while blocked in a host call",
            SLEEP,
            revoked_soon,
        ),
    ];
    for (case, input, grant) in cases {
        let started = Instant::now();
        let execution = sandbox
            .run(&task, attempt(input, u64::MAX / 2, grant()))
            .await;
        assert_eq!(
            execution.result.unwrap_err().kind,
            FailureKind::LeaseLost,
            "{case}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{case}");
    }
}

/// A grant that ended before its attempt started (the worker was paused,
/// or cut off from Redis, while the attempt waited) runs no guest code: not
/// even until the first epoch tick. Without that, a worker resumed after a
/// pause could run the guest of a job already running elsewhere. Whether
/// the guest gets a first go depends on the order the sandbox looks at
/// things in, so the start is played several times.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_whose_grant_ended_before_it_started_runs_no_code() {
    let sandbox = sandbox(None);
    let (task, _) = prepare(&sandbox, plugin("misbehave")).await;
    for start in 1..=16 {
        let ended = RunGrant::until(Instant::now());
        let execution = sandbox
            .run(&task, attempt(r#"{"mode":"spin"}"#, u64::MAX / 2, ended))
            .await;
        assert_eq!(
            execution.result.map_err(|failure| failure.kind),
            Err(FailureKind::LeaseLost),
            "start {start}"
        );
        assert_eq!(execution.fuel_consumed, 0, "start {start}: the guest ran");
    }
}

/// A grant that lapses 200 ms from now, as one a heartbeat stopped renewing.
fn lapsing_soon() -> Arc<RunGrant> {
    RunGrant::until(Instant::now() + Duration::from_millis(200))
}

/// A grant with no deadline that is revoked 100 ms from now, as a cancel
/// or a lost lease does.
fn revoked_soon() -> Arc<RunGrant> {
    let grant = RunGrant::unlimited();
    let revoker = grant.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        revoker.revoke();
    });
    grant
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_asking_for_more_memory_than_the_worker_grants_fails_with_a_clear_kind() {
    let sandbox = sandbox(None);
    let (task, _) = prepare(&sandbox, plugin("hello")).await;
    let mut greedy = attempt(r#"{"name":"x"}"#, 1_000_000_000, RunGrant::unlimited());
    greedy.limits.memory_bytes = (64 << 20) + 1;
    let failure = sandbox.run(&task, greedy).await.result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::WorkerLimitExceeded);
    assert!(failure.retryable, "another worker may grant it");
    assert!(
        failure.message.contains("TASKFLOW_MAX_MEMORY_LIMIT_BYTES"),
        "{}",
        failure.message
    );

    let within = attempt(r#"{"name":"x"}"#, 1_000_000_000, RunGrant::unlimited());
    assert!(sandbox.run(&task, within).await.result.is_ok());
}
