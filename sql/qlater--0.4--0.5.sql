/*
 * qlater--0.4--0.5.sql: upgrade of the qlater extension from 0.4 to 0.5
 *
 * Live statistics and operations on many jobs: qlater_queue_stats (per
 * queue: depth, lag, and counters and time histograms kept in shared
 * memory since the server started), qlater_running (what runs now, in
 * the workers and in external consumers), and bulk retry of dead jobs.
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql, the upgrade scripts to
 * 0.4 and then this script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.5'" to load this file. \quit

/* ---- live statistics of queues (stats.c) ---- */

/*
 * The depth of each queue as a worker last counted it in the background,
 * for the readers of qlater_queue_stats when the job table is too large to
 * count at each read: a cache, rebuilt after a crash, not dumped
 */
CREATE UNLOGGED TABLE @extschema@.qlater_queue_depth (
    queue        text NOT NULL,
    ready        bigint NOT NULL,
    scheduled    bigint NOT NULL,
    running      bigint NOT NULL,
    dead         bigint NOT NULL,
    oldest_ready timestamptz,
    counted_at   timestamptz NOT NULL
);
REVOKE ALL ON @extschema@.qlater_queue_depth FROM PUBLIC;

CREATE FUNCTION @extschema@.qlater_queue_stats(
    OUT queue text, OUT owner name, OUT external boolean, OUT paused boolean,
    OUT ready bigint, OUT scheduled bigint, OUT running bigint, OUT dead bigint,
    OUT oldest_ready_age interval,
    OUT done_total bigint, OUT failed_total bigint, OUT dead_total bigint,
    OUT timeout_total bigint, OUT crashed_total bigint, OUT cancelled_total bigint,
    OUT purged_total bigint,
    OUT wait_p50 interval, OUT wait_p95 interval, OUT wait_p99 interval,
    OUT run_p50 interval, OUT run_p95 interval, OUT run_p99 interval,
    OUT stats_since timestamptz, OUT counted_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'qlater_queue_stats'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.qlater_queue_stats() IS
    'the queues the current role may see with their depth, outcome counters since the server started and wait and run time percentiles of the last five minutes';

CREATE VIEW @extschema@.qlater_queue_stats AS
SELECT * FROM @extschema@.qlater_queue_stats();
GRANT SELECT ON @extschema@.qlater_queue_stats TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_queue_stats IS
    'per queue the current role may see: ready, scheduled, running and dead jobs, lag, outcome counters since the server started, wait and run time percentiles of the last five minutes';

CREATE FUNCTION @extschema@.qlater_queue_histograms(
    OUT queue text, OUT kind text, OUT le float8[], OUT buckets bigint[],
    OUT sum double precision, OUT count bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'qlater_queue_histograms'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.qlater_queue_histograms() IS
    'per queue the current role may see, its jobs'' wait and run times since the server started, as cumulative histograms (upper bounds in seconds)';

CREATE VIEW @extschema@.qlater_queue_histograms AS
SELECT * FROM @extschema@.qlater_queue_histograms();
GRANT SELECT ON @extschema@.qlater_queue_histograms TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_queue_histograms IS
    'per queue the current role may see: wait time (due to start) and run time of its jobs'' attempts since the server started, as Prometheus histograms';

/* ---- what runs now: qlater_running, qlater_workers ---- */

/*
 * When a lease was taken: written with the lease, cleared with it (a
 * session claim writes nothing to the row: its time is kept in shared
 * memory by the session that holds it).
 */
ALTER TABLE @extschema@.qlater_job ADD COLUMN claimed_at timestamptz;

CREATE FUNCTION @extschema@.qlater_running_jobs(
    OUT id bigint, OUT queue text, OUT handler text, OUT role name,
    OUT attempt int, OUT pid int, OUT kind text, OUT started_at timestamptz,
    OUT runtime interval, OUT lease_until timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'qlater_running_jobs'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_running_jobs() IS
    'the jobs whose attempt runs now that the current role may see (the rows of qlater_running)';

/*
 * qlater_running: one row per job whose attempt runs now, in a worker
 * (kind 'worker', pid the worker's) or claimed by an external consumer
 * (kind 'consumer': pid the session that holds the claim, NULL for a
 * lease, whose holder is whoever has its token).  started_at: when the
 * worker began this attempt, or when the consumer claimed the job.
 * Visible as qlater_jobs (a role's own jobs, the jobs of the external
 * queues it owns or consumes, all for qlater_admin) and all for members
 * of pg_read_all_stats, as pg_stat_activity.  Never the arguments.
 */
CREATE VIEW @extschema@.qlater_running AS
SELECT r.id, r.queue, r.handler, r.role, r.attempt, r.pid, r.kind,
       r.started_at, r.runtime, r.lease_until
  FROM @extschema@.qlater_running_jobs() r;
GRANT SELECT ON @extschema@.qlater_running TO PUBLIC;
COMMENT ON VIEW @extschema@.qlater_running IS
    'the jobs running now that the current role may see: in the workers, and claimed by consumers, since when';

DROP FUNCTION @extschema@.qlater_workers();
CREATE FUNCTION @extschema@.qlater_workers(
    OUT pid int, OUT datname name, OUT state text, OUT job_id bigint,
    OUT job_started_at timestamptz, OUT busy_since timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'qlater_workers'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_workers() IS
    'the background workers of qlater: database, state (starting, idle, running, stopping), the job each one runs and since when';
REVOKE ALL ON FUNCTION @extschema@.qlater_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.qlater_workers() TO qlater_admin;
GRANT EXECUTE ON FUNCTION @extschema@.qlater_workers() TO pg_read_all_stats;
