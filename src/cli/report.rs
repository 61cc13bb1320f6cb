//! `ordersync report`: the SLA report over settled orders (text, JSON, HTML).

use anyhow::Context;

use crate::app;
use crate::config::{self, Config};

use super::{app_error, ReportFormat, UsageError};

pub(super) async fn report(
    config: &Config,
    since: &str,
    format: ReportFormat,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let window = config::parse_duration(since).map_err(|e| UsageError(format!("--since {since:?}: expected {e}")))?;
    // Read-only: on a database never migrated, the report is simply empty.
    let store = app::connect_store(config).await.map_err(app_error)?;
    let until = chrono::Utc::now();
    let since = until - chrono::Duration::from_std(window).context("--since is too long")?;
    let settlements = store.settlements_since(since).await.context("reading settled orders")?;
    let report = crate::report::build(&settlements, since, until);
    let rendered = match format {
        ReportFormat::Text => crate::report::text(&report),
        ReportFormat::Json => crate::report::json(&report),
        ReportFormat::Html => crate::report::html(&report),
    };
    match output {
        Some(path) => std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{rendered}"),
    }
    Ok(())
}
