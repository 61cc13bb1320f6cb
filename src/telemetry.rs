//! Tracing setup: human-readable text by default, JSON lines with `--log-format json`; the filter comes
//! from `ORDERSYNC_LOG` (default `info,sqlx=warn`). Deliberately not here: what to log (each module).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ENV_LOG};

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Libraries that log requests and frames (with their `Authorization` header or the WebSocket subscribe
/// frame, both carrying a signed JWT) at trace: capped at debug whatever `ORDERSYNC_LOG` asks for.
const CAPPED: [&str; 7] = ["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "reqwest", "h2", "rustls"];

/// Install the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let mut filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER)).unwrap_or_else(|error| {
        eprintln!("{ENV_LOG}: {error}; using {DEFAULT_FILTER}");
        EnvFilter::new(DEFAULT_FILTER)
    });
    for target in CAPPED {
        if let Ok(directive) = format!("{target}=debug").parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
