/*
 * qlater--0.1--0.2.sql: upgrade of the qlater extension from 0.1 to 0.2
 *
 * Queues become objects with owners: every queue named by a job, a
 * registration or a schedule gets a row (below: who owns it), and only its
 * owner (or an admin) changes, pauses, limits or hands it on.  Roles get
 * 'consume' and 'enqueue' grants on queues.  Jobs may carry a key (unique
 * jobs).  Schedules no longer overlap their own previous job by default.
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql and then this script, so
 * this script is also where 0.2's objects are made.  Every later change to
 * the SQL goes into the next upgrade script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.2'" to load this file. \quit

/* ---- queues: owners, pause, limits ---- */

ALTER TABLE @extschema@.qlater_queue
    -- no new claims by workers or consumers while paused
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    -- at most this many jobs of the queue run at once; NULL: no limit
    ADD COLUMN max_running int CHECK (max_running >= 0),
    -- the lowest (most urgent) priority the queue accepts; set by admins
    ADD COLUMN min_priority int NOT NULL DEFAULT -32768
               CHECK (min_priority BETWEEN -32768 AND 32767);

/*
 * Every queue in use gets a row and an owner: a queue that one role uses
 * (its jobs, registrations and schedules) goes to that role; one used by
 * several roles goes to the extension's owner, as does 'default', which
 * is everyone's.  Queues declared before keep their owner, but 'default'.
 */
INSERT INTO @extschema@.qlater_queue (name, owner)
SELECT u.queue,
       CASE WHEN count(DISTINCT u.role) = 1 AND u.queue <> 'default'
            THEN min(u.role::text)::name
            ELSE (SELECT r.rolname FROM pg_catalog.pg_extension e
                    JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
                   WHERE e.extname = 'qlater') END
  FROM (SELECT queue, role FROM @extschema@.qlater_job
        UNION ALL
        SELECT queue, registered_by FROM @extschema@.qlater_handler
         WHERE registered_at > '-infinity'
        UNION ALL
        SELECT queue, owner FROM @extschema@.qlater_schedule
         WHERE queue IS NOT NULL
        UNION ALL
        SELECT 'default', NULL) u
 GROUP BY u.queue
ON CONFLICT (name) DO NOTHING;

UPDATE @extschema@.qlater_queue
   SET owner = (SELECT r.rolname FROM pg_catalog.pg_extension e
                  JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
                 WHERE e.extname = 'qlater')
 WHERE name = 'default';

/*
 * Grants on queues: 'consume' (claim, see and finish the jobs of an
 * external queue, listen for them) and 'enqueue' (enqueue into the queue,
 * register a handler into it, schedule into it).  The consumers of 0.1 get
 * 'consume'; roles whose jobs wait in an external queue of another role
 * get 'enqueue'.
 */
ALTER TABLE @extschema@.qlater_queue_consumer RENAME TO qlater_queue_grant;
ALTER TABLE @extschema@.qlater_queue_grant RENAME COLUMN consumer TO grantee;
ALTER TABLE @extschema@.qlater_queue_grant
    ADD COLUMN privilege text NOT NULL DEFAULT 'consume'
        CHECK (privilege IN ('consume', 'enqueue'));
ALTER TABLE @extschema@.qlater_queue_grant ALTER COLUMN privilege DROP DEFAULT;
ALTER TABLE @extschema@.qlater_queue_grant
    DROP CONSTRAINT qlater_queue_consumer_pkey,
    ADD PRIMARY KEY (queue, grantee, privilege);
ALTER TABLE @extschema@.qlater_queue_grant
    RENAME CONSTRAINT qlater_queue_consumer_queue_fkey TO qlater_queue_grant_queue_fkey;

INSERT INTO @extschema@.qlater_queue_grant (queue, grantee, privilege)
SELECT DISTINCT j.queue, j.role, 'enqueue'
  FROM @extschema@.qlater_job j
  JOIN @extschema@.qlater_queue q ON q.name = j.queue
 WHERE q.external AND j.role <> q.owner
ON CONFLICT DO NOTHING;

/* the queues, as everyone may see them (not their jobs) */
CREATE VIEW @extschema@.qlater_queues AS
SELECT q.name, q.owner, q.external, q.paused, q.max_running, q.min_priority,
       q.batch_size, q.batch_delay, q.created_at
  FROM @extschema@.qlater_queue q;
GRANT SELECT ON @extschema@.qlater_queues TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_queues IS
    'queues: owner, kind, pause, limits and batch settings';

/* ---- unique jobs ---- */

-- a job's key: at most one waiting job per (queue, role, key)
ALTER TABLE @extschema@.qlater_job ADD COLUMN key text;
CREATE INDEX qlater_job_key ON @extschema@.qlater_job (queue, role, key)
    WHERE key IS NOT NULL AND NOT dead;

/* ---- schedules: overlap, on and off ---- */

/*
 * The schedule whose tick enqueued a job.  Without overlap (the default,
 * now also for schedules made under 0.1), a tick whose previous job of the
 * same schedule still waits or runs is skipped and counted in
 * skipped_ticks: under 0.1 such ticks were enqueued and could run at the
 * same time as the job before.
 */
ALTER TABLE @extschema@.qlater_job ADD COLUMN schedule_id bigint;
CREATE INDEX qlater_job_schedule ON @extschema@.qlater_job (schedule_id)
    WHERE schedule_id IS NOT NULL;
ALTER TABLE @extschema@.qlater_schedule
    ADD COLUMN overlap boolean NOT NULL DEFAULT false,
    ADD COLUMN skipped_ticks bigint NOT NULL DEFAULT 0;

/* ---- views over the changed tables ---- */

/*
 * qlater_jobs: the jobs a role may see: its own, those of the external
 * queues it owns or may consume, or all for superusers and qlater_admin.
 */
CREATE OR REPLACE VIEW @extschema@.qlater_jobs WITH (security_barrier) AS
SELECT j.id, j.queue, j.handler, j.args, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error,
       CASE WHEN j.dead THEN 'dead'
            WHEN l.pid IS NOT NULL OR j.lease_until > now() THEN 'running'
            ELSE 'pending' END AS state,
       j.role, j.timeout, j.crashes, j.enqueued_at, l.pid AS locked_by,
       j.claim_token, j.lease_until, j.key
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
                       OR EXISTS (SELECT FROM @extschema@.qlater_queue_grant g
                                   WHERE g.queue = q.name
                                     AND g.grantee = CURRENT_USER
                                     AND g.privilege = 'consume')));

CREATE OR REPLACE VIEW @extschema@.qlater_schedules WITH (security_barrier) AS
SELECT s.name, s.schedule, s.timezone, s.handler, s.args, s.queue, s.owner,
       s.last_tick, s.next_tick, s.active, s.priority, s.catch_up,
       s.created_at, s.id, s.overlap, s.skipped_ticks
  FROM @extschema@.qlater_schedule s
 WHERE s.owner = CURRENT_USER
    OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER');

/* ---- functions: queues ---- */

DROP FUNCTION @extschema@.qlater_grant_queue(text, name);
DROP FUNCTION @extschema@.qlater_revoke_queue(text, name);

CREATE OR REPLACE FUNCTION @extschema@.qlater_create_queue(name text, external boolean DEFAULT false,
                                                batch_size int DEFAULT NULL,
                                                batch_delay interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_create_queue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_create_queue(text, boolean, int, interval) IS
    'create a queue, owned by the current role: served by the in-server workers (in batches or not) or by applications (external)';

CREATE FUNCTION @extschema@.qlater_alter_queue(name text,
                                               external boolean DEFAULT NULL,
                                               batch_size int DEFAULT NULL,
                                               batch_delay interval DEFAULT NULL,
                                               max_running int DEFAULT NULL,
                                               min_priority int DEFAULT NULL,
                                               owner name DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_alter_queue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_alter_queue(text, boolean, int, interval, int, int, name) IS
    'change a queue''s settings (NULL: unchanged), or hand it to another owner';

CREATE FUNCTION @extschema@.qlater_drop_queue(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_drop_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_drop_queue(text) IS
    'remove a queue that no job, registration or schedule uses';

CREATE FUNCTION @extschema@.qlater_pause_queue(queue text)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_pause_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_pause_queue(text) IS
    'stop new claims of a queue''s jobs from the commit on; enqueues go on';

CREATE FUNCTION @extschema@.qlater_resume_queue(queue text)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_resume_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_resume_queue(text) IS
    'let a paused queue''s jobs be claimed again';

CREATE FUNCTION @extschema@.qlater_grant_queue(queue text, role name,
                                               privilege text DEFAULT 'consume')
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_grant_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_grant_queue(text, name, text) IS
    'allow a role to consume (claim and see) or to enqueue into a queue';

CREATE FUNCTION @extschema@.qlater_revoke_queue(queue text, role name,
                                                privilege text DEFAULT 'consume')
RETURNS boolean
AS 'MODULE_PATHNAME', 'qlater_revoke_queue'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_revoke_queue(text, name, text) IS
    'withdraw a privilege on a queue';

/* ---- functions: unique jobs ---- */

/*
 * Enqueue with a key: at most one waiting job per (queue, role, key).  The
 * parameters are appended, so the functions of 0.1 are dropped and made
 * again (CREATE OR REPLACE cannot add parameters); calls of 0.1 mean the
 * same.
 */
DROP FUNCTION @extschema@.qlater_enqueue(text, jsonb, timestamptz, text, int, int);
CREATE FUNCTION @extschema@.qlater_enqueue(handler text,
                                           args jsonb DEFAULT '[]',
                                           run_at timestamptz DEFAULT now(),
                                           queue text DEFAULT NULL,
                                           priority int DEFAULT NULL,
                                           max_attempts int DEFAULT NULL,
                                           key text DEFAULT NULL,
                                           replace boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_enqueue(text, jsonb, timestamptz, text, int, int, text, boolean) IS
    'enqueue a call of a registered handler, run later by a background worker as the current role; with a key, the job of the key that waits is returned (with replace, updated) instead';

DROP FUNCTION @extschema@.qlater_enqueue_many(text, jsonb, timestamptz, text, int, int);
CREATE FUNCTION @extschema@.qlater_enqueue_many(handler text,
                                                args_list jsonb,
                                                run_at timestamptz DEFAULT now(),
                                                queue text DEFAULT NULL,
                                                priority int DEFAULT NULL,
                                                max_attempts int DEFAULT NULL,
                                                keys text[] DEFAULT NULL,
                                                replace boolean DEFAULT false)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'qlater_enqueue_many'
LANGUAGE C VOLATILE ROWS 100;
COMMENT ON FUNCTION @extschema@.qlater_enqueue_many(text, jsonb, timestamptz, text, int, int, text[], boolean) IS
    'enqueue one job per element of a JSON array of args, in one statement, with a key per element if keys is given; returns their ids';

/* ---- functions: schedules ---- */
