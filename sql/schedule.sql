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

-- a handler that is unregistered and registered again below
CREATE FUNCTION sched_test.fleeting() RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('sched_test.fleeting()');
-- a queue of bob's, which others may not put jobs into without a grant
SET ROLE ql_sched_bob;
SELECT qlater_create_queue('sched_bob_q');
RESET ROLE;

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
-- a queue a schedule names is made for the role, as by an enqueue
SELECT name, owner, external FROM qlater_queues WHERE name = 'nightly';

-- overlap: off unless asked for; skipped ticks start at 0
SELECT name, overlap, skipped_ticks FROM qlater_schedules ORDER BY name;
SELECT qlater_schedule('overlapping', '@yearly', 'tick', '["o"]', overlap => true) > 0 AS created;
SELECT name, overlap, skipped_ticks FROM qlater_schedules WHERE name = 'overlapping';

-- create or replace: same id, new definition
SELECT id AS yearly_id FROM qlater_schedules WHERE name = 'yearly' \gset
SELECT qlater_schedule('yearly', '0 0 1 7 *', 'tick', '["july"]') = :yearly_id AS same_id;
SELECT name, schedule, args FROM qlater_schedules WHERE name = 'yearly';
SELECT count(*) FROM qlater_schedules;
-- a replaced schedule keeps its count of skipped ticks, and takes overlap
-- as given (the default: off)
RESET ROLE;
UPDATE qlater_schedule SET skipped_ticks = 7 WHERE name = 'overlapping';
SET ROLE ql_sched_alice;
SELECT qlater_schedule('overlapping', '@yearly', 'tick', '["o2"]') > 0 AS replaced;
SELECT name, args, overlap, skipped_ticks FROM qlater_schedules WHERE name = 'overlapping';
SELECT qlater_unschedule('overlapping');

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
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', overlap => NULL);
\echo :LAST_ERROR_SQLSTATE
-- queues are checked as for an enqueue: another role's queue needs its
-- 'enqueue' grant, and a priority at or above its min_priority
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', queue => 'sched_bob_q');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM qlater_schedules WHERE name = 'bad';
RESET ROLE;
SELECT qlater_grant_queue('sched_bob_q', 'ql_sched_alice', 'enqueue');
SELECT qlater_alter_queue('sched_bob_q', min_priority => 10);
SET ROLE ql_sched_alice;
SELECT qlater_schedule('bad', '@daily', 'tick', '["x"]', queue => 'sched_bob_q', priority => 9);
\echo :LAST_ERROR_SQLSTATE
-- the handler's registered priority (100) counts when none is given
SELECT qlater_schedule('in_bob_q', '@yearly', 'tick', '["b"]', queue => 'sched_bob_q') > 0 AS created;
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

-- qlater_alter_schedule: off and on, by the owner; NULL leaves a setting
SET ROLE ql_sched_alice;
SELECT qlater_alter_schedule('yearly', active => false);
SELECT name, active, next_tick > now() AS future FROM qlater_schedules WHERE name = 'yearly';
SELECT qlater_alter_schedule('yearly');
SELECT name, schedule, args, queue, priority, timezone, active, catch_up, overlap
  FROM qlater_schedules WHERE name = 'yearly';
RESET ROLE;
-- a tick long past while off (as if the schedule had been off for years)
UPDATE qlater_schedule SET next_tick = '2001-07-01 00:00+00' WHERE name = 'yearly';
SET ROLE ql_sched_alice;
-- on again: the next tick is computed from now, the missed one is dropped
SELECT qlater_alter_schedule('yearly', active => true);
SELECT name, active, next_tick = qlater_cron_next(schedule, now()) AS from_now
  FROM qlater_schedules WHERE name = 'yearly';
-- the other settings, checked as qlater_schedule checks them
SELECT qlater_alter_schedule('yearly', schedule => '0 12 1 2 *', timezone => 'Asia/Tokyo',
                             args => '{"label": "feb", "n": 2}', queue => 'nightly',
                             priority => 7, catch_up => false, overlap => true);
SELECT name, schedule, args, queue, priority, timezone, active, catch_up, overlap,
       next_tick = qlater_cron_next('0 12 1 2 *', now(), 'Asia/Tokyo') AS next_ok
  FROM qlater_schedules WHERE name = 'yearly';
SELECT qlater_alter_schedule('yearly', schedule => '61 * * * *');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', schedule => '0 0 30 2 *');
SELECT qlater_alter_schedule('yearly', timezone => 'Mars/Olympus');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', args => '[1, 2, 3]');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', args => '["x", "not a number"]');
SELECT qlater_alter_schedule('yearly', priority => 100000);
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', queue => '');
SELECT qlater_alter_schedule('yearly', queue => 'sched_app');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', queue => 'sched_bob_q', priority => 9);
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('nosuch', active => false);
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule(NULL, active => false);
\echo :LAST_ERROR_SQLSTATE
-- none of these changed anything
SELECT name, schedule, args, queue, priority, timezone, active, catch_up, overlap
  FROM qlater_schedules WHERE name = 'yearly';
RESET ROLE;

-- bob cannot change alice's schedule; his own name is his own
SET ROLE ql_sched_bob;
SELECT qlater_alter_schedule('yearly', active => false, owner => 'ql_sched_alice');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', active => false);
RESET ROLE;

-- an admin switches another role's schedule off and on and sets its
-- overlap, but does not change what it runs
SET ROLE ql_sched_admin;
SELECT qlater_alter_schedule('yearly', active => false, overlap => false, owner => 'ql_sched_alice');
SELECT name, owner, active, overlap FROM qlater_schedules WHERE name = 'yearly';
SELECT qlater_alter_schedule('yearly', args => '["admin"]', owner => 'ql_sched_alice');
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('yearly', schedule => '* * * * *', owner => 'ql_sched_alice');
SELECT qlater_alter_schedule('yearly', active => true, owner => 'ql_sched_alice');
SELECT name, owner, active, args FROM qlater_schedules WHERE name = 'yearly';
SELECT qlater_alter_schedule('yearly', active => false, owner => 'nobody_here');
RESET ROLE;

-- turned on again only once the reason it went off is gone: a handler no
-- longer registered, a queue turned external, a queue grant revoked
SET ROLE ql_sched_alice;
SELECT qlater_schedule('fleeting', '@yearly', 'fleeting') > 0 AS created;
SELECT qlater_alter_schedule('fleeting', active => false);
RESET ROLE;
SELECT qlater_unregister('sched_test.fleeting()');
SET ROLE ql_sched_alice;
SELECT qlater_alter_schedule('fleeting', active => true);
\echo :LAST_ERROR_SQLSTATE
-- while off, settings that need no check may change
SELECT qlater_alter_schedule('fleeting', catch_up => false);
RESET ROLE;
SET ROLE ql_sched_admin;
SELECT qlater_alter_schedule('fleeting', active => true, owner => 'ql_sched_alice');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT qlater_register('sched_test.fleeting()');
SET ROLE ql_sched_alice;
SELECT qlater_alter_schedule('fleeting', active => true);
SELECT name, active, catch_up FROM qlater_schedules WHERE name = 'fleeting';

SELECT qlater_create_queue('sched_alice_q');
SELECT qlater_schedule('to_ext', '@yearly', 'tick', '["e"]', queue => 'sched_alice_q') > 0 AS created;
SELECT qlater_alter_schedule('to_ext', active => false);
SELECT qlater_alter_queue('sched_alice_q', external => true);
SELECT qlater_alter_schedule('to_ext', active => true);
\echo :LAST_ERROR_SQLSTATE
SELECT qlater_alter_schedule('to_ext', active => true, queue => 'nightly');
SELECT name, queue, active FROM qlater_schedules WHERE name = 'to_ext';

SELECT qlater_alter_schedule('in_bob_q', active => false);
RESET ROLE;
SET ROLE ql_sched_bob;
SELECT qlater_revoke_queue('sched_bob_q', 'ql_sched_alice', 'enqueue');
RESET ROLE;
SET ROLE ql_sched_admin;
SELECT qlater_alter_schedule('in_bob_q', active => true, owner => 'ql_sched_alice');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE ql_sched_alice;
SELECT qlater_alter_schedule('in_bob_q', active => true);
\echo :LAST_ERROR_SQLSTATE
SELECT name, active FROM qlater_schedules WHERE name IN ('in_bob_q', 'to_ext', 'fleeting') ORDER BY name;
SELECT qlater_unschedule('in_bob_q'), qlater_unschedule('to_ext'), qlater_unschedule('fleeting');
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
SELECT qlater_unregister('sched_test.fleeting()');
DELETE FROM qlater_queue WHERE name = 'sched_app';
SELECT qlater_drop_queue('nightly');
SELECT qlater_drop_queue('sched_alice_q');
SELECT qlater_drop_queue('sched_bob_q');
DROP SCHEMA sched_test CASCADE;
RESET search_path;
DROP ROLE ql_sched_alice;
DROP ROLE ql_sched_bob;
DROP ROLE ql_sched_admin;
