//! The `ordersync` binary: parse the command line, start tracing, run the command, map the outcome to
//! an exit code (0 ok, 1 failure at run time, 2 usage or configuration, 3 mismatches found by audit).

use std::process::ExitCode;

use clap::Parser;
use ordersync::cli::{self, Cli, UsageError};

fn main() -> ExitCode {
    ordersync::memory::limit_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let (format, filter) = cli.logging();
    ordersync::telemetry::init(format, filter.as_deref());
    match cli::run(cli).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) if error.is::<UsageError>() => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {}", each_cause_once(&error));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each said once: a cause whose text its parent already contains (an error
/// that shows its source in its own message) is not repeated.
fn each_cause_once(error: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if said.contains(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}
