-- nodows model schema, migration 1: the model, its revisions, the status rows.
--
-- Apply with `nodows model migrate --model postgres://...` (or psql -f; it is
-- one transaction and refuses to run twice). Everything lives in the schema
-- `nodows`.
--
-- The model has the layers of the XML form: a value with `server` and
-- `profile` NULL is a default, with `profile` set it belongs to that profile
-- (mode), with `server` set to that server; never both.
-- Layering is defaults, then the profile, then the server.
--
-- Every committed transaction that changes the model makes one new row in
-- `revision` (who, when, the whole model as JSON) and NOTIFYs the channel
-- `nodows_model` once per affected server id, or once with `all` when the
-- defaults or a profile changed. A transaction that changes nothing (an
-- UPDATE to the same value) makes no revision and no notification.

CREATE SCHEMA nodows;

CREATE TABLE nodows.migration (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO nodows.migration (version) VALUES (1);

CREATE TABLE nodows.profile (
    name text PRIMARY KEY CHECK (btrim(name) <> '')
);

CREATE TABLE nodows.server (
    id text PRIMARY KEY CHECK (btrim(id) <> '')
);

-- Service names (the Debian package name where there is one); a value can
-- only name a service listed here, so a typo is refused by the database.
CREATE TABLE nodows.service (
    name text PRIMARY KEY CHECK (btrim(name) <> '')
);

CREATE TABLE nodows.value (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server text REFERENCES nodows.server (id) ON UPDATE CASCADE ON DELETE CASCADE,
    profile text REFERENCES nodows.profile (name) ON UPDATE CASCADE ON DELETE CASCADE,
    service text NOT NULL REFERENCES nodows.service (name) ON UPDATE CASCADE,
    key text NOT NULL CHECK (btrim(key) <> ''),
    value text NOT NULL,
    CONSTRAINT value_in_one_layer CHECK (server IS NULL OR profile IS NULL),
    CONSTRAINT value_once_per_layer UNIQUE NULLS NOT DISTINCT (server, profile, service, key)
);
CREATE INDEX value_by_server ON nodows.value (server);
CREATE INDEX value_by_profile ON nodows.value (profile);

CREATE TABLE nodows.revision (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL UNIQUE DEFAULT pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT now(),
    -- The login role that committed; `SET LOCAL nodows.author = '...'`
    -- names a person behind a shared role.
    author text NOT NULL DEFAULT coalesce(nullif(current_setting('nodows.author', true), ''), session_user),
    -- `SET LOCAL nodows.note = '...'` in the changing transaction.
    note text NOT NULL DEFAULT coalesce(current_setting('nodows.note', true), ''),
    -- The server ids whose effective model changed, or {all}.
    affected text[] NOT NULL,
    -- The whole model: {"defaults": {service: {key: value}},
    -- "profiles": {name: {...}}, "servers": {id: {...}}}.
    model jsonb NOT NULL
);

-- One row per appliance: what it last applied or refused.
CREATE TABLE nodows.status (
    server text PRIMARY KEY REFERENCES nodows.server (id) ON UPDATE CASCADE ON DELETE CASCADE,
    -- The revision of the model the appliance runs (after `applied`), or
    -- the one it refused (after `refused`).
    revision bigint NOT NULL,
    -- applied: rendered and the services reloaded; refused: the model did
    -- not validate or render, the running configuration was kept; failed:
    -- the render command failed on the appliance.
    result text NOT NULL CHECK (result IN ('applied', 'refused', 'failed')),
    error text NOT NULL DEFAULT '',
    -- The revision the appliance runs now (equal to `revision` after
    -- `applied`).
    running_revision bigint,
    at timestamptz NOT NULL DEFAULT now()
);

-- The model as JSON (see revision.model).
CREATE FUNCTION nodows.snapshot() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = nodows, pg_temp
AS $$
    WITH keys AS (
        SELECT server, profile, service, jsonb_object_agg(key, value) AS keys
        FROM value GROUP BY server, profile, service
    )
    SELECT jsonb_build_object(
        'defaults', coalesce((SELECT jsonb_object_agg(service, keys) FROM keys
                              WHERE server IS NULL AND profile IS NULL), '{}'::jsonb),
        'profiles', coalesce((SELECT jsonb_object_agg(p.name, coalesce(
                                  (SELECT jsonb_object_agg(service, keys) FROM keys WHERE keys.profile = p.name),
                                  '{}'::jsonb))
                              FROM profile p), '{}'::jsonb),
        'servers', coalesce((SELECT jsonb_object_agg(s.id, coalesce(
                                 (SELECT jsonb_object_agg(service, keys) FROM keys WHERE keys.server = s.id),
                                 '{}'::jsonb))
                             FROM server s), '{}'::jsonb))
$$;

-- The newest revision's id (0 before the first); appliances call it, they
-- cannot read the revision table itself (its snapshots hold every server).
CREATE FUNCTION nodows.current_revision() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = nodows, pg_temp
AS $$ SELECT coalesce(max(id), 0) FROM revision $$;

-- Runs once per changing transaction, at commit (a deferred constraint
-- trigger: it sees every statement of the transaction).
CREATE FUNCTION nodows.record_revision() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = nodows, pg_temp
AS $$
DECLARE
    previous jsonb;
    current jsonb;
    affected text[];
    server_id text;
BEGIN
    IF current_setting('nodows.revision_txid', true) = pg_current_xact_id()::text THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('nodows.revision_txid', pg_current_xact_id()::text, true);
    -- Revisions are made one commit at a time, so their order is the order
    -- of the commits and each snapshot includes the previous commit.
    LOCK TABLE revision IN EXCLUSIVE MODE;
    SELECT model INTO previous FROM revision ORDER BY id DESC LIMIT 1;
    current := snapshot();
    IF previous IS NOT DISTINCT FROM current THEN
        RETURN NULL;
    END IF;
    IF previous IS NULL
        OR previous -> 'defaults' IS DISTINCT FROM current -> 'defaults'
        OR previous -> 'profiles' IS DISTINCT FROM current -> 'profiles' THEN
        affected := ARRAY['all'];
    ELSE
        SELECT coalesce(array_agg(key ORDER BY key), '{}') INTO affected
        FROM (SELECT coalesce(n.key, p.key) AS key
              FROM jsonb_each(current -> 'servers') n
              FULL JOIN jsonb_each(previous -> 'servers') p ON n.key = p.key
              WHERE n.value IS DISTINCT FROM p.value) changed;
    END IF;
    INSERT INTO revision (affected, model) VALUES (affected, current);
    FOREACH server_id IN ARRAY affected LOOP
        PERFORM pg_notify('nodows_model', server_id);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER value_revision AFTER INSERT OR UPDATE OR DELETE ON nodows.value
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION nodows.record_revision();
CREATE CONSTRAINT TRIGGER server_revision AFTER INSERT OR UPDATE OR DELETE ON nodows.server
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION nodows.record_revision();
CREATE CONSTRAINT TRIGGER profile_revision AFTER INSERT OR UPDATE OR DELETE ON nodows.profile
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION nodows.record_revision();

-- TRUNCATE would bypass the row triggers: delete rows instead.
CREATE FUNCTION nodows.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of nodows.% is not allowed; DELETE the rows so that a revision is recorded', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER value_no_truncate BEFORE TRUNCATE ON nodows.value
    FOR EACH STATEMENT EXECUTE FUNCTION nodows.refuse_truncate();
CREATE TRIGGER server_no_truncate BEFORE TRUNCATE ON nodows.server
    FOR EACH STATEMENT EXECUTE FUNCTION nodows.refuse_truncate();
CREATE TRIGGER profile_no_truncate BEFORE TRUNCATE ON nodows.profile
    FOR EACH STATEMENT EXECUTE FUNCTION nodows.refuse_truncate();
