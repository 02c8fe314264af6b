-- nodows model schema, migration 2: one role per appliance, row-level security.
--
-- Two group roles (cluster-wide, created when missing):
--   nodows_operator   changes the model (every row), reads revisions and status
--   nodows_appliance  what every appliance's own login role is a member of
-- The policies call the functions in scalar subqueries: evaluated once per
-- query, not once per row.
-- An appliance's role reads the defaults, the profiles listed for it in
-- nodows.appliance and its own server's rows, nothing else; it writes only
-- its own status row. Add one with:
--   CREATE ROLE nodows_web01 LOGIN PASSWORD '...' IN ROLE nodows_appliance;
--   INSERT INTO nodows.appliance (server, role, profiles)
--       VALUES ('web01', 'nodows_web01', '{production,failover}');

INSERT INTO nodows.migration (version) VALUES (2);

-- Roles are shared by every database of the cluster: another database's
-- migration may create them at the same moment.
DO $$
BEGIN
    CREATE ROLE nodows_appliance NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE nodows_operator NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Which login role is which server, and the profiles (modes) it may read.
CREATE TABLE nodows.appliance (
    server text PRIMARY KEY REFERENCES nodows.server (id) ON UPDATE CASCADE ON DELETE CASCADE,
    role name NOT NULL UNIQUE,
    profiles text[] NOT NULL DEFAULT '{}'
);

-- The server id and profiles of the connected appliance (by its login
-- role); NULL and {} for anyone else.
CREATE FUNCTION nodows.my_server() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = nodows, pg_temp
AS $$ SELECT server FROM appliance WHERE role = session_user $$;

CREATE FUNCTION nodows.my_profiles() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = nodows, pg_temp
AS $$ SELECT coalesce((SELECT profiles FROM appliance WHERE role = session_user), '{}') $$;

REVOKE ALL ON ALL TABLES IN SCHEMA nodows FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA nodows FROM PUBLIC;
GRANT USAGE ON SCHEMA nodows TO nodows_appliance, nodows_operator;
GRANT EXECUTE ON FUNCTION nodows.current_revision(), nodows.my_server(), nodows.my_profiles()
    TO nodows_appliance, nodows_operator;

GRANT SELECT ON nodows.profile, nodows.server, nodows.service, nodows.value, nodows.appliance
    TO nodows_appliance;
GRANT SELECT, INSERT, UPDATE ON nodows.status TO nodows_appliance;

GRANT SELECT, INSERT, UPDATE, DELETE ON nodows.profile, nodows.server, nodows.service,
    nodows.value, nodows.appliance TO nodows_operator;
GRANT SELECT ON nodows.revision, nodows.status, nodows.migration TO nodows_operator;
GRANT EXECUTE ON FUNCTION nodows.snapshot() TO nodows_operator;

ALTER TABLE nodows.profile ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodows.server ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodows.value ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodows.appliance ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodows.status ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodows.revision ENABLE ROW LEVEL SECURITY;

CREATE POLICY operator ON nodows.profile TO nodows_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON nodows.server TO nodows_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON nodows.value TO nodows_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON nodows.appliance TO nodows_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON nodows.status TO nodows_operator USING (true);
CREATE POLICY operator ON nodows.revision TO nodows_operator USING (true);

CREATE POLICY appliance_reads_its_profiles ON nodows.profile FOR SELECT TO nodows_appliance
    USING (name = ANY ((SELECT nodows.my_profiles())::text[]));
CREATE POLICY appliance_reads_itself ON nodows.server FOR SELECT TO nodows_appliance
    USING (id = (SELECT nodows.my_server()));
CREATE POLICY appliance_reads_its_values ON nodows.value FOR SELECT TO nodows_appliance
    USING ((server IS NULL AND profile IS NULL)
           OR server = (SELECT nodows.my_server())
           OR profile = ANY ((SELECT nodows.my_profiles())::text[]));
CREATE POLICY appliance_reads_its_entry ON nodows.appliance FOR SELECT TO nodows_appliance
    USING (role = session_user);
CREATE POLICY appliance_reads_its_status ON nodows.status FOR SELECT TO nodows_appliance
    USING (server = (SELECT nodows.my_server()));
CREATE POLICY appliance_inserts_its_status ON nodows.status FOR INSERT TO nodows_appliance
    WITH CHECK (server = (SELECT nodows.my_server()));
CREATE POLICY appliance_updates_its_status ON nodows.status FOR UPDATE TO nodows_appliance
    USING (server = (SELECT nodows.my_server())) WITH CHECK (server = (SELECT nodows.my_server()));
