//! `ordersync prune`: delete ordersync's own old rows (never the bot's).

use anyhow::Context;

use crate::app;
use crate::config::{self, Config};
use crate::db::StoreError;

use super::{app_error, UsageError};

pub(super) async fn prune(
    config: &Config,
    older_than: Option<std::time::Duration>,
    events: bool,
) -> anyhow::Result<()> {
    let Some(older_than) = older_than.or(config.retention) else {
        return Err(UsageError("retention is off: say how old with --older-than, e.g. --older-than 90d".into()).into());
    };
    if older_than < config.verify_window {
        return Err(UsageError(format!(
            "--older-than {} is inside the verify window ({}): settlements that young keep recent terminal rows \
             from being settled a second time; use at least {}",
            config::format_duration(older_than),
            config::format_duration(config.verify_window),
            config::format_duration(config.verify_window)
        ))
        .into());
    }
    let store = app::connect_store(config).await.map_err(app_error)?;
    if !store.has_own_tables() {
        return Err(app_error(StoreError::NotMigrated { url: store.url().to_string() }.into()));
    }
    let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let before = chrono::Utc::now().checked_sub_signed(age).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let pruned = store.prune(before, events).await.context("pruning")?;
    println!(
        "deleted, older than {}: {} check states of settled orders, {} settlements, {} audit events{}",
        config::format_duration(older_than),
        pruned.check_states,
        pruned.settlements,
        pruned.events,
        if events { "" } else { " (kept: add --events to delete them)" }
    );
    Ok(())
}
