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

/* ---- bulk retry of dead jobs ---- */

CREATE FUNCTION @extschema@.qlater_retry_dead(queue text DEFAULT NULL,
                                              older_than interval DEFAULT '0')
RETURNS bigint
AS 'MODULE_PATHNAME', 'qlater_retry_dead'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_retry_dead(text, interval) IS
    'make the dead jobs of a queue (NULL: of every queue) that died longer than older_than ago pending again, due now, as qlater_retry does: the caller''s own, or all for admins; returns how many';
