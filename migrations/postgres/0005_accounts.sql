-- Several Coinbase accounts: each correction's event names the account whose key asked (its [[accounts]]
-- name; 'default' with the single key of the flags and environment; NULL for events before this version).
ALTER TABLE ordersync_events ADD COLUMN account TEXT;
