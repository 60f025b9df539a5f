-- twophase: PREPARE TRANSACTION of a transaction that left qlater work for
-- its commit (waking workers, moving the claim frontier back, releasing or
-- cancelling claims, starting workers) is refused, as PostgreSQL refuses
-- it after NOTIFY: COMMIT PREPARED, maybe in another session or after a
-- restart, would not do that work.
-- (Each refusal is followed by a ROLLBACK PREPARED of whatever was
-- prepared: nothing, unless qlater let the PREPARE through.)
\set VERBOSITY default
SELECT setval('qlater_job_id_seq', 3000, false) > 0 AS ids_reset;
CREATE FUNCTION ql_2pc_job(label text) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN END $$;
SELECT qlater_register('ql_2pc_job(text)');

-- reading jobs leaves no such work
BEGIN;
SELECT count(*) FROM qlater_jobs WHERE args = '["prepared"]';
PREPARE TRANSACTION 'ql_read';
COMMIT PREPARED 'ql_read';

-- an enqueue: the PREPARE fails and rolls the transaction back
BEGIN;
SELECT qlater_enqueue('ql_2pc_job', '["prepared"]') > 0 AS enqueued;
PREPARE TRANSACTION 'ql_enqueue';
SELECT gid FROM pg_prepared_xacts;
SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec
SELECT count(*) FROM qlater_jobs WHERE args = '["prepared"]';
-- a job due later, many jobs, a job enqueued in a subtransaction
BEGIN;
SELECT qlater_enqueue('ql_2pc_job', '["prepared"]',
                      run_at => now() + interval '1 day') > 0 AS enqueued;
PREPARE TRANSACTION 'ql_later';
BEGIN;
SELECT count(*) FROM qlater_enqueue_many('ql_2pc_job', '[["prepared"], ["prepared"]]');
PREPARE TRANSACTION 'ql_many';
BEGIN;
SAVEPOINT s;
SELECT qlater_enqueue('ql_2pc_job', '["prepared"]') > 0 AS enqueued;
RELEASE s;
PREPARE TRANSACTION 'ql_sub';
SELECT gid FROM pg_prepared_xacts;
SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec
SELECT count(*) FROM qlater_jobs WHERE args = '["prepared"]';

-- the retry of a dead job
CREATE FUNCTION ql_2pc_fail() RETURNS void LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'always fails'; END $$;
SELECT qlater_register('ql_2pc_fail()', max_attempts => 1);
SELECT qlater_enqueue('ql_2pc_fail') AS dead_job \gset
SELECT wait_for_jobs();
SELECT state FROM qlater_jobs WHERE id = :dead_job;
BEGIN;
SELECT qlater_retry(:dead_job);
PREPARE TRANSACTION 'ql_retry';
SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec
SELECT state FROM qlater_jobs WHERE id = :dead_job;
SELECT qlater_cancel(:dead_job);
SELECT qlater_unregister('ql_2pc_fail()');
SELECT qlater_unregister('ql_2pc_job(text)');

-- an external consumer's job finished in session mode (the claim is
-- released at commit)
SELECT qlater_create_queue('ql_2pc_app', external => true);
SELECT qlater_enqueue('AppJob', '[]', queue => 'ql_2pc_app') AS app_job \gset
SELECT id = :app_job AS claimed FROM qlater_lock('ql_2pc_app');
BEGIN;
SELECT qlater_complete(:app_job);
PREPARE TRANSACTION 'ql_complete';
SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec
SELECT state FROM qlater_jobs WHERE id = :app_job;
SELECT qlater_complete(:app_job);
-- in lease mode the claim is the job's row, and nothing is left for the
-- commit: PREPARE works
SELECT qlater_enqueue('AppJob', '[]', queue => 'ql_2pc_app') AS app_job \gset
SELECT claim_token AS token FROM qlater_lock('ql_2pc_app', 1, lease => '5 minutes') \gset
BEGIN;
SELECT qlater_complete(:app_job, :'token');
PREPARE TRANSACTION 'ql_lease';
COMMIT PREPARED 'ql_lease';
SELECT count(*) FROM qlater_jobs WHERE queue = 'ql_2pc_app';
-- a queue paused or changed (the workers read queues again at its commit)
BEGIN;
SELECT qlater_pause_queue('ql_2pc_app');
PREPARE TRANSACTION 'ql_pause';
SELECT paused FROM qlater_queues WHERE name = 'ql_2pc_app';
SELECT qlater_drop_queue('ql_2pc_app');

-- a schedule made or changed (the workers look at schedules again at its commit)
CREATE FUNCTION ql_2pc_tick() RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('ql_2pc_tick()');
BEGIN;
SELECT qlater_schedule('ql_2pc_sched', '@daily', 'ql_2pc_tick', '[]') > 0 AS scheduled;
PREPARE TRANSACTION 'ql_sched';
SELECT count(*) FROM qlater_schedules WHERE name = 'ql_2pc_sched';
SELECT qlater_unregister('ql_2pc_tick()');
DROP FUNCTION ql_2pc_tick();

-- a refused PREPARE leaves nothing for the next transaction
BEGIN;
SELECT count(*) FROM qlater_jobs WHERE args = '["prepared"]';
PREPARE TRANSACTION 'ql_clean';
COMMIT PREPARED 'ql_clean';

-- CREATE EXTENSION (workers start in the database at its commit)
SELECT current_database() AS regress_db \gset
CREATE DATABASE ql_2pc;
\c ql_2pc
BEGIN;
CREATE EXTENSION qlater;
PREPARE TRANSACTION 'ql_create';
SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec
SELECT count(*) FROM pg_extension WHERE extname = 'qlater';
\c :regress_db
DROP DATABASE ql_2pc;
