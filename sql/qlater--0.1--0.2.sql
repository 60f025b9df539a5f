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
 * (its jobs, registrations and schedules name it) goes to that role; one
 * used by several roles goes to the extension's owner, as does 'default',
 * which is everyone's.  An in-server queue declared under 0.1 keeps its
 * declarer only if the declarer uses it (or nobody does): under 0.1 any
 * role could declare, in-server, a name other roles' jobs used, and so
 * would own them now.  An external queue keeps its declarer, who serves
 * it.  No row is made for a queue not in use, 'default' included: a
 * row the install script made would clash with the dumped one at a
 * restore (qlater_queue is dumped whole); 'default' gets its row, owned by
 * the extension's owner, when it is first used or changed.
 */
WITH used AS (
    SELECT queue, role FROM @extschema@.qlater_job
    UNION
    SELECT queue, registered_by FROM @extschema@.qlater_handler
     WHERE registered_at > '-infinity'
    UNION
    SELECT queue, owner FROM @extschema@.qlater_schedule WHERE queue IS NOT NULL),
users AS (
    SELECT queue, count(*) AS n, min(role::text)::name AS one
      FROM used GROUP BY queue),
ext AS (
    SELECT r.rolname FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
     WHERE e.extname = 'qlater')
UPDATE @extschema@.qlater_queue q
   SET owner = CASE WHEN u.n = 1 AND q.name <> 'default' THEN u.one
                    ELSE (SELECT rolname FROM ext) END
  FROM users u
 WHERE u.queue = q.name
   AND (q.name = 'default'
        OR (NOT q.external
            AND NOT EXISTS (SELECT FROM used WHERE used.queue = q.name AND used.role = q.owner)));

WITH used AS (
    SELECT queue, role FROM @extschema@.qlater_job
    UNION
    SELECT queue, registered_by FROM @extschema@.qlater_handler
     WHERE registered_at > '-infinity'
    UNION
    SELECT queue, owner FROM @extschema@.qlater_schedule WHERE queue IS NOT NULL)
INSERT INTO @extschema@.qlater_queue (name, owner)
SELECT u.queue,
       CASE WHEN count(*) = 1 AND u.queue <> 'default'
            THEN min(u.role::text)::name
            ELSE (SELECT r.rolname FROM pg_catalog.pg_extension e
                    JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
                   WHERE e.extname = 'qlater') END
  FROM used u
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
 * 'consume'; every role whose jobs, registrations or schedules use a queue
 * of another role gets 'enqueue' on it, so that what worked under 0.1 goes
 * on working.
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

WITH used AS (
    SELECT queue, role FROM @extschema@.qlater_job
    UNION
    SELECT queue, registered_by FROM @extschema@.qlater_handler
     WHERE registered_at > '-infinity'
    UNION
    SELECT queue, owner FROM @extschema@.qlater_schedule WHERE queue IS NOT NULL)
INSERT INTO @extschema@.qlater_queue_grant (queue, grantee, privilege)
SELECT u.queue, u.role, 'enqueue'
  FROM used u
  JOIN @extschema@.qlater_queue q ON q.name = u.queue
 WHERE u.role <> q.owner AND q.name <> 'default'
ON CONFLICT DO NOTHING;

/*
 * Who holds which grant is the business of the queue's owner and of the
 * grantee: the table is no longer readable by everyone, the view shows a
 * role the grants of its queues and its own, and admins all.
 */
REVOKE SELECT ON @extschema@.qlater_queue_grant FROM PUBLIC;
CREATE VIEW @extschema@.qlater_queue_grants WITH (security_barrier) AS
SELECT g.queue, g.grantee, g.privilege
  FROM @extschema@.qlater_queue_grant g
 WHERE g.grantee = CURRENT_USER
    OR EXISTS (SELECT FROM @extschema@.qlater_queue q
                WHERE q.name = g.queue AND q.owner = CURRENT_USER)
    OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER');
GRANT SELECT ON @extschema@.qlater_queue_grants TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_queue_grants IS
    'grants on the queues the current role owns, and its own grants';

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
 * same time as the job before.  A skipped tick is not enqueued later: the
 * next tick after the job is done enqueues the next job.
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

/*
 * qlater_schedule takes overlap (false: a tick is skipped while the
 * schedule's previous job waits or runs); the queue of a schedule is
 * checked as an enqueue's is.
 */
DROP FUNCTION @extschema@.qlater_schedule(text, text, text, jsonb, text, int, text, boolean);
CREATE FUNCTION @extschema@.qlater_schedule(name text, schedule text,
                                            handler text,
                                            args jsonb DEFAULT '[]',
                                            queue text DEFAULT NULL,
                                            priority int DEFAULT NULL,
                                            timezone text DEFAULT 'UTC',
                                            catch_up boolean DEFAULT true,
                                            overlap boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_schedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_schedule(text, text, text, jsonb, text, int, text, boolean, boolean) IS
    'create or replace a recurring job of the current role, enqueued at each tick of a cron schedule (unless, without overlap, its previous job still waits or runs)';

CREATE FUNCTION @extschema@.qlater_alter_schedule(name text,
                                                  active boolean DEFAULT NULL,
                                                  schedule text DEFAULT NULL,
                                                  args jsonb DEFAULT NULL,
                                                  queue text DEFAULT NULL,
                                                  priority int DEFAULT NULL,
                                                  timezone text DEFAULT NULL,
                                                  catch_up boolean DEFAULT NULL,
                                                  overlap boolean DEFAULT NULL,
                                                  owner name DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_alter_schedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_alter_schedule(text, boolean, text, jsonb, text, int, text, boolean, boolean, name) IS
    'switch a schedule of the current role off or on, or change its settings (NULL: unchanged); admins switch any role''s on and off';
