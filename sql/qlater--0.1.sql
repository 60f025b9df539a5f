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
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    external     boolean NOT NULL DEFAULT false,  -- queue served by applications
    claim_token  uuid,          -- lease mode of external consumers
    lease_until  timestamptz
);

/*
 * Declared queues.  A queue never declared is served by the in-server
 * workers; an external queue is served by applications (qlater_lock).
 */
CREATE TABLE @extschema@.qlater_queue (
    name        text PRIMARY KEY,
    external    boolean NOT NULL DEFAULT false,
    owner       name NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the workers commit up to batch_size jobs together, each in its own
    -- subtransaction, holding a finished job's commit back batch_delay at most
    batch_size  int NOT NULL DEFAULT 1 CHECK (batch_size BETWEEN 1 AND 64),
    batch_delay interval NOT NULL DEFAULT '20 ms'
                CHECK (batch_delay > '0' AND batch_delay <= '10 s')
);

/* roles allowed to consume an external queue (granted by its owner) */
CREATE TABLE @extschema@.qlater_queue_consumer (
    queue    text NOT NULL REFERENCES @extschema@.qlater_queue (name) ON DELETE CASCADE,
    consumer name NOT NULL,
    PRIMARY KEY (queue, consumer)
);

-- claim order of the in-server workers
CREATE INDEX qlater_job_ready ON @extschema@.qlater_job (priority, run_at, id)
    WHERE NOT dead AND NOT external;
-- next wake-up of idle workers
CREATE INDEX qlater_job_run_at ON @extschema@.qlater_job (run_at)
    WHERE NOT dead AND NOT external;
-- claim order of external consumers, per queue
CREATE INDEX qlater_job_external ON @extschema@.qlater_job (queue, priority, run_at, id)
    WHERE NOT dead AND external;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_handler', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_job', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_queue', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_queue_consumer', '');

-- Only the API writes jobs: no direct access for anyone but the owner.
REVOKE ALL ON @extschema@.qlater_handler, @extschema@.qlater_job,
    @extschema@.qlater_job_id_seq, @extschema@.qlater_queue,
    @extschema@.qlater_queue_consumer FROM PUBLIC;
GRANT SELECT ON @extschema@.qlater_handler, @extschema@.qlater_queue,
    @extschema@.qlater_queue_consumer TO PUBLIC;

/*
 * qlater_jobs: the jobs a role may see: its own, those of the external
 * queues it may consume, or all for superusers and qlater_admin.  A job is
 * 'running' while a session holds its claim (an advisory lock in qlater's
 * own key space, objsubid 29036) or while its lease lasts.
 */
CREATE VIEW @extschema@.qlater_jobs WITH (security_barrier) AS
SELECT j.id, j.queue, j.handler, j.args, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error,
       CASE WHEN j.dead THEN 'dead'
            WHEN l.pid IS NOT NULL OR j.lease_until > now() THEN 'running'
            ELSE 'pending' END AS state,
       j.role, j.timeout, j.crashes, j.enqueued_at, l.pid AS locked_by,
       j.claim_token, j.lease_until
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
    OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER')
    OR EXISTS (SELECT FROM @extschema@.qlater_queue q
                WHERE q.name = j.queue AND q.external
                  AND (q.owner = CURRENT_USER
                       OR EXISTS (SELECT FROM @extschema@.qlater_queue_consumer c
                                   WHERE c.queue = q.name
                                     AND c.consumer = CURRENT_USER)));

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

CREATE FUNCTION @extschema@.qlater_enqueue_many(handler text,
                                                args_list jsonb,
                                                run_at timestamptz DEFAULT now(),
                                                queue text DEFAULT NULL,
                                                priority int DEFAULT NULL,
                                                max_attempts int DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'qlater_enqueue_many'
LANGUAGE C VOLATILE ROWS 100;
COMMENT ON FUNCTION @extschema@.qlater_enqueue_many(text, jsonb, timestamptz, text, int, int) IS
    'enqueue one job per element of a JSON array of args, in one statement; returns their ids';

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

/* ---- queues served by applications (external consumers) ---- */

CREATE FUNCTION @extschema@.qlater_create_queue(name text, external boolean DEFAULT false,
                                                batch_size int DEFAULT NULL,
                                                batch_delay interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_create_queue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_create_queue(text, boolean, int, interval) IS
    'declare a queue, served by the in-server workers (in batches or not) or by applications (external)';

CREATE FUNCTION @extschema@.qlater_grant_queue(queue text, consumer name)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_grant_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_grant_queue(text, name) IS
    'allow a role to claim and see the jobs of an external queue';

CREATE FUNCTION @extschema@.qlater_revoke_queue(queue text, consumer name)
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_revoke_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_revoke_queue(text, name) IS
    'withdraw the right to consume an external queue';

CREATE FUNCTION @extschema@.qlater_lock(queue text, max_jobs int DEFAULT 1,
                                        lease interval DEFAULT NULL)
RETURNS SETOF @extschema@.qlater_jobs
AS 'MODULE_PATHNAME', 'qlater_lock'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_lock(text, int, interval) IS
    'claim up to max_jobs ready jobs of an external queue (session claim, or a lease)';

CREATE FUNCTION @extschema@.qlater_complete(id bigint, token uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_complete'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_complete(bigint, uuid) IS
    'finish a claimed job; its claim is released when this transaction commits';

CREATE FUNCTION @extschema@.qlater_fail(id bigint, error text,
                                        retry_at timestamptz DEFAULT NULL,
                                        token uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_fail'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_fail(bigint, text, timestamptz, uuid) IS
    'record a failed attempt of a claimed job (backoff, then dead)';

CREATE FUNCTION @extschema@.qlater_unlock(id bigint, token uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_unlock'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_unlock(bigint, uuid) IS
    'give back the claim of a job not started';

CREATE FUNCTION @extschema@.qlater_extend(id bigint, token uuid, lease interval)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'qlater_extend'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_extend(bigint, uuid, interval) IS
    'renew the lease of a job claimed in lease mode';

CREATE FUNCTION @extschema@.qlater_listen(queue text)
RETURNS text
AS 'MODULE_PATHNAME', 'qlater_listen'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_listen(text) IS
    'LISTEN for jobs of an external queue; returns this session''s channel';

/* Tell the launcher that this database now has qlater (takes effect at commit). */
CREATE FUNCTION @extschema@.qlater_wake_launcher()
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_wake_launcher'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_wake_launcher() IS
    'start qlater workers for the current database once the transaction commits';
REVOKE ALL ON FUNCTION @extschema@.qlater_wake_launcher() FROM PUBLIC;

SELECT @extschema@.qlater_wake_launcher();

/* ---- schedules ---- */

/*
 * Recurring jobs.  Each tick of a schedule enqueues one job of its handler
 * (stored by signature), run as the schedule's owner (stored by name).
 * next_tick is the next tick to fire; the worker that fires a tick moves it
 * on in the same transaction as the job it enqueues, so that each tick is
 * enqueued once.  queue and priority NULL: the handler's registered
 * defaults at each tick.  Only the API writes this table.
 */
CREATE TABLE @extschema@.qlater_schedule (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    owner       name NOT NULL,
    schedule    text NOT NULL,
    timezone    text NOT NULL,
    handler     text NOT NULL,
    args        jsonb NOT NULL,
    queue       text,
    priority    int,
    catch_up    boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_tick   timestamptz,
    next_tick   timestamptz,
    active      boolean NOT NULL DEFAULT true,
    UNIQUE (owner, name)
);
-- the schedulers' look for due ticks
CREATE INDEX qlater_schedule_due ON @extschema@.qlater_schedule (next_tick)
    WHERE active;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_schedule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.qlater_schedule_id_seq', '');
REVOKE ALL ON @extschema@.qlater_schedule, @extschema@.qlater_schedule_id_seq
    FROM PUBLIC;

/* qlater_schedules: the schedules of the current role, or all for admins */
CREATE VIEW @extschema@.qlater_schedules WITH (security_barrier) AS
SELECT s.name, s.schedule, s.timezone, s.handler, s.args, s.queue, s.owner,
       s.last_tick, s.next_tick, s.active, s.priority, s.catch_up,
       s.created_at, s.id
  FROM @extschema@.qlater_schedule s
 WHERE s.owner = CURRENT_USER
    OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER');

GRANT SELECT ON @extschema@.qlater_schedules TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_schedules IS
    'recurring jobs that the current role may see';

CREATE FUNCTION @extschema@.qlater_schedule(name text, schedule text,
                                            handler text,
                                            args jsonb DEFAULT '[]',
                                            queue text DEFAULT NULL,
                                            priority int DEFAULT NULL,
                                            timezone text DEFAULT 'UTC',
                                            catch_up boolean DEFAULT true)
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_schedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_schedule(text, text, text, jsonb, text, int, text, boolean) IS
    'create or replace a recurring job of the current role, enqueued at each tick of a cron schedule';

CREATE FUNCTION @extschema@.qlater_unschedule(name text, owner name DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_unschedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_unschedule(text, name) IS
    'remove a schedule of the current role (admins: of any role)';
