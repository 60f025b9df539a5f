/* qlater--0.1.sql: install script of the qlater extension */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION qlater" to load this file. \quit

/*
 * The admin role sees and manages every role's jobs.  Roles are cluster-wide:
 * the role is created once, by the first CREATE EXTENSION in the cluster, and
 * is not dropped with the extension.
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'qlater_admin') THEN
        CREATE ROLE qlater_admin NOLOGIN;
    END IF;
END
$$;

/*
 * Registered job handlers.  A handler is stored by its schema-qualified
 * signature, never by OID, so that a dump and restore keeps it.
 */
CREATE TABLE @extschema@.qlater_handler (
    handler       text PRIMARY KEY,
    queue         text NOT NULL,
    priority      int NOT NULL,
    max_attempts  int NOT NULL CHECK (max_attempts >= 1),
    timeout       interval CHECK (timeout > '0'::interval),
    registered_by name NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

/*
 * Jobs not yet finished.  A finished job's row is deleted in the transaction
 * of its handler's work.  Roles are stored by name.
 */
CREATE TABLE @extschema@.qlater_job (
    id           bigserial PRIMARY KEY,
    queue        text NOT NULL,
    handler      text NOT NULL,
    args         jsonb NOT NULL,
    priority     int NOT NULL,
    run_at       timestamptz NOT NULL,
    attempts     int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL,
    timeout      interval,
    role         name NOT NULL,
    dead         boolean NOT NULL DEFAULT false,
    crashes      int NOT NULL DEFAULT 0,
    last_error   jsonb,
    enqueued_at  timestamptz NOT NULL DEFAULT now()
);

-- claim order
CREATE INDEX qlater_job_ready ON @extschema@.qlater_job (priority, run_at, id) WHERE NOT dead;
-- next wake-up of idle workers
CREATE INDEX qlater_job_run_at ON @extschema@.qlater_job (run_at) WHERE NOT dead;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_handler', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_job', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_job_id_seq', '');

-- Only the API writes jobs: no direct access for anyone but the owner.
REVOKE ALL ON @extschema@.qlater_handler, @extschema@.qlater_job,
    @extschema@.qlater_job_id_seq FROM PUBLIC;
GRANT SELECT ON @extschema@.qlater_handler TO PUBLIC;

/*
 * qlater_jobs: the jobs a role may see.  A job is 'running' while a session
 * holds its claim (an advisory lock in qlater's own key space, objsubid 29036).
 */
CREATE VIEW @extschema@.qlater_jobs WITH (security_barrier) AS
SELECT j.id, j.queue, j.handler, j.args, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error,
       CASE WHEN j.dead THEN 'dead'
            WHEN l.pid IS NOT NULL THEN 'running'
            ELSE 'pending' END AS state,
       j.role, j.timeout, j.crashes, j.enqueued_at, l.pid AS locked_by
  FROM @extschema@.qlater_job j
  LEFT JOIN pg_catalog.pg_locks l
         ON l.locktype = 'advisory'
        AND l.objsubid = 29036
        AND l.granted
        AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                           WHERE d.datname = pg_catalog.current_database())
        AND l.classid = (j.id >> 32)::oid
        AND l.objid = (j.id & 4294967295)::oid
 WHERE j.role = CURRENT_USER
    OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER');

GRANT SELECT ON @extschema@.qlater_jobs TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_jobs IS
    'jobs not yet finished that the current role may see';

CREATE FUNCTION @extschema@.qlater_register(handler regprocedure,
                                            queue text DEFAULT 'default',
                                            priority int DEFAULT 100,
                                            max_attempts int DEFAULT 25,
                                            timeout interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_register'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_register(regprocedure, text, int, int, interval) IS
    'mark a function or procedure as a job handler and set its defaults';

CREATE FUNCTION @extschema@.qlater_unregister(handler regprocedure)
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_unregister'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_unregister(regprocedure) IS
    'remove a job handler registration';

CREATE FUNCTION @extschema@.qlater_enqueue(handler text,
                                           args jsonb DEFAULT '[]',
                                           run_at timestamptz DEFAULT now(),
                                           queue text DEFAULT NULL,
                                           priority int DEFAULT NULL,
                                           max_attempts int DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_enqueue(text, jsonb, timestamptz, text, int, int) IS
    'enqueue a call of a registered handler, run later by a background worker as the current role';

CREATE FUNCTION @extschema@.qlater_retry(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_retry'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_retry(bigint) IS
    'put a dead job back as pending';

CREATE FUNCTION @extschema@.qlater_cancel(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_cancel'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_cancel(bigint) IS
    'remove a job; a running attempt is stopped and rolled back';

CREATE FUNCTION @extschema@.qlater_workers(
    OUT pid int, OUT database oid, OUT job_id bigint, OUT idle boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'qlater_workers'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_workers() IS
    'the background workers of qlater and the job each one runs';
REVOKE ALL ON FUNCTION @extschema@.qlater_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.qlater_workers() TO qlater_admin;

CREATE FUNCTION @extschema@.qlater_cron_next(schedule text,
                                             after timestamptz,
                                             timezone text DEFAULT 'UTC')
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'qlater_cron_next'
LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.qlater_cron_next(text, timestamptz, text) IS
    'first tick of a cron schedule strictly after a time, evaluated in a time zone';

CREATE FUNCTION @extschema@.qlater_cron_check(schedule text,
                                              timezone text DEFAULT 'UTC')
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_cron_check'
LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.qlater_cron_check(text, text) IS
    'raise an error if a cron schedule or a time zone is invalid';

/* Tell the launcher that this database now has qlater (takes effect at commit). */
CREATE FUNCTION @extschema@.qlater_wake_launcher()
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_wake_launcher'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_wake_launcher() IS
    'start qlater workers for the current database once the transaction commits';
REVOKE ALL ON FUNCTION @extschema@.qlater_wake_launcher() FROM PUBLIC;

SELECT @extschema@.qlater_wake_launcher();
