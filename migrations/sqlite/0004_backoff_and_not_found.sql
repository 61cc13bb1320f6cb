-- Months in production: unresolved orders back off, orders the exchange never knew, product conflicts.

-- When an unresolved order is next asked about (an exponential backoff after 404s and unknown status words;
-- NULL: the next pass), and the times of the 404s that count towards the opt-in not-found policy
-- (space-separated RFC 3339, oldest first; only 404s that came while Coinbase answered other orders).
ALTER TABLE ordersync_order_checks ADD COLUMN next_check_at TEXT;
ALTER TABLE ordersync_order_checks ADD COLUMN not_found_at TEXT;
CREATE INDEX IF NOT EXISTS ordersync_order_checks_next_check_at ON ordersync_order_checks (next_check_at)
    WHERE next_check_at IS NOT NULL;

-- Why a correction was written: NULL when the exchange ended the order, 'not_found' when the not-found
-- policy wrote off an order Coinbase never knew (its note lists every 404's time).
ALTER TABLE ordersync_events ADD COLUMN reason TEXT;

-- 'position': a terminal row the exchange ended with another position; 'product': the bot's row names
-- another product than the exchange's order (exchange_product_id). Neither is ever written.
ALTER TABLE ordersync_conflicts ADD COLUMN kind TEXT NOT NULL DEFAULT 'position';
ALTER TABLE ordersync_conflicts ADD COLUMN exchange_product_id TEXT;
