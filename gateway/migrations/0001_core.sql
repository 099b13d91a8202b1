-- Core tables shared by the gateway and settlement: operators, devices,
-- issuer keys, deny list and the tap journal. Money is integer fen; times are
-- timestamptz (UTC on the wire); business days are local dates (Asia/Shanghai).

CREATE TABLE operators (
    operator_id text PRIMARY KEY CHECK (operator_id ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    kind        text NOT NULL CHECK (kind IN ('bus', 'scenic', 'venue')),
    name_zh     text NOT NULL,
    name_en     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Validators (on a bus route) and gates (at a site). The secret authenticates
-- the device's requests; it is never returned by an API or written to a log.
CREATE TABLE devices (
    device_id   text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    operator_id text NOT NULL REFERENCES operators,
    kind        text NOT NULL CHECK (kind IN ('validator', 'gate')),
    route_id    text,
    site_id     text,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    secret      bytea NOT NULL CHECK (length(secret) >= 16),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'validator' AND route_id IS NOT NULL) OR (kind = 'gate' AND site_id IS NOT NULL))
);

-- Issuer public keys. Private keys never enter the database.
CREATE TABLE issuer_keys (
    key_id       integer PRIMARY KEY CHECK (key_id BETWEEN 0 AND 65535),
    public_key   bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired', 'revoked')),
    activated_at timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz,
    revoked_at   timestamptz,
    version      bigint NOT NULL DEFAULT 0
);

-- Deny list. subject is the credential id for card_lost and
-- credential_revoked, and the account token for arrears. Every change takes
-- a new version from deny_list_version, so validators fetch deltas by version.
CREATE SEQUENCE deny_list_version;

CREATE TABLE deny_list (
    kind       text NOT NULL CHECK (kind IN ('card_lost', 'credential_revoked', 'arrears')),
    subject    bytea NOT NULL,
    active     boolean NOT NULL DEFAULT true,
    version    bigint NOT NULL DEFAULT nextval('deny_list_version'),
    changed_at timestamptz NOT NULL DEFAULT now(),
    source     text NOT NULL,
    PRIMARY KEY (kind, subject)
);
CREATE INDEX deny_list_by_version ON deny_list (version);

-- The tap journal, partitioned by business day. One row per tap, accepted or
-- rejected. No names, ID numbers or bank accounts: holders and accounts
-- appear only as pseudonymous tokens.
CREATE SEQUENCE tap_id_seq;
CREATE SEQUENCE journal_batch_seq;

CREATE TABLE taps (
    tap_id           bigint NOT NULL,
    business_day     date NOT NULL,
    batch_id         bigint NOT NULL,
    device_id        text NOT NULL,
    device_tap_id    bigint NOT NULL,
    tap_time         timestamptz NOT NULL,
    received_at      timestamptz NOT NULL,
    offline          boolean NOT NULL DEFAULT false,
    operator_id      text NOT NULL,
    route_id         text,
    stop_id          text,
    site_id          text,
    -- 0 board (flat fare), 1 tap-on, 2 tap-off, 3 site entry
    tap_kind         smallint NOT NULL,
    -- 1 card, 2 QR code
    medium           smallint NOT NULL,
    credential_id    bytea,
    holder_token     bytea,
    account_token    bytea,
    -- 1 accepted, 0 rejected
    decision         smallint NOT NULL,
    -- stable reason code; 0 is accepted
    reason           smallint NOT NULL,
    rider_category   text,
    product_id       text,
    fare_fen         integer NOT NULL DEFAULT 0 CHECK (fare_fen >= 0),
    full_fare_fen    integer NOT NULL DEFAULT 0 CHECK (full_fare_fen >= 0),
    -- what reduced the fare below full fare: category, transfer, cap (may be several)
    discount_kinds   text[] NOT NULL DEFAULT '{}',
    rule_set_version integer,
    -- SHA-256 of the tap as the device sent it, to tell a retry from a conflicting reuse of the id
    request_digest   bytea NOT NULL,
    PRIMARY KEY (business_day, tap_id)
) PARTITION BY RANGE (business_day);

-- Taps whose day has no partition yet land here, so none is ever refused.
CREATE TABLE taps_default PARTITION OF taps DEFAULT;

CREATE INDEX taps_by_batch ON taps (batch_id);
CREATE INDEX taps_by_account ON taps (account_token, business_day) WHERE decision = 1;

-- Create the daily partitions from first_day to last_day (inclusive) that do not exist yet.
CREATE FUNCTION tapgate_ensure_tap_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := first_day;
    made integer := 0;
    part text;
BEGIN
    WHILE day <= last_day LOOP
        part := 'taps_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            -- Rows already in the default partition for this day must move first.
            IF EXISTS (SELECT 1 FROM taps_default WHERE business_day = day) THEN
                EXECUTE format('CREATE TABLE %I (LIKE taps INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
                EXECUTE format('INSERT INTO %I SELECT * FROM taps_default WHERE business_day = %L', part, day);
                DELETE FROM taps_default WHERE business_day = day;
                EXECUTE format('ALTER TABLE taps ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               part, day, day + 1);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF taps FOR VALUES FROM (%L) TO (%L)',
                               part, day, day + 1);
            END IF;
            made := made + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN made;
END $$;

-- One row per group commit, chained by hash: chain_hash = SHA-256(prev_hash || digest),
-- where digest covers the batch's rows. The journal module defines the row encoding.
CREATE TABLE journal_batches (
    batch_id     bigint PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),
    worker       text NOT NULL,
    tap_count    integer NOT NULL CHECK (tap_count > 0),
    digest       bytea NOT NULL,
    prev_hash    bytea NOT NULL,
    chain_hash   bytea NOT NULL
);
