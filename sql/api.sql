-- api: registration, enqueue and the checks made at enqueue
\set VERBOSITY default

-- registration
SELECT qlater_register('export_stations(text,text)');
SELECT handler, queue, priority, max_attempts, timeout FROM qlater_handler;
-- registering again updates the defaults
SELECT qlater_register('export_stations(text,text)', queue => 'exports',
                       priority => 5, max_attempts => 3, timeout => '1 minute');
SELECT handler, queue, priority, max_attempts, timeout FROM qlater_handler;
SELECT qlater_register('export_stations(text,text)');
SELECT qlater_register('no_such_function(text)');
SELECT qlater_register('export_stations(text,text)', priority => 100000);
SELECT qlater_register('export_stations(text,text)', max_attempts => 0);
SELECT qlater_register('export_stations(text,text)', timeout => '-1 second');
SELECT qlater_register('export_stations(text,text)', queue => '');
SELECT qlater_register('export_stations(text,text)', queue => NULL);
CREATE FUNCTION poly(anyelement) RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('poly(anyelement)');
CREATE FUNCTION anyvar(VARIADIC "any") RETURNS int LANGUAGE internal AS 'pg_num_nulls';
SELECT qlater_register('anyvar("any")');
-- trigger functions can only be called as triggers
CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
SELECT qlater_register('trg()');
SELECT qlater_register('count(*)');
CREATE PROCEDURE proc_out(a int, OUT b int) LANGUAGE plpgsql AS $$ BEGIN b := a; END $$;
SELECT qlater_register('proc_out(int)');

-- enqueue: positional, named, defaults and options
BEGIN;
SELECT qlater_enqueue('export_stations', '["tenant-a"]', run_at => now() + interval '1 day') > 0 AS enqueued;
SELECT qlater_enqueue('export_stations', '{"tenant": "tenant-a", "format": "xlsx"}', run_at => now() + interval '1 day') > 0 AS enqueued;
SELECT qlater_enqueue('export_stations', '["tenant-b"]', run_at => now() + interval '1 day',
                      queue => 'exports', priority => 10, max_attempts => 7) > 0 AS enqueued;
SELECT qlater_enqueue('public.export_stations', '["tenant-c", "pdf"]', run_at => now() + interval '1 day') > 0 AS enqueued;
SELECT qlater_enqueue('export_stations(text,text)', '{"tenant": "tenant-d"}', run_at => now() + interval '1 day') > 0 AS enqueued;
SELECT handler, args, queue, priority, max_attempts, attempts, state, role = current_user AS mine
  FROM qlater_jobs ORDER BY id;
ROLLBACK;
-- rolled back: no job left behind
SELECT count(*) FROM qlater_jobs;

-- every bad call is refused and enqueues nothing
SELECT qlater_enqueue('no_such_handler', '[]');
SELECT qlater_enqueue('no_such_schema.export_stations', '[]');
SELECT qlater_enqueue('export_stations(int)', '[]');
CREATE FUNCTION unregistered(a int) RETURNS void LANGUAGE sql AS '';
SELECT qlater_enqueue('unregistered', '[1]');
SELECT qlater_enqueue('unregistered(int)', '[1]');
SELECT qlater_enqueue('export_stations', '[]');
SELECT qlater_enqueue('export_stations', '["a", "b", "c"]');
SELECT qlater_enqueue('export_stations', '{"format": "csv"}');
SELECT qlater_enqueue('export_stations', '{"tenant": "a", "colour": "red"}');
SELECT qlater_enqueue('export_stations', '"tenant-a"');
SELECT qlater_enqueue('export_stations', '42');
SELECT qlater_enqueue('export_stations', NULL);
SELECT qlater_enqueue(NULL, '[]');
SELECT qlater_enqueue('export_stations', '["a"]', priority => 40000);
SELECT qlater_enqueue('export_stations', '["a"]', max_attempts => 0);
SELECT qlater_enqueue('export_stations', '["a"]', queue => '');
SELECT qlater_enqueue('export_stations', '["a"]', run_at => 'infinity');
SELECT count(*) FROM qlater_jobs;

-- many jobs in one call: ids in the order of args_list, all or none
BEGIN;
CREATE TEMP TABLE many_ids AS
SELECT n, id
  FROM qlater_enqueue_many('export_stations',
                           '[["t1"], {"tenant": "t2", "format": "pdf"}, ["t3"]]',
                           run_at => now() + interval '1 day', priority => 7)
       WITH ORDINALITY AS e (id, n);
SELECT m.n, j.handler, j.args, j.priority, j.state, j.role = current_user AS mine
  FROM many_ids m JOIN qlater_jobs j USING (id) ORDER BY m.n;
SELECT bool_and(b.id > a.id) AS ids_ascend FROM many_ids a JOIN many_ids b ON b.n = a.n + 1;
ROLLBACK;
SELECT count(*) FROM qlater_enqueue_many('export_stations', '[]');
SELECT qlater_enqueue_many('export_stations', '[["a"], ["b", "c", "d"]]');
SELECT qlater_enqueue_many('export_stations', '[["a"], "b"]');
SELECT qlater_enqueue_many('export_stations', '{"tenant": "a"}');
SELECT qlater_enqueue_many('export_stations', '"a"');
SELECT qlater_enqueue_many('export_stations', NULL);
SELECT qlater_enqueue_many('no_such_handler', '[["a"]]');
SELECT qlater_enqueue_many('export_stations', '[["a"]]', priority => 40000);
SELECT count(*) FROM qlater_jobs;

-- an unregistered overload makes nothing ambiguous; two registered ones do
CREATE FUNCTION export_stations(tenant int) RETURNS void LANGUAGE sql AS '';
BEGIN;
SELECT qlater_enqueue('export_stations', '["t"]', run_at => now() + interval '1 day') > 0 AS enqueued;
ROLLBACK;
SELECT qlater_register('export_stations(int)');
SELECT qlater_enqueue('export_stations', '["t"]');
BEGIN;
SELECT qlater_enqueue('export_stations(integer)', '[1]', run_at => now() + interval '1 day') > 0 AS enqueued;
ROLLBACK;
SELECT qlater_unregister('export_stations(int)');
SELECT qlater_unregister('export_stations(int)');
DROP FUNCTION export_stations(int);

-- the handler resolves under the caller's search_path
CREATE SCHEMA other;
CREATE FUNCTION other.hidden(a int) RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('other.hidden(int)');
SELECT qlater_enqueue('hidden', '[1]');
SET search_path = other, public;
BEGIN;
SELECT qlater_enqueue('hidden', '[1]', run_at => now() + interval '1 day') > 0 AS enqueued;
ROLLBACK;
RESET search_path;

-- queues with batches: options, and what is refused
SELECT qlater_create_queue('batched', batch_size => 32, batch_delay => '5 ms');
SELECT name, external, batch_size, batch_delay FROM qlater_queue WHERE name = 'batched';
-- a queue is created once; changed by qlater_alter_queue (NULL: unchanged)
SELECT qlater_create_queue('batched', batch_size => 16);
SELECT qlater_alter_queue('batched', batch_size => 16);   -- the delay stays
SELECT qlater_alter_queue('batched');                     -- both stay
SELECT name, external, batch_size, batch_delay FROM qlater_queue WHERE name = 'batched';
SELECT qlater_alter_queue('batched', batch_size => 0);
SELECT qlater_alter_queue('batched', batch_size => 65);
SELECT qlater_alter_queue('batched', batch_delay => '0');
SELECT qlater_alter_queue('batched', batch_delay => '11 s');
SELECT qlater_alter_queue('batched', batch_delay => '1 day');
SELECT qlater_alter_queue('no_such_queue', batch_size => 2);
SELECT qlater_create_queue('batched_app', external => true, batch_size => 2);
-- made external, a queue loses its batches
SELECT qlater_alter_queue('batched', external => true);
SELECT name, external, batch_size FROM qlater_queue WHERE name = 'batched';
SELECT qlater_alter_queue('batched', external => false);
SELECT name, external, batch_size FROM qlater_queue WHERE name = 'batched';
SELECT qlater_drop_queue('batched');

-- after commit the job runs in the background
SELECT qlater_enqueue('export_stations', '["tenant-now"]') > 0 AS enqueued;
SELECT qlater_enqueue('export_stations', '{"tenant": "tenant-named", "format": "xlsx"}') > 0 AS enqueued;
SELECT wait_for_jobs();
SELECT tenant, format, who = current_user AS as_me FROM done ORDER BY tenant;
SELECT count(*) FROM qlater_jobs;
