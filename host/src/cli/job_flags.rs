//! One job's flags on the command line (`taskflow job submit`, `taskflow
//! run`): its input and its own limits. The server's flags, which configure
//! a process rather than a job, are in `cli/flags.rs`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::job::JobInput;

/// A task's input on the command line (`taskflow job submit`, `taskflow
/// run`).
#[derive(Debug, Clone, Args)]
pub struct InputFlags {
    /// Input as JSON; `null` when neither this nor `--input-file` is given.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input bytes from this file (passed as-is).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
}

impl InputFlags {
    /// The input these flags give.
    ///
    /// # Errors
    ///
    /// If `--input-file` cannot be read.
    pub fn read(&self) -> anyhow::Result<JobInput> {
        Ok(match (&self.input, &self.input_file) {
            (Some(json), _) => JobInput::Json(json.clone()),
            (None, Some(file)) => JobInput::Bytes(
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
            ),
            (None, None) => JobInput::Json("null".to_owned()),
        })
    }
}

/// A job's own limits on the command line; unset takes the default.
#[derive(Debug, Clone, Args)]
pub struct AttemptLimitFlags {
    /// Wall-clock limit per attempt, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// CPU budget per attempt, in fuel units.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit per attempt, in bytes.
    #[arg(long)]
    pub memory_limit_bytes: Option<u64>,
}
