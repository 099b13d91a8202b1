-- Fare rule-set versions and their audit trail.
--
-- A version starts as a draft, which editors may change or delete. Publishing
-- gives it an effective time and a publish sequence number; from then on the
-- row is immutable (a trigger rejects UPDATE and DELETE), so a tap priced by
-- version N can always be priced again the same way. Rolling back publishes a
-- copy of an earlier version as a new version. Gateways poll
-- max(publish_seq) to notice new publications cheaply.

CREATE SEQUENCE rule_set_publish_seq;

CREATE TABLE rule_set_versions (
    version        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_set_id    text NOT NULL,
    status         text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published')),
    -- The validated document as JSON (msgspec builtins), and the text as the editor wrote it.
    document       jsonb NOT NULL,
    source_text    text NOT NULL,
    source_format  text NOT NULL CHECK (source_format IN ('toml', 'yaml', 'json')),
    -- SHA-256 of the canonical JSON of document.
    digest         bytea NOT NULL CHECK (length(digest) = 32),
    note           text NOT NULL DEFAULT '',
    -- The version this one was copied from (a draft based on it, or a rollback).
    based_on       integer REFERENCES rule_set_versions (version),
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    published_by   text,
    published_at   timestamptz,
    effective_from timestamptz,
    publish_seq    bigint UNIQUE,
    CHECK ((status = 'draft') = (publish_seq IS NULL)),
    CHECK ((status = 'draft') = (effective_from IS NULL))
);
CREATE INDEX rule_set_versions_published ON rule_set_versions (effective_from) WHERE status = 'published';

CREATE FUNCTION tapgate_rule_set_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'published' THEN
        RAISE EXCEPTION 'rule-set version % is published and cannot be changed', OLD.version
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER rule_set_versions_immutable
    BEFORE UPDATE OR DELETE ON rule_set_versions
    FOR EACH ROW EXECUTE FUNCTION tapgate_rule_set_immutable();

-- Who did what to which version, and when; diff lists the changed fields.
-- Append-only: a trigger rejects UPDATE and DELETE.
CREATE TABLE rule_set_audit (
    audit_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL CHECK (action IN ('create_draft', 'update_draft', 'delete_draft', 'publish',
                                               'rollback')),
    version    integer,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX rule_set_audit_by_version ON rule_set_audit (version, at);

CREATE FUNCTION tapgate_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER rule_set_audit_append_only
    BEFORE UPDATE OR DELETE ON rule_set_audit
    FOR EACH ROW EXECUTE FUNCTION tapgate_append_only();
