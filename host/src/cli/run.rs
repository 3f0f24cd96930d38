//! `taskflow run`: runs a task component locally, without a server.
//!
//! The component is validated exactly as an upload is, and run in the same
//! sandbox with the same limits and defaults as on a worker, so what works
//! here works in production. Nothing touches PostgreSQL or Redis.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::flags::{CompileFlags, ExecutionFlags, MemoryLimitFlag, SubmissionFlags};
use super::job_flags::{AttemptLimitFlags, InputFlags};
use super::terminal::{printable, printable_json};
use crate::config::CompileConfig;
use crate::job::{JobSpec, ModuleNames};
use crate::sandbox::{Attempt, Grants, JobContext, LogLine, RunGrant, Sandbox};

/// `taskflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component (.wasm built for wasm32-wasip2).
    pub file: PathBuf,
    /// The task's input.
    #[command(flatten)]
    pub input: InputFlags,
    /// The attempt's own limits.
    #[command(flatten)]
    pub limits: AttemptLimitFlags,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Job limits and defaults.
    #[command(flatten)]
    pub submission: SubmissionFlags,
    /// The largest memory the task may have.
    #[command(flatten)]
    pub memory: MemoryLimitFlag,
    /// What the sandbox grants.
    #[command(flatten)]
    pub execution: ExecutionFlags,
    /// How the component is compiled.
    #[command(flatten)]
    pub compile: CompileFlags,
}

/// The `--json` report.
#[derive(Debug, Serialize)]
struct Report<'a> {
    succeeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<crate::api::types::JsonText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
    fuel_consumed: u64,
    duration_ms: f64,
    logs: &'a [LogLine],
    logs_dropped: u64,
}

/// Runs `taskflow run`; fails (exit status 1) when the task fails.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let submission = args.submission.limits(&args.memory);
    let execution = args.execution.limits(&args.memory);
    submission.validate()?;
    execution.validate()?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let input = args.input.read()?;
    let spec = JobSpec {
        module: hex::encode(Sha256::digest(&bytes)),
        input,
        timeout_ms: args.limits.timeout_ms,
        fuel: args.limits.fuel,
        memory_limit_bytes: args.limits.memory_limit_bytes,
        max_attempts: Some(1),
        queue: None,
        priority: None,
        run_at: None,
        idempotency_key: None,
        concurrency_key: None,
    };
    let job = spec
        .resolve(&submission, &ModuleNames::new())
        .map_err(|error| anyhow::anyhow!("{error}"))?;

    let compiler = CompileConfig::from(args.compile.clone()).compiler_config()?;
    let sandbox = Sandbox::new(execution.sandbox_config(1, None, compiler))?;
    let hash = job.module_hash.clone();
    let (task, _) = sandbox
        .prepare(&hash, async move { Ok(bytes) })
        .await
        .map_err(|failure| {
            anyhow::anyhow!(
                "{} cannot run on TaskFlow: {}",
                args.file.display(),
                failure.message
            )
        })?;
    let limits = job.limits();
    let execution = sandbox
        .run(
            &task,
            Attempt {
                input: job.input,
                context: JobContext {
                    job_id: "local".into(),
                    attempt: 1,
                    max_attempts: 1,
                    queue: job.queue,
                },
                limits,
                grant: RunGrant::unlimited(),
                // A local run has no queue to grant anything.
                grants: Grants::default(),
            },
        )
        .await;

    let duration_ms = execution.duration.as_secs_f64() * 1000.0;
    let (output, output_base64) = match &execution.result {
        Ok(output) => crate::api::types::render_payload(output),
        Err(_) => (None, None),
    };
    let error = execution.result.as_ref().err().map(|failure| {
        serde_json::json!({
            "kind": failure.kind.code(),
            "message": failure.message,
            "retryable": failure.retryable,
        })
    });
    if args.json {
        let report = Report {
            succeeded: execution.result.is_ok(),
            output,
            output_base64,
            error,
            fuel_consumed: execution.fuel_consumed,
            duration_ms,
            logs: &execution.log.lines,
            logs_dropped: execution.log.dropped,
        };
        println!(
            "{}",
            printable_json(&serde_json::to_string_pretty(&report)?)
        );
    } else {
        for line in &execution.log.lines {
            let level = line.level.map(|l| format!(" {l}")).unwrap_or_default();
            eprintln!("{:?}{level}: {}", line.source, printable(&line.message));
        }
        if execution.log.dropped > 0 {
            eprintln!("({} log lines dropped)", execution.log.dropped);
        }
        eprintln!("{} fuel, {duration_ms:.3} ms", execution.fuel_consumed);
        match (&output, &output_base64) {
            (Some(json), _) => println!("{}", printable(&json.to_string())),
            (None, Some(base64)) => println!("(base64) {base64}"),
            (None, None) => {}
        }
    }
    if let Err(failure) = execution.result {
        let retry = if failure.retryable {
            "retryable"
        } else {
            "not retryable"
        };
        bail!(
            "the task failed [{}, {retry}]: {}",
            failure.kind,
            printable(&failure.message)
        );
    }
    Ok(())
}
