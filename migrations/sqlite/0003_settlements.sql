-- The per-order accuracy SLI (replaces the per-check counts of 0002, which weighed an order by how often it
-- was polled).

-- Each ended order ordersync has seen, settled exactly once (order_id is the key): by the bot (its row
-- already held the right terminal status, or the bot wrote it within the grace period), by ordersync (a
-- correction), or as a conflict (the bot's terminal row says another position; never written). Read by
-- `ordersync report`; counted in ordersync_orders_settled_total (backlog rows aside).
CREATE TABLE IF NOT EXISTS ordersync_settlements (
    order_id        TEXT    PRIMARY KEY,
    bot_id          TEXT,
    settled_by      TEXT    NOT NULL CHECK (settled_by IN ('bot', 'ordersync', 'conflict')),
    exchange_status TEXT    NOT NULL,
    ended_at        TEXT,              -- when the order ended on the exchange (see end_source)
    end_source      TEXT,              -- last_fill_time, list_fills, seen_websocket, seen_poll, seen_manual
    settled_at      TEXT    NOT NULL,  -- ordersync's commit, or when ordersync found the bot's row right
    latency_seconds REAL,              -- settled_at - ended_at, for corrections
    late            INTEGER NOT NULL DEFAULT 0, -- right only after the latency goal (2 minutes)
    backlog         INTEGER NOT NULL DEFAULT 0  -- ended before ordersync first ran here: never late
);
CREATE INDEX IF NOT EXISTS ordersync_settlements_settled_at ON ordersync_settlements (settled_at);

-- Terminal rows the exchange ended differently (cancelled by the bot, FILLED on Coinbase): never written,
-- checked again only when the bot changes the row.
CREATE TABLE IF NOT EXISTS ordersync_conflicts (
    order_id        TEXT PRIMARY KEY,
    bot_id          TEXT,
    product_id      TEXT,
    row_status      TEXT NOT NULL,
    exchange_status TEXT NOT NULL,
    filled_size     TEXT,
    found_at        TEXT NOT NULL
);

-- The first time ordersync saw the order ended (the end time of a CANCELLED, EXPIRED or FAILED order), and
-- how (seen_poll, seen_websocket, seen_manual).
ALTER TABLE ordersync_order_checks ADD COLUMN ended_seen_at TEXT;
ALTER TABLE ordersync_order_checks ADD COLUMN ended_seen_source TEXT;
ALTER TABLE ordersync_events ADD COLUMN ended_at TEXT;
ALTER TABLE ordersync_events ADD COLUMN end_source TEXT;

-- Corrections of the last day made before this migration are settlements by ordersync (the bot's own
-- settlements of that day are found by the first pass's check of recent terminal rows, so the first day's
-- figures hold both; older history stays in ordersync_events). Those of orders that ended before ordersync
-- first ran on this database (migration 1) are backlog. Only a FILLED order's latency (from its last fill)
-- can say it was late.
INSERT INTO ordersync_settlements (order_id, bot_id, settled_by, exchange_status, ended_at, end_source, settled_at,
                                   latency_seconds, late, backlog)
SELECT order_id, bot_id, 'ordersync', exchange_status, exchange_fill_time,
       CASE WHEN exchange_fill_time IS NULL THEN NULL ELSE 'last_fill_time' END,
       COALESCE(applied_at, detected_at), latency_seconds,
       exchange_status = 'FILLED' AND COALESCE(latency_seconds > 120, 0)
           AND NOT COALESCE(exchange_fill_time < watched.since, 0),
       COALESCE(exchange_fill_time < watched.since, 0)
FROM ordersync_events,
     (SELECT MIN(applied_at) AS since FROM ordersync_migrations WHERE version = 1) AS watched
WHERE outcome = 'applied' AND detected_at >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 day')
ON CONFLICT (order_id) DO NOTHING;

DROP TABLE IF EXISTS ordersync_check_counts;
