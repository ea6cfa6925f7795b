#!/bin/sh
# The db service's healthcheck (compose.yaml), which also puts the app's role
# in place, as the superuser on the container's Unix socket: only the db
# container holds the superuser's password. It runs on every start of the
# container, so a database initialised before the role existed gets it too.
# The role logs in with APP_DB_PASSWORD, is no superuser, cannot create roles
# (nor databases, but in development), and owns the public schema and what is
# in it: migrations run as that owner. Ownership is checked on every run,
# which hands the app what a restore created as the superuser. docs/security.md
# says why the app is not the superuser.
#
# With compose.monitoring.yaml (MONITORING_DB_PASSWORD set), the monitoring
# role too: it logs in for the Postgres exporter, reads the statistics views
# (pg_monitor) and can write nothing. Without, it cannot log in.
#
# Ready over TCP only: during first-time initialisation the entrypoint runs a
# temporary server on the Unix socket alone, which must not count as ready.
pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" || exit 1
first=true
[ ! -e /tmp/app-role-ready ] || first=false
monitoring=false
[ -z "${MONITORING_DB_PASSWORD:-}" ] || monitoring=true
psql -X -q -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
    -v ON_ERROR_STOP=1 -v first="$first" -v app="$APP_DB_USER" -v password="$APP_DB_PASSWORD" \
    -v createdb="$APP_DB_CREATEDB" -v monitoring="$monitoring" -v monitor="${MONITORING_DB_USER:-}" \
    -v monitor_password="${MONITORING_DB_PASSWORD:-}" <<'SQL' || exit 1
\if :first
SELECT format('CREATE ROLE %I', :'app') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"app" WITH LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'password';
SELECT format('ALTER ROLE %I %s', :'app', CASE :'createdb' WHEN 'true' THEN 'CREATEDB' ELSE 'NOCREATEDB' END)
\gexec
-- What the superuser creates there (a restore) the app may use at once.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO :"app";
\if :monitoring
SELECT format('CREATE ROLE %I', :'monitor') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'monitor') \gexec
ALTER ROLE :"monitor" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 3 PASSWORD :'monitor_password';
ALTER ROLE :"monitor" SET default_transaction_read_only = on;
GRANT pg_monitor TO :"monitor";
COMMENT ON ROLE :"monitor" IS 'compose.monitoring.yaml';
\else
-- Overlay off: the role it created can no longer log in.
SELECT format('ALTER ROLE %I NOLOGIN', rolname) FROM pg_roles
WHERE rolcanlogin AND shobj_description(oid, 'pg_authid') = 'compose.monitoring.yaml'
\gexec
\endif
\endif
-- The schema, its tables, views and standalone sequences (the others follow
-- their table), functions, enums and domains; extensions' objects stay.
SELECT format('ALTER %s %s OWNER TO %I', kind, name, :'app')
FROM (
    SELECT 'SCHEMA', 'public', nspowner, 'pg_namespace'::regclass::oid, oid FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT CASE relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
           oid::regclass::text, relowner, 'pg_class'::regclass::oid, oid
    FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT CASE prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
           oid::regprocedure::text, proowner, 'pg_proc'::regclass::oid, oid
    FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT CASE typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           oid::regtype::text, typowner, 'pg_type'::regclass::oid, oid
    FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'd')
) AS objects (kind, name, owner, classid, objid)
WHERE owner <> (SELECT oid FROM pg_roles WHERE rolname = :'app')
  AND NOT EXISTS (SELECT FROM pg_depend AS d
                  WHERE d.classid = objects.classid AND d.objid = objects.objid AND d.deptype IN ('a', 'i', 'e'))
ORDER BY kind = 'SCHEMA' DESC
\gexec
SQL
touch /tmp/app-role-ready
