//! The `taskflow` binary. See `taskflow --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    taskflow::telemetry::init_logging();
    let cli = taskflow::cli::Cli::parse();
    match taskflow::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
