-- Checks per UTC day, bot and outcome (match, mismatch, unknown): the accuracy SLI's history, kept after
-- orders settle. Read by `ordersync report`.
CREATE TABLE IF NOT EXISTS ordersync_check_counts (
    day     DATE   NOT NULL,
    bot     TEXT   NOT NULL,
    outcome TEXT   NOT NULL CHECK (outcome IN ('match', 'mismatch', 'unknown')),
    checks  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, bot, outcome)
);
