-- Deny-list versions in commit order, so a reader that has seen version N has
-- seen every change numbered N or lower.
--
-- A version taken straight from the sequence can commit after a higher one:
-- a worker that read up to 11 would then never fetch 10. The trigger below
-- takes a transaction-scoped advisory lock before numbering a change, so
-- writers number and commit one at a time. It overrides any version the
-- statement set, so every writer (settlement, the CLI, SQL by hand) gets it.

CREATE FUNCTION tapgate_deny_list_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Arbitrary constant naming the deny-list writer lock; held until commit.
    PERFORM pg_advisory_xact_lock(2053567345);
    NEW.version := nextval('deny_list_version');
    NEW.changed_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER deny_list_stamp BEFORE INSERT OR UPDATE ON deny_list
    FOR EACH ROW EXECUTE FUNCTION tapgate_deny_list_stamp();

-- A deleted entry would never reach the workers and validators that hold it,
-- which fetch changes by version. Deactivate it instead.
CREATE FUNCTION tapgate_deny_list_no_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'deny_list rows are never deleted: set active = false instead / 黑名单记录不可删除，请将 active 设为 false'
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER deny_list_no_delete BEFORE DELETE ON deny_list
    FOR EACH ROW EXECUTE FUNCTION tapgate_deny_list_no_delete();
