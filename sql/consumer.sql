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
SELECT name, external, owner FROM qlater_queue WHERE name = 'ruby';
SELECT qlater_create_queue('ruby', external => true);
SELECT qlater_alter_queue('default', external => true);
SELECT qlater_create_queue('', true);
SELECT qlater_grant_queue('ruby', 'ql_app_worker');
SELECT qlater_grant_queue('ruby', 'no_such_role');
SELECT qlater_grant_queue('nope', 'ql_app_worker');
SELECT qlater_grant_queue('ruby', 'ql_app_worker', 'run');
RESET ROLE;
SET ROLE ql_stranger;
SELECT qlater_alter_queue('ruby', external => false);
SELECT qlater_grant_queue('ruby', 'ql_stranger');
SELECT qlater_grant_queue('ruby', 'ql_stranger', 'enqueue');
-- another role's external queue: nothing may be enqueued without 'enqueue'
SELECT qlater_enqueue('ExportStations', '[]', queue => 'ruby');
-- nor listened to without 'consume' (checked as the caller)
SELECT qlater_listen('ruby');
RESET ROLE;
SET ROLE ql_app_owner;
SELECT qlater_grant_queue('ruby', 'ql_stranger', 'enqueue');
SELECT queue, grantee, privilege FROM qlater_queue_grants ORDER BY 1, 2, 3;
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
-- qlater's own 'default' stays in-server, even for a superuser: the jobs
-- every role enqueues without naming a queue would go to consumers
RESET ROLE;
SELECT qlater_create_queue('default', external => true);
SELECT qlater_alter_queue('default', external => true);
SELECT external FROM qlater_queues WHERE name = 'default';
-- one made external before (by an admin, with an older library): asked
-- again, refused; turned back in-server, allowed
UPDATE qlater_queue SET external = true WHERE name = 'default';
SELECT qlater_alter_queue('default', external => true);
SELECT qlater_alter_queue('default', external => false);
SELECT external FROM qlater_queues WHERE name = 'default';
SET ROLE ql_app_worker;

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

-- a refused finish changes nothing, even when it is refused after the row
-- was read (the job's row is checked as it is deleted)
SET ROLE ql_stranger;
SELECT qlater_enqueue('Kept', '[]', queue => 'ruby') AS job4 \gset
RESET ROLE;
SET ROLE ql_app_worker;
SELECT id = :job4 AS claimed FROM qlater_lock('ruby');
RESET ROLE;
SET ROLE ql_stranger;
SELECT qlater_complete(:job4);
RESET ROLE;
SELECT state FROM qlater_jobs WHERE id = :job4;
SET ROLE ql_app_worker;
BEGIN;
SAVEPOINT s;
SELECT qlater_complete(:job4, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
ROLLBACK TO s;
SELECT state FROM qlater_jobs WHERE id = :job4;
SELECT qlater_complete(:job4);
COMMIT;
SELECT count(*) FROM qlater_jobs WHERE id = :job4;
RESET ROLE;

-- the statements run as the tables' owner: nothing in them is looked up
-- under the caller's search_path (operators, functions, types)
CREATE SCHEMA ql_evil;
CREATE TABLE ql_evil.calls (who name, what text);
GRANT USAGE ON SCHEMA ql_evil TO PUBLIC;
GRANT INSERT ON ql_evil.calls TO PUBLIC;
CREATE FUNCTION ql_evil.record(what text) RETURNS void LANGUAGE sql
    AS $$INSERT INTO ql_evil.calls VALUES (current_user, what)$$;
CREATE FUNCTION ql_evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$SELECT ql_evil.record('now'); SELECT pg_catalog.now()$$;
CREATE FUNCTION ql_evil.gen_random_uuid() RETURNS uuid LANGUAGE sql
    AS $$SELECT ql_evil.record('gen_random_uuid'); SELECT pg_catalog.gen_random_uuid()$$;
CREATE FUNCTION ql_evil.pg_backend_pid() RETURNS int LANGUAGE sql
    AS $$SELECT ql_evil.record('pg_backend_pid'); SELECT pg_catalog.pg_backend_pid()$$;
CREATE FUNCTION ql_evil.int8eq(bigint, bigint) RETURNS boolean LANGUAGE sql
    AS $$SELECT ql_evil.record('bigint ='); SELECT $1 OPERATOR(pg_catalog.=) $2$$;
CREATE FUNCTION ql_evil.texteq(text, text) RETURNS boolean LANGUAGE sql
    AS $$SELECT ql_evil.record('text ='); SELECT $1 OPERATOR(pg_catalog.=) $2$$;
CREATE FUNCTION ql_evil.nameeq(name, name) RETURNS boolean LANGUAGE sql
    AS $$SELECT ql_evil.record('name ='); SELECT $1 OPERATOR(pg_catalog.=) $2$$;
CREATE OPERATOR ql_evil.= (FUNCTION = ql_evil.int8eq, LEFTARG = bigint, RIGHTARG = bigint);
CREATE OPERATOR ql_evil.= (FUNCTION = ql_evil.texteq, LEFTARG = text, RIGHTARG = text);
CREATE OPERATOR ql_evil.= (FUNCTION = ql_evil.nameeq, LEFTARG = name, RIGHTARG = name);
SET ROLE ql_stranger;
SELECT qlater_enqueue('Evil', '[1]', queue => 'ruby') AS job5 \gset
SELECT qlater_enqueue('Evil', '[2]', queue => 'ruby', priority => 200) AS job6 \gset
RESET ROLE;
SET search_path = ql_evil, pg_catalog, public;
SET ROLE ql_app_owner;
SELECT qlater_grant_queue('ruby', 'ql_stranger');
SELECT qlater_revoke_queue('ruby', 'ql_stranger');
SELECT qlater_alter_queue('ruby', external => true);
RESET ROLE;
SET ROLE ql_app_worker;
SELECT id = :job5 AS claimed FROM qlater_lock('ruby');
SELECT qlater_fail(:job5, 'Error: once');
SELECT claim_token AS token FROM qlater_lock('ruby', 1, lease => '5 minutes') \gset
SELECT qlater_extend(:job6, :'token', '10 minutes') IS NOT NULL AS extended;
SELECT qlater_unlock(:job6, :'token');
SELECT claim_token AS token FROM qlater_lock('ruby', 1, lease => '5 minutes') \gset
SELECT qlater_complete(:job6, :'token');
SELECT count(*) FROM qlater_lock('ruby');
RESET ROLE;
RESET search_path;
SELECT count(*) AS evil_calls FROM ql_evil.calls;
SELECT qlater_cancel(:job5);
SET client_min_messages = warning;
DROP SCHEMA ql_evil CASCADE;
RESET client_min_messages;

-- the job failed above is left in the queue: a queue turned in-server
-- says that its jobs are the workers' now (an application's job ends dead
-- there); rolled back here, and the job removed before the queue is made
-- in-server below
BEGIN;
SELECT qlater_alter_queue('ruby', external => false);
ROLLBACK;
SELECT qlater_cancel(:job1);
SELECT count(*) FROM qlater_job WHERE queue = 'ruby';

-- only the owner (or an admin) changes a queue
SET ROLE ql_app_owner;
SELECT qlater_revoke_queue('ruby', 'ql_app_worker');
SELECT qlater_revoke_queue('ruby', 'ql_app_worker');
SELECT qlater_revoke_queue('ruby', 'ql_stranger', 'enqueue');
SELECT qlater_alter_queue('ruby', external => false);
RESET ROLE;

-- a lease's token finishes its job only while the lease holds; a lease
-- that ran out counts as a failed attempt, recorded by the next claim that
-- meets the job, which voids the token
SET ROLE ql_app_owner;
SELECT qlater_create_queue('leased', external => true);
SELECT qlater_grant_queue('leased', 'ql_app_worker');
SELECT qlater_grant_queue('leased', 'ql_stranger', 'enqueue');
RESET ROLE;
SET ROLE ql_stranger;
SELECT qlater_enqueue('Lapsed', '[]', queue => 'leased') AS job7 \gset
RESET ROLE;
SET ROLE ql_app_worker;
SELECT claim_token AS token FROM qlater_lock('leased', 1, lease => '10 ms') \gset
SELECT pg_sleep(0.1);
-- a session-mode claim after the lease ran out counts it and hands out
-- nothing (the lease's claim held a transaction lock: this session may
-- claim)
SELECT count(*) FROM qlater_lock('leased');
SELECT qlater_complete(:job7, :'token');
SELECT qlater_fail(:job7, 'Error: late', NULL, :'token');
SELECT qlater_unlock(:job7, :'token');
SELECT state, attempts, last_error->>'message' AS error,
       run_at - (last_error->>'at')::timestamptz AS backoff,
       claim_token IS NULL AS no_token, lease_until IS NULL AS no_lease
  FROM qlater_jobs WHERE id = :job7;
-- after its backoff, claimed again
RESET ROLE;
UPDATE qlater_job SET run_at = now() WHERE id = :job7;
SET ROLE ql_app_worker;
SELECT id = :job7 AS claimed, attempts FROM qlater_lock('leased');
SELECT qlater_complete(:job7);
SELECT count(*) FROM qlater_jobs WHERE id = :job7;
-- a lease that ran out, claimed by no one since: the token finishes nothing
SET ROLE ql_stranger;
SELECT qlater_enqueue('Lapsed', '[]', queue => 'leased') AS job8 \gset
RESET ROLE;
SET ROLE ql_app_worker;
SELECT claim_token AS token FROM qlater_lock('leased', 1, lease => '10 ms') \gset
SELECT pg_sleep(0.1);
SELECT qlater_complete(:job8, :'token');
SELECT qlater_fail(:job8, 'Error: late', NULL, :'token');
SELECT qlater_extend(:job8, :'token', '5 minutes');
SELECT qlater_unlock(:job8, :'token');
SELECT state, attempts FROM qlater_jobs WHERE id = :job8;
-- the next claim, a lease, counts the lapse; the old token does not match
SELECT count(*) FROM qlater_lock('leased', 1, lease => '5 minutes');
SELECT qlater_complete(:job8, :'token');
SELECT state, attempts, claim_token IS NULL AS no_token FROM qlater_jobs WHERE id = :job8;
-- after its backoff, leased again
RESET ROLE;
UPDATE qlater_job SET run_at = now() WHERE id = :job8;
SET ROLE ql_app_worker;
SELECT claim_token AS token2 FROM qlater_lock('leased', 1, lease => '5 minutes') \gset
SELECT qlater_complete(:job8, :'token');
SELECT qlater_complete(:job8, :'token2');
SELECT count(*) FROM qlater_jobs WHERE id = :job8;
RESET ROLE;
SELECT qlater_drop_queue('leased');

-- qlater_listen takes effect at commit, as LISTEN does: one rolled back,
-- or rolled back to a savepoint, leaves no listener behind.  A role's
-- sessions listen to 64 queues at most in a database, so that rounds of 30
-- queues that roll back must not add up.  (As a role of the test's own,
-- whose name is in the error.)
CREATE ROLE ql_listener;
SET ROLE ql_listener;
SELECT count(qlater_create_queue('ql_listen_' || i, external => true))
  FROM generate_series(1, 130) i;
BEGIN;
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(1, 30) i;
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(31, 60) i;
ROLLBACK TO s;
SAVEPOINT t;
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(61, 90) i;
RELEASE t;
COMMIT;
-- the committed ones stay, and count
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(91, 120) i;
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(121, 130) i;
-- listening again takes no more room
SELECT count(qlater_listen('ql_listen_' || i)) FROM generate_series(61, 90) i;
SELECT count(qlater_drop_queue('ql_listen_' || i)) FROM generate_series(1, 130) i;
RESET ROLE;
DROP ROLE ql_listener;

-- finishing several jobs at once: qlater_complete_many, qlater_unlock_many
-- (all or none; each job checked as qlater_complete checks it)
SET ROLE ql_app_owner;
SELECT qlater_create_queue('many', external => true);
SELECT qlater_grant_queue('many', 'ql_app_worker');
SELECT qlater_grant_queue('many', 'ql_stranger', 'enqueue');
RESET ROLE;
SET ROLE ql_stranger;
SELECT array_agg(id ORDER BY id) AS many
  FROM qlater_enqueue_many('Many', '[[1], [2], [3], [4], [5], [6]]', queue => 'many') id \gset
RESET ROLE;
CREATE FUNCTION ql_many_noop(int) RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('ql_many_noop(int)');
SELECT qlater_enqueue('ql_many_noop', '[1]', run_at => now() + interval '1 day') AS inserver \gset
SET ROLE ql_app_worker;
-- the arguments
SELECT qlater_complete_many(NULL);
SELECT qlater_complete_many('{}');
SELECT qlater_unlock_many('{}', '{}');
SELECT qlater_complete_many('{1, NULL}');
SELECT qlater_complete_many('{{1, 2}, {3, 4}}');
SELECT qlater_complete_many('{5, 6, 5}');
SELECT qlater_complete_many('{1, 2}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}');
SELECT qlater_complete_many('{1}', ARRAY[NULL]::uuid[]);
SELECT qlater_unlock_many('{1}', '{{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}}');
SELECT qlater_complete_many(ARRAY(SELECT g::bigint FROM generate_series(1, 1001) g));
SELECT qlater_complete_many(ARRAY(SELECT g::bigint FROM generate_series(1, 1000000) g));
SELECT qlater_unlock_many(ARRAY(SELECT g::bigint FROM generate_series(1, 1001) g));
-- their SQLSTATEs
CREATE FUNCTION pg_temp.sqlstate(q text) RETURNS text LANGUAGE plpgsql AS
$$BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END$$;
SELECT q, pg_temp.sqlstate(q) FROM (VALUES
    ('SELECT qlater_complete_many(NULL)'),
    ('SELECT qlater_complete_many(''{1, NULL}'')'),
    ('SELECT qlater_complete_many(''{{1, 2}, {3, 4}}'')'),
    ('SELECT qlater_complete_many(''{5, 6, 5}'')'),
    ('SELECT qlater_complete_many(''{1, 2}'', ''{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'')'),
    ('SELECT qlater_unlock_many(''{1}'', ARRAY[NULL]::uuid[])'),
    ('SELECT qlater_complete_many(ARRAY(SELECT g::bigint FROM generate_series(1, 1001) g))'),
    ('SELECT qlater_complete_many(''{99999}'')'),
    ('SELECT qlater_unlock_many(''{99999}'')')) v(q);
-- four of the six claimed by this session
SELECT array_agg(id ORDER BY id) = (:'many'::bigint[])[1:4] AS first_four
  FROM qlater_lock('many', 4);
-- one job not claimed, missing, not consumable: the error for the first,
-- in the order of ids, and nothing completed
SELECT qlater_complete_many((:'many'::bigint[])[3:5]);
SELECT qlater_complete_many(ARRAY[(:'many'::bigint[])[1], 99999]);
SELECT qlater_complete_many(ARRAY[(:'many'::bigint[])[2], :inserver]);
SELECT qlater_complete_many(ARRAY[(:'many'::bigint[])[6], (:'many'::bigint[])[1]]);
-- session claims presented as leases do not pass
SELECT qlater_complete_many((:'many'::bigint[])[1:1], '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}');
SELECT count(*) FROM qlater_jobs WHERE queue = 'many' AND state = 'running';
RESET ROLE;
-- a role that may not consume the queue, another session's claims
SET ROLE ql_stranger;
SELECT qlater_complete_many((:'many'::bigint[])[1:2]);
SELECT qlater_unlock_many((:'many'::bigint[])[1:2]);
RESET ROLE;
SET ROLE ql_app_worker;
-- completed: the claims are released when the transaction commits
BEGIN;
SELECT qlater_complete_many((:'many'::bigint[])[1:3]);
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
   AND pid = pg_backend_pid();
COMMIT;
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
   AND pid = pg_backend_pid();
SELECT count(*) FROM qlater_jobs WHERE id = ANY (:'many'::bigint[]);
SELECT qlater_complete_many((:'many'::bigint[])[1:1]);
-- a session claim is given back at once, as qlater_unlock gives it back
BEGIN;
SELECT qlater_unlock_many((:'many'::bigint[])[4:4]);
ROLLBACK;
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
   AND pid = pg_backend_pid();
SELECT state FROM qlater_jobs WHERE id = (:'many'::bigint[])[4];
-- lease mode: tokens[i] is the token of ids[i]
SELECT array_agg(id ORDER BY id) AS lids, array_agg(claim_token ORDER BY id) AS ltoks
  FROM qlater_lock('many', 3, lease => '5 minutes') \gset
SELECT qlater_complete_many(:'lids'::bigint[]);
SELECT qlater_complete_many(:'lids'::bigint[], ARRAY(SELECT t FROM unnest(:'ltoks'::uuid[]) WITH ORDINALITY u(t, i) ORDER BY i DESC));
SELECT qlater_unlock_many((:'lids'::bigint[])[1:1], (:'ltoks'::uuid[])[1:1]);
SELECT state, claim_token IS NULL AS no_token FROM qlater_jobs WHERE id = (:'lids'::bigint[])[1];
SELECT qlater_complete_many((:'lids'::bigint[])[1:3], :'ltoks'::uuid[]);
SELECT qlater_complete_many((:'lids'::bigint[])[2:3], (:'ltoks'::uuid[])[2:3]);
SELECT count(*) FROM qlater_jobs WHERE queue = 'many';
-- a lease that ran out finishes nothing
SELECT array_agg(id ORDER BY id) AS lids, array_agg(claim_token ORDER BY id) AS ltoks
  FROM qlater_lock('many', 1, lease => '10 ms') \gset
SELECT pg_sleep(0.1);
SELECT qlater_complete_many(:'lids'::bigint[], :'ltoks'::uuid[]);
SELECT qlater_unlock_many(:'lids'::bigint[], :'ltoks'::uuid[]);
SELECT count(*) FROM qlater_jobs WHERE queue = 'many';
-- the next claim counts the lapse; after the backoff the job is claimed
SELECT count(*) FROM qlater_lock('many', 10);
SELECT state, attempts FROM qlater_jobs WHERE queue = 'many';
RESET ROLE;
UPDATE qlater_job SET run_at = now() WHERE queue = 'many';
SET ROLE ql_app_worker;
SELECT qlater_complete_many(ARRAY(SELECT id FROM qlater_lock('many', 10)));
SELECT count(*) FROM qlater_jobs WHERE queue = 'many';
RESET ROLE;
SELECT qlater_cancel(:inserver);
SELECT qlater_unregister('ql_many_noop(int)');
DROP FUNCTION ql_many_noop(int);
SELECT qlater_drop_queue('many');

-- a handler that is no SQL function, enqueued into an in-server queue:
-- the hint says where jobs for application code go
SELECT qlater_enqueue('ExportStations', '[]');
SELECT qlater_enqueue('ExportStations', '[]', queue => 'default');
SELECT qlater_enqueue('ExportStations(int)', '[]', queue => 'default');
SELECT pg_temp.sqlstate($$SELECT qlater_enqueue('ExportStations', '[]', queue => 'default')$$);

DROP OWNED BY ql_app_owner, ql_app_worker, ql_stranger;
SELECT qlater_drop_queue('ruby');
DROP ROLE ql_app_owner, ql_app_worker, ql_stranger;
