//! `ordersync migrate`: create or update ordersync's own tables.

use crate::app;
use crate::config::Config;

use super::app_error;

pub(super) async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = app::connect_store(config).await.map_err(app_error)?;
    let applied = store.migrate().await.map_err(|e| app_error(e.into()))?;
    if applied.is_empty() {
        println!("ordersync's tables are up to date in {}", store.url());
    } else {
        println!("applied {} to {}", applied.join(", "), store.url());
    }
    Ok(())
}
