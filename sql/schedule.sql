-- schedule: the SQL API of recurring jobs (firing is tested in TAP)
\set VERBOSITY default

CREATE ROLE ql_sched_alice;
CREATE ROLE ql_sched_bob;
CREATE ROLE ql_sched_admin;
GRANT qlater_admin TO ql_sched_admin;
CREATE SCHEMA sched_test;
GRANT USAGE ON SCHEMA sched_test TO PUBLIC;
CREATE FUNCTION sched_test.tick(label text, n int DEFAULT 1) RETURNS void
LANGUAGE sql AS '';
SELECT qlater_register('sched_test.tick(text,int)');
CREATE FUNCTION sched_test.private() RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION sched_test.private() FROM PUBLIC;
SELECT qlater_register('sched_test.private()');
CREATE FUNCTION sched_test.unregistered() RETURNS void LANGUAGE sql AS '';
-- an external queue, served by applications, and a handler defaulting to it
SELECT qlater_create_queue('sched_app', external => true);
CREATE FUNCTION sched_test.app() RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('sched_test.app()', queue => 'sched_app');

-- ticks far in the future, so that nothing fires during the test
SET ROLE ql_sched_alice;
SET search_path = sched_test, public;
SELECT qlater_schedule('yearly', '0 0 1 1 *', 'tick', '["new year"]') > 0 AS created;
SELECT name, schedule, timezone, handler, args, queue, owner, last_tick,
       next_tick > now() AS future, active, priority, catch_up
  FROM qlater_schedules;

-- the next tick is computed in the schedule's time zone
SELECT qlater_schedule('tokyo', '0 0 1 1 *', 'tick', '["tokyo"]',
                       timezone => 'Asia/Tokyo') > 0 AS created;
SELECT next_tick = qlater_cron_next('0 0 1 1 *', now(), 'Asia/Tokyo') AS same_as_cron_next,
       to_char(next_tick AT TIME ZONE 'Asia/Tokyo', 'MM-DD HH24:MI') AS tokyo_time,
       to_char(next_tick AT TIME ZONE 'UTC', 'MM-DD HH24:MI') AS utc_time
  FROM qlater_schedules WHERE name = 'tokyo';

-- arguments are normalized (named, defaults) as for qlater_enqueue
SELECT qlater_schedule('named', '@yearly', 'tick', '{"label": "x", "n": 3}',
                       queue => 'nightly', priority => 5, catch_up => false) > 0 AS created;
SELECT name, args, queue, priority, catch_up FROM qlater_schedules
 WHERE name = 'named';

-- create or replace: same id, new definition
SELECT id AS yearly_id FROM qlater_schedules WHERE name = 'yearly' \gset
SELECT qlater_schedule('yearly', '0 0 1 7 *', 'tick', '["july"]') = :yearly_id AS same_id;
SELECT name, schedule, args FROM qlater_schedules WHERE name = 'yearly';
SELECT count(*) FROM qlater_schedules;

-- errors: bad schedules name the field and the value
SELECT qlater_schedule('bad', '61 * * * *', 'tick', '["x"]');
SELECT qlater_schedule('bad', '* 24 * * *', 'tick', '["x"]');
SELECT qlater_schedule('bad', '* * * foo *', 'tick', '["x"]');
SELECT qlater_schedule('bad', '* * * *', 'tick', '["x"]');
SELECT qlater_schedule('bad', '@sometimes', 'tick', '["x"]');
SELECT qlater_schedule('bad', '60 seconds', 'tick', '["x"]');
-- time zone
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', timezone => 'Mars/Olympus');
-- handler unknown, not registered, not executable
SELECT qlater_schedule('bad', '@daily', 'nosuch', '["x"]');
SELECT qlater_schedule('bad', '@daily', 'unregistered', '[]');
SELECT qlater_schedule('bad', '@daily', 'private', '[]');
-- arguments that the handler does not take
SELECT qlater_schedule('bad', '@daily', 'tick', '[1, 2, 3]');
SELECT qlater_schedule('bad', '@daily', 'tick', '{"nosuch": 1}');
SELECT qlater_schedule('bad', '@daily', 'tick', '["x", "not a number"]');
-- other options
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', priority => 100000);
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', queue => '');
-- jobs of schedules are for the in-server workers
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', queue => 'sched_app');
SELECT qlater_schedule('bad', '@daily', 'app');
SELECT qlater_schedule('', '@daily', 'tick', '["x"]');
SELECT qlater_schedule(repeat('n', 201), '@daily', 'tick', '["x"]');
SELECT qlater_schedule(E'bad\nname', '@daily', 'tick', '["x"]');
SELECT qlater_schedule('bad', '0 0 30 2 *', 'tick', '["x"]');
SELECT qlater_schedule(NULL, '@daily', 'tick', '["x"]');
SELECT qlater_schedule('bad', NULL, 'tick', '["x"]');
SELECT qlater_schedule('bad', '@daily', NULL, '["x"]');
SELECT qlater_schedule('bad', '@daily', 'tick', NULL);
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', timezone => NULL);
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', catch_up => NULL);
SELECT count(*) FROM qlater_schedules WHERE name = 'bad';

-- nobody writes the table directly
INSERT INTO qlater_schedule (name, owner, schedule, timezone, handler, args)
VALUES ('forged', 'postgres', '@daily', 'UTC', 'sched_test.tick(text,integer)', '["x"]');
UPDATE qlater_schedule SET owner = 'postgres';
SELECT count(*) FROM qlater_schedule;
RESET ROLE;

-- bob sees none of alice's schedules and cannot remove them
SET ROLE ql_sched_bob;
SELECT count(*) FROM qlater_schedules;
SELECT qlater_unschedule('yearly');
SELECT qlater_unschedule('yearly', 'ql_sched_alice');
-- his own schedule of the same name is another one
SELECT qlater_schedule('yearly', '@yearly', 'tick', '["bob"]') > 0 AS created;
SELECT name, owner, args FROM qlater_schedules;
RESET ROLE;

-- an admin sees every schedule and may remove any; so does a superuser
SELECT name, owner FROM qlater_schedules ORDER BY owner, name;
SET ROLE ql_sched_admin;
SELECT name, owner FROM qlater_schedules ORDER BY owner, name;
SELECT qlater_unschedule('yearly', 'ql_sched_bob');
SELECT qlater_unschedule('yearly', 'ql_sched_bob');
RESET ROLE;

-- the caller's search_path lends the schedule functions no operator: it
-- would run as the tables' owner
CREATE SCHEMA sched_trap AUTHORIZATION ql_sched_alice;
SET ROLE ql_sched_alice;
CREATE FUNCTION sched_trap.text_eq(a text, b text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'trap ran as %', current_user;
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE OPERATOR sched_trap.= (LEFTARG = text, RIGHTARG = text,
                              FUNCTION = sched_trap.text_eq);
CREATE FUNCTION sched_trap.name_eq(a name, b name) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'trap ran as %', current_user;
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE OPERATOR sched_trap.= (LEFTARG = name, RIGHTARG = name,
                              FUNCTION = sched_trap.name_eq);
SET search_path = sched_trap, pg_catalog, sched_test, public;
SELECT 'a'::text = 'a'::text AS trap_works;
SELECT qlater_schedule('trap', '@yearly', 'tick', '["trap"]', queue => 'nightly') > 0 AS created;
SELECT qlater_unschedule('trap');
SELECT qlater_unschedule('trap', 'ql_sched_alice');
SET search_path = sched_test, public;
RESET ROLE;
DROP SCHEMA sched_trap CASCADE;

-- alice removes her own
SET ROLE ql_sched_alice;
SELECT qlater_unschedule('tokyo');
SELECT qlater_unschedule('tokyo');
SELECT qlater_unschedule(NULL);
SELECT name FROM qlater_schedules ORDER BY name;
RESET ROLE;

-- no job was enqueued by any of this
SELECT count(*) FROM qlater_jobs WHERE handler LIKE 'sched_test.%';

-- clean up
SELECT qlater_unschedule(name, owner) FROM qlater_schedules ORDER BY name;
SELECT qlater_unregister('sched_test.tick(text,int)');
SELECT qlater_unregister('sched_test.private()');
SELECT qlater_unregister('sched_test.app()');
DELETE FROM qlater_queue WHERE name = 'sched_app';
DROP SCHEMA sched_test CASCADE;
RESET search_path;
DROP ROLE ql_sched_alice;
DROP ROLE ql_sched_bob;
DROP ROLE ql_sched_admin;
