//! Tracing setup: human-readable text by default, JSON lines with `--log-format json`; the filter comes
//! from `ORDERSYNC_LOG` (default `info,sqlx=warn`). Deliberately not here: what to log (each module).

use std::io::IsTerminal;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, ENV_LOG};

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Libraries that log requests and frames (with their `Authorization` header or the WebSocket subscribe
/// frame, both carrying a signed JWT) at trace: their trace events are dropped whatever `ORDERSYNC_LOG`
/// asks for (their other levels follow it).
const CAPPED: [&str; 7] = ["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "reqwest", "h2", "rustls"];

/// Install the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER)).unwrap_or_else(|error| {
        eprintln!("{ENV_LOG}: {error}; using {DEFAULT_FILTER}");
        EnvFilter::new(DEFAULT_FILTER)
    });
    let no_jwt = filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !CAPPED
                .iter()
                .any(|target| meta.target() == *target || meta.target().starts_with(&format!("{target}::")))
    });
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::stderr().is_terminal();
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Text => tracing_subscriber::registry().with(text.with_filter(filter).with_filter(no_jwt)).try_init(),
        LogFormat::Json => {
            let json = text.json().flatten_event(true).with_current_span(false);
            tracing_subscriber::registry().with(json.with_filter(filter).with_filter(no_jwt)).try_init()
        }
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
