//! `taskflow queue get|set|limit|pause|resume|list`: a queue's grants,
//! limits and pause from the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::ClientArgs;
use super::client::print;
use crate::api::body::without_values;
use crate::api::types::{PatchQueue, PutQueue, PutSecret, QueueStatsView, QueueView};
use crate::queue::{RateSpec, RetentionSpec, SecretValue};

/// `taskflow queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Show a queue's settings (secrets by name and hosts, never value).
    Get {
        /// The queue.
        name: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a queue's settings: whatever is not given is removed.
    Set(SetArgs),
    /// Change only the limits and retention given, keeping the rest.
    Limit(LimitArgs),
    /// Stop workers claiming the queue's jobs (running ones finish,
    /// submissions are still accepted).
    Pause {
        /// The queue.
        name: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let workers claim the queue's jobs again.
    Resume {
        /// The queue.
        name: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List every queue configured or holding jobs, with its jobs per
    /// state and its last minute's and hour's attempts.
    List {
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `taskflow queue set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The queue.
    pub name: String,
    /// A host tasks may call: `https://api.example.com`,
    /// `https://*.example.com:8443`, `http://10.0.0.5:9000`. Repeat for more.
    #[arg(long = "allow-host", value_name = "URL")]
    pub allowed_hosts: Vec<String>,
    /// A value tasks may read, as KEY=VALUE. Repeat for more.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    pub config: Vec<(String, String)>,
    /// A secret and the hosts it may be sent to, as NAME=URL[,URL…]. Its value
    /// is read from the environment variable TASKFLOW_SECRET_<NAME> (upper
    /// case, `.` and `-` as `_`), never from the command line; when that is
    /// unset the stored value is kept.
    #[arg(long = "secret", value_name = "NAME=URL[,URL…]", value_parser = key_value)]
    pub secrets: Vec<(String, String)>,
    /// Limits, as `taskflow queue limit` takes them (unset: no limit).
    #[command(flatten)]
    pub limits: LimitFlags,
    /// Retention (unset: the defaults).
    #[command(flatten)]
    pub retention: RetentionFlags,
    /// Read the settings from a JSON file instead (the body of
    /// `PUT /v1/queues/{name}`, secret values included).
    #[arg(long, conflicts_with_all = [
        "allowed_hosts", "config", "secrets", "max_running", "max_running_per_key", "rate",
        "retain_succeeded", "retain_dead", "retain_cancelled",
    ])]
    pub file: Option<PathBuf>,
    /// API address and output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `taskflow queue limit`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// The queue.
    pub name: String,
    /// The limits to change; `none` removes one.
    #[command(flatten)]
    pub limits: LimitFlags,
    /// The retention to change.
    #[command(flatten)]
    pub retention: RetentionFlags,
    /// API address and output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A queue's limits on the command line; each takes `none` to remove it.
#[derive(Debug, Args)]
pub struct LimitFlags {
    /// Most jobs of the queue running at once across all workers.
    #[arg(long, value_name = "N|none", value_parser = count_or_none)]
    pub max_running: Option<OrNone<u32>>,
    /// Most jobs of one concurrency key running at once.
    #[arg(long, value_name = "N|none", value_parser = count_or_none)]
    pub max_running_per_key: Option<OrNone<u32>>,
    /// Most attempt starts in any window of PERIOD, as N/PERIOD (`20/1s`,
    /// `100/1m`).
    #[arg(long, value_name = "N/PERIOD|none", value_parser = rate_or_none)]
    pub rate: Option<OrNone<RateSpec>>,
}

/// A limit's value on the command line, or `none` to remove it (a newtype,
/// as clap reads `Option<Option<T>>` as a flag whose value may be left out).
#[derive(Debug, Clone)]
pub struct OrNone<T>(Option<T>);

impl LimitFlags {
    /// A `PATCH` of these limits: each absent, removed, or set.
    fn patch(&self) -> PatchQueue {
        PatchQueue {
            max_running: self.max_running.clone().map(|limit| limit.0),
            max_running_per_key: self.max_running_per_key.clone().map(|limit| limit.0),
            rate: self.rate.clone().map(|rate| rate.0),
            ..PatchQueue::default()
        }
    }
}

/// How long a queue keeps its finished jobs: a duration (`7d`, `36h`) or
/// `forever`, per state.
#[derive(Debug, Args)]
pub struct RetentionFlags {
    /// How long succeeded jobs are kept (default 7 days).
    #[arg(long, value_name = "DURATION|forever")]
    pub retain_succeeded: Option<String>,
    /// How long dead jobs are kept (default 30 days).
    #[arg(long, value_name = "DURATION|forever")]
    pub retain_dead: Option<String>,
    /// How long cancelled jobs are kept (default 30 days).
    #[arg(long, value_name = "DURATION|forever")]
    pub retain_cancelled: Option<String>,
}

impl RetentionFlags {
    /// The retention these flags give, if any.
    fn body(&self) -> Option<RetentionSpec> {
        let body = RetentionSpec {
            succeeded: self.retain_succeeded.clone(),
            dead: self.retain_dead.clone(),
            cancelled: self.retain_cancelled.clone(),
        };
        (body != RetentionSpec::default()).then_some(body)
    }
}

fn count_or_none(text: &str) -> Result<OrNone<u32>, String> {
    if text == "none" {
        return Ok(OrNone(None));
    }
    text.parse()
        .map(|count| OrNone(Some(count)))
        .map_err(|_| "expected a whole number or none".to_owned())
}

fn rate_or_none(text: &str) -> Result<OrNone<RateSpec>, String> {
    if text == "none" {
        return Ok(OrNone(None));
    }
    let (limit, period) = text
        .split_once('/')
        .ok_or_else(|| "expected N/PERIOD, such as 20/1s, or none".to_owned())?;
    Ok(OrNone(Some(RateSpec {
        limit: limit
            .parse()
            .map_err(|_| format!("{limit:?} is not a whole number"))?,
        period: period.to_owned(),
    })))
}

/// Runs a `taskflow queue` command.
pub async fn run_queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Get { name, client } => {
            let queue = client.client()?.get_queue(&name).await?;
            print(&client, &queue, || describe_queue(&queue))
        }
        QueueCommand::Set(args) => {
            let settings = match &args.file {
                Some(file) => {
                    let text = std::fs::read(file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    // Without the values: the file holds secrets.
                    serde_json::from_slice(&text)
                        .map_err(|error| anyhow::anyhow!(without_values(&error.to_string())))
                        .with_context(|| format!("{} is not a queue's settings", file.display()))?
                }
                None => settings_from_flags(&args),
            };
            let queue = args
                .client
                .client()?
                .put_queue(&args.name, &settings)
                .await?;
            print(&args.client, &queue, || describe_queue(&queue))
        }
        QueueCommand::Limit(args) => {
            let patch = PatchQueue {
                retention: args.retention.body(),
                ..args.limits.patch()
            };
            let queue = args
                .client
                .client()?
                .patch_queue(&args.name, &patch)
                .await?;
            print(&args.client, &queue, || describe_queue(&queue))
        }
        QueueCommand::Pause { name, client } => {
            let queue = client.client()?.set_queue_paused(&name, true).await?;
            print(&client, &queue, || describe_queue(&queue))
        }
        QueueCommand::Resume { name, client } => {
            let queue = client.client()?.set_queue_paused(&name, false).await?;
            print(&client, &queue, || describe_queue(&queue))
        }
        QueueCommand::List { client } => {
            let list = client.client()?.list_queues().await?;
            print(&client, &list, || queue_table(&list.queues))
        }
    }
}

fn settings_from_flags(args: &SetArgs) -> PutQueue {
    let limits = args.limits.patch();
    let secrets = args
        .secrets
        .iter()
        .map(|(name, hosts)| {
            let secret = PutSecret {
                value: std::env::var(secret_variable(name))
                    .ok()
                    .map(SecretValue::new),
                allowed_hosts: hosts.split(',').map(str::to_owned).collect(),
            };
            (name.clone(), secret)
        })
        .collect();
    PutQueue {
        allowed_hosts: args.allowed_hosts.clone(),
        config: args.config.iter().cloned().collect::<BTreeMap<_, _>>(),
        secrets,
        max_running: limits.max_running.flatten(),
        max_running_per_key: limits.max_running_per_key.flatten(),
        rate: limits.rate.flatten(),
        retention: args.retention.body(),
    }
}

/// The environment variable `taskflow queue set --secret NAME=…` reads.
pub fn secret_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("TASKFLOW_SECRET_{name}")
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

/// One line per queue: its jobs and attempts, and its limit.
fn queue_table(queues: &[QueueView]) -> String {
    let mut lines = vec![format!(
        "{:<24} {:>9} {:>9} {:>9} {:>10} {:>8} {:>11} {:>11} {:>9}",
        "QUEUE",
        "WAITING",
        "OLDEST",
        "RUNNING",
        "SUCCEEDED",
        "DEAD",
        "STARTS 1m",
        "FAILS 1m",
        "STARTS 1h"
    )];
    for queue in queues {
        let jobs = &queue.stats.jobs;
        let running = match queue.max_running {
            Some(max) => format!("{}/{max}", running_and_stopping(&queue.stats)),
            None => running_and_stopping(&queue.stats),
        };
        let name = if queue.paused {
            format!("{} (paused)", queue.name)
        } else {
            queue.name.clone()
        };
        lines.push(format!(
            "{name:<24} {:>9} {:>9} {running:>9} {:>10} {:>8} {:>11} {:>11} {:>9}",
            jobs.scheduled + jobs.available + jobs.retrying,
            oldest_age(&queue.stats),
            jobs.succeeded,
            jobs.dead,
            queue.stats.last_minute.started,
            queue.stats.last_minute.failed,
            queue.stats.last_hour.started
        ));
    }
    lines.join("\n")
}

/// The jobs running, and after a `+` the places still held by cancelled
/// ones stopping, if any: what the queue's `max_running` limits.
fn running_and_stopping(stats: &QueueStatsView) -> String {
    match stats.stopping {
        0 => stats.jobs.running.to_string(),
        stopping => format!("{}+{stopping}", stats.jobs.running),
    }
}

/// How long the oldest available job has waited, for people: `-` if none.
fn oldest_age(stats: &QueueStatsView) -> String {
    match stats.oldest_available_age_ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10_000 => format!("{ms}ms"),
        Some(ms) if ms < 600_000 => format!("{}s", ms / 1000),
        Some(ms) if ms < 36_000_000 => format!("{}m", ms / 60_000),
        Some(ms) => format!("{}h", ms / 3_600_000),
    }
}

fn describe_queue(queue: &QueueView) -> String {
    let mut lines = vec![format!("queue {}", queue.name)];
    let jobs = &queue.stats.jobs;
    lines.push(format!(
        "  jobs   {} scheduled, {} available (oldest waiting {}), {} running{}, {} retrying, \
         {} succeeded, {} dead, {} cancelled",
        jobs.scheduled,
        jobs.available,
        oldest_age(&queue.stats),
        jobs.running,
        match queue.stats.stopping {
            0 => String::new(),
            stopping => format!(" (+{stopping} stopping)"),
        },
        jobs.retrying,
        jobs.succeeded,
        jobs.dead,
        jobs.cancelled
    ));
    for (window, activity) in [
        ("minute", &queue.stats.last_minute),
        ("hour", &queue.stats.last_hour),
    ] {
        lines.push(format!(
            "  last {window}: {} started, {} succeeded, {} failed",
            activity.started, activity.succeeded, activity.failed
        ));
    }
    if queue.created_at.is_none() {
        lines.push("  never configured: grants nothing".to_owned());
    }
    if queue.paused {
        lines.push("  paused: no job of it starts".to_owned());
    }
    if let Some(max) = queue.max_running {
        lines.push(format!("  limit  at most {max} running"));
    }
    if let Some(max) = queue.max_running_per_key {
        lines.push(format!(
            "  limit  at most {max} running per concurrency key"
        ));
    }
    let keep = |state: &str, keep: &Option<String>| {
        format!("  keep   {state} jobs {}", keep.as_deref().unwrap_or("?"))
    };
    lines.push(keep("succeeded", &queue.retention.succeeded));
    lines.push(keep("dead", &queue.retention.dead));
    lines.push(keep("cancelled", &queue.retention.cancelled));
    if let Some(rate) = &queue.rate {
        lines.push(format!(
            "  limit  at most {} starts per {}",
            rate.limit, rate.period
        ));
    }
    for host in &queue.allowed_hosts {
        lines.push(format!("  allow  {host}"));
    }
    for (key, value) in &queue.config {
        lines.push(format!("  config {key}={value}"));
    }
    for (name, secret) in &queue.secrets {
        lines.push(format!(
            "  secret {name} -> {}",
            secret.allowed_hosts.join(", ")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_column_adds_the_places_cancelled_jobs_hold_while_stopping() {
        let mut stats = QueueStatsView::default();
        stats.jobs.running = 3;
        assert_eq!(running_and_stopping(&stats), "3");
        stats.stopping = 1;
        assert_eq!(running_and_stopping(&stats), "3+1");
    }
}
