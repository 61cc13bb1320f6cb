//! `ordersync serve`: the service until SIGINT/SIGTERM; SIGHUP re-reads the configuration (`crate::reload`).

use tokio_util::sync::CancellationToken;

use crate::app::{self, App};
use crate::config::{self, Config};

use super::{app_error, load_config, signal_token};
use crate::config::settings::Given;

pub(super) async fn serve(config: &Config, given: &Given, no_migrate: bool) -> anyhow::Result<()> {
    let app = App::build(config, app::AppParts { no_migrate, ..app::AppParts::default() }).await.map_err(app_error)?;
    let token = signal_token();
    tokio::spawn(reload_on_hangup(given.clone(), config.clone(), app.reload(), token.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        revision = crate::metrics::REVISION,
        listen = %app.addr(),
        database = app.store().url(),
        backend = app.store().backend().as_str(),
        exchange = %config.coinbase.api_url,
        poll_interval = %config::format_duration(config.poll_interval),
        replica = %config.replica,
        accounts = config.accounts.len(),
        "ordersync started"
    );
    // An API moved elsewhere (a proxy, a test exchange) with the user channel still on Coinbase is rarely meant.
    if config.coinbase.websocket
        && config.coinbase.api_url != config::DEFAULT_COINBASE_API_URL
        && config.coinbase.ws_url == crate::exchange::ws::DEFAULT_USER_WS_URL
    {
        tracing::warn!(
            exchange = %config.coinbase.api_url,
            websocket = %config.coinbase.ws_url,
            "the REST API is not Coinbase's but the user channel is: set --coinbase-ws-url too, or --websocket=off"
        );
    }
    app.run(token).await.map_err(app_error)
}

/// On each `SIGHUP`, read the configuration again (file, environment and flags as at start) and take on
/// what can change at run time (`reload`); say what changed and what waits for a restart. A configuration
/// that does not resolve changes nothing.
pub(super) async fn reload_on_hangup(given: Given, mut running: Config, reload: app::Reload, token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP: the configuration is read at start only");
                return;
            }
        };
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let new = match load_config(&given) {
                Ok(new) => new,
                Err(error) => {
                    // Every bad key on the one line, so that a log search finds them with the refusal.
                    let error = error.to_string().lines().map(str::trim).collect::<Vec<_>>().join(" ");
                    tracing::error!(signal = "SIGHUP", %error, "the configuration was not reloaded; running on as before");
                    continue;
                }
            };
            let changes = crate::reload::changes(&running, &new);
            running = crate::reload::merged(&running, &new);
            reload.apply(&running);
            if changes.is_empty() {
                tracing::info!(signal = "SIGHUP", "configuration read again: nothing changed");
            } else {
                tracing::info!(
                    signal = "SIGHUP",
                    applied = ?changes.applied,
                    needs_restart = ?changes.restart,
                    "configuration reloaded"
                );
            }
            if !changes.restart.is_empty() {
                tracing::warn!(
                    signal = "SIGHUP",
                    keys = ?changes.restart,
                    "changed but kept as they run until a restart"
                );
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (given, running, reload);
        token.cancelled().await;
    }
}
