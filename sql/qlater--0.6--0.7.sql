/*
 * qlater--0.6--0.7.sql: upgrade of the qlater extension from 0.6 to 0.7
 *
 * A lease's claim token is its holder's: qlater_lock returns it to the
 * consumer that took the lease.  qlater_jobs showed it to every role that
 * sees the job (the queue's other consumers, its owner, the job's role),
 * any of which could then renew, give back, fail or complete a lease
 * another consumer held.  It now shows the token to admins only.
 *
 * A fresh CREATE EXTENSION runs qlater--0.1.sql, the upgrade scripts to
 * 0.6 and then this script.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION qlater UPDATE TO '0.7'" to load this file. \quit

CREATE OR REPLACE VIEW @extschema@.qlater_jobs WITH (security_barrier) AS
SELECT j.id, j.queue, j.handler, j.args, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error,
       CASE WHEN j.dead THEN 'dead'
            WHEN l.pid IS NOT NULL OR j.lease_until > now() THEN 'running'
            ELSE 'pending' END AS state,
       j.role, j.timeout, j.crashes, j.enqueued_at, l.pid AS locked_by,
       -- a lease's token is its holder's (qlater_lock returned it): shown to
       -- admins only, so that no other consumer of the queue can take it over
       CASE WHEN pg_catalog.pg_has_role(CURRENT_USER, 'qlater_admin', 'MEMBER')
            THEN j.claim_token END AS claim_token,
       j.lease_until, j.key
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
