-- consumer: queues served by applications, and the claim protocol
\set VERBOSITY default
-- job ids in messages below do not depend on the tests before
SELECT setval('qlater_job_id_seq', 2000, false) > 0 AS ids_reset;

CREATE ROLE ql_app_owner;
CREATE ROLE ql_app_worker;
CREATE ROLE ql_stranger;

-- declaring queues
SET ROLE ql_app_owner;
SELECT qlater_create_queue('ruby', external => true);
SELECT name, external, owner FROM qlater_queue;
SELECT qlater_create_queue('default', external => true);
SELECT qlater_create_queue('', true);
SELECT qlater_grant_queue('ruby', 'ql_app_worker');
SELECT qlater_grant_queue('ruby', 'no_such_role');
SELECT qlater_grant_queue('nope', 'ql_app_worker');
RESET ROLE;
SET ROLE ql_stranger;
SELECT qlater_create_queue('ruby', external => false);
SELECT qlater_grant_queue('ruby', 'ql_stranger');
RESET ROLE;

-- jobs for applications: free-text handler, any JSON args
SET ROLE ql_stranger;
SELECT qlater_enqueue('ExportStations', '{"args": ["tenant-a"]}', queue => 'ruby') AS job1 \gset
SELECT qlater_enqueue('ExportStations', '[1]', queue => 'ruby', priority => 5) AS job2 \gset
SELECT qlater_enqueue('', '[]', queue => 'ruby');
SELECT qlater_enqueue(E'bad\nname', '[]', queue => 'ruby');
SELECT qlater_enqueue('X', '1', queue => 'ruby');
-- enqueuers see their own jobs, and cannot consume
SELECT handler, args, priority, state FROM qlater_jobs ORDER BY id;
SELECT count(*) FROM qlater_lock('ruby');
RESET ROLE;

-- the in-server workers leave external jobs alone
SELECT pg_sleep(0.3);
SELECT count(*) FROM qlater_jobs WHERE queue = 'ruby' AND state = 'pending';

-- a granted consumer claims in (priority, run_at, id) order
SET ROLE ql_app_worker;
SELECT count(*) FROM qlater_jobs;
SELECT id = :job2 AS first, handler, state FROM qlater_lock('ruby');
SELECT id = :job1 AS second, state FROM qlater_lock('ruby', 10);
SELECT count(*) FROM qlater_lock('ruby', 10);
SELECT qlater_lock('ruby', 0);
SELECT qlater_lock('ruby', 1, lease => '0 seconds');
SELECT qlater_lock('default');

-- finishing: the claim is released when the transaction commits
BEGIN;
SELECT qlater_complete(:job2);
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
   AND pid = pg_backend_pid();
COMMIT;
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
   AND pid = pg_backend_pid();
SELECT qlater_complete(:job2);
-- a failure counts an attempt and reschedules
SELECT qlater_fail(:job1, 'RuntimeError: boom');
SELECT attempts, state, last_error->>'message' AS message, run_at > now() AS later
  FROM qlater_jobs WHERE id = :job1;
SELECT qlater_complete(:job1);
RESET ROLE;

-- lease mode: the token, from any session
SET ROLE ql_stranger;
SELECT qlater_enqueue('Leased', '[]', queue => 'ruby') AS job3 \gset
RESET ROLE;
SET ROLE ql_app_worker;
SELECT claim_token AS token FROM qlater_lock('ruby', 1, lease => '5 minutes') \gset
SELECT state FROM qlater_jobs WHERE id = :job3;
SELECT count(*) FROM qlater_lock('ruby', 1, lease => '5 minutes');
SELECT qlater_extend(:job3, :'token', '10 minutes') > now() + interval '9 minutes' AS extended;
SELECT qlater_complete(:job3, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT qlater_unlock(:job3, :'token');
SELECT state FROM qlater_jobs WHERE id = :job3;
SELECT claim_token AS token FROM qlater_lock('ruby', 1, lease => '5 minutes') \gset
SELECT qlater_complete(:job3, :'token');
SELECT count(*) FROM qlater_jobs;
RESET ROLE;

-- only the owner (or an admin) changes a queue
SET ROLE ql_app_owner;
SELECT qlater_revoke_queue('ruby', 'ql_app_worker');
SELECT qlater_revoke_queue('ruby', 'ql_app_worker');
SELECT qlater_create_queue('ruby', external => false);
RESET ROLE;

DROP OWNED BY ql_app_owner, ql_app_worker, ql_stranger;
DELETE FROM qlater_queue WHERE name = 'ruby';
DROP ROLE ql_app_owner, ql_app_worker, ql_stranger;
