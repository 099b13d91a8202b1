-- Statistics-independent plans for the journal's commit function.
--
-- The function of 0026 classified entries with EXISTS subqueries on tap_keys
-- and replay_keys. For a batch of a hundred entries the planner may prefer
-- hashing a whole table to a hundred index probes, and it makes that choice
-- on a table that has grown since it was last analysed: on a new database
-- every commit then read every key ever written. Measured on the embedded
-- PostgreSQL 16.2 with autovacuum off: 3.6 ms per commit of 100 QR taps after
-- 2,000 taps, 12.7 ms after 18,000, and EXPLAIN showed two hashed SubPlans
-- over sequential scans.
--
-- This version claims the keys with INSERT ... ON CONFLICT DO NOTHING, which
-- checks each key through its unique index whatever the statistics say. Only
-- the original rows of retried entries are still looked up by query, one
-- index probe per such entry. Arguments, results and the rows written are
-- those of 0026, except that tap ids drawn by entries that turn out not to
-- be new are left unused (tap ids had gaps before, from rolled back commits).

CREATE OR REPLACE FUNCTION tapgate_journal_commit(p_worker text, p_entries tapgate_journal_entry[])
RETURNS TABLE (ord integer, status smallint, tap_id bigint, business_day date, batch_id bigint,
               decision smallint, reason smallint, fare_fen integer, full_fare_fen integer,
               rider_category text, product_id text, discount_kinds text[], rule_set_version integer,
               adjustment_fen integer, full_fare_adjustment_fen integer)
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
    v_new       integer;
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

    -- Claim each entry's key in entry order. Every entry draws a tap id; the
    -- insert skips an entry whose key exists or was claimed by an earlier
    -- entry of this call, and its drawn id stays unused.
    WITH src AS MATERIALIZED (
        SELECT e.ordinality AS ord, nextval('tap_id_seq') AS new_id, e.device_id, e.device_tap_id,
               e.business_day, e.request_digest
        FROM unnest(p_entries) WITH ORDINALITY AS e
    ), claimed AS (
        INSERT INTO tap_keys AS k (device_id, device_tap_id, tap_id, business_day, request_digest)
        SELECT s.device_id, s.device_tap_id, s.new_id, s.business_day, s.request_digest FROM src s ORDER BY s.ord
        ON CONFLICT DO NOTHING
        RETURNING k.tap_id
    )
    SELECT array_agg(c.tap_id ORDER BY s.ord), count(c.tap_id)::integer
    INTO v_ids, v_new
    FROM src s LEFT JOIN claimed c ON c.tap_id = s.new_id;

    IF v_new > 0 THEN
        -- Claim the QR replay keys of the new entries in entry order. A new
        -- entry whose code was used before, by an earlier tap or an earlier
        -- entry of this call, is replayed.
        WITH src AS MATERIALIZED (
            SELECT e.ordinality AS ord, v_ids[e.ordinality] AS id, e.replay_key, e.business_day, e.tap_time_ms
            FROM unnest(p_entries) WITH ORDINALITY AS e
        ), claimed AS (
            INSERT INTO replay_keys AS r (replay_key, tap_id, business_day, tap_time)
            SELECT s.replay_key, s.id, s.business_day, timestamptz 'epoch' + s.tap_time_ms * interval '1 millisecond'
            FROM src s
            WHERE s.id IS NOT NULL AND s.replay_key IS NOT NULL
            ORDER BY s.ord
            ON CONFLICT DO NOTHING
            RETURNING r.tap_id
        )
        SELECT array_agg(s.id IS NOT NULL AND s.replay_key IS NOT NULL AND c.tap_id IS NULL ORDER BY s.ord)
        INTO v_replayed
        FROM src s LEFT JOIN claimed c ON c.tap_id = s.id;

        v_batch := nextval('journal_batch_seq');

        -- Insert the rows; a replayed code is journaled as rejected REPLAYED
        -- (43) with no fare and no adjustment. Hash each row as stored, in
        -- tap_id order.
        WITH rows AS (
            INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                              offline, operator_id, route_id, stop_id, site_id, tap_kind, medium, credential_id,
                              holder_token, account_token, decision, reason, rider_category, product_id,
                              fare_fen, full_fare_fen, discount_kinds, rule_set_version, request_digest,
                              adjustment_fen, full_fare_adjustment_fen)
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
                   e.rule_set_version, e.request_digest,
                   CASE WHEN v_replayed[e.ordinality] THEN 0 ELSE coalesce(e.adjustment_fen, 0) END,
                   CASE WHEN v_replayed[e.ordinality] THEN 0 ELSE coalesce(e.full_fare_adjustment_fen, 0) END
            FROM unnest(p_entries) WITH ORDINALITY AS e
            WHERE v_ids[e.ordinality] IS NOT NULL
            RETURNING *
        ), hashed AS MATERIALIZED (
            SELECT r.tap_id, sha256(tapgate_tap_encoding_v2(ROW(r.*)::taps)) AS row_hash FROM rows r
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
        -- The label names the row encoding, so changing a batch's
        -- encoding_version breaks its digest.
        v_digest := sha256(convert_to('tapgate.batch.v2', 'UTF8')
                           || int8send(v_batch)
                           || timestamptz_send(now())
                           || tapgate_field(convert_to(p_worker, 'UTF8'))
                           || int8send(v_count::bigint)
                           || v_pairs);
        v_chain := sha256(v_prev_hash || v_digest);
        INSERT INTO journal_batches (batch_id, committed_at, worker, tap_count, digest, prev_hash, chain_hash,
                                     tap_ids, row_hashes, encoding_version)
        VALUES (v_batch, now(), p_worker, v_count, v_digest, v_prev_hash, v_chain, v_tap_ids, v_hashes, 2);
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
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.rule_set_version ELSE e.rule_set_version END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.adjustment_fen
                WHEN v_replayed[e.ordinality] THEN 0 ELSE coalesce(e.adjustment_fen, 0) END,
           CASE WHEN v_ids[e.ordinality] IS NULL THEN o.full_fare_adjustment_fen
                WHEN v_replayed[e.ordinality] THEN 0 ELSE coalesce(e.full_fare_adjustment_fen, 0) END
    FROM unnest(p_entries) WITH ORDINALITY AS e
    LEFT JOIN LATERAL (
        SELECT k.tap_id, k.request_digest, t.business_day, t.batch_id, t.decision, t.reason, t.fare_fen,
               t.full_fare_fen, t.rider_category, t.product_id, t.discount_kinds, t.rule_set_version,
               t.adjustment_fen, t.full_fare_adjustment_fen
        FROM tap_keys k
        JOIN taps t ON t.business_day = k.business_day AND t.tap_id = k.tap_id
        WHERE v_ids[e.ordinality] IS NULL AND k.device_id = e.device_id AND k.device_tap_id = e.device_tap_id
        -- OFFSET 0 keeps this a per-entry lookup that new entries skip, not a join over whole tables.
        OFFSET 0
    ) o ON true
    ORDER BY e.ordinality;
END $$;
