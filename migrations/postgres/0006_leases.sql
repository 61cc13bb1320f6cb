-- Replicas on one PostgreSQL share the Coinbase accounts: each account is leased to one replica at a time.
-- `epoch` grows by one each time the account changes hands; every write ordersync makes for the account
-- checks, in its own transaction, that this replica still holds the account at the epoch it acquired
-- (fencing), so a replica that was paused past its lease cannot write after its successor started.
-- Expiry is in the database's clock (`now()`), so the replicas' clocks do not matter.
CREATE TABLE IF NOT EXISTS ordersync_leases (
    account    TEXT PRIMARY KEY,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ
);

-- Every live replica, seen within a lease: the accounts are divided among them.
CREATE TABLE IF NOT EXISTS ordersync_replicas (
    replica TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
