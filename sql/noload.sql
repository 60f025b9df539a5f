-- noload: a server without qlater in shared_preload_libraries (run with
-- test/noload.conf).  CREATE EXTENSION warns and works, jobs can be
-- enqueued (they run once qlater is preloaded), and what needs the
-- workers' shared memory says so.  So does a restore of a dump.
\set VERBOSITY default
SHOW shared_preload_libraries;
CREATE EXTENSION qlater;
-- the session goes on, with the settings that can change at a reload
SELECT extname, extversion FROM pg_extension WHERE extname = 'qlater';
SHOW qlater.poll_interval;
SHOW qlater.max_crashes;
-- a setting read at server start only is left as the file gave it
SHOW qlater.max_workers;
SET qlater.poll_interval = '1s';

-- jobs can be enqueued, and wait
CREATE TABLE done (tenant text);
CREATE FUNCTION export_stations(tenant text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done VALUES (tenant) $$;
SELECT qlater_register('export_stations(text)');
SELECT qlater_enqueue('export_stations', '["tenant-a"]') AS job_a \gset
SELECT count(*) FROM qlater_enqueue_many('export_stations', '[["tenant-b"], ["tenant-c"]]');
SELECT qlater_enqueue('export_stations', '["later"]', run_at => now() + interval '1 hour') > 0 AS enqueued;
BEGIN;
SELECT qlater_enqueue('export_stations', '["never"]') > 0 AS enqueued;
ROLLBACK;
SELECT handler, args, state FROM qlater_jobs ORDER BY id;
SELECT qlater_cancel(:job_a);
SELECT count(*) FROM qlater_jobs;
SELECT count(*) FROM done;
SELECT qlater_schedule('ping', '15 seconds', 'export_stations', '["ping"]') > 0 AS scheduled;
SELECT qlater_unschedule('ping');

-- external consumers claim over SQL; only the wake-up needs shared memory
SELECT qlater_create_queue('app', external => true);
SELECT qlater_enqueue('AppJob', '[]', queue => 'app') AS app_job \gset
SELECT id = :app_job AS claimed FROM qlater_lock('app');
SELECT qlater_complete(:app_job);
SELECT qlater_listen('app');
SELECT count(*) FROM qlater_workers();

-- a restore into this server: what pg_dump writes for a database with
-- qlater, run by a new session (which loads the library anew)
SELECT current_database() AS regress_db \gset
CREATE DATABASE ql_noload_restore;
CREATE ROLE ql_noload_owner;
\c ql_noload_restore
CREATE EXTENSION IF NOT EXISTS qlater WITH SCHEMA public;
CREATE TABLE public.done (tenant text);
CREATE FUNCTION public.export_stations(tenant text) RETURNS void
    LANGUAGE sql
    AS $$ INSERT INTO done VALUES (tenant) $$;
ALTER FUNCTION public.export_stations(text) OWNER TO ql_noload_owner;
COPY public.qlater_handler (handler, queue, priority, max_attempts, timeout, registered_by, registered_at) FROM stdin;
public.export_stations(text)	default	100	25	\N	ql_noload_owner	2024-01-02 03:04:05+00
\.
COPY public.qlater_job (id, queue, handler, args, priority, run_at, attempts, max_attempts, timeout, role, dead, crashes, last_error, enqueued_at, external, claim_token, lease_until) FROM stdin;
7	default	public.export_stations(text)	["restored"]	100	2024-01-02 03:04:05+00	0	25	\N	postgres	f	0	\N	2024-01-02 03:04:05+00	f	\N	\N
\.
SELECT pg_catalog.setval('public.qlater_job_id_seq', 7, true);
SELECT id, handler, args, state FROM qlater_jobs ORDER BY id;
SELECT qlater_enqueue('export_stations', '["after restore"]') AS next_id;
\c :regress_db
DROP DATABASE ql_noload_restore;
DROP ROLE ql_noload_owner;
