/*
 * qlater--0.5--0.6.sql: upgrade of the qlater extension from 0.5 to 0.6
 *
 * The history's outcomes are written without a statement each
 * (ql_history_write in history.c, as logical replication applies an
 * insert).  Only qlater writes them, with one of its outcome names; the
 * CHECK on the outcome column cost an expression built from its text at
 * every write, a fifth of the write, and goes.
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql, the upgrade scripts to
 * 0.5 and then this script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.6'" to load this file. \quit

ALTER TABLE @extschema@.qlater_outcome DROP CONSTRAINT IF EXISTS qlater_outcome_outcome_check;

COMMENT ON COLUMN @extschema@.qlater_outcome.outcome IS
    'done, failed, dead, cancelled, timeout, crashed or purged: written by qlater only';
