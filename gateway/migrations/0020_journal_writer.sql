-- The journal writer: exactly-once keys, QR replay keys, rider states, the
-- chain head, and the function that commits one group of taps in one call.
-- docs/journal.md describes the row encoding and the guarantees.

-- One row per (device, device tap id), whatever the tap's business day. The
-- taps table is partitioned by business day, so its own keys cannot enforce
-- this uniqueness across partitions.
CREATE TABLE tap_keys (
    device_id      text NOT NULL,
    device_tap_id  bigint NOT NULL,
    tap_id         bigint NOT NULL,
    business_day   date NOT NULL,
    request_digest bytea NOT NULL,
    PRIMARY KEY (device_id, device_tap_id)
);

-- Replay keys of dynamic QR codes: the first tap that used a code owns it, so
-- a second use is caught across workers and machines.
CREATE TABLE replay_keys (
    replay_key   bytea PRIMARY KEY CHECK (length(replay_key) = 32),
    tap_id       bigint NOT NULL,
    business_day date NOT NULL,
    tap_time     timestamptz NOT NULL
);
CREATE INDEX replay_keys_by_time ON replay_keys (tap_time);

-- The newest encoded fare-rules rider state per holder (opaque bytes to the
-- journal), written in the same transaction as the accepted tap that made it.
CREATE TABLE rider_states (
    holder_token bytea PRIMARY KEY,
    state        bytea NOT NULL,
    tap_id       bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The end of the hash chain. Every batch transaction locks this single row
-- first, so batches commit one at a time and take batch ids in commit order.
CREATE TABLE journal_chain_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    batch_id   bigint NOT NULL,
    chain_hash bytea NOT NULL CHECK (length(chain_hash) = 32)
);
INSERT INTO journal_chain_head (batch_id, chain_hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Per-row detail of each batch, covered by the batch digest, so that verify
-- can name the altered, removed or inserted row and not only the batch.
ALTER TABLE journal_batches
    ADD COLUMN tap_ids bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN row_hashes bytea NOT NULL DEFAULT '\x';

-- Length-prefixed field: 0x00 for NULL, else 0x01, a 4-byte big-endian length
-- and the bytes.
CREATE FUNCTION tapgate_field(value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int4send(length(value)) || value END
$$;

-- Canonical encoding v1 of one journal row: version byte 0x01, then every
-- column of taps (as created in 0001) in table order, each as tapgate_field of:
-- integers, dates, times and booleans in PostgreSQL's binary send format
-- (big-endian; dates as days and times as microseconds since 2000-01-01 UTC),
-- bytea as is, text as UTF-8, and discount_kinds as the UTF-8 of its array text
-- form ('{category,cap}'). The send functions of text would follow the
-- session's client_encoding, hence convert_to. No sub-SELECT, so PostgreSQL
-- inlines the function. gateway/journal/encoding.py implements the same
-- encoding in Python.
CREATE FUNCTION tapgate_tap_encoding(t taps) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '\x01'::bytea
        || tapgate_field(int8send(t.tap_id))
        || tapgate_field(date_send(t.business_day))
        || tapgate_field(int8send(t.batch_id))
        || tapgate_field(convert_to(t.device_id, 'UTF8'))
        || tapgate_field(int8send(t.device_tap_id))
        || tapgate_field(timestamptz_send(t.tap_time))
        || tapgate_field(timestamptz_send(t.received_at))
        || tapgate_field(boolsend(t.offline))
        || tapgate_field(convert_to(t.operator_id, 'UTF8'))
        || tapgate_field(convert_to(t.route_id, 'UTF8'))
        || tapgate_field(convert_to(t.stop_id, 'UTF8'))
        || tapgate_field(convert_to(t.site_id, 'UTF8'))
        || tapgate_field(int2send(t.tap_kind))
        || tapgate_field(int2send(t.medium))
        || tapgate_field(t.credential_id)
        || tapgate_field(t.holder_token)
        || tapgate_field(t.account_token)
        || tapgate_field(int2send(t.decision))
        || tapgate_field(int2send(t.reason))
        || tapgate_field(convert_to(t.rider_category, 'UTF8'))
        || tapgate_field(convert_to(t.product_id, 'UTF8'))
        || tapgate_field(int4send(t.fare_fen))
        || tapgate_field(int4send(t.full_fare_fen))
        || tapgate_field(convert_to(t.discount_kinds::text, 'UTF8'))
        || tapgate_field(int4send(t.rule_set_version))
        || tapgate_field(t.request_digest)
$$;

-- One tap handed to tapgate_journal_commit. Times are Unix milliseconds;
-- discount_kinds is comma-separated.
CREATE TYPE tapgate_journal_entry AS (
    device_id        text,
    device_tap_id    bigint,
    business_day     date,
    tap_time_ms      bigint,
    received_at_ms   bigint,
    offline          boolean,
    operator_id      text,
    route_id         text,
    stop_id          text,
    site_id          text,
    tap_kind         smallint,
    medium           smallint,
    credential_id    bytea,
    holder_token     bytea,
    account_token    bytea,
    decision         smallint,
    reason           smallint,
    rider_category   text,
    product_id       text,
    fare_fen         integer,
    full_fare_fen    integer,
    discount_kinds   text,
    rule_set_version integer,
    request_digest   bytea,
    replay_key       bytea,
    rider_state      bytea
);

-- Commit one group of taps: claim each (device_id, device_tap_id) once, claim
-- QR replay keys, insert the new rows into taps, store the rider states of
-- accepted taps, and append one batch to the hash chain. Called as a single
-- statement outside an explicit transaction, it is one round trip and one
-- commit. Returns one row per entry (ord is its 1-based position):
-- status 0 new, 1 retry (same request digest; the original row is returned),
-- 2 conflict (different request digest; the original row is returned),
-- 3 the key exists but its journal row is missing (tampering).
CREATE FUNCTION tapgate_journal_commit(p_worker text, p_entries tapgate_journal_entry[])
RETURNS TABLE (ord integer, status smallint, tap_id bigint, business_day date, batch_id bigint,
               decision smallint, reason smallint, fare_fen integer, full_fare_fen integer,
               rider_category text, product_id text, discount_kinds text[], rule_set_version integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_prev_hash bytea;
    v_batch     bigint;
    v_new_ords  integer[];
    v_new_ids   bigint[];
    v_claimed   bigint[];
    v_count     integer;
    v_tap_ids   bigint[];
    v_hashes    bytea;
    v_pairs     bytea;
    v_digest    bytea;
    v_chain     bytea;
BEGIN
    -- Serialise batch commits across all workers: the lock is held until
    -- commit, so batch ids (taken below) increase in commit order.
    SELECT h.chain_hash INTO v_prev_hash FROM journal_chain_head h FOR UPDATE;

    -- Exactly once. Entries are inserted in order, so within one call the
    -- first entry with a given key wins and later ones see it as existing.
    WITH src AS (
        SELECT e.device_id, e.device_tap_id, e.business_day, e.request_digest, e.ord
        FROM unnest(p_entries) WITH ORDINALITY AS e(device_id, device_tap_id, business_day, tap_time_ms,
             received_at_ms, offline, operator_id, route_id, stop_id, site_id, tap_kind, medium, credential_id,
             holder_token, account_token, decision, reason, rider_category, product_id, fare_fen, full_fare_fen,
             discount_kinds, rule_set_version, request_digest, replay_key, rider_state, ord)
        ORDER BY e.ord
    ), claimed AS (
        INSERT INTO tap_keys (device_id, device_tap_id, tap_id, business_day, request_digest)
        SELECT s.device_id, s.device_tap_id, nextval('tap_id_seq'), s.business_day, s.request_digest
        FROM src s ORDER BY s.ord
        ON CONFLICT DO NOTHING
        RETURNING device_id, device_tap_id, tap_id
    )
    SELECT array_agg(w.ord ORDER BY w.ord), array_agg(w.tap_id ORDER BY w.ord)
    INTO v_new_ords, v_new_ids
    FROM (SELECT min(s.ord)::integer AS ord, c.tap_id
          FROM claimed c JOIN src s USING (device_id, device_tap_id)
          GROUP BY c.device_id, c.device_tap_id, c.tap_id) w;

    IF v_new_ords IS NOT NULL THEN
        -- QR replay: the first new entry (in order) to use a replay key owns it.
        WITH claimed AS (
            INSERT INTO replay_keys (replay_key, tap_id, business_day, tap_time)
            SELECT e.replay_key, n.tap_id, e.business_day,
                   timestamptz 'epoch' + e.tap_time_ms * interval '1 millisecond'
            FROM unnest(v_new_ords, v_new_ids) AS n(ord, tap_id)
            JOIN unnest(p_entries) WITH ORDINALITY AS e ON e.ordinality = n.ord
            WHERE e.replay_key IS NOT NULL
            ORDER BY n.ord
            ON CONFLICT DO NOTHING
            RETURNING tap_id
        )
        SELECT coalesce(array_agg(c.tap_id), '{}') INTO v_claimed FROM claimed c;

        v_batch := nextval('journal_batch_seq');

        -- Insert the rows; a replayed code is journaled as rejected REPLAYED
        -- (43) with no fare. Hash each row as stored, in tap_id order.
        WITH rows AS (
            INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                              offline, operator_id, route_id, stop_id, site_id, tap_kind, medium, credential_id,
                              holder_token, account_token, decision, reason, rider_category, product_id,
                              fare_fen, full_fare_fen, discount_kinds, rule_set_version, request_digest)
            SELECT n.tap_id, e.business_day, v_batch, e.device_id, e.device_tap_id,
                   timestamptz 'epoch' + e.tap_time_ms * interval '1 millisecond',
                   timestamptz 'epoch' + e.received_at_ms * interval '1 millisecond',
                   e.offline, e.operator_id, e.route_id, e.stop_id, e.site_id, e.tap_kind, e.medium,
                   e.credential_id, e.holder_token, e.account_token,
                   CASE WHEN r.replayed THEN 0::smallint ELSE e.decision END,
                   CASE WHEN r.replayed THEN 43::smallint ELSE e.reason END,
                   e.rider_category, e.product_id,
                   CASE WHEN r.replayed THEN 0 ELSE e.fare_fen END,
                   e.full_fare_fen,
                   CASE WHEN r.replayed THEN '{}'::text[] ELSE string_to_array(e.discount_kinds, ',') END,
                   e.rule_set_version, e.request_digest
            FROM unnest(v_new_ords, v_new_ids) AS n(ord, tap_id)
            JOIN unnest(p_entries) WITH ORDINALITY AS e ON e.ordinality = n.ord
            CROSS JOIN LATERAL (SELECT e.replay_key IS NOT NULL AND NOT (n.tap_id = ANY (v_claimed)) AS replayed) r
            RETURNING *
        ), hashed AS (
            SELECT r.tap_id, sha256(tapgate_tap_encoding(ROW(r.*)::taps)) AS row_hash FROM rows r
        )
        SELECT count(*)::integer,
               array_agg(h.tap_id ORDER BY h.tap_id),
               string_agg(h.row_hash, ''::bytea ORDER BY h.tap_id),
               string_agg(int8send(h.tap_id) || h.row_hash, ''::bytea ORDER BY h.tap_id)
        INTO v_count, v_tap_ids, v_hashes, v_pairs
        FROM hashed h;

        -- Rider states of accepted, not replayed taps; the last entry of a
        -- holder in this call wins.
        INSERT INTO rider_states AS rs (holder_token, state, tap_id, updated_at)
        SELECT DISTINCT ON (e.holder_token) e.holder_token, e.rider_state, n.tap_id, now()
        FROM unnest(v_new_ords, v_new_ids) AS n(ord, tap_id)
        JOIN unnest(p_entries) WITH ORDINALITY AS e ON e.ordinality = n.ord
        WHERE e.rider_state IS NOT NULL AND e.holder_token IS NOT NULL AND e.decision = 1
          AND NOT (e.replay_key IS NOT NULL AND NOT (n.tap_id = ANY (v_claimed)))
        ORDER BY e.holder_token, n.ord DESC
        ON CONFLICT (holder_token) DO UPDATE
            SET state = EXCLUDED.state, tap_id = EXCLUDED.tap_id, updated_at = EXCLUDED.updated_at;

        -- Chain the batch: digest over a header and (tap_id, row hash) pairs.
        v_digest := sha256(convert_to('tapgate.batch.v1', 'UTF8')
                           || int8send(v_batch)
                           || timestamptz_send(now())
                           || tapgate_field(convert_to(p_worker, 'UTF8'))
                           || int8send(v_count::bigint)
                           || v_pairs);
        v_chain := sha256(v_prev_hash || v_digest);
        INSERT INTO journal_batches (batch_id, committed_at, worker, tap_count, digest, prev_hash, chain_hash,
                                     tap_ids, row_hashes)
        VALUES (v_batch, now(), p_worker, v_count, v_digest, v_prev_hash, v_chain, v_tap_ids, v_hashes);
        UPDATE journal_chain_head SET batch_id = v_batch, chain_hash = v_chain;
    END IF;

    RETURN QUERY
    SELECT e.ordinality::integer,
           CASE WHEN t.tap_id IS NULL THEN 3
                WHEN e.ordinality::integer = ANY (coalesce(v_new_ords, '{}')) THEN 0
                WHEN k.request_digest = e.request_digest THEN 1
                ELSE 2 END::smallint,
           k.tap_id, k.business_day, t.batch_id, t.decision, t.reason, t.fare_fen, t.full_fare_fen,
           t.rider_category, t.product_id, t.discount_kinds, t.rule_set_version
    FROM unnest(p_entries) WITH ORDINALITY AS e
    JOIN tap_keys k ON k.device_id = e.device_id AND k.device_tap_id = e.device_tap_id
    LEFT JOIN taps t ON t.business_day = k.business_day AND t.tap_id = k.tap_id
    ORDER BY e.ordinality;
END $$;
