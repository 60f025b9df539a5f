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
