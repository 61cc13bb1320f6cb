//! Tracing setup: human-readable text by default, JSON lines with `--log-format json`; the filter comes
//! from `--log` / `ORDERSYNC_LOG` or the file's `log` (default `info,sqlx=warn`) and can be swapped at run
//! time (`set_filter`, used by `SIGHUP`). Deliberately not here: what to log (each module).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Libraries that log requests and frames (with their `Authorization` header or the WebSocket subscribe
/// frame, both carrying a signed JWT) at trace: their trace events are dropped whatever `ORDERSYNC_LOG`
/// asks for (their other levels follow it).
const CAPPED: [&str; 7] = ["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "reqwest", "h2", "rustls"];

/// The installed subscriber's filter, to swap at run time.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Install the global subscriber; logs go to stderr so stdout stays for command output. A filter that does
/// not parse falls back to the default here: the configuration refuses it, naming `--log` / `ORDERSYNC_LOG`.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter =
        EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER)).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
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
            let json = text.json().flatten_event(true).with_current_span(false).with_span_list(true);
            tracing_subscriber::registry().with(json.with_filter(filter).with_filter(no_jwt)).try_init()
        }
    };
    // A second init (tests) keeps the first subscriber, and its filter.
    if result.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Filter logs with `filter` from now on (tracing `EnvFilter` syntax, `config::Config::log` checked it).
///
/// # Errors
/// The filter does not parse, or the subscriber is gone.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let parsed = EnvFilter::try_new(filter).map_err(|error| error.to_string())?;
    match FILTER.get() {
        Some(handle) => handle.reload(parsed).map_err(|error| error.to_string()),
        None => Ok(()),
    }
}
