/*
 * qlater--0.2--0.3.sql: upgrade of the qlater extension from 0.2 to 0.3
 *
 * External consumers finish or give back several claimed jobs in one
 * call: qlater_complete_many and qlater_unlock_many (the batch mode of the
 * consumer protocol).  New names, not overloads of qlater_complete and
 * qlater_unlock: an overload would make their calls with untyped
 * parameters ambiguous.  Like the other consumer functions they are
 * executable by PUBLIC: each job is checked as qlater_complete checks it
 * (the caller consumes its queue, and holds its claim).
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql, qlater--0.1--0.2.sql and
 * then this script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.3'" to load this file. \quit

CREATE FUNCTION @extschema@.qlater_complete_many(ids bigint[], tokens uuid[] DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'qlater_complete_many'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_complete_many(bigint[], uuid[]) IS
    'finish several claimed jobs at once, all or none (tokens: the lease token of each job, NULL for session claims); returns how many; the claims are released when this transaction commits';

CREATE FUNCTION @extschema@.qlater_unlock_many(ids bigint[], tokens uuid[] DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'qlater_unlock_many'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.qlater_unlock_many(bigint[], uuid[]) IS
    'give back the claims of several jobs not started, all or none; returns how many';

-- Claims are advisory locks of qlater's key space (29036, QLATER_LOCK_SPACE)
-- keyed by job id, and they outlive a DROP EXTENSION in the sessions that
-- hold them.  A CREATE EXTENSION that follows (it runs this script) must
-- not hand out ids those sessions still hold: they would hold the new jobs,
-- unseen by every other consumer, and could finish them.  So the ids start
-- above any claimed in this database.  (An upgrade of a database with jobs
-- changes nothing: the ids claimed there are below the sequence's.)  A
-- future base install script must keep this.
SELECT pg_catalog.setval('@extschema@.qlater_job_id_seq', m.id)
  FROM (SELECT pg_catalog.max((l.classid::bigint OPERATOR(pg_catalog.<<) 32)
                              OPERATOR(pg_catalog.|) l.objid::bigint) AS id
          FROM pg_catalog.pg_locks l
         WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
           AND l.objsubid OPERATOR(pg_catalog.=) 29036
           AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                                   WHERE d.datname OPERATOR(pg_catalog.=)
                                                         pg_catalog.current_database())) m
 WHERE m.id IS NOT NULL
   AND m.id OPERATOR(pg_catalog.>=) (SELECT s.last_value FROM @extschema@.qlater_job_id_seq s);
