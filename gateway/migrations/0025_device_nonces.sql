-- Nonces of authenticated device requests, so that a request replayed by a
-- third party is rejected by every worker, not only the one that saw it.
-- A nonce only needs to be remembered while its request timestamp is within
-- the accepted clock skew; workers delete older rows.
--
-- UNLOGGED: a commit that touches only this table writes no WAL and waits for
-- no fsync, so the check stays cheap. After a PostgreSQL crash the table is
-- empty, and a request captured in the minutes before the crash could be
-- replayed once. Tap requests are idempotent by (device_id, device_tap_id),
-- so such a replay returns the original answer and records nothing new.
CREATE UNLOGGED TABLE device_nonces (
    nonce      bytea PRIMARY KEY CHECK (length(nonce) = 16),
    device_id  text NOT NULL,
    request_ts timestamptz NOT NULL
);
CREATE INDEX device_nonces_by_time ON device_nonces (request_ts);
