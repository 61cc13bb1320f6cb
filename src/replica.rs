//! Replicas on one PostgreSQL share the Coinbase accounts through leases in `ordersync_leases`.
//!
//! Each account is leased to one replica at a time, for `lease` by the database's clock; its owner renews
//! it every `lease / 3`. Only the owner calls Coinbase for the account (the client asks `Ownership` before
//! each request and names the replica and epoch in its User-Agent), listens to its user channel and writes
//! its rows; every write transaction checks the lease at its epoch (`db::Fence`), so a replica paused past
//! its lease cannot write after its successor started. Locally a lease counts as held only until
//! `lease - lease / 3` after the renewal was sent (a monotonic clock, which runs on while the process is
//! stopped), so a replica stops asking before the database lets another take the account over.
//!
//! The live replicas divide the accounts: each takes free accounts up to its share (the accounts divided by
//! the live replicas, rounded up) and lets go of any beyond it. An account whose owner died is taken over
//! once its lease has run out, at the next round of another replica: within `lease + lease / 3`, under the
//! documented bound of two leases.
//!
//! On SQLite one ordersync serves a file (`db::InstanceLock`) and holds every account: `Ownership::solo`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::db::{Fence, Store};

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// Until when this replica may act for the account by its own clock.
    until: Instant,
}

/// Which accounts this replica holds, at which epoch. Cheap to share.
#[derive(Debug)]
pub struct Ownership {
    replica: String,
    /// `false` on SQLite: every account is held for good, and nothing is fenced.
    leased: bool,
    held: Mutex<HashMap<String, Held>>,
    /// Told when an account is taken or lost, so the account's tasks start or stop at once.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Ownership {
    /// Every account held for good (one ordersync on a SQLite file, or a one-off command).
    pub fn solo(replica: &str, accounts: &[String]) -> Ownership {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let held = accounts.iter().map(|a| (a.clone(), Held { epoch: 0, until: far })).collect();
        Ownership { replica: replica.into(), leased: false, held: Mutex::new(held), changed: watch_channel() }
    }

    /// Nothing held yet; accounts come through leases (`run`).
    pub fn leased(replica: &str) -> Ownership {
        Ownership { replica: replica.into(), leased: true, held: Mutex::default(), changed: watch_channel() }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether accounts come through leases (PostgreSQL): writes are then fenced.
    pub fn is_leased(&self) -> bool {
        self.leased
    }

    /// The epoch at which this replica holds `account`, while it does.
    pub fn epoch(&self, account: &str) -> Option<i64> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(account).filter(|h| h.until > Instant::now()).map(|h| h.epoch)
    }

    pub fn owns(&self, account: &str) -> bool {
        self.epoch(account).is_some()
    }

    /// The accounts held now, with their epochs.
    pub fn held(&self) -> BTreeMap<String, i64> {
        let now = Instant::now();
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().filter(|(_, h)| h.until > now).map(|(a, h)| (a.clone(), h.epoch)).collect()
    }

    /// A receiver that changes whenever an account is taken or lost.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set(&self, account: &str, epoch: i64, until: Instant) {
        let fresh = self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(account.into(), Held { epoch, until });
        if fresh.is_none_or(|before| before.epoch != epoch) {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Stop holding `account`; whether it was held.
    fn drop_account(&self, account: &str) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(account).is_some();
        if held {
            self.changed.send_modify(|n| *n += 1);
        }
        held
    }

    /// Forget accounts whose lease ran out locally (a renewal that never came): their tasks stop.
    fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = held.iter().filter(|(_, h)| h.until <= now).map(|(a, _)| a.clone()).collect();
        for account in &gone {
            held.remove(account);
        }
        drop(held);
        if !gone.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        gone
    }
}

fn watch_channel() -> tokio::sync::watch::Sender<u64> {
    tokio::sync::watch::channel(0).0
}

impl Fence for Ownership {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn epoch(&self, account: &str) -> Option<i64> {
        if self.leased {
            Ownership::epoch(self, account)
        } else {
            None
        }
    }

    fn fenced(&self) -> bool {
        self.leased
    }

    fn lost(&self, account: &str) {
        // Said once: writes still in flight for an account given up or lost find it gone too.
        if self.drop_account(account) {
            tracing::warn!(account, replica = %self.replica, "the account's lease is lost: its work stops here");
        }
    }
}

/// What one round does: the accounts to try to take, and those to let go of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub take: Vec<String>,
    pub release: Vec<String>,
}

/// This replica's share of `accounts` among `live` replicas (itself included): the accounts divided by the
/// replicas, rounded up. Holding `held`, with `free` nobody holds: take free accounts up to the share (in
/// order, so replicas racing for them spread out), let go of those beyond it, keeping `sticky` ones (the first
/// account, whose owner sends the alert e-mails: a handover would start its mail state afresh).
pub fn plan_round(accounts: usize, live: usize, held: &[String], free: &[String], sticky: &[String]) -> Round {
    let share = accounts.div_ceil(live.max(1));
    if held.len() > share {
        let (keep, rest): (Vec<&String>, Vec<&String>) = held.iter().partition(|a| sticky.contains(a));
        let room = share.saturating_sub(keep.len());
        return Round { take: Vec::new(), release: rest.into_iter().skip(room).cloned().collect() };
    }
    let take = free.iter().filter(|a| !held.contains(a)).take(share - held.len()).cloned().collect();
    Round { take, release: Vec::new() }
}

/// The lease settings of a replica.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub lease: Duration,
    pub accounts: Vec<String>,
}

/// Keep this replica's leases until `token` is cancelled, then let every account go (so the others take
/// them over at once rather than after the lease).
pub async fn run(store: Store, ownership: Arc<Ownership>, settings: LeaseSettings, token: CancellationToken) {
    let tick = settings.lease / 3;
    loop {
        round(&store, &ownership, &settings).await;
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
        }
    }
    release_all(&store, &ownership).await;
    let _ = store.lease_leave(ownership.replica()).await;
}

/// One round: say this replica is alive, renew what it holds, then take or release to its share. A
/// database error leaves the leases to run out locally, which stops the accounts' work in time.
pub async fn round(store: &Store, ownership: &Ownership, settings: &LeaseSettings) {
    for account in ownership.expire() {
        tracing::warn!(account, "the account's lease ran out before it could be renewed: its work stops here");
    }
    let lease = settings.lease;
    // The local deadline counts from before the renewal was sent: it falls before the database's.
    let sent = Instant::now();
    let until = sent + lease - lease / 3;
    // Each step on its own: a statement that fails (a lock not granted within the session's lock timeout,
    // a lost connection) costs only its account this round; the others go on.
    let warn = |what: &str, account: &str, error: &crate::db::StoreError| {
        tracing::warn!(%error, account, "{what} failed this round; held accounts run out locally unless renewed");
    };
    if let Err(error) = store.lease_heartbeat(ownership.replica()).await {
        warn("saying this replica is alive", "", &error);
    }
    for (account, epoch) in ownership.held() {
        match store.lease_renew(&account, ownership.replica(), epoch, lease).await {
            Ok(true) => ownership.set(&account, epoch, until),
            Ok(false) => ownership.lost(&account),
            Err(error) => warn("renewing the lease", &account, &error),
        }
    }
    let (live, leases) =
        match (store.lease_ensure(&settings.accounts).await, store.lease_live(lease).await, store.leases().await) {
            (Ok(()), Ok(live), Ok(leases)) => (usize::try_from(live).unwrap_or(1).max(1), leases),
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                warn("reading the leases", "", &error);
                return;
            }
        };
    let free: Vec<String> = leases
        .iter()
        .filter(|l| !l.held && settings.accounts.contains(&l.account))
        .map(|l| l.account.clone())
        .collect();
    let held: Vec<String> = ownership.held().into_keys().collect();
    let duty = settings.accounts.get(..1).unwrap_or_default();
    let plan = plan_round(settings.accounts.len(), live, &held, &free, duty);
    for account in plan.release {
        if let Some(epoch) = ownership.epoch(&account) {
            let _ = ownership.drop_account(&account);
            match store.lease_release(&account, ownership.replica(), epoch).await {
                Ok(()) => tracing::info!(account, epoch, live, "let go of an account beyond this replica's share"),
                Err(error) => warn("releasing the lease", &account, &error),
            }
        }
    }
    for account in plan.take {
        match store.lease_acquire(&account, ownership.replica(), lease).await {
            Ok(Some(epoch)) => {
                ownership.set(&account, epoch, until);
                tracing::info!(account, epoch, replica = %ownership.replica(), "took the account's lease");
            }
            Ok(None) => {}
            Err(error) => warn("taking the lease", &account, &error),
        }
    }
}

/// For a one-off command: take every account no replica holds now (no share: the command is short), and
/// say who holds the others (`(account, owner)`).
///
/// # Errors
/// When the lease table cannot be read or written.
pub async fn claim_free(
    store: &Store,
    ownership: &Ownership,
    settings: &LeaseSettings,
) -> Result<Vec<(String, String)>, crate::db::StoreError> {
    let until = Instant::now() + settings.lease - settings.lease / 3;
    store.lease_ensure(&settings.accounts).await?;
    let mut skipped = Vec::new();
    for lease in store.leases().await? {
        if !settings.accounts.contains(&lease.account) {
            continue;
        }
        match store.lease_acquire(&lease.account, ownership.replica(), settings.lease).await? {
            Some(epoch) => ownership.set(&lease.account, epoch, until),
            None => skipped.push((lease.account, lease.owner.unwrap_or_default())),
        }
    }
    Ok(skipped)
}

/// Give back every account held (at the end of a one-off command, or at shutdown).
pub async fn release_all(store: &Store, ownership: &Ownership) {
    for (account, epoch) in ownership.held() {
        let _ = ownership.drop_account(&account);
        if let Err(error) = store.lease_release(&account, ownership.replica(), epoch).await {
            tracing::warn!(%error, account, "releasing the account's lease failed; it runs out by itself");
        }
    }
}

/// Run the task `start` makes while this replica holds `account`: started when the account is taken,
/// cancelled (and awaited) when it is lost or `token` is cancelled. The account's user channel, and the
/// duties of the first account's owner (alert e-mails, the daily prune), run this way.
pub async fn while_owned<F, Fut>(ownership: Arc<Ownership>, account: String, token: CancellationToken, mut start: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut watch = ownership.watch();
    // A lease also ends by the clock, without a message: look every second too.
    const LOOK_EVERY: Duration = Duration::from_secs(1);
    loop {
        if ownership.owns(&account) {
            let child = token.child_token();
            let running = tokio::spawn(start(child.clone()));
            while ownership.owns(&account) && !token.is_cancelled() {
                tokio::select! {
                    () = token.cancelled() => {}
                    _ = watch.changed() => {}
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                }
            }
            child.cancel();
            let _ = running.await;
        }
        tokio::select! {
            () = token.cancelled() => return,
            _ = watch.changed() => {}
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// This replica's name: `ORDERSYNC_REPLICA`-style settings aside, the host name and the process id.
pub fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lone_replica_takes_every_free_account() {
        let round = plan_round(4, 1, &[], &names(&["a", "b", "c", "d"]), &[]);
        assert_eq!(round.take, names(&["a", "b", "c", "d"]));
        assert!(round.release.is_empty());
    }

    #[test]
    fn replicas_divide_the_accounts_rounding_up() {
        // 4 accounts, 3 replicas: a share of 2.
        assert_eq!(plan_round(4, 3, &[], &names(&["a", "b", "c", "d"]), &[]).take, names(&["a", "b"]));
        assert_eq!(plan_round(4, 3, &names(&["a"]), &names(&["c", "d"]), &[]).take, names(&["c"]));
        assert_eq!(plan_round(4, 3, &names(&["a", "b"]), &names(&["c", "d"]), &[]), Round::default());
        // Nothing free: nothing to take.
        assert_eq!(plan_round(4, 2, &names(&["a"]), &[], &[]), Round::default());
    }

    #[test]
    fn a_replica_beyond_its_share_lets_the_last_ones_go() {
        // It held all four alone; two more replicas came.
        let round = plan_round(4, 3, &names(&["a", "b", "c", "d"]), &[], &[]);
        assert_eq!(round.release, names(&["c", "d"]));
        assert!(round.take.is_empty());
        // The first account (the e-mail duty) stays where it is; others go instead.
        let round = plan_round(4, 3, &names(&["b", "c", "a", "d"]), &[], &names(&["a"]));
        assert_eq!(round.release, names(&["c", "d"]));
        let round = plan_round(4, 3, &names(&["b", "c", "d", "a"]), &[], &names(&["a"]));
        assert_eq!(round.release, names(&["c", "d"]));
    }

    #[test]
    fn held_accounts_are_never_taken_twice() {
        assert_eq!(plan_round(2, 1, &names(&["a"]), &names(&["a", "b"]), &[]).take, names(&["b"]));
    }

    #[test]
    fn ownership_ends_at_the_local_deadline_and_says_so() {
        let ownership = Ownership::leased("r1");
        let mut watch = ownership.watch();
        ownership.set("a", 3, Instant::now() + Duration::from_secs(60));
        assert!(watch.has_changed().unwrap());
        watch.mark_unchanged();
        assert_eq!(Ownership::epoch(&ownership, "a"), Some(3));
        assert_eq!(Fence::epoch(&ownership, "a"), Some(3));
        ownership.set("b", 1, Instant::now());
        assert_eq!(Ownership::epoch(&ownership, "b"), None, "past its local deadline");
        assert_eq!(ownership.expire(), names(&["b"]));
        ownership.lost("a");
        assert!(!ownership.owns("a"));
        assert!(watch.has_changed().unwrap());
        let solo = Ownership::solo("only", &names(&["x"]));
        assert!(solo.owns("x") && !solo.is_leased());
        assert_eq!(Fence::epoch(&solo, "x"), None, "nothing is fenced on SQLite");
    }
}
