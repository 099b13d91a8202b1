-- Users and bearer tokens of the admin HTTP API, and its audit trail.
--
-- Roles: editor (drafts and publishes rule sets), auditor (reads everything),
-- operator (reads its own operator's rules and data; operator_id is set),
-- finance (reads settlement data). Tokens are random 256-bit secrets shown
-- once at creation; only their SHA-256 is stored, so a copy of the database
-- does not yield a usable token.

CREATE TABLE admin_users (
    user_name   text PRIMARY KEY CHECK (user_name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$'),
    role        text NOT NULL CHECK (role IN ('editor', 'auditor', 'operator', 'finance')),
    operator_id text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz,
    CHECK ((role = 'operator') = (operator_id IS NOT NULL))
);

CREATE TABLE admin_tokens (
    token_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_name    text NOT NULL REFERENCES admin_users,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- One row per state-changing admin request and per user or token change. Append-only.
CREATE TABLE admin_audit (
    audit_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL DEFAULT '',
    status    integer,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX admin_audit_by_time ON admin_audit (at);

CREATE TRIGGER admin_audit_append_only
    BEFORE UPDATE OR DELETE ON admin_audit
    FOR EACH ROW EXECUTE FUNCTION tapgate_append_only();
