//! The `taskflow` binary. See `taskflow --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // wasmtime creates an error value on a hot path (dropping a store), and
    // with RUST_BACKTRACE set every error captures a backtrace: about 8 µs
    // per job. Panics keep their backtraces; RUST_LIB_BACKTRACE=1 restores
    // them for errors too.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run())
}

async fn run() -> std::process::ExitCode {
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
