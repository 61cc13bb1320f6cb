//! Telling a service manager how `serve` is doing (systemd's `Type=notify`, see `packaging/ordersync.service`):
//! ready once the database is migrated and the HTTP port listens, stopping when a signal asks it to. Nothing
//! is sent when `NOTIFY_SOCKET` is not set (run by hand, in a container, in tests).

use sd_notify::NotifyState;

/// `READY=1`: `systemctl start` returns, and units ordered after ordersync start.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// `STOPPING=1`: the shutdown has begun (the reconciler finishes the order in hand).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "telling the service manager (NOTIFY_SOCKET) failed");
    }
}
