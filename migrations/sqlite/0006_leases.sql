-- Replicas share the accounts through leases on PostgreSQL only. On SQLite one ordersync serves a file (a
-- lock file beside it) and holds every account, so nothing is added to the bot's database here; the
-- migration exists so both backends count the same versions.
SELECT 1;
