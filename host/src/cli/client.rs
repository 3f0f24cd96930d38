//! The client commands: `taskflow module …` and `taskflow job …`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::job_flags::{AttemptLimitFlags, InputFlags};
use super::terminal::{printable, printable_json};
use super::{ClientArgs, JobCommand, ModuleCommand, PageArgs};
use crate::api::types::{
    AttemptList, JobQuery, JobView, JsonText, ModuleView, NameMoveView, SubmitJob,
};
use crate::job::{JobInput, JobState};

/// `taskflow job submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// SHA-256 of an uploaded module, or a name pointing at one
    /// (`resize:stable`).
    #[arg(long)]
    pub module: String,
    /// The task's input.
    #[command(flatten)]
    pub input: InputFlags,
    /// Queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority; higher runs first.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i16>,
    /// Attempts before the job is dead-lettered.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// The job's own limits.
    #[command(flatten)]
    pub limits: AttemptLimitFlags,
    /// Idempotency key: resubmitting with it returns the original job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Concurrency key (a tenant, say): the queue's `max_running_per_key`
    /// caps running jobs per key.
    #[arg(long)]
    pub concurrency_key: Option<String>,
    /// W3C `traceparent` of the caller's span: the job's spans join its
    /// trace. Read from `TRACEPARENT`, as OpenTelemetry passes a trace to
    /// a command.
    #[arg(long, env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Wait for the job to finish and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, e.g. `30s`, `5m`.
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub wait_timeout: Duration,
    /// API address and output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs a `taskflow module` command.
pub async fn run_module(command: ModuleCommand) -> anyhow::Result<()> {
    match command {
        ModuleCommand::Push { file, client } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (module, created) = client.client()?.push_module(bytes).await?;
            print(&client, &module, || {
                let verb = if created {
                    "uploaded"
                } else {
                    "already uploaded:"
                };
                format!(
                    "{verb} module {} ({} bytes)",
                    module.hash, module.size_bytes
                )
            })
        }
        ModuleCommand::Get { hash, client } => {
            let module = client.client()?.get_module(&hash).await?;
            print(&client, &module, || describe_module(&module))
        }
        ModuleCommand::Name { hash, name, client } => {
            let moved = client.client()?.name_module(&hash, &name).await?;
            print(&client, &moved, || describe_move(&moved))
        }
        ModuleCommand::Names {
            name: None,
            page: PageArgs { limit, cursor },
            client,
        } => {
            let list = client
                .client()?
                .module_names(limit, cursor.as_deref())
                .await?;
            print(&client, &list, || {
                let mut lines: Vec<String> = list
                    .names
                    .iter()
                    .map(|(name, hash)| format!("{name}  {hash}"))
                    .collect();
                if let Some(cursor) = &list.next_cursor {
                    lines.push(format!("more: --cursor {cursor}"));
                }
                lines.join("\n")
            })
        }
        ModuleCommand::Names {
            name: Some(name),
            page: _,
            client,
        } => {
            let view = client.client()?.module_name(&name).await?;
            print(&client, &view, || {
                let mut lines = vec![format!("{}  {}", view.name, view.module)];
                lines.extend(
                    view.history
                        .iter()
                        .map(|moved| format!("  {}", describe_move(moved))),
                );
                lines.join("\n")
            })
        }
        ModuleCommand::Rollback { name, client } => {
            let moved = client.client()?.roll_back_module_name(&name).await?;
            print(&client, &moved, || describe_move(&moved))
        }
        ModuleCommand::Rm { hash, client } => {
            let module = client.client()?.delete_module(&hash).await?;
            print(&client, &module, || {
                format!("module {} is deleted", module.hash)
            })
        }
        ModuleCommand::List {
            page: PageArgs { limit, cursor },
            client,
        } => {
            let page = client
                .client()?
                .list_modules(limit, cursor.as_deref())
                .await?;
            print(&client, &page, || {
                let mut text: Vec<String> = page.modules.iter().map(describe_module).collect();
                if let Some(cursor) = &page.next_cursor {
                    text.push(format!("more: --cursor {cursor}"));
                }
                text.join("\n")
            })
        }
    }
}

/// Runs a `taskflow job` command.
pub async fn run_job(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit(args) => submit(args).await,
        JobCommand::Get { id, wait, client } => {
            let job = match wait {
                Some(wait) => client.client()?.get_job_when_ended(id, wait).await?,
                None => client.client()?.get_job(id).await?,
            };
            print(&client, &job, || describe_job(&job))
        }
        JobCommand::List {
            state,
            queue,
            page: PageArgs { limit, cursor },
            client,
        } => {
            let query = JobQuery {
                state,
                queue,
                limit,
                cursor,
            };
            let page = client.client()?.list_jobs(&query).await?;
            print(&client, &page, || {
                let mut lines = vec![format!(
                    "{:<36}  {:<10}  {:<12}  {:>7}  CREATED",
                    "ID", "STATE", "QUEUE", "ATTEMPT"
                )];
                lines.extend(page.jobs.iter().map(|job| {
                    format!(
                        "{:<36}  {:<10}  {:<12}  {:>7}  {}",
                        job.id,
                        job.state,
                        job.queue,
                        format!("{}/{}", job.attempt, job.max_attempts),
                        job.created_at.format("%Y-%m-%d %H:%M:%S")
                    )
                }));
                if let Some(cursor) = &page.next_cursor {
                    lines.push(format!("more: --cursor {cursor}"));
                }
                lines.join("\n")
            })
        }
        JobCommand::Attempts { id, client } => {
            let attempts = client.client()?.attempts(id).await?;
            print(&client, &attempts, || describe_attempts(&attempts))
        }
        JobCommand::Cancel { id, client } => {
            let job = client.client()?.cancel(id).await?;
            print(&client, &job, || format!("job {} is {}", job.id, job.state))
        }
        JobCommand::Retry { id, client } => {
            let job = client.client()?.retry(id).await?;
            print(&client, &job, || {
                format!("job {} is {} again", job.id, job.state)
            })
        }
        JobCommand::Rm { id, client } => {
            let job = client.client()?.delete_job(id).await?;
            print(&client, &job, || {
                format!("job {} ({}) is deleted", job.id, job.state)
            })
        }
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut request = SubmitJob {
        module: args.module,
        max_attempts: args.max_attempts,
        timeout_ms: args.limits.timeout_ms,
        fuel: args.limits.fuel,
        memory_limit_bytes: args.limits.memory_limit_bytes,
        queue: args.queue,
        priority: args.priority,
        idempotency_key: args.idempotency_key,
        concurrency_key: args.concurrency_key,
        ..SubmitJob::default()
    };
    match args.input.read()? {
        JobInput::Json(json) => {
            request.input = Some(JsonText::parse(&json).context("--input must be valid JSON")?);
        }
        JobInput::Base64(encoded) => request.input_base64 = Some(encoded),
        JobInput::Bytes(bytes) => {
            use base64::Engine as _;
            request.input_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    let client = args.client.client()?.with_traceparent(args.traceparent);
    let submitted = client.submit(&request).await?;
    if !args.wait {
        return print(&args.client, &submitted, || {
            let verb = if submitted.created {
                "submitted"
            } else {
                "already submitted (same idempotency key):"
            };
            format!("{verb} job {} ({})", submitted.job.id, submitted.job.state)
        });
    }
    let job = client.wait(submitted.job.id, args.wait_timeout).await?;
    print(&args.client, &job, || describe_job(&job))?;
    // As `taskflow run` does, so that a script can tell.
    if job.state != JobState::Succeeded {
        bail!("job {} ended {}", job.id, job.state);
    }
    Ok(())
}

pub(super) fn print<T: Serialize>(
    args: &ClientArgs,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if args.json {
        println!("{}", printable_json(&serde_json::to_string_pretty(value)?));
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn describe_module(module: &ModuleView) -> String {
    let mut text = format!(
        "{}  {:>10} bytes  {}",
        module.hash,
        module.size_bytes,
        module.created_at.format("%Y-%m-%d %H:%M:%S")
    );
    if let Some(names) = module.names.as_ref().filter(|names| !names.is_empty()) {
        text.push_str(&format!("  named {}", names.join(", ")));
    }
    text
}

fn describe_move(moved: &NameMoveView) -> String {
    format!(
        "{} -> {} (was {}) by {} at {}",
        moved.name,
        moved.module,
        moved.previous.as_deref().unwrap_or("nothing"),
        moved.moved_by,
        moved.moved_at.format("%Y-%m-%d %H:%M:%S")
    )
}

/// A job as a few aligned lines.
pub fn describe_job(job: &JobView) -> String {
    let mut lines = vec![
        format!("job       {}", job.id),
        format!("state     {}", job.state),
        format!("module    {}", job.module),
        format!("queue     {} (priority {})", job.queue, job.priority),
        format!(
            "attempts  {} of {} ({} left)",
            job.attempt, job.max_attempts, job.attempts_left
        ),
        format!("created   {}", job.created_at),
    ];
    if let Some(finished) = job.finished_at {
        lines.push(format!("finished  {finished}"));
    }
    if let Some(usage) = &job.resource_use {
        lines.push(format!(
            "used      {} fuel, {:.3} ms",
            usage.fuel_consumed.unwrap_or(0),
            usage.duration_ms.unwrap_or(0.0)
        ));
    }
    if let Some(error) = &job.last_error {
        lines.push(format!(
            "error     {}: {}",
            printable(error["kind"].as_str().unwrap_or("?")),
            printable(error["message"].as_str().unwrap_or(""))
        ));
    }
    if let Some(output) = &job.output {
        lines.push(format!("output    {}", printable(&output.to_string())));
    } else if let Some(output) = &job.output_base64 {
        lines.push(format!("output    (base64) {output}"));
    }
    lines.join("\n")
}

/// Attempts with their logs.
pub fn describe_attempts(list: &AttemptList) -> String {
    if list.attempts.is_empty() {
        return format!("job {} has no finished attempts yet", list.job_id);
    }
    let mut lines = Vec::new();
    for attempt in &list.attempts {
        let reason = match (&attempt.error_kind, &attempt.error_message) {
            (Some(kind), Some(message)) => {
                format!(" [{}] {}", printable(kind), printable(message))
            }
            _ => String::new(),
        };
        let memory = attempt
            .memory_bytes
            .map(|bytes| format!(", {} KiB memory", bytes.unsigned_abs().div_ceil(1024)))
            .unwrap_or_default();
        lines.push(format!(
            "#{} {} on {} (token {}, {:.3} ms, {} fuel{memory}){reason}",
            attempt.attempt,
            attempt.outcome.as_str(),
            attempt.worker_id,
            attempt.lease_token,
            attempt.duration_ms.unwrap_or(0.0),
            attempt.fuel_consumed.unwrap_or(0),
        ));
        for line in attempt.logs.as_array().into_iter().flatten() {
            let source = printable(line["source"].as_str().unwrap_or("?"));
            let level = line["level"]
                .as_str()
                .map(|l| format!(" {}", printable(l)))
                .unwrap_or_default();
            lines.push(format!(
                "    {source}{level}: {}",
                printable(line["message"].as_str().unwrap_or(""))
            ));
        }
        if attempt.logs_dropped > 0 {
            lines.push(format!("    ({} more lines dropped)", attempt.logs_dropped));
        }
        lines.extend(
            attempt
                .requests
                .as_array()
                .into_iter()
                .flatten()
                .map(describe_request),
        );
        if attempt.requests_dropped > 0 {
            lines.push(format!(
                "    ({} more requests not recorded)",
                attempt.requests_dropped
            ));
        }
    }
    lines.join("\n")
}

/// `    GET https://host:443/path -> 200 (12 B out, 340 B in, 5.2 ms)`, or
/// the error and why in place of the status.
fn describe_request(request: &serde_json::Value) -> String {
    let result = match (request["status"].as_u64(), request["error"].as_str()) {
        (_, Some(error)) => {
            let reason = printable(request["reason"].as_str().unwrap_or(""));
            format!("{} ({reason})", printable(&error.to_uppercase()))
        }
        (Some(status), None) => status.to_string(),
        (None, None) => "?".to_owned(),
    };
    format!(
        "    http {} {} -> {result} ({} B out, {} B in, {:.1} ms)",
        printable(request["method"].as_str().unwrap_or("?")),
        printable(request["url"].as_str().unwrap_or("?")),
        request["bytes_out"].as_u64().unwrap_or(0),
        request["bytes_in"].as_u64().unwrap_or(0),
        request["duration_ms"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::types::AttemptView;
    use crate::job::AttemptOutcome;

    /// What a task wrote reaches an operator's terminal: a guest that logs
    /// an escape sequence (OSC 52 writes the clipboard, CSI 2J clears the
    /// screen) must not get to run it there.
    #[test]
    fn what_a_task_wrote_is_printed_with_its_control_characters_escaped() {
        let hostile = "\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2J\u{9b}31m\u{202e}";
        let attempt = AttemptView {
            attempt: 1,
            lease_token: 7,
            worker_id: "w1".to_owned(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            outcome: AttemptOutcome::Failed,
            error_kind: Some("guest_error".to_owned()),
            error_message: Some(format!("failed {hostile}")),
            fuel_consumed: Some(1),
            memory_bytes: None,
            duration_ms: Some(1.0),
            logs: json!([{"source": "host_log", "level": "info", "message": hostile}]),
            logs_dropped: 0,
            requests: json!([{"method": "GET", "url": format!("https://example.com/{hostile}"),
                              "error": "denied", "reason": hostile}]),
            requests_dropped: 0,
        };
        let printed = describe_attempts(&AttemptList {
            job_id: uuid::Uuid::nil(),
            attempts: vec![attempt],
            next_cursor: None,
        });
        let controls: Vec<char> = printed
            .chars()
            .filter(|&c| c != '\n' && (c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)))
            .collect();
        assert!(controls.is_empty(), "{controls:?} in {printed:?}");
        assert!(printed.contains(r"\u{1b}]52;c;ZXZpbA=="), "{printed}");
    }
}
