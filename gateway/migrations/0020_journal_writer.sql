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
-- TODO: prune keys older than the offline upload window plus the code
-- lifetime (they can never match again); nothing deletes them yet. BRIN,
-- because tap_time grows with insertion order and the index then costs
-- almost nothing per tap.
CREATE INDEX replay_keys_by_time ON replay_keys USING brin (tap_time);

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

-- Canonical encoding v1 of one journal row: PostgreSQL's binary send format
-- (record_send) of an anonymous record of the columns of taps as created in
-- 0001, in table order. Columns added later are not covered: they need a v2.
-- record_send sends text in the session's client_encoding, so the functions
-- that hash rows pin it to UTF8. gateway/journal/encoding.py implements the
-- same encoding in Python.
CREATE FUNCTION tapgate_tap_encoding(t taps) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT record_send(ROW(t.tap_id, t.business_day, t.batch_id, t.device_id, t.device_tap_id, t.tap_time,
                           t.received_at, t.offline, t.operator_id, t.route_id, t.stop_id, t.site_id, t.tap_kind,
                           t.medium, t.credential_id, t.holder_token, t.account_token, t.decision, t.reason,
                           t.rider_category, t.product_id, t.fare_fen, t.full_fare_fen, t.discount_kinds,
                           t.rule_set_version, t.request_digest))
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
LANGUAGE plpgsql
SET client_encoding = 'UTF8'
AS $$
#variable_conflict use_column
DECLARE
    v_prev_hash bytea;
    v_batch     bigint;
    -- Indexed by entry position: the new tap_id (NULL unless the entry is new),
    -- and whether its QR code was used before.
    v_ids       bigint[];
    v_replayed  boolean[];
    v_count     integer;
    v_tap_ids   bigint[];
    v_hashes    bytea;
    v_pairs     bytea;
    v_digest    bytea;
    v_chain     bytea;
BEGIN
    -- Serialise batch commits across all workers: the lock is held until
    -- commit, so batch ids (taken below) increase in commit order. It also
    -- means no other transaction of this function runs meanwhile, so the
    -- lookups below cannot race with another writer's inserts.
    SELECT h.chain_hash INTO v_prev_hash FROM journal_chain_head h FOR UPDATE;

    -- Classify every entry in one pass. It is new unless its key exists or an
    -- earlier entry of this call has the same key; a new entry's QR code is
    -- replayed if the code is already used or an earlier new entry uses it.
    SELECT array_agg(c.new_id ORDER BY c.ord),
           array_agg(c.replay_key IS NOT NULL AND c.new_id IS NOT NULL
                     AND (c.replay_used OR c.replay_rank > 1) ORDER BY c.ord)
    INTO v_ids, v_replayed
    FROM (
        SELECT k.ord, k.replay_key, k.replay_used,
               CASE WHEN k.is_new THEN nextval('tap_id_seq') END AS new_id,
               row_number() OVER (PARTITION BY k.is_new, k.replay_key ORDER BY k.ord) AS replay_rank
        FROM (
            SELECT e.ordinality AS ord, e.replay_key,
                   NOT EXISTS (SELECT 1 FROM tap_keys t
                               WHERE t.device_id = e.device_id AND t.device_tap_id = e.device_tap_id)
                   AND row_number() OVER (PARTITION BY e.device_id, e.device_tap_id ORDER BY e.ordinality) = 1
                       AS is_new,
                   e.replay_key IS NOT NULL
                   AND EXISTS (SELECT 1 FROM replay_keys r WHERE r.replay_key = e.replay_key) AS replay_used
            FROM unnest(p_entries) WITH ORDINALITY AS e
        ) k
    ) c;

    IF EXISTS (SELECT 1 FROM unnest(v_ids) AS i(id) WHERE i.id IS NOT NULL) THEN
        INSERT INTO tap_keys (device_id, device_tap_id, tap_id, business_day, request_digest)
        SELECT e.device_id, e.device_tap_id, v_ids[e.ordinality], e.business_day, e.request_digest
        FROM unnest(p_entries) WITH ORDINALITY AS e
        WHERE v_ids[e.ordinality] IS NOT NULL;

        INSERT INTO replay_keys (replay_key, tap_id, business_day, tap_time)
        SELECT e.replay_key, v_ids[e.ordinality], e.business_day,
               timestamptz 'epoch' + e.tap_time_ms * interval '1 millisecond'
        FROM unnest(p_entries) WITH ORDINALITY AS e
        WHERE v_ids[e.ordinality] IS NOT NULL AND e.replay_key IS NOT NULL AND NOT v_replayed[e.ordinality];

        v_batch := nextval('journal_batch_seq');

        -- Insert the rows; a replayed code is journaled as rejected REPLAYED
        -- (43) with no fare. Hash each row as stored, in tap_id order.
        WITH rows AS (
            INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                              offline, operator_id, route_id, stop_id, site_id, tap_kind, medium, credential_id,
                              holder_token, account_token, decision, reason, rider_category, product_id,
                              fare_fen, full_fare_fen, discount_kinds, rule_set_version, request_digest)
            SELECT v_ids[e.ordinality], e.business_day, v_batch, e.device_id, e.device_tap_id,
                   timestamptz 'epoch' + e.tap_time_ms * interval '1 millisecond',
                   timestamptz 'epoch' + e.received_at_ms * interval '1 millisecond',
                   e.offline, e.operator_id, e.route_id, e.stop_id, e.site_id, e.tap_kind, e.medium,
                   e.credential_id, e.holder_token, e.account_token,
                   CASE WHEN v_replayed[e.ordinality] THEN 0::smallint ELSE e.decision END,
                   CASE WHEN v_replayed[e.ordinality] THEN 43::smallint ELSE e.reason END,
                   e.rider_category, e.product_id,
                   CASE WHEN v_replayed[e.ordinality] THEN 0 ELSE e.fare_fen END,
                   e.full_fare_fen,
                   CASE WHEN v_replayed[e.ordinality] THEN '{}'::text[] ELSE string_to_array(e.discount_kinds, ',') END,
                   e.rule_set_version, e.request_digest
            FROM unnest(p_entries) WITH ORDINALITY AS e
            WHERE v_ids[e.ordinality] IS NOT NULL
            RETURNING *
        ), hashed AS MATERIALIZED (
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
        SELECT DISTINCT ON (e.holder_token) e.holder_token, e.rider_state, v_ids[e.ordinality], now()
        FROM unnest(p_entries) WITH ORDINALITY AS e
        WHERE v_ids[e.ordinality] IS NOT NULL AND NOT v_replayed[e.ordinality]
          AND e.rider_state IS NOT NULL AND e.holder_token IS NOT NULL AND e.decision = 1
        ORDER BY e.holder_token, e.ordinality DESC
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

    -- New entries are answered from what was just written; the others from
    -- the row of the first request with their key.
    RETURN QUERY
    SELECT e.ordinality::integer,
           CASE WHEN v_ids[e.ordinality] IS NOT NULL THEN 0
                WHEN o.tap_id IS NULL THEN 3
                WHEN o.request_digest = e.request_digest THEN 1
                ELSE 2 END::smallint,
           coalesce(v_ids[e.ordinality], o.tap_id),
           CASE WHEN v_ids[e.ordinality] IS NOT NULL THEN e.business_day ELSE o.business_day END,
           CASE WHEN v_ids[e.ordinality] IS NOT NULL THEN v_batch ELSE o.batch_id END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.decision
                WHEN v_replayed[e.ordinality] THEN 0::smallint ELSE e.decision END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.reason
                WHEN v_replayed[e.ordinality] THEN 43::smallint ELSE e.reason END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.fare_fen
                WHEN v_replayed[e.ordinality] THEN 0 ELSE e.fare_fen END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.full_fare_fen ELSE e.full_fare_fen END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.rider_category ELSE e.rider_category END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.product_id ELSE e.product_id END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.discount_kinds
                WHEN v_replayed[e.ordinality] THEN '{}'::text[] ELSE string_to_array(e.discount_kinds, ',') END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.rule_set_version ELSE e.rule_set_version END
    FROM unnest(p_entries) WITH ORDINALITY AS e
    LEFT JOIN LATERAL (
        SELECT k.tap_id, k.request_digest, t.business_day, t.batch_id, t.decision, t.reason, t.fare_fen,
               t.full_fare_fen, t.rider_category, t.product_id, t.discount_kinds, t.rule_set_version
        FROM tap_keys k
        JOIN taps t ON t.business_day = k.business_day AND t.tap_id = k.tap_id
        WHERE v_ids[e.ordinality] IS NULL AND k.device_id = e.device_id AND k.device_tap_id = e.device_tap_id
        -- OFFSET 0 keeps this a per-entry lookup that new entries skip, not a join over whole tables.
        OFFSET 0
    ) o ON true
    ORDER BY e.ordinality;
END $$;
