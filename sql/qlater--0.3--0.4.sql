/*
 * qlater--0.3--0.4.sql: upgrade of the qlater extension from 0.3 to 0.4
 *
 * History: every outcome of a job (done, failed, dead, timeout, crashed,
 * cancelled, purged) is recorded in the transaction of the outcome itself,
 * kept per queue for keep_history (default one day), and shown by the view
 * qlater_history to those who may see the job.  qlater_job_status(id) says
 * where a job is now, or how it ended.
 *
 * No bloat by construction: the rows live in a ring of 16 partitions of
 * qlater_outcome, written in turn (each for a stretch of time, a twelfth
 * of the longest keep_history of the database's queues); a partition
 * whose rows have all expired is emptied with TRUNCATE by a worker of the
 * database, which leaves no dead tuple to vacuum.  history.c says more.
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql, the upgrade scripts to
 * 0.3 and then this script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.4'" to load this file. \quit

/* ---- per-queue settings ---- */

ALTER TABLE @extschema@.qlater_queue
    -- how long the outcomes of the queue's jobs are kept; '0': none
    ADD COLUMN keep_history interval NOT NULL DEFAULT '1 day'
               CHECK (keep_history >= '0' AND keep_history <= '10 years'),
    -- whether the history keeps the jobs' args (they may hold secrets)
    ADD COLUMN history_args boolean NOT NULL DEFAULT true;

/* ---- the outcomes ---- */

CREATE TABLE @extschema@.qlater_outcome (
    slot         smallint NOT NULL,    -- the partition of the ring
    id           bigint NOT NULL,      -- the job's id
    queue        text NOT NULL,
    handler      text NOT NULL,
    role         name NOT NULL,
    args         jsonb,                -- NULL if the queue keeps none
    enqueued_at  timestamptz NOT NULL,
    run_at       timestamptz NOT NULL, -- when the attempt was due
    started_at   timestamptz,          -- when it began (NULL: did not run)
    finished_at  timestamptz NOT NULL,
    attempt      int NOT NULL,         -- attempts made, this one included
    outcome      text NOT NULL CHECK (outcome IN ('done', 'failed', 'dead', 'cancelled',
                                                  'timeout', 'crashed', 'purged')),
    error        jsonb,                -- the keys of last_error
    expires_at   timestamptz NOT NULL,
    external     boolean NOT NULL      -- the job's queue was external
) PARTITION BY LIST (slot);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE pg_catalog.format(
            'CREATE TABLE @extschema@.%I PARTITION OF @extschema@.qlater_outcome FOR VALUES IN (%s)',
            'qlater_outcome_' || i, i);
        PERFORM pg_catalog.pg_extension_config_dump(
            pg_catalog.format('@extschema@.%I', 'qlater_outcome_' || i)::pg_catalog.regclass, '');
    END LOOP;
END
$$;
CREATE INDEX ON @extschema@.qlater_outcome (id);
REVOKE ALL ON @extschema@.qlater_outcome FROM PUBLIC;

/*
 * qlater_history: the outcomes a role may see, as qlater_jobs shows jobs:
 * its own, those of the external queues it owns or consumes, or all for
 * superusers and qlater_admin; none that expired.  An outcome is a
 * queue's consumers' only if the queue was external then, and the queue
 * is the one it was (created before the outcome): neither turning a queue
 * external nor a queue dropped and created again under its name shows
 * other roles' earlier outcomes.  (A role dropped or renamed takes its
 * outcomes with it: ql_check_role_drop.)
 */
CREATE VIEW @extschema@.qlater_history WITH (security_barrier) AS
SELECT o.id, o.queue, o.handler, o.role, o.args, o.enqueued_at, o.run_at,
       o.started_at, o.finished_at, o.finished_at - o.started_at AS runtime,
       o.attempt, o.outcome, o.error, o.expires_at
  FROM @extschema@.qlater_outcome o
 WHERE o.expires_at > pg_catalog.now()
   AND (o.role = CURRENT_USER
        OR pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER')
        OR o.external AND EXISTS (SELECT FROM @extschema@.qlater_queue q
                    WHERE q.name = o.queue AND q.external AND q.created_at <= o.finished_at
                      AND (q.owner = CURRENT_USER
                           OR EXISTS (SELECT FROM @extschema@.qlater_queue_grant g
                                       WHERE g.queue = q.name
                                         AND g.grantee = CURRENT_USER
                                         AND g.privilege = 'consume'))));
GRANT SELECT ON @extschema@.qlater_history TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_history IS
    'the outcomes of jobs (done, failed, dead, timeout, crashed, cancelled, purged) the current role may see, kept per queue for keep_history';

/* the queues, as everyone may see them: with their history settings */
CREATE OR REPLACE VIEW @extschema@.qlater_queues AS
SELECT q.name, q.owner, q.external, q.paused, q.max_running, q.min_priority,
       q.batch_size, q.batch_delay, q.created_at, q.keep_history, q.history_args
  FROM @extschema@.qlater_queue q;

/* ---- functions ---- */

DROP FUNCTION @extschema@.qlater_alter_queue(text, boolean, int, interval, int, int, name);
CREATE FUNCTION @extschema@.qlater_alter_queue(name text,
                                               external boolean DEFAULT NULL,
                                               batch_size int DEFAULT NULL,
                                               batch_delay interval DEFAULT NULL,
                                               max_running int DEFAULT NULL,
                                               min_priority int DEFAULT NULL,
                                               owner name DEFAULT NULL,
                                               keep_history interval DEFAULT NULL,
                                               history_args boolean DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'qlater_alter_queue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_alter_queue(text, boolean, int, interval, int, int, name, interval, boolean) IS
    'change a queue''s settings (NULL: unchanged), or hand it to another owner';

CREATE FUNCTION @extschema@.qlater_purge_dead(queue text DEFAULT NULL,
                                              older_than interval DEFAULT '0')
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_purge_dead'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_purge_dead(text, interval) IS
    'remove the dead jobs of a queue (NULL: of every queue) that died longer than older_than ago: the caller''s own, or all for admins; each is ''purged'' in the history; returns how many';

CREATE FUNCTION @extschema@.qlater_job_status(id bigint,
    OUT id bigint, OUT state text, OUT queue text, OUT handler text, OUT role name,
    OUT attempts int, OUT enqueued_at timestamptz, OUT run_at timestamptz,
    OUT started_at timestamptz, OUT finished_at timestamptz, OUT error jsonb)
RETURNS record
AS 'MODULE_PATHNAME', 'qlater_job_status'
LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION @extschema@.qlater_job_status(bigint) IS
    'where a job is now (pending, running, dead) or how it ended (from the history), or NULL if qlater knows nothing of it that the current role may see';
