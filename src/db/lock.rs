//! One ordersync per SQLite file. SQLite is one machine's database: two ordersyncs on one file would each
//! ask Coinbase for every order and send every e-mail twice. The one that writes holds an exclusive `flock`
//! on a file beside the database (`<database>.ordersync-lock`, holding its pid) for as long as it runs; the
//! kernel drops it when the process ends, `kill -9` included, so a stale lock never needs cleaning up.
//!
//! A file of its own, not the database: SQLite's locks are POSIX record locks, which a process loses when
//! it closes *any* descriptor of the file, so ordersync never opens the bot's database outside SQLite.
//! PostgreSQL needs none of this: replicas share the work there.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Held while ordersync writes to a SQLite database; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The SQLite database file `url` names; `None` for PostgreSQL and in-memory databases.
    fn database_file(url: &str) -> Option<&str> {
        let rest = url.strip_prefix("sqlite:")?;
        let file = rest.trim_start_matches("//").split('?').next().unwrap_or_default();
        (!file.is_empty() && file != ":memory:").then_some(file)
    }

    /// The lock file beside the SQLite database `url` names, by the file's real path (a symbolic link or
    /// another spelling of the path finds the same lock); `None` for PostgreSQL and in-memory databases.
    pub fn path_for(url: &str) -> Option<PathBuf> {
        let file = Self::database_file(url)?;
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| PathBuf::from(file));
        let mut name = real.into_os_string();
        name.push(".ordersync-lock");
        Some(PathBuf::from(name))
    }

    /// Take the lock for the SQLite database `url`, or say which process holds it.
    ///
    /// # Errors
    /// `AlreadyRunning` when another ordersync holds it; `LockFile` when the file cannot be created (the
    /// database's directory is not writable: SQLite needs that for its journal too).
    pub fn claim(url: &str) -> Result<Option<InstanceLock>, StoreError> {
        let Some(path) = Self::path_for(url) else { return Ok(None) };
        let shown = path.display().to_string();
        let lock_error = |source: std::io::Error| StoreError::LockFile { path: shown.clone(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.trim().parse::<u32>().ok();
                let database = Self::database_file(url).unwrap_or_default().to_string();
                return Err(StoreError::AlreadyRunning { database, lock: shown, pid });
            }
            Err(TryLockError::Error(source)) => return Err(lock_error(source)),
        }
        // Ours now: say who holds it, for the next one's message.
        file.set_len(0).map_err(lock_error)?;
        file.rewind().map_err(lock_error)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_error)?;
        Ok(Some(InstanceLock { _file: file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_sits_beside_the_database() {
        // A file that does not exist (yet) keeps the path as written.
        assert_eq!(InstanceLock::path_for("sqlite://trades.db"), Some(PathBuf::from("trades.db.ordersync-lock")));
        assert_eq!(
            InstanceLock::path_for("sqlite:///var/lib/bot/trades.db?mode=rw"),
            Some(PathBuf::from("/var/lib/bot/trades.db.ordersync-lock"))
        );
        assert_eq!(InstanceLock::path_for("sqlite:trades.db"), Some(PathBuf::from("trades.db.ordersync-lock")));
        assert_eq!(InstanceLock::path_for("sqlite::memory:"), None);
        assert_eq!(InstanceLock::path_for("postgres://u@h/db"), None);
    }

    #[test]
    fn a_second_claim_names_the_first_holder_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("trades.db").display());
        let first = InstanceLock::claim(&url).unwrap().unwrap();
        match InstanceLock::claim(&url) {
            Err(StoreError::AlreadyRunning { pid, database, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert!(database.ends_with("trades.db"), "{database}");
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // Another name for the same file finds the same lock.
        std::fs::write(dir.path().join("trades.db"), b"").unwrap();
        drop(first);
        let first = InstanceLock::claim(&url).unwrap().unwrap();
        std::os::unix::fs::symlink(dir.path().join("trades.db"), dir.path().join("link.db")).unwrap();
        let link = format!("sqlite://{}", dir.path().join("link.db").display());
        assert!(
            matches!(InstanceLock::claim(&link), Err(StoreError::AlreadyRunning { .. })),
            "a symlink is the same file"
        );
        drop(first);
        assert!(InstanceLock::claim(&url).unwrap().is_some(), "free again once the holder is gone");
    }
}
