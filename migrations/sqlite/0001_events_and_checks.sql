-- ordersync's own tables. The bot's tables are never created or altered by ordersync.

-- Append-only: one row per correction ordersync applied or found it must not apply.
CREATE TABLE IF NOT EXISTS ordersync_events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id           TEXT    NOT NULL,
    bot_id             TEXT,
    product_id         TEXT,
    from_status        TEXT    NOT NULL,
    to_status          TEXT,              -- NULL when nothing was written
    exchange_status    TEXT    NOT NULL,
    exchange_fill_time TEXT,              -- the exchange's clock, never ours
    fill_price         TEXT,              -- exact decimal text as the exchange sent it
    fill_size          TEXT,
    detected_at        TEXT    NOT NULL,
    applied_at         TEXT,
    source             TEXT    NOT NULL CHECK (source IN ('poll', 'websocket', 'manual')),
    outcome            TEXT    NOT NULL CHECK (outcome IN ('applied', 'row_changed')),
    latency_seconds    REAL,              -- applied_at - exchange_fill_time
    note               TEXT
);
CREATE INDEX IF NOT EXISTS ordersync_events_order_id ON ordersync_events (order_id);
CREATE INDEX IF NOT EXISTS ordersync_events_detected_at ON ordersync_events (detected_at);

-- One row per order ordersync has checked: where each check stands.
CREATE TABLE IF NOT EXISTS ordersync_order_checks (
    order_id             TEXT    PRIMARY KEY,
    first_checked_at     TEXT    NOT NULL,
    last_checked_at      TEXT    NOT NULL,
    checks               INTEGER NOT NULL DEFAULT 0,
    unresolved_in_a_row  INTEGER NOT NULL DEFAULT 0,
    last_exchange_status TEXT,
    last_verdict         TEXT    NOT NULL,
    last_error           TEXT,
    flagged              INTEGER NOT NULL DEFAULT 0
);
