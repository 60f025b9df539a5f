-- security: only the API writes jobs; roles see and change only their own
\set VERBOSITY default
-- job ids in messages below do not depend on the tests before
SELECT setval('qlater_job_id_seq', 1000, false) > 0 AS ids_reset;

CREATE ROLE ql_alice;
CREATE ROLE ql_bob;
CREATE ROLE ql_carol;
GRANT qlater_admin TO ql_carol;
GRANT ALL ON TABLE done TO PUBLIC;
GRANT CREATE ON SCHEMA public TO ql_alice;

CREATE FUNCTION whoami(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (label, who) VALUES (label, current_user) $$;
SELECT qlater_register('whoami(text)');
CREATE FUNCTION secret() RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION secret() FROM PUBLIC;
SELECT qlater_register('secret()');

-- only the function's owner may register it
SET ROLE ql_alice;
SELECT qlater_register('whoami(text)');
SELECT qlater_unregister('whoami(text)');
CREATE FUNCTION alice_fn() RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('alice_fn()');
SELECT handler, registered_by FROM qlater_handler WHERE handler LIKE '%alice_fn%';

-- a role cannot enqueue a handler it cannot execute
SELECT qlater_enqueue('secret', '[]');

-- nobody writes the job table directly, or reads it around the view
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
VALUES ('default', 'public.whoami(text)', '["forged"]', 1, now(), 1, 'postgres');
UPDATE qlater_job SET role = 'postgres';
DELETE FROM qlater_job;
SELECT * FROM qlater_job;
SELECT nextval('qlater_job_id_seq');
INSERT INTO qlater_handler VALUES ('public.secret()', 'default', 1, 1, NULL, 'ql_alice');

-- alice's job, kept pending for the checks below
SELECT qlater_enqueue('whoami', '["alice"]', run_at => now() + interval '1 day') AS alice_job \gset
SELECT qlater_enqueue('whoami', '["alice-dead"]', run_at => now() + interval '1 day') AS alice_job2 \gset
SELECT handler, args, role FROM qlater_jobs;
RESET ROLE;

-- bob sees none of alice's jobs and cannot change them
SET ROLE ql_bob;
SELECT count(*) FROM qlater_jobs;
SELECT qlater_cancel(:alice_job);
SELECT qlater_retry(:alice_job);
SELECT qlater_cancel(-1);
RESET ROLE;

-- an admin sees every job and may cancel any
SET ROLE ql_carol;
SELECT role, args FROM qlater_jobs ORDER BY id;
SELECT qlater_cancel(:alice_job2);
RESET ROLE;

-- alice may cancel her own; retry needs a dead job
SET ROLE ql_alice;
SELECT qlater_retry(:alice_job);
SELECT qlater_cancel(:alice_job);
SELECT count(*) FROM qlater_jobs;

-- the job runs as the role that enqueued it, also after SET ROLE
SELECT qlater_enqueue('whoami', '["as alice"]') > 0 AS enqueued;
SELECT wait_for_jobs();
RESET ROLE;
SELECT label, who FROM done WHERE label = 'as alice';

-- ... and inside SECURITY DEFINER functions, as their owner
CREATE FUNCTION enqueue_as_owner() RETURNS bigint LANGUAGE sql SECURITY DEFINER
AS $$ SELECT qlater_enqueue('whoami', '["definer"]') $$;
GRANT EXECUTE ON FUNCTION enqueue_as_owner() TO ql_bob;
SET ROLE ql_bob;
SELECT enqueue_as_owner() > 0 AS enqueued;
RESET ROLE;
SELECT wait_for_jobs();
SELECT label, who = current_user AS as_definer FROM done WHERE label = 'definer';

-- the admin functions are not for everyone
SET ROLE ql_bob;
SELECT count(*) FROM qlater_workers();
SELECT qlater_wake_launcher();
RESET ROLE;

-- the caller's search_path lends qlater's statements no operator: they
-- would run it as the tables' owner
CREATE SCHEMA ql_trap AUTHORIZATION ql_alice;
SET ROLE ql_alice;
CREATE FUNCTION ql_trap.int8_eq(a int8, b int8) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'trap ran as %', current_user;
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE OPERATOR ql_trap.= (LEFTARG = int8, RIGHTARG = int8, FUNCTION = ql_trap.int8_eq);
CREATE FUNCTION ql_trap.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'trap ran as %', current_user;
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE OPERATOR ql_trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = ql_trap.text_eq);
SET search_path = ql_trap, pg_catalog, public;
SELECT 1::int8 = 1::int8 AS trap_works;
SELECT qlater_cancel(-1);
SELECT qlater_retry(-1);
SELECT qlater_enqueue('whoami', '["trap"]', run_at => now() + interval '1 day', queue => 'trapq') > 0 AS enqueued;
SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue OPERATOR(pg_catalog.=) 'trapq';
SELECT qlater_drop_queue('trapq');
SELECT qlater_unregister('alice_fn()');
RESET search_path;
RESET ROLE;
DROP SCHEMA ql_trap CASCADE;

DROP FUNCTION alice_fn();
DROP FUNCTION enqueue_as_owner();
REVOKE ALL ON TABLE done FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM ql_alice;
DROP OWNED BY ql_alice, ql_bob, ql_carol;
DROP ROLE ql_alice, ql_bob, ql_carol;
