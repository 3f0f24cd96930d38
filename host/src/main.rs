//! The `taskflow` binary. See `taskflow --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    taskflow::telemetry::no_error_backtraces_by_default();
    let cli = taskflow::cli::Cli::parse();
    // A compiler process (started by the API or a worker) is single-minded
    // and runs under a memory limit: no runtime, no logging.
    if let taskflow::cli::Command::CompileComponent(args) = &cli.command {
        return taskflow::sandbox::compiler::child_main(args.optimize, args.check_only);
    }
    let runtime = match cli.runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: taskflow::cli::Cli) -> std::process::ExitCode {
    taskflow::telemetry::init_logging();
    match taskflow::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
