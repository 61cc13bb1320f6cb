-- The incident's bot table (src/demo.rs PG_BOT_SCHEMA; a test keeps them equal), created once by PostgreSQL's
-- entrypoint so that compose.yaml's stack runs as a trial. A real bot brings its own table; see the README.
CREATE TABLE trades (
    id           BIGSERIAL PRIMARY KEY,
    order_id     TEXT NOT NULL UNIQUE,
    bot_id       TEXT,
    product_id   TEXT,
    side         TEXT NOT NULL DEFAULT 'BUY',
    size         TEXT,
    status       TEXT NOT NULL DEFAULT 'pending',
    created_at   TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    filled_at    TIMESTAMP,
    filled_price NUMERIC(20, 10),
    filled_size  NUMERIC(30, 10)
);
CREATE INDEX trades_pending ON trades (status, created_at);
