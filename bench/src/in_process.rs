//! The scenarios that run the sandbox in this process, without a
//! deployment: instantiate-and-call, and a module's first job cold and from
//! a restarted worker's disk cache.

use std::time::{Duration, Instant};
use uuid::Uuid;

use anyhow::Context;
use sha2::{Digest, Sha256};
use taskflow::config::{CompileConfig, ExecutionLimits};
use taskflow::job::AttemptLimits;
use taskflow::sandbox::{Attempt, JobContext, RunGrant, Sandbox};
use taskflow_testkit::percentile;

use super::Figure;
use super::cluster::Target;

pub(crate) fn plugin_bytes(target: &Target, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = target
        .plugin_dir
        .join(format!("taskflow_plugin_{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("{}: build the plugins first", path.display()))
}

pub(crate) fn sandbox_for(
    target: &Target,
    limits: &ExecutionLimits,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Sandbox> {
    let compiler = CompileConfig {
        compiler: Some(target.taskflow.clone()),
        ..CompileConfig::default()
    }
    .compiler_config()?;
    Ok(Sandbox::new(limits.sandbox_config(1, cache_dir, compiler))?)
}

pub(crate) fn attempt(input: &[u8], memory_bytes: u64) -> Attempt {
    Attempt {
        input: input.to_vec(),
        context: JobContext {
            job_id: "bench".into(),
            attempt: 1,
            max_attempts: 1,
            queue: "default".into(),
        },
        limits: AttemptLimits {
            timeout: Duration::from_secs(60),
            fuel: 1 << 40,
            memory_bytes,
        },
        grant: RunGrant::unlimited(),
        grants: Default::default(),
    }
}

/// Instantiates and calls the no-op component `count` times in a warm sandbox.
pub async fn sandbox(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let bytes = plugin_bytes(target, "noop")?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let sandbox = sandbox_for(target, &ExecutionLimits::default(), None)?;
    let (task, _) = sandbox
        .prepare(&hash, async move { Ok(bytes) })
        .await
        .map_err(|failure| anyhow::anyhow!(failure.message))?;
    for _ in 0..1000 {
        sandbox
            .run(&task, attempt(b"", 64 << 20))
            .await
            .result
            .map_err(|f| anyhow::anyhow!(f.message))?;
    }
    let mut micros = Vec::with_capacity(count);
    let cpu = || taskflow_testkit::user_and_system_cpu_micros(std::process::id());
    let cpu_before = cpu().context("this process's CPU time")?;
    for _ in 0..count {
        let started = Instant::now();
        let execution = sandbox.run(&task, attempt(b"", 64 << 20)).await;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        execution
            .result
            .map_err(|failure| anyhow::anyhow!(failure.message))?;
    }
    let cpu_after = cpu().context("this process's CPU time")?;
    micros.sort_by(f64::total_cmp);
    let per_call = |after: u64, before: u64| (after - before) as f64 / count as f64;
    Ok(vec![
        Figure::new(
            "user CPU per instantiate + call",
            per_call(cpu_after.0, cpu_before.0),
            "µs",
            "report",
        ),
        Figure::new(
            "system CPU per instantiate + call",
            per_call(cpu_after.1, cpu_before.1),
            "µs",
            "report",
        ),
        Figure::new(
            "instantiate + call, median",
            percentile(&micros, 50.0),
            "µs",
            "≤ 20",
        ),
        Figure::new(
            "instantiate + call, p99",
            percentile(&micros, 99.0),
            "µs",
            "report",
        ),
    ])
}

/// The first job of a large module: compiled from scratch, then by a
/// restarted worker that finds it in its disk cache.
pub async fn cache(target: &Target) -> anyhow::Result<Vec<Figure>> {
    let (name, input) = if target
        .plugin_dir
        .join("taskflow_plugin_python_csv.wasm")
        .exists()
    {
        ("python_csv", br#"{"csv": "a,b\n1,2\n"}"#.to_vec())
    } else {
        ("jsonpipe", br#"{"records": []}"#.to_vec())
    };
    let bytes = plugin_bytes(target, name)?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let dir = std::env::temp_dir().join(format!("taskflow-bench-cold-{}", Uuid::new_v4().simple()));
    let first_job = |sandbox: Sandbox, bytes: Vec<u8>| {
        let (hash, input) = (hash.clone(), input.clone());
        async move {
            let started = Instant::now();
            let (task, _) = sandbox
                .prepare(&hash, async move { Ok(bytes) })
                .await
                .map_err(|failure| anyhow::anyhow!(failure.message))?;
            sandbox
                .run(&task, attempt(&input, 256 << 20))
                .await
                .result
                .map_err(|f| anyhow::anyhow!(f.message))?;
            anyhow::Ok(started.elapsed().as_secs_f64() * 1000.0)
        }
    };
    let cold = first_job(
        sandbox_for(target, &ExecutionLimits::default(), Some(dir.clone()))?,
        bytes.clone(),
    )
    .await?;
    let restarted = first_job(
        sandbox_for(target, &ExecutionLimits::default(), Some(dir.clone()))?,
        bytes,
    )
    .await?;
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("cache: module {name}");
    Ok(vec![
        Figure::new("first job, cold compile", cold, "ms", "report"),
        Figure::new("first job, restarted worker", restarted, "ms", "report"),
        Figure::new("speed-up", cold / restarted, "×", "≥ 10"),
    ])
}
