//! `App::build(config, exchange, listener)` -> `App { addr(), run(token) }`: the only place that wires the
//! parts together. It owns the cancellation token's children and the task tracker; shutdown drains the
//! tasks within a bound.
//!
//! Deliberately not here: any logic of the parts it wires.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::account::AccountMap;
use crate::config::{
    AccountConfig, Config, EmailConfig, ENV_API_TOKEN, ENV_COINBASE_KEY_FILE, ENV_COINBASE_KEY_NAME,
    ENV_COINBASE_PRIVATE_KEY, ENV_DATABASE_URL,
};
use crate::db::{InstanceLock, Store, StoreError};
use crate::exchange::auth::{AuthError, CdpKey};
use crate::exchange::coinbase::CoinbaseClient;
use crate::exchange::{Exchange, ExchangeError};
use crate::http::{router, AppState};
use crate::listen::{Listener, ListenerSettings};
use crate::metrics::Metrics;
use crate::reconcile::{Accounts, Reconciler, Settings};
use crate::replica::{LeaseSettings, Ownership};

/// The longest any HTTP request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for tasks in hand.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is missing or cannot work; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl AppError {
    /// Whether the user can fix this by changing configuration (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AppError::Config(_)
                | AppError::Auth(_)
                | AppError::Store(
                    StoreError::MissingTable { .. }
                        | StoreError::Schema { .. }
                        | StoreError::NotMigrated { .. }
                        | StoreError::MayNotMigrate { .. }
                        | StoreError::BadUrl { .. }
                        | StoreError::Refused { .. }
                        | StoreError::MissingFile { .. }
                        | StoreError::AlreadyRunning { .. }
                        | StoreError::LockFile { .. }
                )
        )
    }
}

/// The bot's database's URL, or what to set.
fn database_url(config: &Config) -> Result<&str, AppError> {
    config.database_url.as_ref().map(|url| url.expose_secret()).ok_or_else(|| {
        AppError::Config(format!(
            "{ENV_DATABASE_URL} is not set: point it at the bot's database, e.g. sqlite://trades.db or \
             postgres://user@host/db (or --database-url, or database_url in the config file)"
        ))
    })
}

/// Connect to the bot's database named in the config.
pub async fn connect_store(config: &Config) -> Result<Store, AppError> {
    Ok(Store::connect(database_url(config)?, &config.trades).await?)
}

/// Refuse to serve `/api/` beyond loopback without a token.
fn check_listen(config: &Config, listen: SocketAddr) -> Result<(), AppError> {
    if config.api_token.is_none() && !listen.ip().is_loopback() {
        return Err(AppError::Config(format!(
            "{ENV_API_TOKEN} is required when listening on {listen} (not loopback): /api/ could otherwise reconcile \
             orders for anyone who can reach it"
        )));
    }
    Ok(())
}

/// What a command needs of the configuration before it starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// The bot's database's URL.
    pub database: bool,
    /// Every account's key, readable and each its own.
    pub keys: bool,
    /// The HTTP address, with a token unless it is loopback (`serve`).
    pub listen: bool,
}

/// Everything `needs` asks for that the configuration lacks or that cannot work, said at once (each is
/// checked again where it is used).
///
/// # Errors
/// The one problem as it is; several as one `AppError::Config` listing them.
pub fn preflight(config: &Config, needs: Needs) -> Result<(), AppError> {
    let mut problems = Vec::new();
    if needs.database {
        problems.extend(database_url(config).err());
    }
    if needs.keys {
        problems.extend(read_keys(config).err().into_iter().flatten());
    }
    if needs.listen {
        problems.extend(check_listen(config, config.listen).err());
    }
    if problems.len() > 1 {
        let list: Vec<String> = problems.iter().map(|problem| format!("  - {problem}")).collect();
        return Err(AppError::Config(format!("the configuration cannot work yet:\n{}", list.join("\n"))));
    }
    problems.pop().map_or(Ok(()), Err)
}

/// Claim the config's database for this process when it is SQLite, where one ordersync serves a file
/// (`db::InstanceLock`); nothing to claim on PostgreSQL. Hold the lock for as long as anything is written.
pub fn claim_database(config: &Config) -> Result<Option<InstanceLock>, AppError> {
    match &config.database_url {
        Some(url) => Ok(InstanceLock::claim(url.expose_secret())?),
        None => Ok(None),
    }
}

/// The Coinbase key of an account (the single key of the flags and environment is the account `default`).
pub fn key_of(account: &AccountConfig) -> Result<CdpKey, AppError> {
    match (&account.key_file, &account.private_key) {
        (Some(path), _) => Ok(CdpKey::from_file(account.key_name.as_deref(), path)?),
        (None, Some(secret)) => Ok(CdpKey::parse(account.key_name.as_deref().unwrap_or_default(), secret)?),
        (None, None) => Err(AppError::Config(format!(
            "{ENV_COINBASE_KEY_FILE} is not set: ordersync needs a Coinbase API key (a CDP key file, or the key in \
             {ENV_COINBASE_PRIVATE_KEY} with {ENV_COINBASE_KEY_NAME}). To try ordersync without credentials run \
             `ordersync demo`."
        ))),
    }
}

/// The Coinbase key the config names (its first account's).
pub fn key_from_config(config: &Config) -> Result<CdpKey, AppError> {
    match config.accounts.first() {
        Some(account) => key_of(account),
        None => Err(AppError::Config("no Coinbase account is configured".into())),
    }
}

/// Every account's key, in configuration order; every problem with them (a key missing, unreadable or
/// invalid, two accounts with one key) at once.
fn read_keys(config: &Config) -> Result<Vec<CdpKey>, Vec<AppError>> {
    let mut keys: Vec<CdpKey> = Vec::with_capacity(config.accounts.len());
    let mut problems = Vec::new();
    for account in &config.accounts {
        let key = match key_of(account) {
            Ok(key) => key,
            Err(error) if config.accounts.len() == 1 => {
                problems.push(error);
                continue;
            }
            Err(error) => {
                problems.push(AppError::Config(format!("account {:?}: {error}", account.name)));
                continue;
            }
        };
        // One key is one account: Coinbase limits it once, however many entries name it.
        if let Some(twin) = config.accounts.iter().zip(&keys).find(|(_, k)| k.name() == key.name()) {
            problems.push(AppError::Config(format!(
                "accounts {:?} and {:?} use the same API key {}: one key is one Coinbase account with one rate \
                 limit; give each [[accounts]] entry its own key",
                twin.0.name,
                account.name,
                key.name()
            )));
        }
        keys.push(key);
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// Every account's key and client, in configuration order: each key signs only its own account's
/// requests and has its own rate limiter, and asks only while `ownership` holds its account. Every key is
/// read before anything runs.
pub fn accounts_from_config(
    config: &Config,
    metrics: &Metrics,
    ownership: Arc<Ownership>,
) -> Result<(Accounts, Vec<CdpKey>), AppError> {
    let rules: Vec<_> = config.accounts.iter().map(AccountConfig::rule).collect();
    let map = AccountMap::new(&rules).map_err(|e| AppError::Config(e.to_string()))?;
    let keys = read_keys(config).map_err(|mut problems| problems.remove(0))?;
    let mut exchanges: Vec<Arc<dyn Exchange>> = Vec::with_capacity(config.accounts.len());
    for (account, key) in config.accounts.iter().zip(&keys) {
        let rate = NonZeroU32::new(account.rate_limit).unwrap_or(NonZeroU32::MIN);
        let client = CoinbaseClient::new(&config.coinbase.api_url, key.clone(), rate, metrics.clone())?;
        exchanges.push(Arc::new(client.with_account(&account.name).with_ownership(ownership.clone())));
    }
    Ok((Accounts::new(map, exchanges, ownership), keys))
}

/// The Coinbase client the config describes, with `key`.
pub fn coinbase_client(config: &Config, key: CdpKey, metrics: &Metrics) -> Result<Arc<dyn Exchange>, AppError> {
    let rate = NonZeroU32::new(config.coinbase.rate_limit).unwrap_or(NonZeroU32::MIN);
    let client = CoinbaseClient::new(&config.coinbase.api_url, key, rate, metrics.clone())?;
    Ok(Arc::new(client))
}

/// Who serves which accounts: on PostgreSQL the replicas share them through leases (`replica`), under
/// `name`; on SQLite this process, holding the file's lock, serves them all.
pub fn ownership_for(config: &Config) -> Arc<Ownership> {
    let postgres = config.database_url.as_ref().is_some_and(|url| url.expose_secret().starts_with("postgres"));
    if postgres {
        Arc::new(Ownership::leased(&config.replica))
    } else {
        let names: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
        Arc::new(Ownership::solo(&config.replica, &names))
    }
}

/// The reconciler settings from the config.
pub fn settings(config: &Config) -> Settings {
    Settings {
        poll_interval: config.poll_interval,
        grace: config.grace,
        flag_after: config.flag_after,
        batch_size: config.batch_size,
        verify_window: config.verify_window,
        not_found: config.not_found,
        brake: config.brake,
        observe_only: config.observe_only,
    }
}

/// Takes the reloadable settings of a configuration on in a running app (`SIGHUP`; `reload::merged` says
/// which). Cheap to clone.
#[derive(Clone)]
pub struct Reload {
    reconciler: Reconciler,
    metrics: Metrics,
    email: Option<Arc<watch::Sender<(EmailConfig, Duration)>>>,
}

impl Reload {
    /// Run on `config`'s thresholds, e-mail recipients and limits, and log filter from now on.
    pub fn apply(&self, config: &Config) {
        let before = self.reconciler.settings().poll_interval;
        self.reconciler.set_settings(settings(config));
        if config.poll_interval != before {
            // The loop sleeps out the old interval otherwise: a pass now, then the new interval.
            self.reconciler.wake();
        }
        self.metrics.set_stuck_after(config.stuck_after);
        if let (Some(sender), Some(email)) = (&self.email, &config.email) {
            sender.send_replace((email.clone(), config.stuck_after));
        }
        let filter = config.log.as_deref().unwrap_or(crate::telemetry::DEFAULT_FILTER);
        if let Err(error) = crate::telemetry::set_filter(filter) {
            tracing::warn!(%error, "the log filter was not changed");
        }
    }
}

/// What a caller may hand `App::build` instead of having it made from the config. Tests and the demo
/// pass a simulator's client, a socket bound to port 0, their own registry, or the key for the WebSocket.
#[derive(Default)]
pub struct AppParts {
    pub exchange: Option<Arc<dyn Exchange>>,
    pub listener: Option<TcpListener>,
    pub metrics: Option<Metrics>,
    /// The key for the user-channel WebSocket when `exchange` is given (otherwise the config's key).
    pub key: Option<CdpKey>,
    /// Leave ordersync's tables as they are (`serve --no-migrate`): refuse to start unless they are current.
    pub no_migrate: bool,
}

/// The running service's parts.
pub struct App {
    listener: TcpListener,
    state: AppState,
    reconciler: Reconciler,
    metrics_refresh: Duration,
    /// Each account's user channel: its settings and key (a listener runs while the account is served).
    websocket: Vec<(ListenerSettings, CdpKey)>,
    /// The alert task's e-mail settings and `stuck_after` (`SIGHUP` sends new ones).
    email: Option<Arc<watch::Sender<(EmailConfig, Duration)>>>,
    retention: Option<Duration>,
    /// One ordersync per SQLite file: held until the service has stopped.
    instance: Option<InstanceLock>,
    /// Replicas on PostgreSQL: the accounts come through leases.
    lease: Option<LeaseSettings>,
}

impl App {
    /// Wire the service; what `parts` leaves out is made from the config. The user-channel listener runs
    /// when the config allows it and there is a key.
    ///
    /// # Errors
    /// Configuration that cannot work, an unreachable database, a bad key, an address in use.
    pub async fn build(config: &Config, parts: AppParts) -> Result<App, AppError> {
        let AppParts { exchange, listener, metrics, key, no_migrate } = parts;
        let listen = listener.as_ref().and_then(|l| l.local_addr().ok()).unwrap_or(config.listen);
        check_listen(config, listen)?;
        let metrics = match metrics {
            Some(metrics) => metrics,
            None => Metrics::new(Registry::new(), config.stuck_after)
                .map_err(|e| AppError::Config(format!("registering metrics failed: {e}")))?,
        };
        // Every configuration, credential and schema error is found before anything is written.
        let (accounts, keys) = match exchange {
            Some(exchange) => (Accounts::single(exchange), key.into_iter().collect()),
            None => accounts_from_config(config, &metrics, ownership_for(config))?,
        };
        let ownership = accounts.ownership().clone();
        // The database's lock before the port: a second serve on one SQLite file is told that, not that the
        // port is taken.
        let instance = claim_database(config)?;
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(config.listen)
                .await
                .map_err(|source| AppError::Listen { addr: config.listen, source })?,
        };
        let mut store = connect_store(config).await?;
        if ownership.is_leased() {
            store = store.with_fence(ownership.clone());
        }
        if no_migrate {
            if !store.has_own_tables() {
                return Err(StoreError::NotMigrated { url: store.url().to_string() }.into());
            }
        } else {
            let applied = store.migrate().await?;
            if !applied.is_empty() {
                tracing::info!(migrations = ?applied, "applied ordersync migrations");
            }
        }
        let reconciler = Reconciler::with_accounts(store.clone(), accounts, metrics.clone(), settings(config));
        // Each account's own user channel, with its own key: it brings news of that account's orders only.
        let names: Vec<String> = reconciler.accounts().map().names().to_vec();
        metrics.accounts(&names);
        let lease = ownership.is_leased().then(|| LeaseSettings { lease: config.lease, accounts: names.clone() });
        let websocket: Vec<(ListenerSettings, CdpKey)> = keys
            .into_iter()
            .zip(names)
            .filter(|_| config.coinbase.websocket)
            .map(|(key, account)| {
                let settings = ListenerSettings {
                    account,
                    url: config.coinbase.ws_url.clone(),
                    stall_after: config.coinbase.websocket_stall_after,
                };
                (settings, key)
            })
            .collect();
        let state = AppState {
            store,
            metrics,
            reconciler: reconciler.clone(),
            api_token: config.api_token.clone().map(Arc::new),
        };
        let email = config.email.clone().map(|email| Arc::new(watch::channel((email, config.stuck_after)).0));
        state.metrics.observe_only.set(i64::from(config.observe_only));
        if config.observe_only {
            tracing::warn!(
                "observe-only: every check runs and every number is exported; nothing is written to the bot's table"
            );
        }
        Ok(App {
            listener,
            state,
            reconciler,
            metrics_refresh: config.metrics_refresh,
            websocket,
            email,
            retention: config.retention,
            instance,
            lease,
        })
    }

    /// What takes on a reloaded configuration while the app runs.
    pub fn reload(&self) -> Reload {
        Reload { reconciler: self.reconciler.clone(), metrics: self.state.metrics.clone(), email: self.email.clone() }
    }

    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Run until `token` is cancelled, then drain: the reconciler finishes the order in hand, the HTTP
    /// server finishes requests in flight, all within `SHUTDOWN_GRACE`.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run(self, token: CancellationToken) -> Result<(), AppError> {
        let tracker = TaskTracker::new();
        // Every known bot's counters exist at 0 before anything can increment them: the bots ordersync has
        // settled orders of, and (through the first refresh) the bots with pending orders.
        match self.state.store.known_bots(crate::metrics::MAX_LABEL_VALUES + 1).await {
            Ok(bots) => {
                for bot in bots {
                    self.state.metrics.bot_label(bot.as_deref());
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the bots ordersync knows"),
        }
        self.state.metrics.refresh_pending(&self.state.store).await;
        let ownership = self.reconciler.accounts().ownership().clone();
        if let Some(lease) = self.lease {
            // The first round before any work: a replica starts with its share of the accounts.
            crate::replica::round(&self.state.store, &ownership, &lease).await;
            let (store, ownership, child) = (self.state.store.clone(), ownership.clone(), token.child_token());
            tracker.spawn(crate::replica::run(store, ownership, lease, child));
        }
        // `ordersync_account_owner`, and a pass at once when an account is taken.
        let (metrics, reconciler, child) = (self.state.metrics.clone(), self.reconciler.clone(), token.child_token());
        tracker.spawn(async move {
            let ownership = reconciler.accounts().ownership().clone();
            let mut watch = ownership.watch();
            let mut before: Vec<bool> = Vec::new();
            loop {
                let now: Vec<bool> = reconciler.accounts().map().names().iter().map(|a| ownership.owns(a)).collect();
                for (account, owns) in reconciler.accounts().map().names().iter().zip(&now) {
                    metrics.account_owner.with_label_values(&[account.as_str()]).set(i64::from(*owns));
                    if !owns {
                        // What this replica last heard with the key is no news once another serves the account.
                        metrics.exchange_up.with_label_values(&[account.as_str()]).set(0);
                    }
                }
                if now.iter().zip(before.iter().chain(std::iter::repeat(&false))).any(|(now, was)| *now && !*was) {
                    reconciler.wake();
                }
                before = now;
                tokio::select! {
                    () = child.cancelled() => return,
                    _ = watch.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        let reconciler = self.reconciler.clone();
        let child = token.child_token();
        tracker.spawn(async move { reconciler.run(child).await });
        let reconciler = self.reconciler.clone();
        let child = token.child_token();
        tracker.spawn(async move { reconciler.run_due(child).await });
        let reconciler = self.reconciler.clone();
        let (metrics, child) = (self.state.metrics.clone(), token.child_token());
        tracker.spawn(async move { keep_exchange_proven(reconciler, metrics, child).await });
        // Each account's user channel runs on the replica that serves the account.
        for (settings, key) in self.websocket {
            let account = settings.account.clone();
            let (reconciler, metrics) = (self.reconciler.clone(), self.state.metrics.clone());
            tracker.spawn(crate::replica::while_owned(ownership.clone(), account, token.child_token(), move |child| {
                Listener::new(settings.clone(), key.clone(), reconciler.clone(), metrics.clone()).run(child)
            }));
        }
        // The alert e-mails and the daily prune are the duties of whoever serves the first account: one
        // replica sends each e-mail.
        let duty = self.reconciler.accounts().map().name(0).to_string();
        if let Some(email) = &self.email {
            let (store, metrics, refresh, email) =
                (self.state.store.clone(), self.state.metrics.clone(), self.metrics_refresh, email.clone());
            tracker.spawn(crate::replica::while_owned(
                ownership.clone(),
                duty.clone(),
                token.child_token(),
                move |child| crate::alert::run(email.subscribe(), store.clone(), metrics.clone(), refresh, child),
            ));
        }
        if let Some(retention) = self.retention {
            let store = self.state.store.clone();
            tracker.spawn(crate::replica::while_owned(ownership.clone(), duty, token.child_token(), move |child| {
                prune_daily(store.clone(), retention, child)
            }));
        }
        let metrics = self.state.metrics.clone();
        let store = self.state.store.clone();
        let refresh = self.metrics_refresh;
        let child = token.child_token();
        tracker.spawn(async move {
            loop {
                metrics.refresh_pending(&store).await;
                crate::memory::release_free();
                if let Some((in_use, free)) = crate::memory::heap() {
                    tracing::debug!(target: "ordersync::memory", in_use, free, "heap after the gauge refresh");
                }
                tokio::select! {
                    () = child.cancelled() => break,
                    () = tokio::time::sleep(refresh) => {}
                }
            }
        });
        tracker.close();
        let service = router(self.state.clone()).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)).layer(
            tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                REQUEST_TIMEOUT,
            ),
        );
        // Migrated, listening, every task started: a service manager may count ordersync as up.
        crate::systemd::ready();
        let served = serve(self.listener, service, &token).await;
        crate::systemd::stopping();
        // The server only returns once the token is cancelled (or it failed): make sure the tasks stop too.
        token.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await {
            Ok(()) => tracing::info!("shut down cleanly"),
            Err(_) => tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown cut short: tasks still running"),
        }
        self.state.store.close().await;
        drop(self.instance);
        served.map_err(AppError::Serve)
    }
}

/// How often `serve` prunes with the retention setting (the first time a minute after it starts).
pub const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Delete ordersync's own rows older than `retention` once a day (`Store::prune`, audit events kept).
async fn prune_daily(store: Store, retention: Duration, token: CancellationToken) {
    let mut pause = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = PRUNE_EVERY;
        let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let before = chrono::Utc::now().checked_sub_signed(age).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match store.prune(before, false).await {
            Ok(pruned) => tracing::info!(
                check_states = pruned.check_states,
                settlements = pruned.settlements,
                retention = %crate::config::format_duration(retention),
                "pruned ordersync's rows past the retention"
            ),
            Err(error) => tracing::warn!(%error, "pruning past the retention failed; trying again tomorrow"),
        }
    }
}

/// When nothing else has talked to Coinbase for this long, one cheap authenticated call proves the key works.
pub const EXCHANGE_PROBE_AFTER: Duration = Duration::from_secs(60);

/// Keep readiness true while idle: whenever no authenticated answer came for `EXCHANGE_PROBE_AFTER` (or
/// ever), ask Get API Key Permissions. Its answer (or refusal) is recorded like any other request.
async fn keep_exchange_proven(reconciler: Reconciler, metrics: Metrics, token: CancellationToken) {
    loop {
        // A probe that hangs must not hold up shutdown; each quiet account's key is proven on its own.
        let quiet: Vec<_> = reconciler
            .accounts()
            .iter()
            .filter(|(account, _)| {
                reconciler.accounts().ownership().owns(account)
                    && metrics.since_exchange_contact(account).is_none_or(|since| since >= EXCHANGE_PROBE_AFTER)
            })
            .collect();
        if !quiet.is_empty() {
            let probes = quiet.into_iter().map(|(account, exchange)| async move {
                if let Err(error) = exchange.key_permissions().await {
                    tracing::warn!(%error, account, "the exchange did not confirm the account's API key");
                }
            });
            tokio::select! {
                () = token.cancelled() => return,
                _ = futures_util::future::join_all(probes) => {}
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(EXCHANGE_PROBE_AFTER / 4) => {}
        }
    }
}

/// The most a request's headers may take (bytes), and its body.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A connection whose request headers take longer than this (a slow or idle client) is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve HTTP/1 until `token` is cancelled, then let requests in flight finish within `SHUTDOWN_GRACE`.
/// hyper directly rather than `axum::serve`, which cannot bound how long a client may take to send its
/// headers: 50 connections trickling a header each must not stay open forever.
async fn serve(listener: TcpListener, service: axum::Router, token: &CancellationToken) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES);
    let builder = builder.http1_only();
    loop {
        let (stream, _) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: say so, breathe, go on.
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "HTTP connections still open at shutdown were dropped");
    }
    Ok(())
}

/// Wait for SIGINT or SIGTERM and say which.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!(signal = "SIGINT", "shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
