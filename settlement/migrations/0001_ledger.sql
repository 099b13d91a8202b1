-- Settlement: bank accounts (encrypted), closed business days, per-day
-- aggregates of the journal, the double-entry ledger, settlement runs with
-- their debits, credits and bank files, and bank returns.
-- Money is integer fen. Bank account numbers appear only here, encrypted
-- with a key kept outside the database (PyNaCl SecretBox: nonce || box).

CREATE TABLE settlement_banks (
    bank_code           text PRIMARY KEY CHECK (bank_code ~ '^[A-Z0-9]{2,11}$'),
    name_zh             text NOT NULL,
    name_en             text NOT NULL,
    -- The settlement agency's own account at this bank: creditor of the
    -- direct debits and debtor of the credit transfers in this bank's files.
    agency_account_enc  bytea NOT NULL,
    agency_account_mask text NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Rider accounts, imported from the card issuer's export.
CREATE TABLE settlement_rider_accounts (
    account_token bytea PRIMARY KEY CHECK (length(account_token) = 16),
    bank_code     text NOT NULL REFERENCES settlement_banks,
    account_enc   bytea NOT NULL,
    account_mask  text NOT NULL,
    source_file   text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settlement_operator_accounts (
    operator_id  text PRIMARY KEY REFERENCES operators,
    bank_code    text NOT NULL REFERENCES settlement_banks,
    account_enc  bytea NOT NULL,
    account_mask text NOT NULL,
    -- Settlement fee kept from the operator's fares, in basis points (1/100 %).
    fee_bp       integer NOT NULL DEFAULT 0 CHECK (fee_bp BETWEEN 0 AND 10000),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A row per closed business day. Day D holds the taps with business_day <= D
-- and batch_id <= high_water_batch that no earlier closed day holds. Days are
-- closed in order and high-water marks never decrease, so these sets are
-- disjoint and a tap committed after its day closed lands in the next day
-- closed after its commit.
CREATE TABLE settlement_days (
    business_day          date PRIMARY KEY,
    closed_at             timestamptz NOT NULL DEFAULT date_trunc('second', now()),
    high_water_batch      bigint NOT NULL CHECK (high_water_batch >= 0),
    prev_day              date,
    prev_high_water_batch bigint NOT NULL DEFAULT 0,
    CHECK (prev_day IS NULL OR prev_day < business_day),
    CHECK (high_water_batch >= prev_high_water_batch)
);

-- Fares of accepted taps with fare_fen > 0, per closed day, account and operator.
CREATE TABLE settlement_account_fares (
    business_day  date NOT NULL REFERENCES settlement_days,
    account_token bytea NOT NULL,
    operator_id   text NOT NULL,
    taps          integer NOT NULL,
    fare_fen      bigint NOT NULL CHECK (fare_fen > 0),
    PRIMARY KEY (business_day, account_token, operator_id)
);

-- Accepted taps per closed day, operator and rider category ('' when none).
CREATE TABLE settlement_category_totals (
    business_day    date NOT NULL REFERENCES settlement_days,
    operator_id     text NOT NULL,
    rider_category  text NOT NULL,
    taps            integer NOT NULL,
    -- taps whose fare was reduced by the rider category: free (fare 0) or discounted
    free_taps       integer NOT NULL,
    discounted_taps integer NOT NULL,
    fare_fen        bigint NOT NULL,
    full_fare_fen   bigint NOT NULL,
    -- full_fare_fen - fare_fen over the free and discounted taps
    subsidy_full_fare_fen bigint NOT NULL,
    subsidy_fen     bigint NOT NULL,
    PRIMARY KEY (business_day, operator_id, rider_category)
);

-- Double-entry ledger. amount_fen > 0 is a debit, < 0 a credit; the lines of
-- every posting sum to zero. Rows are never updated or deleted: a correction
-- is a new posting that reverses the wrong one.
CREATE TABLE ledger_postings (
    posting_id   bigserial PRIMARY KEY,
    ref          text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('accrual', 'debits', 'credits', 'subsidy', 'returns',
                                                'reversal', 'adjustment')),
    business_day date,
    memo         text NOT NULL DEFAULT '',
    reverses     bigint UNIQUE REFERENCES ledger_postings,
    created_txid bigint NOT NULL DEFAULT txid_current(),
    posted_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_lines (
    posting_id bigint NOT NULL REFERENCES ledger_postings,
    line_no    integer NOT NULL,
    account    text NOT NULL CHECK (account IN (
        'rider_receivable',      -- subject: account token (hex)
        'operator_payable',      -- subject: operator id
        'fee_income',            -- subject: operator id
        'collections_clearing',  -- subject: bank code; direct debits sent, not yet settled
        'payouts_clearing',      -- subject: bank code; credit transfers sent, not yet settled
        'bank',                  -- subject: bank code; the agency's account there
        'subsidy_receivable',    -- subject: operator id; owed by the finance bureau
        'subsidy_payable')),     -- subject: operator id; owed to the operator
    subject    text NOT NULL,
    amount_fen bigint NOT NULL CHECK (amount_fen <> 0),
    PRIMARY KEY (posting_id, line_no)
);
CREATE INDEX ledger_lines_by_account ON ledger_lines (account, subject);

CREATE FUNCTION settlement_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable: % on % rejected; post a reversing entry instead',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_immutable();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_ledger_immutable();
CREATE TRIGGER ledger_lines_immutable BEFORE UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_immutable();
CREATE TRIGGER ledger_lines_no_truncate BEFORE TRUNCATE ON ledger_lines
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_ledger_immutable();

-- After each statement that inserts lines: the postings it touched were
-- created by this transaction and each sums to zero.
CREATE FUNCTION settlement_lines_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT p.posting_id INTO bad
    FROM (SELECT DISTINCT posting_id FROM added) a JOIN ledger_postings p USING (posting_id)
    WHERE p.created_txid <> txid_current()
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger posting % was committed earlier; its lines cannot change', bad.posting_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;

    SELECT l.posting_id, sum(l.amount_fen) AS total INTO bad
    FROM ledger_lines l
    WHERE l.posting_id IN (SELECT DISTINCT posting_id FROM added)
    GROUP BY l.posting_id
    HAVING sum(l.amount_fen) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger posting % is unbalanced: its lines sum to % fen, expected 0',
            bad.posting_id, bad.total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_lines_balanced AFTER INSERT ON ledger_lines
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_lines_balanced();

-- At commit: every posting has at least two lines and sums to zero.
CREATE FUNCTION settlement_posting_complete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    line_count bigint;
    total bigint;
BEGIN
    SELECT count(*), coalesce(sum(amount_fen), 0) INTO line_count, total
    FROM ledger_lines WHERE posting_id = NEW.posting_id;
    IF line_count < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'ledger posting % (%) has % lines summing to % fen; a posting needs 2 or more lines summing to 0',
            NEW.posting_id, NEW.ref, line_count, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_postings_complete AFTER INSERT ON ledger_postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION settlement_posting_complete();

-- One settlement run per closed day. step names the last step committed.
CREATE TABLE settlement_runs (
    business_day date PRIMARY KEY REFERENCES settlement_days,
    -- Creation time written into the bank files, fixed at the first attempt
    -- so that a re-run produces the same bytes.
    created_at   timestamptz NOT NULL DEFAULT date_trunc('second', now()),
    step         text NOT NULL DEFAULT 'started',
    completed_at timestamptz
);

CREATE TABLE settlement_debits (
    business_day  date NOT NULL REFERENCES settlement_runs,
    account_token bytea NOT NULL,
    debit_no      integer NOT NULL,
    end_to_end_id text NOT NULL UNIQUE,
    -- NULL when the account has no imported bank account yet: the debit is
    -- held and the amount stays receivable for a later run.
    bank_code     text REFERENCES settlement_banks,
    day_fen       bigint NOT NULL CHECK (day_fen >= 0),
    carried_fen   bigint NOT NULL,
    amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
    status        text NOT NULL CHECK (status IN ('held', 'instructed', 'settled', 'rejected')),
    reason_code   text,
    returned_at   timestamptz,
    PRIMARY KEY (business_day, account_token),
    UNIQUE (business_day, debit_no)
);

CREATE TABLE settlement_credits (
    business_day  date NOT NULL REFERENCES settlement_runs,
    operator_id   text NOT NULL,
    credit_no     integer NOT NULL,
    end_to_end_id text NOT NULL UNIQUE,
    bank_code     text REFERENCES settlement_banks,
    fare_fen      bigint NOT NULL,
    fee_fen       bigint NOT NULL,
    carried_fen   bigint NOT NULL,
    amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
    status        text NOT NULL CHECK (status IN ('held', 'instructed', 'settled', 'rejected')),
    reason_code   text,
    returned_at   timestamptz,
    PRIMARY KEY (business_day, operator_id),
    UNIQUE (business_day, credit_no)
);

CREATE TABLE settlement_files (
    business_day date NOT NULL REFERENCES settlement_runs,
    bank_code    text NOT NULL REFERENCES settlement_banks,
    kind         text NOT NULL CHECK (kind IN ('pain.008', 'pain.001', 'debits.csv', 'credits.csv')),
    file_name    text NOT NULL UNIQUE,
    message_id   text UNIQUE,
    tx_count     integer NOT NULL,
    total_fen    bigint NOT NULL,
    sha256       text NOT NULL,
    size_bytes   bigint NOT NULL,
    written_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (business_day, bank_code, kind)
);

-- Bank return files already imported, by content hash, and one row per item.
CREATE TABLE settlement_return_files (
    sha256      text PRIMARY KEY,
    file_name   text NOT NULL,
    format      text NOT NULL CHECK (format IN ('camt.054', 'csv')),
    items       integer NOT NULL,
    new_items   integer NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settlement_returns (
    end_to_end_id text PRIMARY KEY,
    outcome       text NOT NULL CHECK (outcome IN ('settled', 'rejected')),
    reason_code   text,
    amount_fen    bigint NOT NULL,
    booked_on     date,
    file_sha256   text NOT NULL REFERENCES settlement_return_files,
    imported_at   timestamptz NOT NULL DEFAULT now()
);

-- Accounts whose direct debit was rejected and not yet paid. denied is true
-- while the account has an active 'arrears' row in deny_list.
CREATE TABLE settlement_arrears (
    account_token   bytea PRIMARY KEY,
    since           timestamptz NOT NULL,
    outstanding_fen bigint NOT NULL,
    denied          boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
