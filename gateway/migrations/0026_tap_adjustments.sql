-- Tap-off adjustments of area-priced (county) lines, and row encoding v2.
--
-- A tap-on on an area network is charged the maximum fare from its boarding
-- area. The tap-off that closes the trip charges nothing new, and its
-- adjustment_fen (zero or negative) corrects that charge to the trip's fare:
-- the rider pays fare_fen(on) + adjustment_fen(off).
-- full_fare_adjustment_fen does the same for the full fare, on which
-- subsidies are computed. Rows written before this migration get 0.
--
-- Encoding v2 of a row covers the two new columns; batches committed before
-- this migration keep encoding_version 1 and are verified with encoding v1.
-- docs/journal.md describes both.

-- adjustment_fen is min(trip fare, charged) - charged in the fare rules, so
-- it is never positive. full_fare_adjustment_fen has no sign check: a rule
-- set published between the tap-on and the tap-off can raise the trip's full
-- fare above the maximum full fare recorded at the tap-on, and such a tap-off
-- must still be journaled.
ALTER TABLE taps
    ADD COLUMN adjustment_fen integer NOT NULL DEFAULT 0 CHECK (adjustment_fen <= 0),
    ADD COLUMN full_fare_adjustment_fen integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT taps_adjustment_only_on_accepted_tap_off
        CHECK ((adjustment_fen = 0 AND full_fare_adjustment_fen = 0) OR (tap_kind = 2 AND decision = 1));

-- The row encoding each batch's row hashes were computed with.
ALTER TABLE journal_batches
    ADD COLUMN encoding_version smallint NOT NULL DEFAULT 1 CHECK (encoding_version IN (1, 2));

-- Canonical encoding v2 of one journal row: record_send of the 26 columns of
-- encoding v1 followed by adjustment_fen and full_fare_adjustment_fen.
-- gateway/journal/encoding.py implements the same encoding in Python.
CREATE FUNCTION tapgate_tap_encoding_v2(t taps) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT record_send(ROW(t.tap_id, t.business_day, t.batch_id, t.device_id, t.device_tap_id, t.tap_time,
                           t.received_at, t.offline, t.operator_id, t.route_id, t.stop_id, t.site_id, t.tap_kind,
                           t.medium, t.credential_id, t.holder_token, t.account_token, t.decision, t.reason,
                           t.rider_category, t.product_id, t.fare_fen, t.full_fare_fen, t.discount_kinds,
                           t.rule_set_version, t.request_digest, t.adjustment_fen, t.full_fare_adjustment_fen))
$$;

-- Entries carry the two adjustments after the fields of 0020.
ALTER TYPE tapgate_journal_entry
    ADD ATTRIBUTE adjustment_fen integer,
    ADD ATTRIBUTE full_fare_adjustment_fen integer;

-- The result gains two columns, which CREATE OR REPLACE cannot change.
DROP FUNCTION tapgate_journal_commit(text, tapgate_journal_entry[]);

-- Commit one group of taps, as in 0020, with three changes: the rows store
-- the two adjustments (0 for a replayed QR code, like its fare), each row is
-- hashed with encoding v2 and the batch digest is labelled
-- "tapgate.batch.v2", and the batch records encoding_version 2. Returns one
-- row per entry (ord is its 1-based position): status 0 new, 1 retry (same
-- request digest; the original row is returned), 2 conflict (different
-- request digest; the original row is returned), 3 the key exists but its
-- journal row is missing (tampering).
CREATE FUNCTION tapgate_journal_commit(p_worker text, p_entries tapgate_journal_entry[])
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
