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
